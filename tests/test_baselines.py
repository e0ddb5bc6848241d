"""The label-free baselines of SPEC §5 (``qscore_hf.baselines``).

Checked against independent expectations: values computed by hand on tiny rows (written out in comments), NumPy in
float64 for the magnitude checks, and scikit-learn's brute-force cosine ``NearestNeighbors`` for ``knn_density``
(density = mean of ``1 - cosine distance`` over the ``k`` nearest neighbours).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from qscore_hf.baselines import (
    BASELINES,
    baseline_scores,
    hoyer_sparsity,
    knn_density,
    l2_norm,
    max_zscore,
    probe_confidence,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# Row [3, 4, 0, 0]: ||h||_2 = 5, ||h||_1 = 7, sqrt(d) = 2, so Hoyer = (2 - 7/5) / (2 - 1) = 0.6.
# mu = 7/4 = 1.75; deviations 1.25, 2.25, -1.75, -1.75; sum of squares 1.5625 + 5.0625 + 2 * 3.0625 = 12.75;
# sigma = sqrt(12.75 / 4) = sqrt(3.1875); max z = 2.25 / sqrt(3.1875) = 1.26025...
# Row [0, 0, 0, 5] (one-hot, d = 4): l2 5, Hoyer 1, max z = sqrt(d - 1) = sqrt(3).
# Row [1, 1, 1, 1]: l2 2, ||h||_1 / ||h||_2 = 4 / 2 = sqrt(d): Hoyer 0; constant row: max z 0.
# Row [-3, 4, 0, 0]: l2 5, ||h||_1 = 7 (absolute values): Hoyer 0.6; mu = 0.25, deviations -3.25, 3.75, -0.25,
# -0.25, sum of squares 10.5625 + 14.0625 + 0.125 = 24.75, max z = 3.75 / sqrt(24.75 / 4).
# Row [0, 0, 0, 0]: everything 0 (documented).
ROWS = np.array([[3, 4, 0, 0], [0, 0, 0, 5], [1, 1, 1, 1], [-3, 4, 0, 0], [0, 0, 0, 0]], dtype=np.float64)
L2 = [5.0, 5.0, 2.0, 5.0, 0.0]
HOYER = [0.6, 1.0, 0.0, 0.6, 0.0]
MAX_Z = [2.25 / math.sqrt(3.1875), math.sqrt(3.0), 0.0, 3.75 / math.sqrt(24.75 / 4), 0.0]


@pytest.mark.parametrize("as_tensor", [False, True])
def test_hand_computed_rows(as_tensor):
    rows = torch.from_numpy(ROWS).float() if as_tensor else ROWS
    np.testing.assert_allclose(l2_norm(rows), L2, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(hoyer_sparsity(rows), HOYER, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(max_zscore(rows), MAX_Z, rtol=1e-12, atol=1e-12)
    assert l2_norm(rows).dtype == np.float64


def test_single_feature():
    # d = 1: l2 is |h|; Hoyer is documented 0 (sqrt(d) - 1 = 0); a one-element row is constant, so max z is 0.
    rows = np.array([[7.0], [-2.0], [0.0]])
    np.testing.assert_allclose(l2_norm(rows), [7.0, 2.0, 0.0])
    np.testing.assert_array_equal(hoyer_sparsity(rows), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(max_zscore(rows), [0.0, 0.0, 0.0])


def test_constant_rows_of_any_value():
    rows = np.full((3, 6), 2.5)
    rows[1] = -1e30
    np.testing.assert_array_equal(max_zscore(rows), 0.0)
    np.testing.assert_allclose(hoyer_sparsity(rows), 0.0, atol=1e-12)
    # ||c * 1||_2 = |c| sqrt(6)
    np.testing.assert_allclose(l2_norm(rows), [2.5 * math.sqrt(6), 1e30 * math.sqrt(6), 2.5 * math.sqrt(6)], rtol=1e-12)


@pytest.mark.parametrize("scale", [1e20, 1e-30])
def test_float32_rows_at_extreme_magnitudes(scale):
    rng = np.random.default_rng(0)
    base = np.abs(rng.normal(size=(20, 64))).astype(np.float32)
    scaled = (base * np.float32(scale)).astype(np.float32)
    assert np.all(np.isfinite(scaled)) and np.all(scaled[base > 0] != 0)  # representable in float32
    # Hoyer and max z are scale-invariant: equal to the unscaled values up to the float32 rounding of the scaling.
    np.testing.assert_allclose(hoyer_sparsity(scaled), hoyer_sparsity(base), rtol=1e-6)
    np.testing.assert_allclose(max_zscore(scaled), max_zscore(base), rtol=1e-6)
    # l2 scales: the float64 norm of the (exact) float32 values, and scale times the unscaled norm.
    np.testing.assert_allclose(l2_norm(scaled), np.linalg.norm(scaled.astype(np.float64), axis=1), rtol=1e-12)
    np.testing.assert_allclose(l2_norm(scaled), scale * np.linalg.norm(base.astype(np.float64), axis=1), rtol=1e-6)
    # Same through a float32 tensor (squares would overflow / underflow in float32 without rescaling).
    tensor = torch.from_numpy(scaled)
    np.testing.assert_allclose(l2_norm(tensor), np.linalg.norm(scaled.astype(np.float64), axis=1), rtol=1e-12)
    np.testing.assert_allclose(max_zscore(tensor), max_zscore(base), rtol=1e-6)


@pytest.mark.parametrize("scale", [1e200, 1e-200])
def test_float64_rows_beyond_the_range_of_squares(scale):
    # (1e200)^2 overflows float64 and (1e-200)^2 underflows: the hand rows must still give the hand values.
    rows = ROWS * scale
    np.testing.assert_allclose(l2_norm(rows), np.array(L2) * scale, rtol=1e-12)
    np.testing.assert_allclose(hoyer_sparsity(rows), HOYER, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(max_zscore(rows), MAX_Z, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("function", [l2_norm, hoyer_sparsity, max_zscore])
def test_non_finite_values_are_rejected(function, bad):
    rows = np.ones((3, 4))
    rows[1, 2] = bad
    with pytest.raises(ValueError):
        function(rows)


def test_non_finite_values_are_rejected_by_knn_density():
    rows = np.random.default_rng(0).random((6, 4))
    rows[2, 1] = np.nan
    with pytest.raises(ValueError):
        knn_density(rows, device="cpu")


def sklearn_density(queries: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    """Mean cosine similarity to the k nearest reference rows, by brute force."""
    nn = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(reference)
    distances, _ = nn.kneighbors(queries)
    return (1.0 - distances).mean(axis=1)


def sklearn_density_excluding_self(data: np.ndarray, k: int) -> np.ndarray:
    """The same set as queries and reference: take k + 1 neighbours and drop the query's own index."""
    nn = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(data)
    distances, indices = nn.kneighbors(data)
    out = np.empty(len(data))
    for i in range(len(data)):
        keep = indices[i] != i
        out[i] = (1.0 - distances[i][keep][:k]).mean()
    return out


