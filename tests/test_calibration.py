"""``eps="auto"`` (SPEC §2, ``qscore_hf.calibration``) on matrices whose largest z-scores are known by hand.

Definition: ``z_i = max_j (h_ij - mu_i) / sigma_i`` (population std; a constant row has z 0), ``m = ceil(coverage * N)``
and eps = the largest multiple of 0.01 strictly below the m-th largest ``z_i``. Hand facts used below:

- a row with ``k`` equal spikes and ``d - k`` zeros has ``z = sqrt((d - k) / k)``: a one-hot row of length 16 has
  ``sqrt(15) = 3.87298...`` (eps 3.87), two spikes in 16 have ``sqrt(7) = 2.64575...`` (eps 2.64), four have
  ``sqrt(3) = 1.73205...`` (eps 1.73); the spike's height does not matter;
- ``[n, -1/n, ..., -1/n]`` with ``n^2`` entries ``-1/n`` (``d = n^2 + 1``) has mean 0, variance 1 and so ``z = n``
  exactly (every step is exact in binary floating point for n = 2, 4): eps must then be ``n - 0.01``.

The library paths (``QScoreModel.compute_activation_stats`` and ``QScoreRegularizer``) are checked against
``calibrate_eps`` on features computed here, after ``calibrate_eps`` itself is checked against the hand values.
"""

# Defaults switched off in this file, and why: progress bars off (--no-progress / progress=False): they only fill the
# test log.
# Every entry point still runs with all defaults on somewhere: tests/documented_commands.py ENTRY_POINTS.

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qscore_hf import QScoreConfig, QScoreModel, QScoreRegularizer
from qscore_hf.calibration import EpsCalibrator, calibrate_eps, is_auto, parse_eps

pytestmark = pytest.mark.usefixtures("one_thread")


def spikes(num_rows: int, d: int, k: int, height: float = 1.0) -> np.ndarray:
    """``num_rows`` rows of length ``d`` with ``k`` spikes of ``height`` (placed at different columns), zeros else."""
    rows = np.zeros((num_rows, d))
    for i in range(num_rows):
        rows[i, [(i + j) % d for j in range(k)]] = height
    return rows


def exact_z(n: int, num_rows: int = 1) -> np.ndarray:
    """Rows ``[n, -1/n x n^2]``: z exactly ``n``."""
    return np.tile(np.array([float(n)] + [-1.0 / n] * (n * n)), (num_rows, 1))


def reference_eps(z: np.ndarray, coverage: float) -> float:
    """The definition, literally: the largest k / 100 strictly below the m-th largest z."""
    m = math.ceil(round(coverage * len(z), 9))
    z_m = np.sort(z)[::-1][m - 1]
    k = math.floor(z_m * 100) + 1
    while k / 100 >= z_m:
        k -= 1
    return k / 100


