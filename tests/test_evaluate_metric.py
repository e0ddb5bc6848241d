"""Tests of the ``evaluate`` metric "qscore" (qscore_hf/evaluate_metric/qscore).

Expectations: a hand-computed example, scikit-learn's average_precision_score / roc_auc_score computed here on
the returned scores, a literal NumPy reading of SPEC §2-4, and batch-wise vs one-shot equality. The data are
real: scikit-learn's digits pixels as 64-d representations, with correctness from a logistic regression.
"""

# Defaults switched off in this file, and why: progress bars off (--no-progress / progress=False): they only fill the
# test log.
# Every entry point still runs with all defaults on somewhere: tests/documented_commands.py ENTRY_POINTS.

from __future__ import annotations

import re
import subprocess
import sys

import evaluate
import numpy as np
import pytest
import torch
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score

import qscore_hf
from qscore_hf import ActivationStats, QScoreConfig, QScoreModel
from qscore_hf.evaluate_metric import METRIC_PATH

EXAMPLE = [[0.0, 0.0, 0.0, 4.0], [1.0, 1.0, 1.0, 1.0]]
# Row 1: mu = 1, sigma = sqrt((1 + 1 + 1 + 9) / 4) = sqrt(3); only 4 > 1 + sqrt(3) ~ 2.73, so Q = 4 - 1 = 3.
# Row 2: constant, sigma = 0, nothing selected: Q = 0. Half of the samples are empty.
EXAMPLE_Q = [3.0, 0.0]


# ---------------------------------------------------------------------------------------------------------
# Independent NumPy reference of SPEC §2-4.
# ---------------------------------------------------------------------------------------------------------


def ref_highly_activating(features: np.ndarray, eps: float) -> np.ndarray:
    h = np.asarray(features, dtype=np.float64)
    mask = np.zeros(h.shape, dtype=bool)
    for i, row in enumerate(h):
        if row.max() != row.min():
            mask[i] = row > row.mean() + eps * row.std()
    return mask


def ref_discriminative(reference: np.ndarray, eps: float, p_lo: float = 50.0, p_hi: float = 95.0) -> np.ndarray:
    freq = ref_highly_activating(reference, eps).mean(axis=0)
    lo, hi = np.percentile(freq, [p_lo, p_hi])
    return (freq >= lo) & (freq <= hi) & (freq > 0)


def ref_qscore(features: np.ndarray, discriminative: np.ndarray | None, eps: float) -> np.ndarray:
    h = np.asarray(features, dtype=np.float64)
    mask = ref_highly_activating(h, eps)
    keep = np.ones(h.shape[1], dtype=bool) if discriminative is None else discriminative
    out = np.zeros(h.shape[0])
    for i, row in enumerate(h):
        selected = mask[i] & keep
        if selected.any():
            out[i] = (row[selected] - row.mean()).mean()
    return out


# ---------------------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def metric():
    return evaluate.load(str(METRIC_PATH))


@pytest.fixture(scope="module")
def probe_split(digits):
    """Digits pixels as representations: a reference (train) set, an evaluation set, and per-sample correctness
    of a logistic regression trained on a small part of the train set (so that some samples are misclassified)."""
    _, data, target = digits
    train, test = data[:400], data[400:1000]
    probe = LogisticRegression(max_iter=2000).fit(data[:150], target[:150])
    correct = (probe.predict(test) == target[400:1000]).astype(int)
    assert 0 < correct.sum() < correct.size
    return train, test, correct


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------

_LOAD_BY_NAME = r"""
import json
import qscore_hf
import evaluate
metric = evaluate.load("qscore")
out = metric.compute(predictions=[[0, 0, 0, 4], [1, 1, 1, 1]], eps=1)
print("RESULT " + json.dumps(out))
"""

_LOAD_BY_PATH = r"""
import json, sys
import evaluate
assert "qscore_hf" not in sys.modules
metric = evaluate.load(sys.argv[1])
out = metric.compute(predictions=[[0, 0, 0, 4], [1, 1, 1, 1]], references=[1, 0], eps=1)
print("RESULT " + json.dumps(out))
"""


def _result(run: subprocess.CompletedProcess) -> dict:
    assert run.returncode == 0, run.stderr[-4000:]
    (line,) = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    import json

    return json.loads(line[len("RESULT ") :])


def test_load_by_name_offline_with_empty_cache(tmp_path, offline_env):
    hf_home = tmp_path / "hf"
    work = tmp_path / "work"
    work.mkdir()
    assert not hf_home.exists()  # nothing cached before
    run = subprocess.run(
        [sys.executable, "-c", _LOAD_BY_NAME], cwd=work, env=offline_env(HF_HOME=str(hf_home)),
        capture_output=True, text=True, timeout=120,
    )
    out = _result(run)
    np.testing.assert_allclose(out["q_scores"], EXAMPLE_Q, rtol=1e-6)
    assert out["empty_fraction"] == 0.5
    assert out["mean"] == pytest.approx(1.5) and out["median"] == pytest.approx(1.5)
    assert out["num_discriminative"] == 4
    assert "auprc_correct" not in out
    assert list(work.iterdir()) == []  # nothing written into the working directory


