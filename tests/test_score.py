"""Tests of the Q-Score math (SPEC §2-4): qscore, qscore_with_counts, highly_activating, ActivationStats.

Every expectation is independent of the implementation: hand-computed values (the arithmetic is in the
comments; all numbers are exact in binary), a literal per-row NumPy reference of SPEC §2-4 written below,
round trips, or NumPy's own percentile.
"""

from __future__ import annotations

import os
import re
import warnings

import numpy as np
import pytest
import torch

import qscore_hf.score as score_module
from qscore_hf.score import ActivationStats, NegativeFeaturesWarning, highly_activating, qscore

NORMALIZE = ("none", "zscore", "l1")
# Every test runs on both CPU paths (tests/conftest.py): the fused kernel and the eager PyTorch operations.
pytestmark = pytest.mark.usefixtures("score_path")


def qscore_with_counts(features, discriminative=None, eps=4.0, normalize="none", chunk_size=None):
    """Q-Scores plus the column sums of L from one pass (``qscore_details``)."""
    details = score_module.qscore_details(features, discriminative, eps, normalize, chunk_size, count_highly_activating=True)
    return details.q_scores, details.highly_activating_counts


# ---------------------------------------------------------------------------------------------------------
# Independent NumPy reference: a literal, row-by-row, float64 reading of SPEC §2-4.
# ---------------------------------------------------------------------------------------------------------


def ref_highly_activating_row(h: np.ndarray, eps: float) -> np.ndarray:
    """L_i = {j : h_ij > mu_i + eps * sigma_i}; empty when sigma_i = 0 (a constant row)."""
    h = np.asarray(h, dtype=np.float64)
    if h.max() == h.min():  # sigma_i = 0 exactly (SPEC §2); float std of such a row may be 1e-17
        return np.zeros(h.shape, dtype=bool)
    mu = h.mean()
    sigma = h.std()  # population std (ddof=0), divide by d
    return h > mu + eps * sigma


def ref_qscore_all(H, D_mask=None, eps: float = 4.0) -> dict[str, np.ndarray]:
    """Q_i = mean_{j in S_i} (h_ij - mu_i), S_i = L_i ∩ D; 0 when S_i is empty; for each normalize option
    of SPEC §4 ("zscore": each term divided by sigma_i; "l1": Q_i divided by ||h_i||_1)."""
    H = np.asarray(H, dtype=np.float64)
    n, d = H.shape
    if D_mask is None:
        D_mask = np.ones(d, dtype=bool)
    out = {name: np.zeros(n, dtype=np.float64) for name in NORMALIZE}
    for i in range(n):
        h = H[i]
        S = ref_highly_activating_row(h, eps) & D_mask
        if not S.any():
            continue
        mu = h.mean()
        out["none"][i] = np.mean(h[S] - mu)
        out["zscore"][i] = np.mean((h[S] - mu) / h.std())
        out["l1"][i] = np.mean(h[S] - mu) / np.sum(np.abs(h))
    return out


def ref_qscore(H, D_mask=None, eps: float = 4.0, normalize: str = "none") -> np.ndarray:
    return ref_qscore_all(H, D_mask, eps)[normalize]


def ref_counts(H, eps: float) -> np.ndarray:
    """#{i : j in L_i} for every feature j."""
    H = np.asarray(H, dtype=np.float64)
    return np.sum([ref_highly_activating_row(h, eps) for h in H], axis=0).astype(np.int64)


def ref_discriminative(A: np.ndarray, p_lo: float = 50.0, p_hi: float = 95.0) -> np.ndarray:
    """D: A_j within [P_lo, P_hi] of all d values of A (inclusive, NumPy's default linear), A_j > 0."""
    lo, hi = np.percentile(A, [p_lo, p_hi])
    return (A >= lo) & (A <= hi) & (A > 0)


def heavy_tailed(seed: int, n: int = 2000, d: int = 512, kind: str = "lognormal") -> np.ndarray:
    """Non-negative heavy-tailed features with ReLU-style exact zeros and a few constant rows."""
    rng = np.random.default_rng(seed)
    if kind == "lognormal":
        x = rng.lognormal(mean=0.0, sigma=1.5, size=(n, d))
    else:
        x = rng.pareto(2.0, size=(n, d))
    x[rng.random((n, d)) < 0.4] = 0.0  # ReLU-zeroed entries
    x[3] = 0.0  # an all-zero row
    x[11] = 2.5  # a constant row
    return x


def _t(rows, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype)