@pytest.fixture(scope="module")
def cloud():
    rng = np.random.default_rng(1)
    # Three loose clusters of non-negative features (ReLU-like), so that neighbours are not all alike.
    centres = np.abs(rng.normal(size=(3, 12)))
    queries = np.abs(centres[rng.integers(0, 3, 31)] + 0.4 * rng.normal(size=(31, 12))).astype(np.float32)
    reference = np.abs(centres[rng.integers(0, 3, 23)] + 0.4 * rng.normal(size=(23, 12))).astype(np.float32)
    return queries, reference


@pytest.mark.parametrize("query_chunk, reference_chunk", [(None, None), (1, 1), (7, 5), (31, 23), (10, 13), (100, 3)])
def test_knn_density_matches_sklearn_for_any_chunking(cloud, query_chunk, reference_chunk):
    queries, reference = cloud
    expected = sklearn_density(queries.astype(np.float64), reference.astype(np.float64), k=10)
    got = knn_density(queries, reference, k=10, query_chunk=query_chunk, reference_chunk=reference_chunk,
                      device="cpu")  # fmt: skip
    assert got.shape == (31,) and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("query_chunk, reference_chunk", [(None, None), (1, 1), (7, 5), (4, 31), (31, 9)])
def test_knn_density_without_reference_never_counts_the_sample_itself(cloud, query_chunk, reference_chunk):
    queries, _ = cloud
    expected = sklearn_density_excluding_self(queries.astype(np.float64), k=10)
    got = knn_density(queries, None, k=10, query_chunk=query_chunk, reference_chunk=reference_chunk, device="cpu")
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # Counting itself would add a similarity of 1: the result must differ from that wrong answer.
    with_self = sklearn_density(queries.astype(np.float64), queries.astype(np.float64), k=10)
    assert np.all(got < with_self - 1e-4)


def test_knn_density_k_larger_than_the_reference_clamps():
    rng = np.random.default_rng(2)
    queries, reference = rng.random((4, 5)), rng.random((3, 5))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    cosine = unit(queries) @ unit(reference).T
    # k = 10 > 3 reference rows: the mean similarity to all 3.
    np.testing.assert_allclose(knn_density(queries, reference, k=10, device="cpu"), cosine.mean(axis=1), atol=1e-6)
    # Without a reference on 4 rows, at most 3 neighbours (everyone else).
    self_cosine = unit(queries) @ unit(queries).T
    others = (self_cosine.sum(axis=1) - np.diag(self_cosine)) / 3
    np.testing.assert_allclose(knn_density(queries, None, k=10, device="cpu"), others, atol=1e-6)


