"""Every AUROC the project reports carries its 95 % interval: the ``evaluate`` metric's ``auroc_ci`` and the rows of
its ``comparison`` are DeLong's intervals of the returned scores, computed here from the pairwise kernel."""

from __future__ import annotations

import evaluate
import numpy as np
import pytest

from qscore_hf.evaluate_metric import METRIC_PATH

Z95 = 1.959963984540054


def pairwise_delong(scores: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """DeLong's interval from psi(x, y) = 1 if x > y, 1/2 if equal, over every (positive, negative) pair."""
    x, y = scores[positive.astype(bool)], scores[~positive.astype(bool)]
    psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
    half = Z95 * np.sqrt(psi.mean(axis=1).var(ddof=1) / x.size + psi.mean(axis=0).var(ddof=1) / y.size)
    return max(0.0, psi.mean() - half), min(1.0, psi.mean() + half)


def test_metric_reports_the_interval_of_its_auroc():
    rng = np.random.default_rng(0)
    correct = (rng.random(300) < 0.75).astype(int)
    features = np.abs(rng.normal(size=(300, 32))) + correct[:, None] * rng.random((300, 32))
    metric = evaluate.load(str(METRIC_PATH))
    result = metric.compute(predictions=features, references=correct, eps=1.0, baselines=True)
    q = np.asarray(result["q_scores"], dtype=np.float64)
    low, high = result["auroc_ci"]
    assert (low, high) == pytest.approx(pairwise_delong(q, correct), abs=1e-9)
    assert low < result["auroc"] < high
    (q_row,) = [row for row in result["comparison"] if row["score"] == "q_score"]
    assert q_row["auroc_ci"] == pytest.approx([low, high], abs=1e-12)
    (l2_row,) = [row for row in result["comparison"] if row["score"] == "l2_norm"]
    l2 = np.linalg.norm(features.astype(np.float32).astype(np.float64), axis=1)
    assert l2_row["auroc_ci"] == pytest.approx(list(pairwise_delong(l2, correct)), abs=1e-6)