# ---------------------------------------------------------------------------------------------------------
# Hand-computed examples
# ---------------------------------------------------------------------------------------------------------

# ROW8 = [6, 4, 0, 0, 0, 2, 2, 2]: sum 16, mu = 2; h - mu = [4, 2, -2, -2, -2, 0, 0, 0];
# sum of squares = 16 + 4 + 3*4 = 32, var = 32 / 8 = 4, sigma = 2 (population); ||h||_1 = 16.
ROW8 = [6.0, 4.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0]


@pytest.mark.parametrize(
    "eps, expected_L, expected_q",
    [
        # eps = 0:   threshold mu = 2 -> the 2s are not > 2 -> L = {0, 1}, Q = (4 + 2) / 2 = 3
        (0.0, [0, 1], 3.0),
        # eps = 0.5: threshold 2 + 0.5*2 = 3 -> L = {0, 1} -> Q = (4 + 2) / 2 = 3
        (0.5, [0, 1], 3.0),
        # eps = 1:   threshold 2 + 2 = 4 -> h_1 = 4 is exactly at it, strict > excludes it -> L = {0}, Q = 4
        (1.0, [0], 4.0),
        # eps = 1.5: threshold 5 -> L = {0}, Q = 4
        (1.5, [0], 4.0),
        # eps = 2:   threshold 6 -> h_0 = 6 is exactly at it -> L = {} -> Q = 0
        (2.0, [], 0.0),
    ],
)
def test_hand_row8_each_eps(eps, expected_L, expected_q):
    x = _t([ROW8])
    mask = highly_activating(x, eps=eps)
    expected_mask = torch.zeros(1, 8, dtype=torch.bool)
    expected_mask[0, expected_L] = True
    assert mask.dtype == torch.bool
    assert torch.equal(mask, expected_mask)
    assert qscore(x, eps=eps).tolist() == [expected_q]


@pytest.mark.parametrize(
    "normalize, eps, expected",
    [
        ("none", 0.5, 3.0),
        ("zscore", 0.5, 1.5),  # mean of z-scores: (4/2 + 2/2) / 2 = 1.5 = Q / sigma
        ("l1", 0.5, 0.1875),  # Q / ||h||_1 = 3 / 16
        ("none", 1.0, 4.0),
        ("zscore", 1.0, 2.0),  # 4 / 2
        ("l1", 1.0, 0.25),  # 4 / 16
        ("zscore", 2.0, 0.0),  # empty L stays 0 under every normalization
        ("l1", 2.0, 0.0),
    ],
)
def test_hand_row8_normalize(normalize, eps, expected):
    for dtype in (torch.float32, torch.float64):
        q = qscore(_t([ROW8], dtype), eps=eps, normalize=normalize)
        assert q.dtype == dtype
        assert q.tolist() == [expected]


def test_eps_boundary_is_strict_two_features():
    # [0, 2]: mu = 1, sigma = sqrt(((0-1)^2 + (2-1)^2) / 2) = 1.
    x = _t([[0.0, 2.0]])
    # eps = 1: threshold 1 + 1 = 2; 2 > 2 is false -> L empty -> Q = 0.
    assert not highly_activating(x, eps=1.0).any()
    assert qscore(x, eps=1.0).tolist() == [0.0]
    # eps = 0.5: threshold 1.5; 2 > 1.5 -> L = {1} -> Q = 2 - 1 = 1.
    assert highly_activating(x, eps=0.5).tolist() == [[False, True]]
    assert qscore(x, eps=0.5).tolist() == [1.0]
    # zscore: 1 / sigma = 1; l1: 1 / (0 + 2) = 0.5
    assert qscore(x, eps=0.5, normalize="zscore").tolist() == [1.0]
    assert qscore(x, eps=0.5, normalize="l1").tolist() == [0.5]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eps", [4.0, 1.0, 0.5, 0.0])
@pytest.mark.parametrize(
    "row",
    [
        [3.0] * 4,  # constant
        [0.0] * 4,  # all zero
        [0.1] * 7,  # constant whose float mean is not exactly 0.1 (0.09999999999999999 in float64)
        [1e30] * 5,
    ],
)
def test_sigma_zero_rows_have_empty_L(row, eps, dtype):
    # sigma_i = 0 -> L_i is empty (SPEC §2), whatever eps, even eps = 0 where "h > mu" could be fooled by
    # a mean that is one ulp below the entries.
    x = _t([row, row], dtype)
    assert not highly_activating(x, eps=eps).any()
    for normalize in NORMALIZE:
        assert qscore(x, eps=eps, normalize=normalize).tolist() == [0.0, 0.0]
    q, counts = qscore_with_counts(x, eps=eps)
    assert counts.tolist() == [0] * len(row)


