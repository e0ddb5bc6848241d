"""The numbers bench/reproduce.py puts in the README: representation health and the statistics over seeds,
checked against hand-computed values."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def reproduce():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("reproduce")
    finally:
        sys.path.remove(str(BENCH))


def test_dead_features_are_columns_that_never_fire(reproduce):
    features = np.array([[0.0, 1.0, 0.0, 2.0], [0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    health = reproduce.feature_health(features)
    assert health["dead_fraction"] == 0.5  # columns 0 and 2
    assert health["mean_activation"] == pytest.approx(7.0 / 12.0)


def test_effective_rank_of_known_spectra(reproduce):
    # Centred rows +-e1, +-e2: two equal singular values, entropy log 2, effective rank 2.
    balanced = np.array([[2.0, 1.0], [0.0, 1.0], [1.0, 2.0], [1.0, 0.0]])
    assert reproduce.feature_health(balanced)["effective_rank"] == pytest.approx(2.0, rel=1e-6)
    # Every row on one line: one singular value, effective rank 1.
    line = np.outer(np.arange(5.0), [1.0, 2.0, 3.0])
    assert reproduce.feature_health(line)["effective_rank"] == pytest.approx(1.0, rel=1e-6)


def test_over_seeds_statistics(reproduce):
    def runs(top1: dict[str, float]) -> dict[str, dict[str, float]]:
        return {key: {"top1": value / 100} for key, value in top1.items()}

    by_seed = {
        0: runs({"a-baseline": 50, "a-qreg": 55, "b-baseline": 40, "b-qreg": 44}),
        1: runs({"a-baseline": 60, "a-qreg": 54, "b-baseline": 40, "b-qreg": 42}),
    }
    table = reproduce.over_seeds(by_seed, ["a", "b"], ["baseline", "qreg"])
    a, b = table["methods"]["a"], table["methods"]["b"]
    assert a["baseline"]["mean"] == pytest.approx(55.0) and a["baseline"]["std"] == pytest.approx(np.sqrt(50.0))
    # a: +10 % then -10 % against the same seed's baseline; b: +10 % then +5 %.
    assert a["qreg"]["relative"] == pytest.approx([10.0, -10.0])
    assert a["qreg"]["relative_mean"] == pytest.approx(0.0, abs=1e-12)
    assert a["qreg"]["relative_std"] == pytest.approx(np.sqrt(200.0))
    assert b["qreg"]["relative_mean"] == pytest.approx(7.5) and b["qreg"]["relative_std"] == pytest.approx(np.sqrt(12.5))
    # Mean over methods per seed: (10 + 10) / 2 = 10 and (-10 + 5) / 2 = -2.5.
    mean = table["mean_relative_change"]["qreg"]
    assert mean["per_seed"] == pytest.approx([10.0, -2.5])
    assert mean["mean"] == pytest.approx(3.75) and mean["std"] == pytest.approx(np.sqrt(78.125))