def reference_z(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    sigma = rows.std(axis=1)
    return np.where(sigma > 0, (rows.max(axis=1) - rows.mean(axis=1)) / np.where(sigma > 0, sigma, 1), 0.0)


def test_one_hot_rows():
    # Every row one-hot in d = 16: z = sqrt(15) = 3.87298..., eps = 3.87 for any coverage.
    rows = spikes(12, 16, 1, height=5.0)
    for coverage in (0.1, 0.5, 0.9, 1.0):
        assert calibrate_eps(rows, coverage) == 3.87
    assert calibrate_eps(torch.from_numpy(rows).float()) == 3.87


def test_mixed_rows_pick_the_mth_largest():
    # 6 one-hot rows (z 3.873) and 4 two-spike rows (z 2.646), N = 10.
    rows = np.concatenate([spikes(6, 16, 1, 2.0), spikes(4, 16, 2, 7.0)])
    assert calibrate_eps(rows, 0.5) == 3.87  # m = 5: a one-hot row
    assert calibrate_eps(rows, 0.6) == 3.87  # m = 6: the last one-hot row
    assert calibrate_eps(rows, 0.61) == 2.64  # m = ceil(6.1) = 7: a two-spike row
    assert calibrate_eps(rows, 0.9) == 2.64  # m = 9
    assert calibrate_eps(rows, 1.0) == 2.64  # m = 10
    # Three patterns: 5 one-hot, 3 two-spike, 2 four-spike (z sqrt(3) = 1.732...).
    three = np.concatenate([spikes(5, 16, 1), spikes(3, 16, 2), spikes(2, 16, 4)])
    assert calibrate_eps(three, 0.5) == 3.87
    assert calibrate_eps(three, 0.8) == 2.64
    assert calibrate_eps(three, 1.0) == 1.73
    # The order of the rows does not matter.
    assert calibrate_eps(three[::-1].copy(), 0.8) == 2.64


def test_coverage_point_nine_of_ten_rows_needs_nine():
    # 9 one-hot rows and 1 two-spike row: m = ceil(0.9 * 10) = 9 (0.9 * 10 is 9.000000000000002 in floating point),
    # so the 9th largest z is a one-hot row's; m = 10 would give 2.64.
    rows = np.concatenate([spikes(9, 16, 1), spikes(1, 16, 2)])
    assert calibrate_eps(rows, 0.9) == 3.87
    # Likewise with a constant row in place of the two-spike one (m = 10 would be an error).
    rows = np.concatenate([spikes(9, 16, 1), np.full((1, 16), 3.0)])
    assert calibrate_eps(rows, 0.9) == 3.87


@pytest.mark.parametrize("n", [2, 4])
def test_z_exactly_on_a_multiple_of_a_hundredth(n):
    rows = exact_z(n, 5)
    assert np.all(reference_z(rows) == n)  # the construction is exact
    # eps must lie strictly below z = n (L_i uses a strict '>'), so eps = n - 0.01, not n.
    assert calibrate_eps(rows, 1.0) == pytest.approx(n - 0.01, abs=1e-12)
    assert calibrate_eps(rows, 1.0) < n
    # d = 2, row [0, 1]: mu 0.5, sigma 0.5, z = 1 exactly -> 0.99.
    assert calibrate_eps(np.array([[0.0, 1.0], [3.0, 1.0]]), 1.0) == pytest.approx(0.99, abs=1e-12)


def test_constant_rows_cannot_be_calibrated():
    with pytest.raises(ValueError):
        calibrate_eps(np.zeros((5, 8)))
    with pytest.raises(ValueError):
        calibrate_eps(np.full((5, 8), 2.0))
    # Half constant: coverage 0.5 works (5 of 10 rows are one-hot), coverage 0.6 needs a constant row's z.
    rows = np.concatenate([spikes(5, 16, 1), np.ones((5, 16))])
    assert calibrate_eps(rows, 0.5) == 3.87
    with pytest.raises(ValueError):
        calibrate_eps(rows, 0.6)


@pytest.mark.parametrize("coverage", [0.0, -0.1, 1.0001, 1.5])
def test_coverage_outside_the_unit_interval(coverage):
    with pytest.raises(ValueError):
        calibrate_eps(spikes(4, 16, 1), coverage)


@pytest.mark.parametrize("coverage", [0.5, 0.9, 1.0])
def test_random_relu_features_against_the_definition(coverage):
    rng = np.random.default_rng(0)
    rows = np.maximum(rng.normal(size=(300, 64)), 0) * rng.gamma(2.0, size=(300, 1))
    assert calibrate_eps(rows, coverage) == pytest.approx(reference_eps(reference_z(rows), coverage), abs=1e-12)


def test_streaming_and_merging_equal_one_call():
    rng = np.random.default_rng(1)
    rows = np.maximum(rng.normal(size=(250, 32)), 0) ** rng.uniform(0.5, 3.0, size=(250, 1))
    expected = calibrate_eps(rows)
    assert expected == reference_eps(reference_z(rows), 0.9)
    streamed = EpsCalibrator(32)
    for start in range(0, 250, 37):  # batches of 37, the last one shorter
        streamed.update(rows[start : start + 37])
    assert streamed.num_samples == 250
    assert streamed.resolve() == expected
    for coverage in (0.3, 0.75, 1.0):
        assert streamed.resolve(coverage) == calibrate_eps(rows, coverage)
    # Two "processes", each with half the rows: summing their histograms (what all_reduce does) equals one pass.
    first, second = EpsCalibrator(32).update(rows[:100]), EpsCalibrator(32).update(torch.from_numpy(rows[100:]))
    merged = EpsCalibrator(32, bins=first.bins + second.bins)
    assert torch.equal(merged.bins, streamed.bins)
    assert merged.resolve() == expected
    # reset forgets everything.
    with pytest.raises(ValueError):
        streamed.reset().resolve()


def test_calibrator_rejects_features_of_another_width():
    calibrator = EpsCalibrator(16)
    with pytest.raises(ValueError):
        calibrator.update(spikes(10, 64, 1))


def test_parse_eps():
    assert parse_eps("auto") == "auto" and parse_eps("AUTO") == "auto" and parse_eps(" Auto ") == "auto"
    assert parse_eps("2.5") == 2.5 and parse_eps(4) == 4.0
    assert parse_eps("0") == 0.0  # eps >= 0, the rule qscore(eps=0) follows (score.validate_eps)
    for bad in ("abc", "-1", "-0.5", "nan", "inf", "-inf", "", None):
        with pytest.raises(ValueError):
            parse_eps(bad)
    assert is_auto("Auto") and not is_auto(4.0) and not is_auto("4")


# --------------------------------------------------------------------------- through the library


@pytest.fixture(scope="module")
def auto_model():
    torch.manual_seed(0)
    return QScoreModel(QScoreConfig(backbone="resnet10t", image_size=32, qscore_eps="auto"))


@pytest.fixture(scope="module")
def pixel_batches():
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(6, 3, 32, 32, generator=generator) for _ in range(3)]


