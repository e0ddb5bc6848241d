"""Tests of SPEC §5: misclassification_metrics (AUPRC/AUROC of Q-Score as a predictor of correctness)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from qscore_hf.metrics import auroc_interval, auroc_text, interval_text, misclassification_metrics
from qscore_hf.score import qscore


def test_hand_computed_four_samples():
    # scores 0.9 (correct), 0.8 (wrong), 0.7 (correct), 0.6 (wrong).
    # auprc_correct: precision at each correct sample in score order: 1/1 at 0.9, 2/3 at 0.7 -> (1 + 2/3)/2.
    # auroc: (correct, wrong) pairs ranked right: 0.9>0.8, 0.9>0.6, 0.7>0.6; not 0.7>0.8 -> 3/4.
    # auprc_misclassified with -scores: order -0.6 (wrong), -0.7 (correct), -0.8 (wrong), -0.9 (correct):
    #   precision 1/1 at -0.6, 2/3 at -0.8 -> (1 + 2/3)/2.
    m = misclassification_metrics([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0])
    assert m["auprc_correct"] == pytest.approx((1 + 2 / 3) / 2, abs=1e-12)
    assert m["auroc"] == pytest.approx(3 / 4, abs=1e-12)
    assert m["auprc_misclassified"] == pytest.approx((1 + 2 / 3) / 2, abs=1e-12)
    assert m["accuracy"] == 0.5
    assert m["misclassified_rate"] == 0.5
    assert m["num_samples"] == 4


def test_hand_computed_asymmetric():
    # scores [0.9, 0.8, 0.7, 0.6, 0.5], correct [1, 1, 0, 1, 0].
    # auprc_correct: precisions at the correct ones: 1/1, 2/2, 3/4 -> (1 + 1 + 3/4)/3 = 11/12.
    # auprc_misclassified on -scores: order 0.5 (wrong) 1/1, 0.6 (correct), 0.7 (wrong) 2/3 -> (1 + 2/3)/2 = 5/6.
    # auroc: correct {0.9, 0.8, 0.6} vs wrong {0.7, 0.5}: 6 pairs, only 0.6 < 0.7 wrong -> 5/6.
    m = misclassification_metrics(np.array([0.9, 0.8, 0.7, 0.6, 0.5]), np.array([1, 1, 0, 1, 0]))
    assert m["auprc_correct"] == pytest.approx(11 / 12, abs=1e-12)
    assert m["auprc_misclassified"] == pytest.approx(5 / 6, abs=1e-12)
    assert m["auroc"] == pytest.approx(5 / 6, abs=1e-12)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["misclassified_rate"] == pytest.approx(2 / 5)


def test_hand_computed_ties():
    # scores [1, 1, 0], correct [1, 0, 1]: threshold 1 -> TP 1, FP 1: P = 1/2, R = 1/2; threshold 0 -> P = 2/3,
    # R = 1. AP = sum (R_k - R_{k-1}) P_k = 1/2 * 1/2 + 1/2 * 2/3 = 7/12. AUROC: pairs (1 vs 1) tie = 1/2,
    # (0 vs 1) = 0 -> (1/2 + 0)/2 = 1/4.
    m = misclassification_metrics([1.0, 1.0, 0.0], [1, 0, 1])
    assert m["auprc_correct"] == pytest.approx(7 / 12, abs=1e-12)
    assert m["auroc"] == pytest.approx(1 / 4, abs=1e-12)


def _sklearn_metrics(scores, correct):
    scores = np.asarray(scores, dtype=np.float64)
    correct = np.asarray(correct).astype(int)
    return {
        "auprc_correct": average_precision_score(correct, scores),
        "auprc_misclassified": average_precision_score(1 - correct, -scores),
        "auroc": roc_auc_score(correct, scores),
        "accuracy": correct.mean(),
        "misclassified_rate": 1 - correct.mean(),
        "num_samples": correct.size,
    }


@pytest.mark.parametrize("seed", range(5))
def test_matches_sklearn_random(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(10, 500))
    correct = (rng.random(n) < rng.uniform(0.2, 0.9)).astype(int)
    correct[:2] = [0, 1]
    scores = rng.normal(size=n) + correct * rng.uniform(0, 2)
    if seed % 2:
        scores = np.round(scores, 1)  # ties
    m = misclassification_metrics(scores, correct)
    expected = _sklearn_metrics(scores, correct)
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    # torch tensors and lists are accepted too
    m2 = misclassification_metrics(torch.from_numpy(scores), torch.from_numpy(correct).bool().tolist())
    assert m2["auprc_correct"] == pytest.approx(expected["auprc_correct"], rel=1e-12)


@pytest.fixture(scope="module")
def digits_probe():
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.5, random_state=0, stratify=data.target
    )
    probe = LogisticRegression(max_iter=2000).fit(x_train / 16.0, y_train)
    correct = (probe.predict(x_test / 16.0) == y_test).astype(int)
    scores = qscore(x_test, eps=1.0).numpy()
    return scores, correct


def test_matches_sklearn_on_digits_probe(digits_probe):
    scores, correct = digits_probe
    assert 0 < correct.sum() < correct.size  # both classes present
    assert np.isfinite(scores).all() and (scores != 0).any()
    m = misclassification_metrics(scores, correct)
    expected = _sklearn_metrics(scores, correct)
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    print(
        f"digits probe: accuracy={m['accuracy']:.4f} auprc_correct={m['auprc_correct']:.4f} "
        f"auprc_misclassified={m['auprc_misclassified']:.4f} (base {m['misclassified_rate']:.4f}) "
        f"auroc={m['auroc']:.4f} n={m['num_samples']}"
    )


def test_errors():
    with pytest.raises(ValueError, match="Q-Scores but"):
        misclassification_metrics([0.1, 0.2, 0.3], [1, 0])
    with pytest.raises(ValueError, match="0 .*or 1"):
        misclassification_metrics([0.1, 0.2, 0.3], [1, 0, 2])
    with pytest.raises(ValueError, match="0 .*or 1"):
        misclassification_metrics([0.1, 0.2, 0.3], [1, 0, 0.5])
    with pytest.raises(ValueError, match="all 3 samples are correct"):
        misclassification_metrics([0.1, 0.2, 0.3], [1, 1, 1])
    with pytest.raises(ValueError, match="all 3 samples are misclassified"):
        misclassification_metrics([0.1, 0.2, 0.3], [0, 0, 0])
    with pytest.raises(ValueError, match="NaN or Inf"):
        misclassification_metrics([0.1, float("nan"), 0.3], [1, 0, 1])


# --------------------------------------------------------------------------- the AUROC's 95 % interval
Z95 = 1.959963984540054  # the normal distribution's 97.5th percentile


def naive_delong(scores, positive):
    """DeLong's interval from the pairwise kernel psi(x, y) = 1 if x > y, 1/2 if equal (O(m n), no ranks)."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive).astype(bool)
    x, y = scores[positive], scores[~positive]
    psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
    auc = psi.mean()
    variance = psi.mean(axis=1).var(ddof=1) / x.size + psi.mean(axis=0).var(ddof=1) / y.size
    return max(0.0, auc - Z95 * np.sqrt(variance)), min(1.0, auc + Z95 * np.sqrt(variance))