def test_load_by_path_without_importing_qscore_hf(tmp_path, offline_env):
    run = subprocess.run(
        [sys.executable, "-c", _LOAD_BY_PATH, str(METRIC_PATH)], cwd=tmp_path,
        env=offline_env(HF_HOME=str(tmp_path / "hf")), capture_output=True, text=True, timeout=120,
    )
    out = _result(run)
    np.testing.assert_allclose(out["q_scores"], EXAMPLE_Q, rtol=1e-6)
    # references [1, 0]: the correct sample has the higher Q, so Q separates them perfectly
    assert out["auprc_correct"] == 1.0 and out["auprc_misclassified"] == 1.0 and out["auroc"] == 1.0
    assert out["accuracy"] == 0.5


# ---------------------------------------------------------------------------------------------------------
# compute
# ---------------------------------------------------------------------------------------------------------


def test_hand_computed_example(metric):
    out = metric.compute(predictions=EXAMPLE, eps=1.0)
    np.testing.assert_allclose(out["q_scores"], EXAMPLE_Q, rtol=1e-6)
    assert out["empty_fraction"] == 0.5 and out["num_discriminative"] == 4


def test_default_eps_is_4(metric):
    # mu = 1.25, sigma = sqrt(((-1.25)^2 * 7 + 8.75^2) / 8) = sqrt(10.9375) ~ 3.307: 10 > 1.25 + 4 * 3.307 = 14.48
    # is false at eps=4 (empty, Q = 0) and true at eps=2 (1.25 + 6.61 = 7.86), where Q = 10 - 1.25 = 8.75.
    row = [[0.0] * 7 + [10.0]]
    assert metric.compute(predictions=row)["q_scores"] == [0.0]
    np.testing.assert_allclose(metric.compute(predictions=row, eps=2.0)["q_scores"], [8.75], rtol=1e-6)


@pytest.mark.parametrize("with_references", [True, False])
def test_add_batch_equals_one_compute(metric, probe_split, with_references):
    train, test, correct = probe_split
    whole = metric.compute(
        predictions=test.tolist(), references=correct.tolist() if with_references else None,
        eps=1.0, reference_features=train,
    )
    batched = evaluate.load(str(METRIC_PATH))
    for start in range(0, len(test), 170):  # uneven last batch
        stop = start + 170
        if with_references:
            batched.add_batch(predictions=test[start:stop].tolist(), references=correct[start:stop].tolist())
        else:
            batched.add_batch(predictions=test[start:stop].tolist())
    out = batched.compute(eps=1.0, reference_features=train)
    assert len(out["q_scores"]) == len(test)
    np.testing.assert_allclose(out["q_scores"], whole["q_scores"], rtol=1e-6)
    for key in ("mean", "median", "empty_fraction", "num_discriminative"):
        assert out[key] == pytest.approx(whole[key], rel=1e-6), key
    metric_keys = ("auprc_correct", "auprc_misclassified", "auroc", "accuracy")
    if with_references:
        for key in metric_keys:
            assert out[key] == pytest.approx(whole[key], rel=1e-9), key
    else:
        assert not set(metric_keys) & set(out)


def test_add_one_by_one(metric):
    single = evaluate.load(str(METRIC_PATH))
    for row in EXAMPLE:
        single.add(prediction=row)
    np.testing.assert_allclose(single.compute(eps=1.0)["q_scores"], EXAMPLE_Q, rtol=1e-6)


def test_misclassification_metrics_equal_sklearn(metric, probe_split):
    train, test, correct = probe_split
    out = metric.compute(predictions=test.tolist(), references=correct.tolist(), eps=1.0, reference_features=train)
    q = np.asarray(out["q_scores"], dtype=np.float64)
    assert out["auprc_correct"] == pytest.approx(average_precision_score(correct, q), rel=1e-9)
    assert out["auprc_misclassified"] == pytest.approx(average_precision_score(1 - correct, -q), rel=1e-9)
    assert out["auroc"] == pytest.approx(roc_auc_score(correct, q), rel=1e-9)
    assert out["accuracy"] == pytest.approx(correct.mean())
    # the scores themselves follow SPEC §2-4 with D from the reference set
    expected = ref_qscore(test, ref_discriminative(train, 1.0), 1.0)
    np.testing.assert_allclose(q, expected, rtol=1e-5, atol=1e-6)
    assert out["mean"] == pytest.approx(expected.mean(), rel=1e-5)
    assert out["median"] == pytest.approx(np.median(expected), rel=1e-5)
    assert out["num_discriminative"] == int(ref_discriminative(train, 1.0).sum())


