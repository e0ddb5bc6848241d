"""Q-Score and activation counts are exact at any finite magnitude and in every float dtype (SPEC §2).

Property tests: rows ``m * 2**e`` with small integer mantissas ``m`` (exact in every dtype, bfloat16 included) and
an exponent ``e`` anywhere in the dtype's range, subnormal to near overflow. By SPEC §2-4, ``L`` and ``S`` do not
change when a row is multiplied by ``2**e``, ``Q`` (``normalize="none"``) is multiplied by it and the normalized
scores do not change; the expected values come from a per-row float64 NumPy reference written below on ``m``,
where nothing over- or underflows.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from qscore_hf.score import ActivationStats, qscore, qscore_details

NORMALIZE = ("none", "zscore", "l1")
DTYPES = {
    torch.float16: (-24, 9),  # smallest subnormal 2**-24; |m| * 2**e <= 2**15 < 65504 with |m| <= 64
    torch.bfloat16: (-133, 120),
    torch.float32: (-149, 120),
    torch.float64: (-1074, 1016),
}
EPSILONS = (0.0, 0.7, 1.3, 2.0, 2.9, 4.0)
# Every test runs on both CPU paths (tests/conftest.py): the fused kernel and the eager PyTorch operations.
pytestmark = pytest.mark.usefixtures("score_path")


def reference(m: np.ndarray, eps: float, d_mask: np.ndarray) -> dict[str, np.ndarray | float]:
    """SPEC §2-4 for one row, literally, in float64: L, |S|, and Q in the three normalizations."""
    m = m.astype(np.float64)
    mu, sigma = m.mean(), m.std()  # population std
    if m.max() == m.min():
        highly = np.zeros(m.shape, dtype=bool)  # sigma = 0: L is empty
    else:
        highly = m > mu + eps * sigma
    selected = highly & d_mask
    q = {"none": 0.0, "zscore": 0.0, "l1": 0.0}
    if selected.any():
        q["none"] = float(np.mean(m[selected] - mu))
        q["zscore"] = float(np.mean((m[selected] - mu) / sigma))
        q["l1"] = q["none"] / float(np.abs(m).sum())
    # how close an entry comes to the threshold, relative to the row's largest entry (rounding can flip ties)
    margin = float(np.min(np.abs(m - mu - eps * sigma))) / float(np.abs(m).max()) if sigma > 0 else math.inf
    return {"highly": highly, "size": int(selected.sum()), "margin": margin, **q, "mu": mu, "sigma": sigma}


@st.composite
def batches(draw):
    dtype = draw(st.sampled_from(list(DTYPES)))
    lo, hi = DTYPES[dtype]
    n = draw(st.integers(1, 5))
    d = draw(st.integers(2, 24))
    signed = draw(st.booleans())
    mantissa = st.integers(-64 if signed else 0, 64)
    # ReLU-like rows: mostly zeros with a few large entries, and dense ones
    rows = [draw(st.lists(st.one_of(st.just(0), mantissa), min_size=d, max_size=d)) for _ in range(n)]
    exponents = [draw(st.integers(lo, hi)) for _ in range(n)]
    d_mask = np.array(draw(st.lists(st.booleans(), min_size=d, max_size=d))) if draw(st.booleans()) else None
    return dtype, np.array(rows, dtype=np.float64), np.array(exponents), d_mask, draw(st.sampled_from(EPSILONS))


def _build(dtype: torch.dtype, m: np.ndarray, exponents: np.ndarray) -> torch.Tensor:
    # m * 2**e exactly: ldexp in float64 (no rounding: |m| <= 64 fits every mantissa), then the exact cast
    values = torch.from_numpy(np.ldexp(m, exponents[:, None]))
    x = values.to(dtype)
    assert torch.equal(x.to(torch.float64), values), "the test's inputs must be exact in the dtype"
    return x


@pytest.mark.filterwarnings("ignore::qscore_hf.score.NegativeFeaturesWarning")
# score_path is function-scoped but only sets the path, which every example shares.
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(batches(), st.sampled_from([None, 1, 2]))
def test_exact_at_any_magnitude(batch, chunk_size):
    dtype, m, exponents, d_mask, eps = batch
    n, d = m.shape
    refs = [reference(row, eps, np.ones(d, bool) if d_mask is None else d_mask) for row in m]
    # an entry within rounding of mu + eps * sigma may fall on either side: such draws say nothing
    assume(all(ref["margin"] > 1e-4 for ref in refs))
    x = _build(dtype, m, exponents)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    unit = torch.finfo(compute).eps
    smallest = 2.0 ** (-1074 if compute == torch.float64 else -149)  # one subnormal step of the result

    expected_counts = np.sum([ref["highly"] for ref in refs], axis=0)
    stats = ActivationStats(d, eps=eps).update(x, chunk_size=chunk_size)
    assert stats.counts.tolist() == expected_counts.tolist()

    discriminative = None if d_mask is None else torch.from_numpy(d_mask)
    for normalize in NORMALIZE:
        details = qscore_details(x, discriminative, eps, normalize, chunk_size, count_highly_activating=True)
        assert details.q_scores.dtype == compute
        assert details.num_selected.tolist() == [ref["size"] for ref in refs]
        assert details.highly_activating_counts.tolist() == expected_counts.tolist()
        got = details.q_scores.double().numpy()
        for i, ref in enumerate(refs):
            peak = float(np.abs(m[i]).max())
            if normalize == "none":
                want, scale = math.ldexp(ref["none"], int(exponents[i])), math.ldexp(peak, int(exponents[i]))
            elif normalize == "zscore":
                want, scale = ref["zscore"], peak / ref["sigma"] if ref["sigma"] > 0 else 0.0
            else:
                want, scale = ref["l1"], peak / float(np.abs(m[i]).sum()) if peak > 0 else 0.0
            tolerance = 8 * d * unit * scale + (smallest if normalize == "none" else 0.0)
            assert abs(got[i] - want) <= tolerance, (normalize, i, got[i], want, m[i], exponents[i])


@pytest.mark.parametrize(
    "row, scale, eps, normalize, expected",
    [
        # [0]*15 + [h]: mu = h/16, sigma = h*sqrt(15)/16; eps = 2 -> threshold h*(1 + 2*sqrt(15))/16 < h, so
        # S = {15}: Q = h - h/16 = 15h/16, zscore = (15/16) / (sqrt(15)/16) = sqrt(15) = 3.873, l1 = 15/16.
        ([0.0] * 15 + [1.0], 1e20, 2.0, "none", 9.375e19),
        ([0.0] * 15 + [1.0], 1e-30, 2.0, "zscore", math.sqrt(15)),
        ([0.0] * 15 + [1.0], 1e-30, 2.0, "none", 9.375e-31),
        ([0.0] * 15 + [1.0], 1e-45, 2.0, "l1", 0.9375),  # a subnormal float32 row
        ([0.0] * 15 + [1.0], 3e38, 2.0, "none", 2.8125e38),  # near float32 max
        ([0.0] * 15 + [1.0], 3e38, 2.0, "zscore", math.sqrt(15)),
    ],
)
def test_issue_examples_float32(row, scale, eps, normalize, expected):
    x = torch.tensor([row], dtype=torch.float32) * scale
    q = float(qscore(x, eps=eps, normalize=normalize)[0])
    h = float(x[0, -1])  # the float32 value of the one non-zero entry
    want = expected * (h / scale if normalize == "none" else 1.0)
    assert q == pytest.approx(want, rel=1e-6)


def test_thread_pool_matches_one_thread():
    """On a multi-threaded CPU the chunks run in a pool: same results, same error naming the first bad rows."""
    rng = np.random.default_rng(0)
    m = np.maximum(rng.standard_normal((300, 64)), 0) ** 3
    m[::7] *= 1e-40  # some rows take the scaled path
    m[5] = 0.0
    x = torch.from_numpy(m.astype(np.float32))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = qscore_details(x, eps=2.0, chunk_size=16, count_highly_activating=True)
        torch.set_num_threads(2)
        pooled = qscore_details(x, eps=2.0, chunk_size=16, count_highly_activating=True)
        assert torch.get_num_threads() == 2
        bad = x.clone()
        bad[100, 3] = math.nan
        bad[250, 0] = math.inf
        with pytest.raises(ValueError, match=r"row\(s\) \[100\]"):
            qscore(bad, chunk_size=16)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one.q_scores, pooled.q_scores)
    assert torch.equal(one.num_selected, pooled.num_selected)
    assert torch.equal(one.highly_activating_counts, pooled.highly_activating_counts)


@pytest.mark.parametrize("bad", [-3, -0.5, math.nan, math.inf, -math.inf, "abc", "4", None, True, [4.0]])
def test_eps_rejected_everywhere(bad):
    x = torch.rand(4, 8)
    for call in (
        lambda: qscore(x, eps=bad),
        lambda: qscore_details(x, eps=bad),
        lambda: ActivationStats(8, eps=bad),
    ):
        with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
            call()


@pytest.mark.parametrize("chunk_size", [0, -1, 2.5, True])
def test_chunk_size_must_be_positive(chunk_size):
    with pytest.raises(ValueError, match="chunk_size must be a positive number of rows"):
        qscore(torch.rand(4, 8), chunk_size=chunk_size)
    with pytest.raises(ValueError, match="chunk_size"):
        ActivationStats(8).update(torch.rand(4, 8), chunk_size=chunk_size)