def test_interval_by_hand():
    # positives 0.9, 0.7; negatives 0.8, 0.6. Placements of the positives: 1 (beats both), 1/2; of the negatives
    # (share of positives above): 1/2, 1. AUROC 3/4; variance 0.125/2 + 0.125/2 = 0.125.
    low, high = auroc_interval([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0])
    assert low == pytest.approx(0.75 - Z95 * np.sqrt(0.125), abs=1e-12)
    assert high == 1.0  # 0.75 + 0.69 clipped
    assert misclassification_metrics([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0])["auroc_ci"] == [low, high]


@pytest.mark.parametrize("seed", range(4))
def test_interval_equals_the_pairwise_delong(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    positive = (rng.random(n) < rng.uniform(0.1, 0.95)).astype(int)
    positive[:2] = [0, 1]
    positive[2:4] = [0, 1]
    scores = rng.normal(size=n) + positive * rng.uniform(0, 1.5)
    if seed % 2:
        scores = np.round(scores, 1)  # ties
    assert auroc_interval(scores, positive) == pytest.approx(naive_delong(scores, positive), abs=1e-12)


def test_interval_agrees_with_a_bootstrap():
    """DeLong's standard error against the spread of 2000 stratified bootstrap AUROCs (seeded) of 1000 samples."""
    rng = np.random.default_rng(0)
    positive = (rng.random(1000) < 0.85).astype(int)
    scores = rng.normal(size=1000) + 0.8 * positive
    low, high = auroc_interval(scores, positive)
    pos, neg = np.flatnonzero(positive), np.flatnonzero(1 - positive)
    boot = np.array([
        roc_auc_score(positive[idx], scores[idx])
        for idx in (np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)]) for _ in range(2000))
    ])  # fmt: skip
    assert (high - low) / (2 * Z95) == pytest.approx(boot.std(ddof=1), rel=0.1)
    assert (low, high) == pytest.approx(tuple(np.percentile(boot, [2.5, 97.5])), abs=0.015)


def test_interval_of_a_class_of_one_is_everything():
    assert auroc_interval([0.3, 0.2, 0.1], [1, 1, 0]) == (0.0, 1.0)
    assert misclassification_metrics([0.3, 0.2, 0.1], [1, 1, 0])["num_misclassified"] == 1


def test_interval_and_auroc_text_are_the_reports_shared_format():
    assert interval_text([0.59804, 0.62596]) == "[0.5980, 0.6260]"
    assert interval_text((0.1, 0.25), digits=2) == "[0.10, 0.25]"
    assert interval_text(None) == "" and interval_text([]) == ""
    assert auroc_text({"auroc": 0.6123, "auroc_ci": [0.598, 0.626]}) == "0.612 [0.598, 0.626]"
    assert auroc_text({"auroc": 0.6123}) == "0.612"  # a row written before intervals existed
    assert auroc_text({"auroc": 0.5, "auroc_ci": None}, digits=4) == "0.5000"
