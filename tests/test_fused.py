"""The fused CPU kernel (qscore_hf/fused.py): when ``qscore`` uses it, what it gives on a large input, and what
happens without numba or without a writable cache. The exactness of both CPU paths over magnitudes and dtypes is
tested in test_magnitudes.py and test_score.py, which run every test (the thread pool's too) on each path."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

import qscore_hf
import qscore_hf.score as score
from qscore_hf.score import ActivationStats, NegativeFeaturesWarning, qscore, qscore_details

NORMALIZE = ("none", "zscore", "l1")


def reference(x: np.ndarray, d_mask: np.ndarray, eps: float) -> dict[str, np.ndarray]:
    """SPEC §2-4 row by row in float64 (as tests/test_score.py's reference), plus |S_i| and the column sums of L."""
    out = {name: np.zeros(len(x)) for name in (*NORMALIZE, "size")}
    counts = np.zeros(x.shape[1], np.int64)
    for i, h in enumerate(x.astype(np.float64)):
        mu, sigma = h.mean(), h.std()
        highly = h > mu + eps * sigma if h.max() > h.min() else np.zeros(h.shape, bool)
        counts += highly
        selected = highly & d_mask
        out["size"][i] = selected.sum()
        if selected.any():
            out["none"][i] = np.mean(h[selected] - mu)
            out["zscore"][i] = out["none"][i] / sigma
            out["l1"][i] = out["none"][i] / np.abs(h).sum()
    return {**out, "counts": counts}


@pytest.fixture(scope="module")
def large() -> np.ndarray:
    """640 x 2048 float32 (2**20 elements and more: the default path is the fused one), ReLU-like and heavy-tailed,
    with the rows the exactness check must send to the scaled path: huge, tiny, all-zero, constant; and rows with
    negative entries."""
    rng = np.random.default_rng(7)
    x = (np.maximum(rng.standard_normal((640, 2048)), 0) ** 3).astype(np.float32)
    x[5] *= np.float32(1e20)  # its squares overflow float32
    x[6] *= np.float32(1e-30)  # its squares underflow
    x[7] = 0.0
    x[8] = 3.0
    x[600:] = rng.standard_normal((40, 2048)).astype(np.float32)  # signed, like ViT features
    return x


@pytest.fixture
def kernel_calls(monkeypatch) -> list[int]:
    """Row counts of every call of the fused kernel in this test."""
    import qscore_hf.fused as fused

    calls: list[int] = []
    kernel = fused.score_rows

    def spy(x, *args):
        calls.append(x.shape[0])
        return kernel(x, *args)

    monkeypatch.setattr(fused, "score_rows", spy)
    return calls


def test_large_cpu_input_takes_the_fused_kernel_and_matches_float64(large, kernel_calls, monkeypatch):
    monkeypatch.delenv(score.FUSED_ENV, raising=False)
    d_mask = np.zeros(2048, bool)
    d_mask[::3] = True
    want = reference(large, d_mask, eps=2.0)
    x = torch.from_numpy(large)
    with pytest.warns(NegativeFeaturesWarning):
        for normalize in NORMALIZE:
            details = qscore_details(x, torch.from_numpy(d_mask), 2.0, normalize, count_highly_activating=True)
            assert details.num_selected.tolist() == want["size"].astype(int).tolist()
            assert details.highly_activating_counts.tolist() == want["counts"].tolist()
            got = details.q_scores.double().numpy()
            # relative to each row's own scale: float32 rounding of rows that are 1e20 or 1e-30
            scale = np.abs(want[normalize]) + (np.abs(large).max(axis=1) if normalize == "none" else 0)
            np.testing.assert_array_less(np.abs(got - want[normalize]), 1e-5 * scale + 1e-30)
        stats = ActivationStats(2048, eps=2.0).update(x)
    assert sum(kernel_calls) == 4 * 640  # every row went through the kernel (the special ones again, exactly)
    assert stats.counts.tolist() == want["counts"].tolist()


def test_rows_with_a_large_common_offset_keep_float64_precision(kernel_calls, monkeypatch):
    """The kernel sums the selected entries and takes mu off once per row. With an offset of 1e6 on a spread of 1
    and half the entries selected (eps 0), the float64 Q-Scores stay within the error bound of mu itself (which any
    float64 sum of the row carries: d u (|mu| + sigma)) of the row-by-row reference; float32 sums would be 1e-2 off."""
    monkeypatch.delenv(score.FUSED_ENV, raising=False)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((512, 2048)) + 1e6
    x[:256] = np.abs(rng.standard_normal((256, 2048))) ** 2
    bound = 2048 * 2.0**-53 * (np.abs(x.mean(axis=1)) + x.std(axis=1))
    for eps in (0.0, 2.0):
        want = reference(x, np.ones(2048, bool), eps)["none"]
        got = qscore(torch.from_numpy(x), eps=eps).numpy()
        np.testing.assert_array_less(np.abs(got - want), bound)
    assert sum(kernel_calls) == 2 * 512


@pytest.mark.filterwarnings("ignore::qscore_hf.score.NegativeFeaturesWarning")
def test_fused_rows_with_nan_are_named(large, kernel_calls):
    x = torch.from_numpy(large.copy())
    x[300, 17] = float("nan")
    x[500, 0] = float("inf")
    with pytest.raises(ValueError, match=r"row\(s\) \[300, 500\]"):
        qscore(x)
    assert kernel_calls


def test_env_switch_selects_the_eager_path(large, kernel_calls, monkeypatch):
    x = torch.from_numpy(large[:500])
    fused = qscore(x, eps=2.0)
    monkeypatch.setenv(score.FUSED_ENV, "0")
    calls = len(kernel_calls)
    eager = qscore(x, eps=2.0)
    assert len(kernel_calls) == calls
    torch.testing.assert_close(eager, fused, rtol=1e-5, atol=1e-5)


def test_transposed_and_half_inputs_are_scored_as_their_float32_contiguous_copies(large, kernel_calls):
    x = torch.from_numpy(large[:600])
    want = qscore(x.contiguous(), eps=2.0)
    transposed = x.t().contiguous().t()  # same values, column-major
    assert not transposed.is_contiguous()
    # equal up to summation order: the chunk holding the 1e20 row is rescored on the eager scaled path, whose sums
    # run in another order over a column-major input
    torch.testing.assert_close(qscore(transposed, eps=2.0), want, rtol=1e-6, atol=0)
    half = x.clamp(max=1e4).half()
    torch.testing.assert_close(qscore(half, eps=2.0), qscore(half.float(), eps=2.0), rtol=1e-6, atol=0)
    assert len(kernel_calls) >= 4


def test_without_numba_scores_on_the_eager_path_and_says_so_once(large, monkeypatch):
    monkeypatch.delenv(score.FUSED_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` now raises ImportError
    monkeypatch.delitem(sys.modules, "qscore_hf.fused", raising=False)
    monkeypatch.delattr(qscore_hf, "fused", raising=False)
    monkeypatch.setattr(score, "_fused_module", None)
    x = torch.from_numpy(large[:512])
    said = r"fused CPU Q-Score kernel is unavailable .*numba.*QSCORE_HF_FUSED=0"
    with pytest.warns(RuntimeWarning, match=said) as record:
        got = qscore(x, eps=2.0)
    assert os.path.samefile(record[0].filename, __file__)  # points at the caller's line, not at qscore_hf
    want = reference(large[:512], np.ones(2048, bool), eps=2.0)["none"]
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-5, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qscore(x, eps=2.0)  # said once per process


def test_kernel_compiles_without_a_writable_cache_folder():
    """numba refuses cache=True when it finds no folder to cache in; the kernel must then compile in memory."""
    code = textwrap.dedent(
        """
        import numpy as np
        from qscore_hf import fused
        from qscore_hf.score import qscore
        import qscore_hf.score as score
        score._FUSED_MIN_ELEMENTS = 0
        print(type(fused.score_rows._cache).__name__, float(qscore(np.array([[0.0] * 15 + [1.0]]), eps=2)[0]))
        """
    )
    # A locator that never applies outside IPython: numba then finds no cache folder at all.
    env = {"NUMBA_CACHE_LOCATOR_CLASSES": "_IPythonCacheLocator", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # [0]*15 + [1], eps 2: S = {15}, Q = 1 - 1/16 (tests/test_magnitudes.py works the example through)
    assert result.stdout.split() == ["NullCache", "0.9375"]