def test_hand_batch_mixed_rows():
    # row 0: ROW8 (mu 2, sigma 2); row 1: constant 3; row 2: all zero;
    # row 3: [0,2,0,2,0,2,0,2]: mu = 1, sigma = 1; eps = 0.5 -> threshold 1.5 -> L = {1,3,5,7}, Q = 1,
    #        zscore 1/1 = 1, l1 1/8 = 0.125.
    x = _t([ROW8, [3.0] * 8, [0.0] * 8, [0.0, 2.0] * 4])
    expected_mask = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0],
            [0, 1, 0, 1, 0, 1, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(highly_activating(x, eps=0.5), expected_mask)
    assert qscore(x, eps=0.5).tolist() == [3.0, 0.0, 0.0, 1.0]
    assert qscore(x, eps=0.5, normalize="zscore").tolist() == [1.5, 0.0, 0.0, 1.0]
    assert qscore(x, eps=0.5, normalize="l1").tolist() == [0.1875, 0.0, 0.0, 0.125]
    q, counts = qscore_with_counts(x, eps=0.5)
    assert q.tolist() == [3.0, 0.0, 0.0, 1.0]
    # column sums of L
    assert counts.dtype == torch.int64
    assert counts.tolist() == [1, 2, 0, 1, 0, 1, 0, 1]


def test_qscore_details_num_selected():
    # same batch as test_hand_batch_mixed_rows, eps = 0.5: |S| = [2, 0, 0, 4]; with D = {1, 3}: S_0 = {1},
    # S_3 = {1, 3} -> |S| = [1, 0, 0, 2], Q = [4 - 2, 0, 0, 1] = [2, 0, 0, 1].
    x = _t([ROW8, [3.0] * 8, [0.0] * 8, [0.0, 2.0] * 4])
    details = score_module.qscore_details(x, eps=0.5)
    assert details.num_selected.tolist() == [2, 0, 0, 4]
    assert details.q_scores.tolist() == [3.0, 0.0, 0.0, 1.0]
    details = score_module.qscore_details(x, [1, 3], eps=0.5, chunk_size=3)
    assert details.num_selected.tolist() == [1, 0, 0, 2]
    assert details.q_scores.tolist() == [2.0, 0.0, 0.0, 1.0]


def test_empty_S_when_D_excludes_the_only_highly_activating_feature():
    # eps = 1: L = {0} (see test_hand_row8_each_eps); D = {1..7} -> S = {} -> Q = 0 in every normalization.
    x = _t([ROW8])
    for normalize in NORMALIZE:
        assert qscore(x, discriminative=[1, 2, 3, 4, 5, 6, 7], eps=1.0, normalize=normalize).tolist() == [0.0]
    # eps = 0.5: L = {0, 1}; D = {1..7} -> S = {1} -> Q = 4 - 2 = 2 (zscore 1, l1 2/16 = 0.125).
    assert qscore(x, discriminative=[1, 2, 3, 4, 5, 6, 7], eps=0.5).tolist() == [2.0]
    assert qscore(x, discriminative=[1, 2, 3, 4, 5, 6, 7], eps=0.5, normalize="zscore").tolist() == [1.0]
    assert qscore(x, discriminative=[1, 2, 3, 4, 5, 6, 7], eps=0.5, normalize="l1").tolist() == [0.125]
    # D = {0} -> S = {0} -> Q = 6 - 2 = 4
    assert qscore(x, discriminative=[0], eps=0.5).tolist() == [4.0]
    # D = {} -> 0
    assert qscore(x, discriminative=[], eps=0.5).tolist() == [0.0]


def test_D_forms_are_consistent():
    x = _t([ROW8, [0.0, 2.0] * 4, [3.0] * 8])
    idx = [1, 3, 4, 5]
    mask = np.zeros(8, dtype=bool)
    mask[idx] = True
    # eps = 0.5: row 0 L = {0,1} -> S = {1} -> Q = 2; row 1 L = {1,3,5,7} -> S = {1,3,5} -> Q = 1; row 2 -> 0.
    expected = [2.0, 1.0, 0.0]
    forms = [
        idx,
        tuple(idx),
        np.array(idx),
        torch.tensor(idx),
        mask,
        torch.from_numpy(mask),
        mask.tolist(),
    ]
    for form in forms:
        assert qscore(x, discriminative=form, eps=0.5).tolist() == expected, form
    # None == all features, given as indices or as an all-true mask.
    all_expected = [3.0, 1.0, 0.0]
    assert qscore(x, discriminative=None, eps=0.5).tolist() == all_expected
    assert qscore(x, discriminative=list(range(8)), eps=0.5).tolist() == all_expected
    assert qscore(x, discriminative=torch.ones(8, dtype=torch.bool), eps=0.5).tolist() == all_expected


def test_D_invalid():
    x = _t([ROW8])
    with pytest.raises(ValueError):
        qscore(x, discriminative=[0, 8])  # out of range
    with pytest.raises(ValueError):
        qscore(x, discriminative=[-1])
    with pytest.raises(ValueError):
        qscore(x, discriminative=torch.ones(7, dtype=torch.bool))  # mask of the wrong length


@pytest.mark.parametrize("bad", ["L1", "z", "", None, "mean"])
def test_invalid_normalize(bad):
    with pytest.raises(ValueError, match="normalize"):
        qscore(_t([ROW8]), normalize=bad)
    with pytest.raises(ValueError, match="normalize"):
        qscore_with_counts(_t([ROW8]), normalize=bad)


# ---------------------------------------------------------------------------------------------------------
# ActivationStats
# ---------------------------------------------------------------------------------------------------------


def test_activation_stats_hand_frequency():
    # eps = 0.5. [0,0,2,2]: mu 1, sigma 1, threshold 1.5 -> L = {2,3}; [0,2,2,0] -> {1,2}; [2,2,0,0] -> {0,1};
    # [0,0,0,0] and [1,1,1,1]: sigma 0 -> {}. Counts [1, 2, 2, 1] over N = 5 -> A = [0.2, 0.4, 0.4, 0.2].
    x = _t([[0, 0, 2, 2], [0, 2, 2, 0], [2, 2, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    stats = ActivationStats(4, eps=0.5).update(x)
    assert stats.counts.tolist() == [1, 2, 2, 1]
    assert int(stats.num_samples) == 5
    freq = stats.frequency()
    assert freq.dtype == torch.float64
    np.testing.assert_allclose(freq.numpy(), [0.2, 0.4, 0.4, 0.2], rtol=0, atol=1e-15)
    # percentiles of A = [0.2, 0.2, 0.4, 0.4] (sorted): P50 at position 1.5 -> 0.3; P95 at 2.85 -> 0.4.
    # D = {A_j in [0.3, 0.4]} = {1, 2}.
    assert stats.discriminative().tolist() == [1, 2]
    assert stats.discriminative_mask().tolist() == [False, True, True, False]


# Designed counts over N = 20 samples, d = 21 features, listed in sorted order. With d = 21 the P50 falls on
# sorted position 0.50 * 20 = 10 and the P95 on 0.95 * 20 = 19 exactly, so (linear interpolation, weight 0)
# P50 = 7/20 and P95 = 15/20 are themselves values of A.
#   position: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20
SORTED_COUNTS = [0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 7, 8, 9, 10, 11, 12, 13, 15, 15, 16]
PERM = np.random.default_rng(7).permutation(21)  # feature j gets SORTED_COUNTS[PERM[j]]
COUNTS = np.array(SORTED_COUNTS)[PERM]


def _stats_from_counts_via_update(counts: np.ndarray, n: int) -> ActivationStats:
    """Binary rows: row i has a 1 at feature j iff i < counts[j]. A binary row with k ones out of d has
    mu = p = k/d, sigma = sqrt(p(1-p)), and 1 > mu + eps*sigma  <=>  p < 1/(1+eps^2); with eps = 0.25 that is
    p < 0.94, true for every row here (k <= 17 of 21). All-zero rows have sigma = 0. So feature j is highly
    activating in exactly counts[j] rows."""
    d = counts.shape[0]
    x = (np.arange(n)[:, None] < counts[None, :]).astype(np.float32)
    assert x.sum(axis=1).max() <= 17
    stats = ActivationStats(d, eps=0.25)
    stats.update(x)
    return stats


def test_activation_stats_percentile_edges_inclusive():
    stats = _stats_from_counts_via_update(COUNTS, 20)
    assert stats.counts.tolist() == COUNTS.tolist()
    assert int(stats.num_samples) == 20
    A = COUNTS / 20.0
    assert np.array_equal(stats.frequency().numpy(), A)
    # NumPy's percentile agrees with the hand-derived edges.
    assert np.percentile(A, 50) == 7 / 20
    assert np.percentile(A, 95) == 15 / 20
    # D = counts in [7, 15]: both features with count 7 (lower edge) and both with 15 (upper edge) are in;
    # 6 and 16 are out.
    expected = np.flatnonzero((COUNTS >= 7) & (COUNTS <= 15))
    assert len(expected) == 10
    assert stats.discriminative().tolist() == expected.tolist()
    assert np.array_equal(stats.discriminative_mask().numpy(), ref_discriminative(A))
    # p_lo = 0: the lower edge is 0, yet A_j = 0 features stay out -> counts in [1, 15].
    assert stats.discriminative(0, 95).tolist() == np.flatnonzero((COUNTS >= 1) & (COUNTS <= 15)).tolist()
    # [0, 100]: every feature with A_j > 0.
    assert stats.discriminative(0, 100).tolist() == np.flatnonzero(COUNTS > 0).tolist()
    # [50, 50]: just the two features at the median value 7/20.
    assert stats.discriminative(50, 50).tolist() == np.flatnonzero(COUNTS == 7).tolist()
    # [95, 100]: P100 = 16/20 -> counts in [15, 16].
    assert stats.discriminative(95, 100).tolist() == np.flatnonzero(COUNTS >= 15).tolist()


def test_activation_stats_zero_median_excluded():
    # 12 of 21 features never activate: the median A is 0, but A_j = 0 features are excluded.
    # Sorted: [0]*12 + [1..9]; P95 at position 19 -> count 8. D = counts in [1, 8].
    counts = np.array([0] * 12 + list(range(1, 10)))[np.random.default_rng(3).permutation(21)]
    stats = ActivationStats(21, eps=4.0).add_counts(torch.from_numpy(counts), 10)
    A = counts / 10.0
    assert np.percentile(A, 50) == 0.0
    assert np.percentile(A, 95) == 0.8
    assert stats.discriminative().tolist() == np.flatnonzero((counts >= 1) & (counts <= 8)).tolist()


@pytest.mark.parametrize("seed", range(5))
def test_activation_stats_matches_numpy_percentile_random(seed):
    rng = np.random.default_rng(100 + seed)
    d = int(rng.integers(2, 300))
    n = int(rng.integers(1, 50))
    counts = rng.integers(0, n + 1, size=d)
    counts[rng.random(d) < 0.3] = 0
    stats = ActivationStats(d).add_counts(torch.from_numpy(counts), n)
    A = counts / n
    for p_lo, p_hi in [(50, 95), (0, 100), (10, 90), (33.3, 66.7), (50, 50), (25, 99.5)]:
        expected = np.flatnonzero(ref_discriminative(A, p_lo, p_hi))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # an empty D may legitimately warn
            got = stats.discriminative(p_lo, p_hi)
        assert got.tolist() == expected.tolist(), (p_lo, p_hi)


def test_activation_stats_streaming_merge_and_state_dict():
    x = heavy_tailed(1, n=600, d=96)
    eps = 2.0
    expected_counts = ref_counts(x, eps)
    assert expected_counts.sum() > 0

    one = ActivationStats(96, eps=eps).update(torch.from_numpy(x))
    assert one.counts.tolist() == expected_counts.tolist()
    assert int(one.num_samples) == 600

    streamed = ActivationStats(96, eps=eps)
    for lo, hi in [(0, 1), (1, 250), (250, 251), (251, 600)]:
        streamed.update(torch.from_numpy(x[lo:hi]), chunk_size=37)
    assert torch.equal(streamed.counts, one.counts)
    assert torch.equal(streamed.num_samples, one.num_samples)

    a = ActivationStats(96, eps=eps).update(x[:200])
    b = ActivationStats(96, eps=eps).update(x[200:])
    merged = a.merge(b)
    assert merged is a
    assert torch.equal(a.counts, one.counts)
    assert int(a.num_samples) == 600
    assert torch.equal(a.discriminative(), one.discriminative())

    state = one.state_dict()
    assert set(state) >= {"counts", "num_samples"}
    fresh = ActivationStats(96, eps=eps)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.counts, one.counts)
    assert torch.equal(fresh.num_samples, one.num_samples)
    assert torch.equal(fresh.frequency(), one.frequency())
    assert torch.equal(fresh.discriminative(), one.discriminative())
    np.testing.assert_array_equal(fresh.discriminative().numpy(), np.flatnonzero(ref_discriminative(expected_counts / 600)))

    # reset forgets everything
    fresh.reset()
    assert int(fresh.num_samples) == 0 and int(fresh.counts.sum()) == 0


def test_activation_stats_errors():
    stats = ActivationStats(4, eps=1.0)
    with pytest.raises(ValueError):
        stats.frequency()
    with pytest.raises(ValueError):
        stats.discriminative()
    with pytest.raises(ValueError):
        stats.merge(ActivationStats(5, eps=1.0))
    with pytest.raises(ValueError):
        stats.merge(ActivationStats(4, eps=2.0))
    with pytest.raises(ValueError):
        stats.update(torch.rand(3, 5))
    with pytest.raises(ValueError):
        stats.update(torch.rand(3, 3))
    with pytest.raises(ValueError):
        stats.add_counts(torch.zeros(5, dtype=torch.int64), 3)
    with pytest.raises(ValueError):
        ActivationStats(0)
    # nothing was counted by the failed calls
    assert int(stats.num_samples) == 0 and int(stats.counts.sum()) == 0
    stats.update(torch.rand(3, 4))
    with pytest.raises(ValueError):
        stats.discriminative(95, 50)  # p_lo > p_hi


# ---------------------------------------------------------------------------------------------------------
# Agreement with the NumPy reference
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def heavy():
    return {kind: heavy_tailed(2024, kind=kind) for kind in ("lognormal", "pareto")}


@pytest.mark.parametrize("kind", ["lognormal", "pareto"])
@pytest.mark.parametrize("eps", [4.0, 2.0])
def test_reference_agreement_heavy_tailed(heavy, kind, eps):
    x = heavy[kind]
    xt = torch.from_numpy(x)  # float64
    # reference D from the reference A
    counts = ref_counts(x, eps)
    A = counts / x.shape[0]
    D_ref = ref_discriminative(A)
    assert 0 < D_ref.sum() < x.shape[1]
    stats = ActivationStats(x.shape[1], eps=eps).update(xt)
    assert stats.counts.tolist() == counts.tolist()
    assert stats.discriminative().tolist() == np.flatnonzero(D_ref).tolist()

    # masks agree with the reference exactly
    L_ref = np.array([ref_highly_activating_row(h, eps) for h in x])
    assert np.array_equal(highly_activating(xt, eps=eps).numpy(), L_ref)

    for D in (None, D_ref):
        reference = ref_qscore_all(x, D, eps=eps)
        for normalize in NORMALIZE:
            expected = reference[normalize]
            assert (expected != 0).mean() > 0.3  # many samples have a non-empty S_i
            D_arg = None if D is None else torch.from_numpy(np.flatnonzero(D))
            got = qscore(xt, discriminative=D_arg, eps=eps, normalize=normalize)
            assert got.dtype == torch.float64 and got.shape == (x.shape[0],)
            np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)
            # exact-ish in float64
            np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("eps", [4.0, 2.0])
def test_reference_agreement_float32_input(heavy, eps):
    x32 = heavy["lognormal"].astype(np.float32)
    x = x32.astype(np.float64)  # the reference sees exactly the float32 values
    # Rows with an entry within float32 rounding of its threshold (|h - mu - eps*sigma| below 1e-5 of the
    # scale mu + eps*sigma) are ill-conditioned: float32 mu and sigma may legitimately flip that selection.
    # Such rows are rare; compare all others.
    mu = x.mean(axis=1, keepdims=True)
    sigma = x.std(axis=1, keepdims=True)
    margin = np.abs(x - mu - eps * sigma) / (np.abs(mu) + eps * sigma + 1e-300)
    well_conditioned = (margin.min(axis=1) > 1e-5) | (sigma[:, 0] == 0)
    assert well_conditioned.sum() >= x.shape[0] - 5
    D_ref = ref_discriminative(ref_counts(x, eps) / x.shape[0])
    for D in (None, D_ref):
        reference = ref_qscore_all(x, D, eps=eps)
        for normalize in NORMALIZE:
            expected = reference[normalize]
            got = qscore(torch.from_numpy(x32), discriminative=None if D is None else D, eps=eps, normalize=normalize)
            assert got.dtype == torch.float32
            np.testing.assert_allclose(got.numpy()[well_conditioned], expected[well_conditioned], rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    return load_digits().data  # (1797, 64) float64, pixel values 0..16


@pytest.mark.parametrize("eps", [1.0, 2.0])
def test_reference_agreement_digits(digits, eps):
    x = digits
    assert x.shape == (1797, 64) and x.min() >= 0
    counts = ref_counts(x, eps)
    assert counts.sum() > 0  # some features are selected
    D_ref = ref_discriminative(counts / x.shape[0])
    assert 0 < D_ref.sum() < 64
    stats = ActivationStats(64, eps=eps).update(x)  # NumPy input
    assert stats.counts.tolist() == counts.tolist()
    assert stats.discriminative().tolist() == np.flatnonzero(D_ref).tolist()
    for D in (None, D_ref):
        reference = ref_qscore_all(x, D, eps=eps)
        for normalize in NORMALIZE:
            expected = reference[normalize]
            assert (expected != 0).any()
            got = qscore(x, discriminative=None if D is None else np.flatnonzero(D), eps=eps, normalize=normalize)
            assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
            np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)
            got32 = qscore(torch.from_numpy(x).float(), discriminative=None if D is None else D, eps=eps,
                           normalize=normalize)
            np.testing.assert_allclose(got32.numpy(), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Chunking and dtypes
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", NORMALIZE)
def test_chunking_invariance(heavy, normalize):
    x = torch.from_numpy(heavy["pareto"][:300, :64]).float()
    D = torch.arange(0, 64, 3)
    base, base_counts = qscore_with_counts(x, D, eps=2.0, normalize=normalize)
    expected = ref_qscore(x.double().numpy(), np.isin(np.arange(64), D.numpy()), eps=2.0, normalize=normalize)
    np.testing.assert_allclose(base.numpy(), expected, rtol=1e-5, atol=1e-5)
    for chunk_size in (1, 7, 299, 300, 1000):
        q, counts = qscore_with_counts(x, D, eps=2.0, normalize=normalize, chunk_size=chunk_size)
        torch.testing.assert_close(q, base, rtol=1e-6, atol=1e-6)
        assert torch.equal(counts, base_counts)
        q2 = qscore(x, D, eps=2.0, normalize=normalize, chunk_size=chunk_size)
        torch.testing.assert_close(q2, base, rtol=1e-6, atol=1e-6)
    for chunk_size in (1, 7):
        assert torch.equal(highly_activating(x, eps=2.0, chunk_size=chunk_size), highly_activating(x, eps=2.0))
    assert base_counts.tolist() == ref_counts(x.double().numpy(), 2.0).tolist()


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("normalize", NORMALIZE)
def test_half_precision_computed_in_float32(heavy, half, normalize):
    x = torch.from_numpy(heavy["lognormal"][:400, :128]).float()
    xh = x.to(half)
    got = qscore(xh, eps=2.0, normalize=normalize)
    assert got.dtype == torch.float32
    expected = ref_qscore(xh.float().double().numpy(), eps=2.0, normalize=normalize)  # on the rounded values
    assert (expected != 0).mean() > 0.3
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-2, atol=1e-6)
    assert highly_activating(xh, eps=2.0).shape == xh.shape


def test_float64_and_numpy_inputs():
    x = heavy_tailed(5, n=50, d=40)
    expected = ref_qscore(x, eps=2.0)
    got64 = qscore(torch.from_numpy(x), eps=2.0)
    assert got64.dtype == torch.float64
    got_np = qscore(x, eps=2.0)
    assert isinstance(got_np, torch.Tensor) and got_np.dtype == torch.float64
    got_np32 = qscore(x.astype(np.float32), eps=2.0)
    assert got_np32.dtype == torch.float32
    np.testing.assert_allclose(got64.numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_np.numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_np32.numpy(), ref_qscore(x.astype(np.float32), eps=2.0), rtol=1e-5, atol=1e-5)
    # a nested list works too
    assert qscore([ROW8], eps=0.5).tolist() == [3.0]


def test_read_only_arrays_score_without_a_warning_and_stay_untouched():
    """datasets' NumPy format and memory maps hand out read-only arrays: torch would warn on each (it cannot share
    them), so they are copied, and every entry point gives what a writable array gives."""
    from qscore_hf.baselines import probe_confidence
    from qscore_hf.health import feature_health

    x = heavy_tailed(6, n=50, d=40)
    frozen = x.copy()
    frozen.flags.writeable = False
    logits = frozen[:, :10]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "The given NumPy array is not writable" is a UserWarning
        got = qscore(frozen, eps=2.0, discriminative=np.arange(0, 40, 2))
        health = feature_health(frozen)
        confidence = probe_confidence(logits)
    np.testing.assert_allclose(got.numpy(), ref_qscore(x, np.arange(40) % 2 == 0, eps=2.0), rtol=1e-12, atol=1e-12)
    assert health.num_samples == 50 and health.effective_rank == pytest.approx(feature_health(x).effective_rank)
    z = np.exp(x[:, :10] - x[:, :10].max(axis=1, keepdims=True))
    np.testing.assert_allclose(confidence, (z / z.sum(axis=1, keepdims=True)).max(axis=1), rtol=1e-12)
    np.testing.assert_array_equal(frozen, x)


# ---------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------


def _bad_batch():
    x = torch.rand(10, 6, generator=torch.Generator().manual_seed(0))
    x[3, 2] = float("nan")
    x[7, 5] = float("inf")
    return x


@pytest.mark.parametrize(
    "call",
    [
        lambda x: qscore(x),
        lambda x: qscore(x.double(), normalize="zscore"),
        lambda x: qscore(x.numpy()),
        lambda x: qscore_with_counts(x),
        lambda x: highly_activating(x),
        lambda x: ActivationStats(6).update(x),
    ],
)
def test_nan_inf_rows_named(call):
    with pytest.raises(ValueError) as info:
        call(_bad_batch())
    message = str(info.value)
    rows = re.search(r"\[([0-9, ]+)\]", message)
    assert rows is not None, message
    assert [int(r) for r in rows.group(1).split(",")] == [3, 7], message


def test_negative_inf_and_nan_only_row():
    x = torch.rand(5, 4, generator=torch.Generator().manual_seed(1))
    x[2, 0] = float("-inf")
    with pytest.raises(ValueError, match=r"\[2\]"):
        qscore(x)
    x = torch.rand(5, 4, generator=torch.Generator().manual_seed(1))
    x[4] = float("nan")
    with pytest.raises(ValueError, match=r"\[4\]"):
        qscore(x)


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), ()])
def test_wrong_dimensionality(shape):
    x = torch.rand(shape)
    with pytest.raises(ValueError) as info:
        qscore(x)
    assert str(tuple(shape)) in str(info.value)
    with pytest.raises(ValueError):
        highly_activating(x)
    with pytest.raises(ValueError):
        ActivationStats(4).update(x)