def test_knn_density_hand_computed():
    # Unit vectors e1, e2 and (e1 + e2)/sqrt(2): cosine(e1, e2) = 0, cosine(e1, diag) = 1/sqrt(2).
    data = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    r = 1 / math.sqrt(2)
    # k = 1 without a reference: e1 -> diag (r); e2 -> diag (r); diag -> either axis (r).
    np.testing.assert_allclose(knn_density(data, k=1, device="cpu"), [r, r, r], atol=1e-6)
    # k = 2: e1 -> (r + 0) / 2; e2 -> (r + 0) / 2; diag -> (r + r) / 2.
    np.testing.assert_allclose(knn_density(data, k=2, device="cpu"), [r / 2, r / 2, r], atol=1e-6)


def test_nested_lists_score_as_arrays_and_a_fractional_k_is_named():
    data = [[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]  # the hand-computed case above, as plain lists
    r = 1 / math.sqrt(2)
    np.testing.assert_allclose(knn_density(data, k=1, device="cpu"), [r, r, r], atol=1e-6)
    np.testing.assert_allclose(knn_density(data, data, k=1, device="cpu"), [1, 1, 1], atol=1e-6)  # itself, cos 1
    np.testing.assert_allclose(l2_norm(data), [1.0, 2.0, 3 * math.sqrt(2)], rtol=1e-6)
    for bad in (2.5, 2.0, True):
        with pytest.raises(ValueError, match="k must be a whole number of neighbours"):
            knn_density(data, k=bad, device="cpu")


def test_knn_density_width_mismatch_names_both_widths():
    with pytest.raises(ValueError) as error:
        knn_density(np.ones((3, 7)), np.ones((4, 5)), device="cpu")
    assert "7" in str(error.value) and "5" in str(error.value)


def test_memory_mapped_input(tmp_path, cloud):
    queries, reference = cloud
    paths = {"q": tmp_path / "q.dat", "r": tmp_path / "r.dat"}
    for key, array in (("q", queries), ("r", reference)):
        writer = np.memmap(paths[key], dtype=np.float32, mode="w+", shape=array.shape)
        writer[:] = array
        writer.flush()
        del writer
    mq = np.memmap(paths["q"], dtype=np.float32, mode="r", shape=queries.shape)
    mr = np.memmap(paths["r"], dtype=np.float32, mode="r", shape=reference.shape)
    expected = sklearn_density(queries.astype(np.float64), reference.astype(np.float64), k=10)
    np.testing.assert_allclose(knn_density(mq, mr, k=10, query_chunk=8, reference_chunk=6, device="cpu"), expected,
                               atol=1e-6)  # fmt: skip
    np.testing.assert_array_equal(knn_density(mq, mr, k=10, device="cpu"), knn_density(queries, reference, k=10,
                                                                                     device="cpu"))  # fmt: skip
    np.testing.assert_allclose(l2_norm(mq), np.linalg.norm(queries.astype(np.float64), axis=1), rtol=1e-12)
    np.testing.assert_array_equal(max_zscore(mq), max_zscore(queries))
    np.testing.assert_array_equal(hoyer_sparsity(mq), hoyer_sparsity(queries))


def test_probe_confidence_by_hand():
    logits = np.array([[0.0, math.log(3.0)],  # softmax [1/4, 3/4]
                       [1.0, 1.0],  # [1/2, 1/2]
                       [1000.0, 0.0],  # e^-1000 underflows: 1.0 (no overflow to NaN)
                       [-1000.0, -1000.0]])  # fmt: skip
    np.testing.assert_allclose(probe_confidence(logits), [0.75, 0.5, 1.0, 0.5], rtol=1e-12)
    # Four classes, logits [ln 1, ln 2, ln 3, ln 4]: probabilities k / 10, max 0.4.
    four = torch.log(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    np.testing.assert_allclose(probe_confidence(four), [0.4], rtol=1e-6)


def test_baseline_scores_collects_every_baseline():
    without = baseline_scores(ROWS)
    assert list(without) == [name for name in BASELINES if name != "knn_density"]
    np.testing.assert_allclose(without["l2_norm"], L2, rtol=1e-12)
    np.testing.assert_allclose(without["hoyer_sparsity"], HOYER, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(without["max_zscore"], MAX_Z, rtol=1e-12, atol=1e-12)
    reference = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    queries = np.array([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    with_reference = baseline_scores(queries, reference, k=1, device="cpu")
    assert list(with_reference) == list(BASELINES)
    # [3, 4, 0, 0] / 5: cosine 0.6 to e1, 0.8 to e2 -> nearest 0.8; e3 is orthogonal to both -> 0.
    np.testing.assert_allclose(with_reference["knn_density"], [0.8, 0.0], atol=1e-6)
