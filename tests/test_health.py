"""Representation health (``qscore_hf.health``): dead features, effective rank (RankMe) and mean activation.

Expectations are hand-computed on tiny matrices (written out in comments), and for the streaming monitor
(``RunningFeatureHealth``) the one-shot ``feature_health`` of the concatenated batches, itself checked by hand first.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qscore_hf.health import RunningFeatureHealth, effective_rank, feature_health

pytestmark = pytest.mark.usefixtures("one_thread")


def test_dead_fraction_and_mean_activation():
    # Columns 0 and 2 never exceed 0 (column 2 is negative): dead fraction 2/4. Sum 1+2+3+1 - 1 - 2 = 4 over 12 values.
    features = np.array([[0.0, 1.0, -1.0, 2.0], [0.0, 3.0, -2.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    health = feature_health(features)
    assert health.dead_fraction == 0.5
    assert health.mean_activation == pytest.approx(4.0 / 12.0)
    assert health.num_samples == 3
    assert health.to_dict()["dead_fraction"] == 0.5
    # A column with a single tiny positive value is alive.
    features[1, 0] = 1e-30
    assert feature_health(torch.from_numpy(features)).dead_fraction == 0.25


def test_effective_rank_of_a_rank_one_matrix():
    # Every row a multiple of [1, 2, 3]: centred, still one direction -> one singular value -> exp(0) = 1.
    line = np.outer(np.arange(5.0), [1.0, 2.0, 3.0])
    assert feature_health(line).effective_rank == pytest.approx(1.0, abs=1e-6)


def test_effective_rank_of_two_equal_directions():
    # Mean [1, 1]; centred rows +e1, -e1, +e2, -e2: singular values sqrt(2), sqrt(2) -> p = (1/2, 1/2),
    # entropy log 2, effective rank 2.
    balanced = np.array([[2.0, 1.0], [0.0, 1.0], [1.0, 2.0], [1.0, 0.0]])
    assert feature_health(balanced).effective_rank == pytest.approx(2.0, rel=1e-9)


def test_effective_rank_of_unequal_directions():
    # Centred rows +-1 e1 and +-3 e2: singular values sqrt(2) and 3 sqrt(2) -> p = (1/4, 3/4),
    # rank exp(-(1/4 log 1/4 + 3/4 log 3/4)) = 1.7548...
    rows = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 3.0], [0.0, -3.0]]) + 5.0
    expected = math.exp(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    assert feature_health(rows).effective_rank == pytest.approx(expected, rel=1e-9)
    assert effective_rank([1.0, 3.0]) == pytest.approx(expected, rel=1e-12)
    assert effective_rank(np.zeros(3)) == 1.0  # documented for an all-zero spectrum
    assert effective_rank([2.0, 2.0, 2.0, 0.0]) == pytest.approx(3.0, rel=1e-12)


def test_constant_features_have_rank_one():
    health = feature_health(np.ones((4, 3)))
    assert health.effective_rank == 1.0 and health.dead_fraction == 0.0 and health.mean_activation == 1.0


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError):
        feature_health(np.zeros((0, 3)))
    with pytest.raises(ValueError):
        feature_health(np.zeros(3))
    with pytest.raises(ValueError):
        RunningFeatureHealth(3).compute()


@pytest.mark.parametrize("batch_sizes", [(120,), (50, 50, 20), (1, 7, 33, 79)])
def test_running_health_equals_one_shot(batch_sizes):
    rng = np.random.default_rng(0)
    # ReLU features with 4 dead columns (always 0) and 2 negative columns, varied scales, N = 120, d = 24.
    features = np.maximum(rng.normal(size=(120, 24)) @ rng.normal(size=(24, 24)), 0) * rng.uniform(0.1, 5, size=24)
    features[:, :4] = 0.0
    features[:, 4:6] = -np.abs(features[:, 4:6]) - 0.1
    one_shot = feature_health(features)
    assert one_shot.dead_fraction == 6 / 24  # by construction
    running = RunningFeatureHealth(24)
    start = 0
    for size in batch_sizes:
        running.update(torch.from_numpy(features[start : start + size]).float())
        start += size
    running.all_reduce()  # a no-op in one process
    health = running.compute()
    assert health.num_samples == 120
    assert health.dead_fraction == 6 / 24
    assert health.effective_rank == pytest.approx(one_shot.effective_rank, rel=1e-6)
    # float32 batches: the mean activation agrees to float32 precision.
    assert health.mean_activation == pytest.approx(one_shot.mean_activation, rel=1e-6)
    running.reset()
    with pytest.raises(ValueError):
        running.compute()


def test_running_health_of_a_collapsed_representation():
    # Rank-1 variation around a large common mean (a collapsed encoder): centred, one direction -> rank 1.
    rng = np.random.default_rng(0)
    features = 100.0 + np.outer(rng.random(256), rng.random(128))
    assert feature_health(features).effective_rank == pytest.approx(1.0, abs=1e-6)
    running = RunningFeatureHealth(128)
    for batch in np.array_split(features, 4):
        running.update(torch.from_numpy(batch))  # float64 batches: no float32 rounding involved
    assert running.compute().effective_rank == pytest.approx(1.0, abs=1e-4)