def test_reference_features_match_library(metric, probe_split):
    train, test, _ = probe_split
    out = metric.compute(predictions=test[:100].tolist(), eps=1.0, reference_features=train)
    stats = ActivationStats(64, 1.0).update(torch.as_tensor(train, dtype=torch.float32))
    library = qscore_hf.qscore(torch.as_tensor(test[:100], dtype=torch.float32), stats.discriminative(), 1.0)
    np.testing.assert_allclose(out["q_scores"], library.numpy(), rtol=1e-6, atol=1e-7)
    expected = ref_qscore(test[:100], ref_discriminative(train, 1.0), 1.0)
    np.testing.assert_allclose(out["q_scores"], expected, rtol=1e-5, atol=1e-6)
    # the reference set matters: without it every feature counts and the scores differ
    without = metric.compute(predictions=test[:100].tolist(), eps=1.0)
    assert not np.allclose(without["q_scores"], out["q_scores"])
    np.testing.assert_allclose(without["q_scores"], ref_qscore(test[:100], None, 1.0), rtol=1e-5, atol=1e-6)


def test_activation_stats_object_and_state_dict(metric, probe_split):
    train, test, _ = probe_split
    stats = ActivationStats(64, 1.0).update(torch.as_tensor(train, dtype=torch.float32))
    expected = ref_qscore(test[:100], ref_discriminative(train, 1.0), 1.0)
    for given in (stats, stats.state_dict(), {k: v.numpy() for k, v in stats.state_dict().items()}):
        out = metric.compute(predictions=test[:100].tolist(), eps=1.0, activation_stats=given)
        np.testing.assert_allclose(out["q_scores"], expected, rtol=1e-5, atol=1e-6)


def test_activation_stats_from_saved_model_folder(metric, digits, tmp_path):
    torch.manual_seed(0)
    model = QScoreModel(QScoreConfig(backbone="resnet18_cifar", image_size=32, crop_pct=1.0, qscore_eps=2.0)).eval()
    processor = model.image_processor()
    pixels = processor(list(digits[0][:48]), return_tensors="pt")["pixel_values"]
    model.compute_activation_stats([pixels[:32]], progress=False)
    with torch.no_grad():
        reference = model.backbone(pixels[:32]).numpy()
        features = model(pixels[32:48]).features.numpy()
    folder = tmp_path / "model"
    model.save_pretrained(folder)

    out = metric.compute(predictions=features.tolist(), eps=2.0, activation_stats=str(folder))
    discriminative = ref_discriminative(reference, 2.0)
    assert out["num_discriminative"] == int(discriminative.sum()) > 0
    np.testing.assert_allclose(out["q_scores"], ref_qscore(features, discriminative, 2.0), rtol=1e-5, atol=1e-6)


def test_activation_stats_and_reference_features_together_is_an_error(metric, probe_split):
    train, test, _ = probe_split
    stats = ActivationStats(64, 1.0).update(torch.as_tensor(train, dtype=torch.float32))
    with pytest.raises(ValueError, match="not both"):
        metric.compute(predictions=test[:10].tolist(), eps=1.0, activation_stats=stats, reference_features=train)


def test_mixing_batches_with_and_without_references_is_an_error(probe_split):
    _, test, correct = probe_split
    mixed = evaluate.load(str(METRIC_PATH))
    mixed.add_batch(predictions=test[:20].tolist(), references=correct[:20].tolist())
    mixed.add_batch(predictions=test[20:40].tolist())
    with pytest.raises(ValueError, match="references"):
        mixed.compute(eps=1.0)


def test_references_must_have_both_classes(metric):
    with pytest.raises(ValueError):
        metric.compute(predictions=EXAMPLE, references=[1, 1], eps=1.0)


# ---------------------------------------------------------------------------------------------------------
# Metric card
# ---------------------------------------------------------------------------------------------------------


def test_metric_card():
    text = (METRIC_PATH / "README.md").read_text(encoding="utf-8")
    match = re.match(r"^---\n(.*?)\n---\n", text, flags=re.S)
    assert match, "the card must start with YAML front matter between --- lines"
    front = yaml.safe_load(match.group(1))
    assert isinstance(front, dict)
    assert front["title"] == "Q-Score"
    assert {"evaluate", "metric"} <= set(front["tags"])
    assert isinstance(front["description"], str) and front["description"].strip()
    headings = [h.strip() for h in re.findall(r"^#{1,4} (.+)$", text[match.end() :], flags=re.M)]
    for section in (
        "Metric Description",
        "How to Use",
        "Inputs",
        "Output Values",
        "Examples",
        "Limitations and Bias",
        "Citation",
    ):
        assert section in headings, section
    assert "2203.01881" in text