def test_empty_batch():
    with pytest.raises(ValueError):
        qscore(torch.empty(0, 8))
    with pytest.raises(ValueError):
        qscore(np.zeros((0, 8)))
    with pytest.raises(ValueError):
        highly_activating(torch.empty(0, 8))
    with pytest.raises(ValueError):
        ActivationStats(8).update(torch.empty(0, 8))


def test_negative_features_warn_once_per_call_site():
    # [-1, 0, 2, 5]: mu = 1.5, h - mu = [-2.5, -1.5, 0.5, 3.5], var = (6.25+2.25+0.25+12.25)/4 = 5.25,
    # sigma = 2.2913; eps = 0.5 -> threshold 1.5 + 1.1456 = 2.6456 -> L = {3} -> Q = 3.5.
    # [0.5, -3, 1, 1.5]: mu = 0, var = (0.25+9+1+2.25)/4 = 3.125, sigma = 1.7678, threshold 0.8839 ->
    # L = {2, 3} -> Q = (1 + 1.5)/2 = 1.25.
    x = torch.tensor([[-1.0, 0.0, 2.0, 5.0], [0.5, -3.0, 1.0, 1.5]], dtype=torch.float64)
    results = []
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(3):
            results.append(qscore(x, eps=0.5))  # one call site, three calls
        loop_warnings = [w for w in record if issubclass(w.category, NegativeFeaturesWarning)]
        assert len(loop_warnings) == 1
        # attributed to this file (the caller), not to qscore_hf internals
        assert os.path.samefile(loop_warnings[0].filename, __file__)
        assert "negative" in str(loop_warnings[0].message).lower()
        results.append(qscore(x, eps=0.5))  # a different call site
    negative = [w for w in record if issubclass(w.category, NegativeFeaturesWarning)]
    assert len(negative) == 2
    assert negative[1].lineno != negative[0].lineno
    for q in results:
        assert torch.isfinite(q).all()
        assert q.tolist() == pytest.approx([3.5, 1.25], rel=1e-12)
        np.testing.assert_allclose(q.numpy(), ref_qscore(x.numpy(), eps=0.5), rtol=1e-12)
    assert issubclass(NegativeFeaturesWarning, UserWarning)


def test_non_negative_features_do_not_warn():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        qscore(torch.tensor([ROW8]), eps=0.5)
        ActivationStats(8).update(torch.tensor([ROW8]))
    assert not [w for w in record if issubclass(w.category, NegativeFeaturesWarning)]
