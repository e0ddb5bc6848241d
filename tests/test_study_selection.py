"""How studies/selection.py chooses defaults on a validation split (issue 10), checked on hand-made inputs.

- ``choose_scoring``: mean / std of per-encoder AUROCs computed by hand, ties going to the earlier setting;
- ``choose_regularizer``: relative changes and dead-fraction gaps computed by hand;
- ``qscores``: against ``calibrate_eps`` on the reference (its hand-checked definition lives in test_calibration.py),
  and a literal NumPy reading of SPEC §2-4 for ``D`` and the scores.
"""

from __future__ import annotations


import numpy as np
import pytest

from qscore_hf.calibration import calibrate_eps

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def selection(import_study):
    return import_study("selection")


def rows(aurocs, empties=None):
    empties = empties or [0.0] * len(aurocs)
    return [{"auroc": a, "empty_fraction": e} for a, e in zip(aurocs, empties)]


def test_choose_scoring_takes_the_best_mean_over_encoders(selection):
    grid = [selection.ScoringSetting(1.0, "none", 50.0, 95.0), selection.ScoringSetting(2.0, "zscore", 0.0, 100.0),
            selection.ScoringSetting("auto", "l1", 25.0, 95.0)]  # fmt: skip
    # Setting 0: (0.6 + 0.8) / 2 = 0.70; setting 1: (0.9 + 0.6) / 2 = 0.75; setting 2: (0.7 + 0.7) / 2 = 0.70.
    # Encoder A alone would pick setting 1 and encoder B setting 0: only the mean decides.
    per_encoder = [rows([0.6, 0.9, 0.7], [0.5, 0.1, 0.0]), rows([0.8, 0.6, 0.7], [0.3, 0.3, 0.2])]
    chosen, table = selection.choose_scoring(per_encoder, grid)
    assert chosen == grid[1]
    assert [row["setting"] for row in table] == [grid[1].name, grid[0].name, grid[2].name]  # 0.75, then the 0.70 tie
    first = table[0]
    assert first["mean_auroc"] == pytest.approx(0.75)
    assert first["std_auroc"] == pytest.approx(0.15)  # population std of {0.9, 0.6}
    assert first["mean_empty_fraction"] == pytest.approx(0.2)  # (0.1 + 0.3) / 2
    assert table[1]["std_auroc"] == pytest.approx(0.1) and table[2]["std_auroc"] == pytest.approx(0.0)
    assert grid[2].name == "eps=auto, normalize=l1, band=25-95" and grid[0].name == "eps=1, normalize=none, band=50-95"


def test_choose_scoring_ties_go_to_the_earlier_setting(selection):
    grid = [selection.ScoringSetting(4.0, "none", 50.0, 95.0), selection.ScoringSetting(1.0, "none", 50.0, 95.0),
            selection.ScoringSetting(2.0, "none", 50.0, 95.0)]  # fmt: skip
    # Settings 1 and 2 tie at 0.75 (0.5 and 1.0; 1.0 and 0.5 -- exact in binary), above setting 0 (0.5).
    chosen, table = selection.choose_scoring([rows([0.5, 0.5, 1.0]), rows([0.5, 1.0, 0.5])], grid)
    assert chosen == grid[1]
    assert table[-1]["setting"] == grid[0].name
    # Reversing the grid order makes the other tied setting the earlier one.
    chosen, _ = selection.choose_scoring([rows([1.0, 0.5, 0.5]), rows([0.5, 1.0, 0.5])], grid[::-1])
    assert chosen == grid[2]


def test_relative_change(selection):
    assert selection.relative_change(0.55, 0.5) == pytest.approx(10.0)  # 100 * 0.05 / 0.5
    assert selection.relative_change(90.0, 100.0) == pytest.approx(-10.0)
    assert selection.relative_change(0.3, 0.3) == 0.0


def run(top1, dead, rank=10.0):
    return {"validation": {"top1": top1}, "validation_health": {"dead_fraction": dead, "effective_rank": rank}}


def test_choose_regularizer_best_eligible_mean_change(selection):
    assert selection.DEAD_MARGIN == 0.05
    candidates = {
        # +10 % and -4 %: mean +3 %; dead gaps 0.02, 0.0.
        "steady": [(run(0.55, 0.12), run(0.5, 0.10)), (run(0.48, 0.2), run(0.5, 0.2))],
        # +20 % and +20 %, but one pair kills 0.3 - 0.2 = 0.1 > 0.05 more features: not eligible.
        "collapsing": [(run(0.6, 0.1), run(0.5, 0.1)), (run(0.6, 0.3), run(0.5, 0.2))],
        # +1 % and +1 %: mean +1 %; it even has fewer dead features than its baseline.
        "timid": [(run(0.505, 0.0), run(0.5, 0.1)), (run(0.606, 0.0), run(0.6, 0.1))],
    }
    chosen, table = selection.choose_regularizer(candidates)
    assert chosen == "steady"
    assert [row["regularizer"] for row in table] == ["steady", "timid", "collapsing"]
    steady, timid, collapsing = table
    assert steady["mean_relative_change"] == pytest.approx(3.0)
    assert steady["relative_changes"] == pytest.approx([10.0, -4.0])
    assert steady["max_dead_gap"] == pytest.approx(0.02) and steady["eligible"]
    assert timid["mean_relative_change"] == pytest.approx(1.0) and timid["max_dead_gap"] == pytest.approx(-0.1)
    assert collapsing["mean_relative_change"] == pytest.approx(20.0)
    assert collapsing["max_dead_gap"] == pytest.approx(0.1) and not collapsing["eligible"]
    assert steady["effective_rank"] == [10.0, 10.0] and steady["baseline_effective_rank"] == [10.0, 10.0]