def test_model_forward_refuses_an_unresolved_auto(pixel_batches):
    model = QScoreModel(QScoreConfig(backbone="resnet10t", image_size=32, qscore_eps="auto")).eval()
    with pytest.raises(ValueError):
        model(pixel_values=pixel_batches[0])
    # Features alone need no eps.
    assert model(pixel_values=pixel_batches[0], return_qscore=False).q_scores is None


@pytest.mark.filterwarnings("ignore:no discriminative features")
def test_model_compute_activation_stats_calibrates(auto_model, pixel_batches):
    with pytest.raises(ValueError):
        auto_model.compute_activation_stats((batch for batch in pixel_batches), progress=False)
    assert is_auto(auto_model.config.qscore_eps)
    auto_model.eval()
    with torch.no_grad():
        features = torch.cat([auto_model.backbone(batch) for batch in pixel_batches])
    expected = calibrate_eps(features)
    assert expected == reference_eps(reference_z(features.double().numpy()), 0.9)
    auto_model.train()
    auto_model.compute_activation_stats(pixel_batches, progress=False)
    assert auto_model.config.qscore_eps == expected
    assert auto_model.config.qscore_eps_calibration == {"coverage": 0.9, "num_samples": 18}
    assert auto_model.training, "the model's mode is restored"
    # The statistics were counted with the resolved eps: feature j counts the rows with h_ij > mu_i + eps sigma_i.
    x = features.double().numpy()
    above = x > x.mean(axis=1, keepdims=True) + expected * x.std(axis=1, keepdims=True)
    np.testing.assert_array_equal(auto_model.activation_stats.counts.numpy(), above.sum(axis=0))
    assert int(auto_model.activation_stats.num_samples) == 18
    # And now the forward works.
    auto_model.eval()
    assert auto_model(pixel_values=pixel_batches[0]).q_scores.shape == (6,)


def test_regularizer_auto_eps_follows_the_batches():
    d = 16
    as_tensor = lambda *parts: torch.from_numpy(np.concatenate(parts)).float()  # noqa: E731
    first = as_tensor(spikes(8, d, 1, 3.0))  # z sqrt(15): eps 3.87
    second = as_tensor(spikes(1, d, 2, 3.0), spikes(1, d, 4, 3.0))  # z sqrt(7), sqrt(3); alone: m = 2 -> 1.73
    third = as_tensor(spikes(20, d, 1, 3.0), spikes(2, d, 2, 3.0))  # alone: m = ceil(19.8) = 20 -> one-hot: 3.87
    regularizer = QScoreRegularizer(d, eps="auto")
    assert regularizer.training
    regularizer(first)
    assert regularizer.eps == calibrate_eps(first) == 3.87
    regularizer(second)
    assert regularizer.eps == 3.87, "eps only changes at refresh()"
    regularizer.refresh()
    # The batches seen before this first refresh: first and second, 10 rows; m = 9 -> the two-spike row: 2.64
    # (second alone would give 1.73).
    assert regularizer.eps == calibrate_eps(torch.cat([first, second])) == 2.64
    regularizer(third)
    regularizer.refresh()
    # Only third since the last refresh: 3.87 (all 32 rows so far would give m = 29 -> a two-spike row, 2.64).
    assert regularizer.eps == calibrate_eps(third) == 3.87


def test_regularizer_auto_eps_needs_a_training_call():
    regularizer = QScoreRegularizer(16, eps="auto").eval()
    with pytest.raises(ValueError):
        regularizer(torch.from_numpy(spikes(4, 16, 1)).float())


def test_metric_auto_eps_keeps_saved_statistics_eps():
    # Saved statistics were counted at their own eps: eps="auto" must use it, for an object and for its state_dict.
    import evaluate

    import qscore_hf  # noqa: F401  (registers the metric name)
    from qscore_hf import ActivationStats

    rows = np.random.default_rng(3).lognormal(size=(40, 12)).astype(np.float32)
    stats = ActivationStats(12, 2.5).update(rows)
    metric = evaluate.load("qscore")
    for saved in (stats, stats.state_dict()):
        assert metric.compute(predictions=rows, eps="auto", activation_stats=saved)["eps"] == 2.5
