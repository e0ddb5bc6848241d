"""Hardening (issue 21, items 7, 8 and 11): the evaluate metric, eps calibration and the degeneracy text on bad
input. Each case gives one line naming the argument and the fix; the values checked are hand-computed."""

from __future__ import annotations

import evaluate
import numpy as np
import pytest
import torch

from qscore_hf import ActivationStats
from qscore_hf.calibration import EpsCalibrator, calibrate_eps
from qscore_hf.degeneracy import degeneracy_report
from qscore_hf.evaluate_metric import METRIC_PATH

EXAMPLE = [[0.0, 0.0, 0.0, 4.0], [1.0, 1.0, 1.0, 1.0]]  # Q = [3, 0] at eps 1 (tests/test_evaluate_metric.py)


@pytest.fixture(scope="module")
def metric():
    return evaluate.load(str(METRIC_PATH))


def _one_line(error: pytest.ExceptionInfo, *words: str) -> None:
    message = str(error.value)
    assert "\n" not in message and all(word in message for word in words), message


# ------------------------------------------------------------------------------------------- 7: references 0/1
@pytest.mark.parametrize("bad", [1.5, 0.7, 0.5, 2, -1, "1"])
def test_references_other_than_0_and_1_are_refused(metric, bad):
    with pytest.raises(ValueError) as error:
        metric.compute(predictions=EXAMPLE, references=[1, bad], eps=1.0)
    _one_line(error, "references must be 1", "or 0", repr(bad), "position 1")
    with pytest.raises(ValueError, match="references must be 1"):
        metric.add(prediction=EXAMPLE[0], reference=bad)


def test_references_as_floats_and_bools_of_0_and_1_are_accepted(metric):
    for references in ([1.0, 0.0], [True, False], np.array([1, 0])):
        out = metric.compute(predictions=EXAMPLE, references=list(references), eps=1.0)
        assert out["q_scores"] == [3.0, 0.0] and out["accuracy"] == 0.5


# ----------------------------------------------------------------------------------------- 8: one eps rule
def _stats() -> ActivationStats:
    rng = np.random.default_rng(0)
    return ActivationStats(4, eps=2.0).update(torch.from_numpy(rng.exponential(size=(50, 4)).astype(np.float32)))


@pytest.mark.parametrize("form", ["object", "state_dict"])
def test_explicit_eps_that_disagrees_with_saved_statistics_is_an_error(metric, form):
    stats = _stats()
    given = stats if form == "object" else stats.state_dict()
    with pytest.raises(ValueError) as error:
        metric.compute(predictions=EXAMPLE, eps=1.0, activation_stats=given)
    _one_line(error, "eps=1 but the activation_stats were counted with eps=2", "leave eps unset")
    for eps in ({}, {"eps": 2.0}, {"eps": "auto"}):  # unset, the same, or "auto": the statistics' own eps
        assert metric.compute(predictions=EXAMPLE, activation_stats=given, **eps)["eps"] == 2.0


def test_default_eps_without_statistics_is_still_4(metric):
    # mu = 2.5, sigma = 3.57: 10 > mu + 2 sigma but not > mu + 4 sigma (SPEC §2)
    assert metric.compute(predictions=[[0.0, 0.0, 0.0, 10.0]])["q_scores"] == [0.0]


# ------------------------------------------------------------------------------------ 11: messages that name it
@pytest.mark.parametrize("eps", [1.0, "auto"])
@pytest.mark.parametrize("reference", [[1.0, 2.0, 3.0, 4.0], [[1.0, 2.0, 3.0]], []])
def test_reference_features_of_the_wrong_shape_are_named(metric, eps, reference):
    with pytest.raises(ValueError) as error:
        metric.compute(predictions=EXAMPLE, eps=eps, reference_features=reference)
    _one_line(error, "reference_features must be a (num_samples, 4) matrix")


def test_state_dict_without_counts_is_named(metric):
    state = _stats().state_dict()
    del state["counts"]
    with pytest.raises(ValueError) as error:
        metric.compute(predictions=EXAMPLE, activation_stats=state)
    _one_line(error, "activation_stats (a state_dict) lacks counts")


def test_missing_local_statistics_folder_is_named(metric, tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        metric.compute(predictions=EXAMPLE, activation_stats=str(tmp_path / "no-such-model"))
    _one_line(error, "no-such-model: no such model folder")


def test_calibration_takes_lists_and_names_bad_shapes_and_rows():
    rows = [[0.0, 0.0, 0.0, 4.0], [0.0, 0.0, 5.0, 1.0], [2.0, 0.0, 0.0, 0.0]]
    # max z-scores: sqrt(3) = 1.732 (a one-hot row of 4), 1.6977 and 1.732: 90 % coverage needs all three, so the
    # largest multiple of 0.01 strictly below 1.6977
    assert calibrate_eps(rows) == 1.69
    with pytest.raises(ValueError) as error:
        calibrate_eps([1.0, 2.0, 3.0])
    _one_line(error, "(num_samples, num_features) matrix", "got shape (3,)")
    bad = np.ones((6, 4), np.float32)
    bad[4, 1] = np.nan
    bad[5, 0] = np.inf
    with pytest.raises(ValueError) as error:
        EpsCalibrator(4).update(bad)
    _one_line(error, "NaN or Inf in row(s) [4, 5]")


def test_degeneracy_text_says_100_percent_only_when_all():
    stats = ActivationStats(512, eps=4.0)
    counts = torch.zeros(512, dtype=torch.int64)
    counts[7] = 3
    stats.add_counts(counts, 10)
    report = degeneracy_report(np.zeros(10), 0, stats, 4.0)
    assert "99.8 % of features were never highly active" in report["warning"]
    assert "100 % of the samples have an empty S_i" in report["warning"]