def test_choose_regularizer_none_eligible(selection):
    candidates = {"a": [(run(0.9, 0.5), run(0.5, 0.1))], "b": [(run(0.8, 0.2), run(0.5, 0.1))]}  # gaps 0.4, 0.1
    chosen, table = selection.choose_regularizer(candidates)
    assert chosen is None
    assert [row["regularizer"] for row in table] == ["a", "b"]  # best change first: +80 %, +60 %
    assert selection.choose_regularizer({}) == (None, [])


def literal_qscores(reference: np.ndarray, features: np.ndarray, eps: float, p_lo: float, p_hi: float,
                    normalize: str) -> np.ndarray:  # fmt: skip
    """SPEC §2-4 read literally in float64 NumPy."""
    def above(x):
        return x > x.mean(axis=1, keepdims=True) + eps * x.std(axis=1, keepdims=True)

    frequency = above(reference).mean(axis=0)
    lo, hi = np.percentile(frequency, [p_lo, p_hi])
    discriminative = (frequency >= lo) & (frequency <= hi) & (frequency > 0)
    selected = above(features) & discriminative
    mu, sigma = features.mean(axis=1, keepdims=True), features.std(axis=1, keepdims=True)
    terms = (features - mu) / (sigma if normalize == "zscore" else 1.0)
    count = selected.sum(axis=1)
    q = np.where(count > 0, (terms * selected).sum(axis=1) / np.maximum(count, 1), 0.0)
    return q / np.abs(features).sum(axis=1) if normalize == "l1" else q


@pytest.fixture(scope="module")
def split():
    rng = np.random.default_rng(0)
    # Reference: sparse spiky ReLU features; evaluation: denser ones (a different z-score profile), float32 values.
    reference = (np.maximum(rng.normal(size=(400, 32)) - 0.5, 0) * rng.gamma(1.0, size=32)).astype(np.float32)
    features = (np.maximum(rng.normal(size=(60, 32)) + 0.3, 0) * rng.gamma(1.0, size=32)).astype(np.float32)
    return reference.astype(np.float64), features.astype(np.float64)


def test_qscores_with_auto_eps_calibrates_and_counts_on_the_reference(selection, split):
    reference, features = split
    setting = selection.ScoringSetting("auto", "zscore", 25.0, 95.0)
    scores, eps, empty = selection.qscores(setting, reference, features)
    assert eps == calibrate_eps(reference)
    assert eps != calibrate_eps(features), "the test needs the two sets to calibrate differently"
    expected = literal_qscores(reference, features, eps, 25.0, 95.0, "zscore")
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert empty == pytest.approx(np.mean(expected == 0))
    assert 0 < empty < 1, "the test needs both empty and non-empty selections"


@pytest.mark.parametrize("normalize", ["none", "l1"])
def test_qscores_with_a_fixed_eps(selection, split, normalize):
    reference, features = split
    scores, eps, empty = selection.qscores(selection.ScoringSetting(1.0, normalize, 50.0, 95.0), reference, features)
    assert eps == 1.0
    expected = literal_qscores(reference, features, 1.0, 50.0, 95.0, normalize)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert empty == pytest.approx(np.mean(expected == 0))


def test_scoring_grid_aurocs(selection, split):
    from sklearn.metrics import roc_auc_score

    reference, features = split
    correct = (np.arange(60) % 3 != 0).astype(int)
    grid = [selection.ScoringSetting(1.0, "none", 50.0, 95.0), selection.ScoringSetting("auto", "zscore", 0.0, 100.0)]
    result = selection.scoring_grid(reference, features, correct, grid)
    assert [row["setting"] for row in result] == [setting.name for setting in grid]
    for row, setting in zip(result, grid):
        eps = calibrate_eps(reference) if setting.eps == "auto" else setting.eps
        assert row["eps"] == eps
        q = literal_qscores(reference, features, eps, setting.p_lo, setting.p_hi, setting.normalize)
        assert row["auroc"] == pytest.approx(roc_auc_score(correct, q), abs=1e-9)
