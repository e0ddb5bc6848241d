"""The Q-Score math of SPEC §2-4: highly activating features, discriminative features, per-sample Q-Score.

Torch only (no transformers, no I/O). Every function works on CPU and GPU tensors, accepts NumPy arrays, computes
each row's moments and selection in float64 (returning scores in float32, or float64 for float64 input), and
processes rows in chunks so that scoring ``N x d`` features needs only a chunk's worth of extra memory.

The selection is exact: an entry within the rounding bound of its threshold (``rounding_band``) is decided again in
integer arithmetic, so an exact tie (z exactly eps, e.g. a one-hot row of 10 at eps 3) is never selected, on any
path and at any batch size (except under autograd, where the float64 decision stands).
"""

from __future__ import annotations

import math
import os
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .eps import validate_eps

__all__ = [
    "ActivationStats",
    "NegativeFeaturesWarning",
    "Normalize",
    "QScoreDetails",
    "highly_activating",
    "qscore",
    "qscore_details",
    "validate_eps",
]

Normalize = Literal["none", "zscore", "l1"]
NORMALIZE_OPTIONS = ("none", "zscore", "l1")
DiscriminativeLike = Tensor | np.ndarray | Sequence[int] | None

# Elements per chunk. On the CPU a chunk that stays in cache is fastest (bench/qscore_speed.py measured 2**19
# float32 elements, i.e. 256 rows of 2048, as the best size; rows are computed in float64, so half as many); a GPU
# wants large launches.
_CPU_CHUNK_ELEMENTS = 2**18
_GPU_CHUNK_ELEMENTS = 2**25
_MAX_ROWS_NAMED = 5
# The fused CPU kernel (qscore_hf/fused.py) reads a row at a time, so its chunks are only units of work for the
# thread pool: about 50 of them for 50,000 x 2048 features, so that a worker slowed by a busy core takes fewer.
# On one thread they are only the unit that _redo_inexact rescores, and 8 times larger (each call of the kernel
# costs about 30 us of argument handling). Below _FUSED_MIN_ELEMENTS the eager path takes a few milliseconds and
# importing numba is not worth it.
_FUSED_CHUNK_ELEMENTS = 2**21
_FUSED_CHUNK_ELEMENTS_ONE_THREAD = 2**24
_FUSED_MIN_ELEMENTS = 2**20
_EXACT_CHUNK_ELEMENTS = 2**16  # Python integers decided at once by _exact_selection (a few MiB)
FUSED_ENV = "QSCORE_HF_FUSED"


class NegativeFeaturesWarning(UserWarning):
    """Features with negative entries: Q-Score was defined for non-negative (ReLU) representations."""


_warned_call_sites: set[tuple[str, int]] = set()
_SKIPPED_FRAME_DIRS = tuple(
    os.path.dirname(os.path.abspath(path)) + os.sep for path in (__file__, torch.__file__)
)


def _caller() -> tuple[int, tuple[str, int]]:
    """The ``stacklevel`` (for ``warnings.warn`` in the function calling this) and the file and line of the first
    frame outside qscore_hf and torch: a user's script line."""
    frame = sys._getframe(2)
    stacklevel = 2
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(_SKIPPED_FRAME_DIRS):
        frame = frame.f_back
        stacklevel += 1
    return stacklevel, (frame.f_code.co_filename, frame.f_lineno)


def _warn_negative_once() -> None:
    """Warn once per call site (see ``_caller``)."""
    stacklevel, site = _caller()
    if site in _warned_call_sites:
        return
    _warned_call_sites.add(site)
    warnings.warn(
        "features contain negative values; Q-Score (SPEC §1) was defined for non-negative representations "
        "such as pooled ReLU CNN features. Scores are computed anyway; for ViT-like (LayerNorm) features use eps <= 2 "
        "or eps='auto' (at eps 4 most samples select nothing) and read the label-free baselines beside Q-Score "
        "(README: ViT features). This warning is shown once per call site.",
        NegativeFeaturesWarning,
        stacklevel=stacklevel,
    )


def tensor_of(value: Any) -> Tensor:
    """``torch.as_tensor`` of a tensor or anything NumPy reads. A read-only array (a memory map, or ``datasets`` in
    NumPy format) is copied: torch cannot share it, and would warn on every call."""
    if isinstance(value, Tensor):
        return value
    array = np.asarray(value)
    return torch.as_tensor(array if array.flags.writeable else array.copy())


def as_feature_matrix(features: Tensor | np.ndarray, name: str = "features") -> Tensor:
    """Return ``features`` as a 2-D floating tensor, or raise ``ValueError`` saying what is wrong."""
    features = tensor_of(features)
    if features.dim() != 2:
        raise ValueError(
            f"{name} must be a 2-D tensor of shape (num_samples, num_features); got shape {tuple(features.shape)}. "
            "Flatten or pool the representation first (e.g. features.flatten(1))."
        )
    if features.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (0 rows); pass at least one sample.")
    if features.shape[1] == 0:
        raise ValueError(f"{name} has 0 features per sample; pass representations with at least one feature.")
    if not (features.is_floating_point()):
        if features.dtype == torch.bool or features.is_complex():
            raise ValueError(f"{name} must hold real numbers; got dtype {features.dtype}.")
        # float64 holds every integer up to 2**53 exactly (float32 only up to 2**24: a row near 2**31 would score 0)
        if features.dtype == torch.int64 and bool((features.abs() > 2**53).any()):
            raise ValueError(f"{name} holds integers beyond 2**53, which no float holds exactly; scale them first.")
        features = features.to(torch.float64)
    return features


def _compute_dtype(features: Tensor) -> torch.dtype:
    return torch.float64 if features.dtype == torch.float64 else torch.float32


def default_chunk_rows(num_features: int, device: torch.device) -> int:
    """Rows per chunk for ``num_features`` columns on ``device``."""
    elements = _GPU_CHUNK_ELEMENTS if device.type != "cpu" else _CPU_CHUNK_ELEMENTS
    return max(1, elements // max(1, num_features))


def as_feature_mask(discriminative: DiscriminativeLike, num_features: int, device: torch.device) -> Tensor | None:
    """Turn ``discriminative`` (indices, a boolean mask, or None for all features) into a bool mask."""
    if discriminative is None:
        return None
    index = tensor_of(discriminative)
    if index.dtype == torch.bool:
        if index.shape != (num_features,):
            raise ValueError(
                f"discriminative mask has shape {tuple(index.shape)} but features have {num_features} columns."
            )
        return index.to(device)
    if index.numel() == 0:
        return torch.zeros(num_features, dtype=torch.bool, device=device)
    if index.is_floating_point() or index.dim() != 1:
        raise ValueError(
            "discriminative must be a 1-D tensor of feature indices, a boolean mask, or None (all features); "
            f"got dtype {index.dtype} and shape {tuple(index.shape)}."
        )
    if int(index.min()) < 0 or int(index.max()) >= num_features:
        raise ValueError(
            f"discriminative indices must lie in [0, {num_features}); got min {int(index.min())}, "
            f"max {int(index.max())}. Were the statistics computed on another model?"
        )
    mask = torch.zeros(num_features, dtype=torch.bool, device=device)
    mask[index.to(device)] = True
    return mask


@dataclass
class _Pass:
    """What one pass over the rows computes (each chunk independently, so chunks may run in parallel)."""

    eps: float
    normalize: str | None  # None: no Q-Scores
    feature_mask: Tensor | None  # D as 0/1 in float64, or None for all features
    count: bool  # column sums of L (for ActivationStats)
    mask_out: Tensor | None  # an N x d bool tensor to fill with L (for highly_activating)


@dataclass
class _ChunkResult:
    q: Tensor | None
    num_selected: Tensor | None
    counts: Tensor | None
    """Column sums of ``L`` over the chunk's rows that are not ``uncertain`` (``_decide_uncertain`` adds those)."""
    low: Tensor
    """``(rows, 1)`` row minima, or their signs (the fused kernel): below 0 marks negative entries, and 0 with a
    ``total`` of 0 an all-zero row."""
    uncertain: Tensor
    """``(rows,)`` bool: rows with an entry within ``rounding_band`` of its threshold, decided exactly afterwards."""
    moments: tuple[Tensor, Tensor] | None = None
    """``(total, sigma)`` of a chunk scored from raw moments, which ``_redo_inexact`` checks afterwards."""


def _power_of_two(exponent: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``2**exponent`` as two factors of ``dtype`` (one alone can overflow: 2**149 for a subnormal float32 row)."""
    half = torch.div(exponent, 2, rounding_mode="floor")
    one = torch.ones(exponent.shape, dtype=torch.float64, device=exponent.device)
    return torch.ldexp(one, half).to(dtype), torch.ldexp(one, exponent - half).to(dtype)


def _scratch(workspace: threading.local | None, name: str, like: Tensor) -> Tensor:
    """An uninitialised tensor shaped like ``like``, reused across one thread's chunks when ``workspace`` is given
    (a fresh multi-megabyte tensor per chunk costs page faults that take longer than the arithmetic)."""
    if workspace is None:
        return torch.empty_like(like)
    buffer = getattr(workspace, name, None)
    if buffer is None or buffer.shape != like.shape:
        buffer = torch.empty_like(like)
        setattr(workspace, name, buffer)
    return buffer


def rounding_band(num_features: int, eps: float, sigma: Tensor, mu: Tensor) -> Tensor:
    """A bound on the float64 rounding error of ``(h_ij - mu_i) - eps * sigma_i`` as both paths compute it (row sums
    of ``d`` terms in any order: relative error below ``(d + 4) * 2**-53`` of ``sum |h_ij| <= d * (sigma_i + |mu_i|)``;
    the deviations, sigma and the threshold each add at most that, times ``1 + eps``), with a factor 2 to spare.
    An entry closer than this to its threshold is decided exactly. ``qscore_hf.fused``, which takes the moments in
    one sweep, bounds its own error the same way (its ``band``)."""
    return 8.0 * (1.0 + eps) * ((num_features + 4) * 2.0**-53) * (sigma + mu.abs())


def _exact_rows(low: Tensor, total: Tensor, sigma: Tensor) -> Tensor:
    """Which rows' float64 moments are exact to rounding: no overflow and no underflow that matters (sigma far above
    the smallest normal number; a constant row, sigma 0, is left to the scaled path, which detects it exactly).
    All-zero rows are exact: sum 0 and minimum 0 mean every entry is 0. NaN or Inf fails. A constant float64 row
    whose rounded mean fakes a tiny sigma is caught by ``rounding_band``: all its entries sit within it."""
    exact = (sigma >= torch.finfo(torch.float64).tiny ** 0.25) & (sigma < math.inf)
    return exact | ((total == 0) & (low == 0))


def _score_chunk(
    features: Tensor, start: int, rows: int, plan: _Pass, workspace: threading.local | None = None
) -> _ChunkResult:
    """SPEC §2-4 on rows ``start:start+rows`` from the raw moments (no checks in the hot loop: the result keeps
    the moments, and ``_redo_inexact`` rescores with ``_score_chunk_scaled`` every chunk where they over- or
    underflowed)."""
    x = features[start : start + rows].to(torch.float64)
    low = x.detach().amin(dim=1, keepdim=True)
    total = x.sum(dim=1, keepdim=True)
    mu = total / x.shape[1]
    deviation = torch.sub(x, mu, out=_scratch(workspace, "deviation", x)) if workspace is not None else x - mu
    sigma = torch.linalg.vector_norm(deviation, dim=1, keepdim=True) / math.sqrt(x.shape[1])
    # The L1 norm of a row without negative entries is its sum (not under autograd: |h|'s gradient is 0 at 0).
    nonnegative = not x.requires_grad and plan.normalize == "l1" and not bool((low < 0).any())
    band = rounding_band(x.shape[1], plan.eps, sigma.detach(), mu.detach())
    q, num_selected, counts, uncertain = _select(x, deviation, sigma, plan.eps * sigma.detach(), band, plan, start,
                                                 workspace, l1=total.squeeze(1) if nonnegative else None)  # fmt: skip
    return _ChunkResult(q, num_selected, counts, low, uncertain, (total.detach(), sigma.detach()))


def _score_chunk_scaled(features: Tensor, start: int, rows: int, plan: _Pass) -> _ChunkResult:
    """``_score_chunk`` exact at any finite magnitude: each row is divided by a power of two near its max |h_ij|
    (exact, and every rule of SPEC §2-4 is invariant to it) before its moments are taken; ``ValueError`` naming
    the rows that hold NaN or Inf."""
    x = features[start : start + rows].to(torch.float64)
    low, high = x.detach().amin(dim=1, keepdim=True), x.detach().amax(dim=1, keepdim=True)
    # A NaN or Inf anywhere in a row makes its min or max non-finite: one check covers both.
    finite = torch.isfinite(low) & torch.isfinite(high)
    if not bool(finite.all()):
        bad = (~finite.squeeze(1)).nonzero().squeeze(1)[:_MAX_ROWS_NAMED] + start
        raise ValueError(
            f"features contain NaN or Inf in row(s) {bad.tolist()} (first offending rows shown); "
            "Q-Score is undefined there. Check the encoder's numerics (e.g. fp16 overflow) or drop those samples."
        )
    exponent = torch.frexp(torch.maximum(-low, high))[1].to(torch.int64)
    first, second = _power_of_two(-exponent, x.dtype)
    values = x * first * second
    mu = values.mean(dim=1, keepdim=True)
    deviation = values - mu
    sigma = torch.linalg.vector_norm(deviation, dim=1, keepdim=True) / math.sqrt(x.shape[1])
    # A constant row has sigma = 0 and no highly activating feature (SPEC §2); min == max detects it exactly.
    threshold = torch.where(low == high, math.inf, plan.eps * sigma.detach())
    band = rounding_band(x.shape[1], plan.eps, sigma.detach(), mu.detach())
    q, num_selected, counts, uncertain = _select(values, deviation, sigma, threshold, band, plan, start, None,
                                                 exponent=None if plan.normalize != "none" else exponent.squeeze(1))  # fmt: skip
    return _ChunkResult(q, num_selected, counts, low, uncertain)


def _select(values: Tensor, deviation: Tensor, sigma: Tensor, threshold: Tensor, band: Tensor, plan: _Pass,
            start: int, workspace: threading.local | None, l1: Tensor | None = None,
            exponent: Tensor | None = None) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor]:  # fmt: skip
    """L (``deviation > threshold``), its column sums over the rows that are not uncertain, the Q-Scores of one chunk
    and which rows are uncertain (an entry within ``band`` of its threshold; none under autograd, whose decisions
    stand); ``exponent``: the powers of two the rows were divided by, restored for ``normalize="none"``; ``l1``: the
    rows' L1 norms when known."""
    selected = _scratch(workspace, "selected", deviation)
    torch.gt(deviation.detach(), threshold, out=selected)  # L as 0/1: float masks reduce faster than bool
    if deviation.requires_grad:
        uncertain = torch.zeros(selected.shape[0], dtype=torch.bool, device=selected.device)
    else:
        near = torch.sub(deviation, threshold, out=_scratch(workspace, "near", deviation)).abs_()
        uncertain = near.amin(dim=1) < band.squeeze(1)
    if plan.mask_out is not None:
        plan.mask_out[start : start + selected.shape[0]].copy_(selected)
    counts = None
    if plan.count:
        counts = selected.sum(dim=0)
        if bool(uncertain.any()):
            counts -= selected[uncertain].sum(dim=0)
        counts = counts.to(torch.int64)
    if plan.normalize is None:
        return None, None, counts, uncertain
    # Row sums restricted to D as matrix-vector products with D's 0/1 mask: one read of the chunk each, where
    # masking first and summing after would read it twice and write it once (bench/qscore_speed.py).
    mask = plan.feature_mask
    num_selected = selected @ mask if mask is not None else selected.sum(dim=1)
    # sum over S_i of (h_ij - mu_i); in place unless autograd needs the mask (as the regularizer does)
    terms = deviation * selected if deviation.requires_grad else selected.mul_(deviation)
    q = (terms @ mask if mask is not None else terms.sum(dim=1)) / num_selected.clamp(min=1)
    if plan.normalize == "zscore":
        # sigma > 0 wherever S_i is non-empty; the clamp only keeps empty rows at 0 instead of 0/0.
        q = q / sigma.squeeze(1).clamp(min=torch.finfo(q.dtype).tiny)
    elif plan.normalize == "l1":
        if l1 is None:  # |h| into the spent buffer of L, unless autograd needs a graph
            l1 = (values.abs() if values.requires_grad else torch.abs(values, out=selected)).sum(dim=1)
        q = q / l1.clamp(min=torch.finfo(q.dtype).tiny)
    elif exponent is not None:
        first, second = _power_of_two(exponent, q.dtype)
        q = q * first * second
    return torch.where(num_selected > 0, q, 0.0), num_selected.to(torch.int64), counts, uncertain


def _redo_inexact(features: Tensor, results: list[_ChunkResult], rows: int, plan: _Pass) -> list[_ChunkResult]:
    """Rescore with ``_score_chunk_scaled`` every chunk holding a row whose raw moments were not exact (checked
    for all rows at once, after the pass: a few vector operations instead of a dozen per chunk)."""
    low, total, sigma = (torch.cat(parts) for parts in zip(*((r.low, *r.moments) for r in results)))
    inexact = (~_exact_rows(low, total, sigma)).squeeze(1).nonzero().squeeze(1)
    for index in torch.unique(torch.div(inexact, rows, rounding_mode="floor")).tolist():
        results[index] = _score_chunk_scaled(features, index * rows, rows, plan)
    return results


def _decide_uncertain(features: Tensor, results: list[_ChunkResult], rows: int, plan: _Pass) -> list[_ChunkResult]:
    """Decide the uncertain rows exactly (``_exact_selection``) and put their ``L``, counts, ``|S_i|`` and Q-Scores
    (float64, ``_score_selection``) into ``results``."""
    index = torch.cat([r.uncertain.to("cpu") for r in results]).nonzero().squeeze(1)
    if index.numel() == 0:
        return results
    values = features.detach()[index.to(features.device)].to("cpu", torch.float64).numpy()
    selected = _exact_selection(values, plan.eps)
    if plan.mask_out is not None:
        plan.mask_out[index.to(plan.mask_out.device)] = torch.from_numpy(selected).to(plan.mask_out.device)
    if plan.normalize is not None:
        mask = None if plan.feature_mask is None else plan.feature_mask.to("cpu").numpy() > 0
        q, num_selected = (torch.from_numpy(a) for a in _score_selection(values, selected, mask, plan.normalize))
    chunk_of = torch.div(index, rows, rounding_mode="floor")
    for chunk in torch.unique(chunk_of).tolist():
        where = (chunk_of == chunk).nonzero().squeeze(1)
        result, local = results[chunk], index[where] - chunk * rows
        if plan.count:
            result.counts += torch.from_numpy(selected[where.numpy()].sum(axis=0)).to(result.counts)
        if plan.normalize is not None:
            result.q[local.to(result.q.device)] = q[where].to(result.q)
            result.num_selected[local.to(result.num_selected.device)] = num_selected[where].to(result.num_selected)
    return results


def _exact_selection(values: np.ndarray, eps: float) -> np.ndarray:
    """``L`` of the rows of ``values`` (float64, ``n x d``) decided in integer arithmetic (``_exact_selection_rows``),
    ``_EXACT_CHUNK_ELEMENTS`` at a time: Python integers take some 40 bytes each and a few temporaries, which over a
    million tied rows of 10 features would be 2 GiB at once; per chunk the memory stays the same for any number."""
    step = max(1, _EXACT_CHUNK_ELEMENTS // max(1, values.shape[1]))
    selected = np.empty(values.shape, dtype=bool)
    for start in range(0, values.shape[0], step):
        selected[start : start + step] = _exact_selection_rows(values[start : start + step], eps)
    return selected


def _exact_selection_rows(values: np.ndarray, eps: float) -> np.ndarray:
    """``L`` of the rows of ``values`` (float64, ``n x d``) decided in integer arithmetic: each row is ``n_j * c``
    with integers ``n_j`` and one power of two ``c``, and ``h_j > mu + eps * sigma`` is
    ``d*n_j - sum(n) > 0 and (d*n_j - sum(n))**2 > eps**2 * (d*sum(n**2) - sum(n)**2)``, with ``eps`` as the exact
    ratio of integers it is. Python integers (an object array): no rounding, no overflow."""
    mantissa, exponent = np.frexp(values)
    integers = np.ldexp(mantissa, 53).astype(np.int64)
    nonzero = integers != 0
    lowest = np.where(nonzero, exponent, np.iinfo(np.int32).max).min(axis=1, keepdims=True)
    n = integers.astype(object) << np.where(nonzero, exponent - lowest, 0).astype(object)
    d = values.shape[1]
    total = n.sum(axis=1, keepdims=True)
    spread = d * (n * n).sum(axis=1, keepdims=True) - total * total
    above = d * n - total
    numerator, denominator = float(eps).as_integer_ratio()
    return ((above > 0) & (denominator**2 * above * above > numerator**2 * spread)).astype(bool)


def _score_selection(
    values: np.ndarray, selected: np.ndarray, mask: np.ndarray | None, normalize: str
) -> tuple[np.ndarray, np.ndarray]:
    """Q-Scores (float64) and ``|S_i|`` of the rows of ``values`` given their ``L`` (``selected``) and ``D``
    (``mask``, None for all features); each row is divided by a power of two near its max |h_ij| first."""
    exponent = np.frexp(np.abs(values).max(axis=1, keepdims=True))[1]
    scaled = np.ldexp(values, -exponent)
    deviation = scaled - scaled.mean(axis=1, keepdims=True)
    chosen = selected if mask is None else selected & mask
    num_selected = chosen.sum(axis=1)
    q = np.where(chosen, deviation, 0.0).sum(axis=1) / np.maximum(num_selected, 1)
    if normalize == "zscore":
        q = q / np.maximum(np.sqrt((deviation * deviation).mean(axis=1)), np.finfo(np.float64).tiny)
    elif normalize == "l1":
        q = q / np.maximum(np.abs(scaled).sum(axis=1), np.finfo(np.float64).tiny)
    else:
        q = np.ldexp(q, exponent.squeeze(1))
    return np.where(num_selected > 0, q, 0.0), num_selected.astype(np.int64)


def _run_pass(features: Tensor, plan: _Pass, chunk_size: int | None) -> list[_ChunkResult]:
    """Score every chunk of rows: on the CPU without autograd with the fused kernel (``qscore_hf.fused``) where
    numba is there, else with eager tensor operations. On a multi-threaded CPU the chunks run in a thread pool whose
    workers each use one thread: one parallel region per call instead of one per tensor operation, so a busy machine
    that delays a thread delays its chunks, not every operation of every chunk."""
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive number of rows, or None for the default; got {chunk_size!r}.")
    grad = features.requires_grad and torch.is_grad_enabled()
    cpu_batch = not grad and features.device.type == "cpu" and plan.mask_out is None
    fused = _fused() if cpu_batch and features.numel() >= _FUSED_MIN_ELEMENTS else None
    if fused is not None:
        elements = _FUSED_CHUNK_ELEMENTS if torch.get_num_threads() > 1 else _FUSED_CHUNK_ELEMENTS_ONE_THREAD
        rows = chunk_size or max(1, elements // features.shape[1])  # counts in float64: exact to 2**53
        results = _redo_inexact(features, _run_fused(features, plan, rows, fused), rows, plan)
        return _decide_uncertain(features, results, rows, plan)
    rows = chunk_size or default_chunk_rows(features.shape[1], features.device)
    starts = range(0, features.shape[0], rows)
    workers = min(torch.get_num_threads(), len(starts))
    # Autograd keeps each chunk's tensors, so it gets no reusable scratch buffers and no pool.
    workspace = None if grad else threading.local()
    if grad or features.device.type != "cpu" or workers < 2:
        results = [_score_chunk(features, start, rows, plan, workspace) for start in starts]
    else:
        # One task per worker, each every workers-th chunk: fewer hand-offs between threads than a task per chunk.
        def score_run(worker: int) -> list[_ChunkResult]:
            return [_score_chunk(features, start, rows, plan, workspace) for start in starts[worker::workers]]

        runs = _map_on_one_thread_workers(score_run, range(workers), workers)
        results = [runs[i % workers][i // workers] for i in range(len(starts))]
    return _decide_uncertain(features, _redo_inexact(features, results, rows, plan), rows, plan)


def _map_on_one_thread_workers(function: Any, items: Sequence[Any], workers: int) -> list[Any]:
    """``[function(item) for item in items]`` on a pool of ``workers`` threads that each run torch on one thread."""
    threads = torch.get_num_threads()
    pool = ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,))
    try:
        return list(pool.map(function, items))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)  # the workers' setting would otherwise become new threads' default


_fused_module: Any = None  # qscore_hf.fused once imported, False where it cannot be


def _fused() -> Any:
    """The module ``qscore_hf.fused``, or ``None`` where numba cannot be imported (warned once) or
    ``QSCORE_HF_FUSED=0`` asks for the eager path."""
    global _fused_module
    if os.environ.get(FUSED_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if _fused_module is None:
        try:
            # `from .fused import`, the form transformers' remote-code loader follows: a saved model folder then
            # carries fused.py (qscore_hf.remote_code refuses the `from . import fused` form, which it would not)
            from .fused import score_rows  # noqa: F401

            fused = sys.modules[f"{__package__}.fused"]
        except ImportError as error:  # e.g. numba missing, or built for another NumPy
            warnings.warn(
                f"the fused CPU Q-Score kernel is unavailable ({error}); scoring uses the eager PyTorch path, about "
                f"3x slower on large inputs (README: speed). Install numba, or set {FUSED_ENV}=0 to choose the eager "
                "path without this warning.",
                RuntimeWarning,
                stacklevel=_caller()[0],
            )
            fused = False
        _fused_module = fused
    return _fused_module or None


def _run_fused(features: Tensor, plan: _Pass, rows: int, fused: Any) -> list[_ChunkResult]:
    """Score every chunk of rows with the fused kernel, chunks handed to the pool's workers as each gets free (a
    worker on a busy core takes fewer of them)."""
    num_rows, num_features = features.shape
    dtype = _compute_dtype(features)
    # The kernel's per-row outputs, in its argument order: q, |S_i|, sign of the row minimum, total, sigma, uncertain.
    types = {"q": np.float64, "num_selected": np.int64, "sign": np.float64, "total": np.float64,
             "sigma": np.float64, "uncertain": np.bool_}  # fmt: skip
    outputs = [np.empty(num_rows, kind) for kind in types.values()]
    # plan.feature_mask is D as 0/1 in float64 already (qscore_details makes it so)
    mask = np.zeros(0) if plan.feature_mask is None else plan.feature_mask.numpy()  # empty: all features
    mode = fused.MODES[plan.normalize or "none"]

    def score(start: int) -> np.ndarray:
        x = features[start : start + rows].detach().to(dtype).contiguous().numpy()  # a view for float32/64 rows
        bits = x.view(np.int32 if x.dtype == np.float32 else np.int64)
        counts = np.zeros(num_features if plan.count else 0, np.float64)
        fused.score_rows(x, bits, plan.eps, mask, mode, plan.count, counts, *(a[start : start + rows] for a in outputs))
        return counts

    starts = range(0, num_rows, rows)
    workers = min(torch.get_num_threads(), len(starts))
    counts = [score(start) for start in starts] if workers < 2 else _map_on_one_thread_workers(score, starts, workers)
    q, num_selected, sign, total, sigma, uncertain = (torch.from_numpy(a) for a in outputs)
    return [
        _ChunkResult(
            q=q[start : start + rows] if plan.normalize else None,
            num_selected=num_selected[start : start + rows] if plan.normalize else None,
            counts=torch.from_numpy(chunk_counts).to(torch.int64) if plan.count else None,
            low=sign[start : start + rows, None],
            uncertain=uncertain[start : start + rows],
            moments=(total[start : start + rows, None], sigma[start : start + rows, None]),
        )
        for start, chunk_counts in zip(starts, counts)
    ]


def _warn_if_negative(results: list[_ChunkResult]) -> None:
    if bool(torch.cat([result.low for result in results]).lt(0).any()):
        _warn_negative_once()


def highly_activating(
    features: Tensor | np.ndarray, eps: float = 4.0, chunk_size: int | None = None
) -> Tensor:
    """Boolean ``N x d`` mask of the highly activating features ``L_i`` (SPEC §2): ``h_ij > mu_i + eps * sigma_i``."""
    eps = validate_eps(eps)
    features = as_feature_matrix(features)
    out = torch.empty(features.shape, dtype=torch.bool, device=features.device)
    _warn_if_negative(_run_pass(features, _Pass(eps, None, None, False, out), chunk_size))
    return out


def qscore(
    features: Tensor | np.ndarray,
    discriminative: DiscriminativeLike = None,
    eps: float = 4.0,
    normalize: Normalize = "none",
    chunk_size: int | None = None,
) -> Tensor:
    """Per-sample Q-Score (SPEC §4), a float tensor of shape ``(N,)`` on the features' device.

    Args:
        features: ``N x d`` representations (pooled encoder output, before any projector).
        discriminative: the discriminative feature set ``D`` as indices or a boolean mask
            (e.g. ``ActivationStats.discriminative()``); ``None`` means all features.
        eps: the highly-activating threshold ``mu + eps * sigma`` (strict ``>``); a finite number >= 0.
        normalize: ``"none"`` (the published formula), ``"zscore"`` (divide by ``sigma_i``) or
            ``"l1"`` (divide by ``||h_i||_1``).
        chunk_size: rows per chunk (a positive int); by default a cache-sized chunk on CPU and a large one on GPU.

    Exact (to the compute dtype's rounding) at any finite magnitude, subnormal to float max. Samples whose
    selected set ``S_i = L_i ∩ D`` is empty score 0. Gradients flow to ``features`` (the masks are
    constants), which is what ``QScoreRegularizer`` relies on. On the CPU without autograd, inputs of 2**20 elements
    and more are scored by a numba kernel (``qscore_hf.fused``, about two read passes over the features; the first
    call in a process loads or compiles it); ``QSCORE_HF_FUSED=0`` selects the eager PyTorch path.
    """
    return qscore_details(features, discriminative, eps, normalize, chunk_size).q_scores


@dataclass
class QScoreDetails:
    """Per-sample Q-Scores with the by-products of the same pass."""

    q_scores: Tensor
    """``(N,)`` Q-Scores (SPEC §4)."""
    num_selected: Tensor
    """``(N,)`` int64 ``|S_i|``: 0 marks a sample whose score is 0 because nothing was selected."""
    highly_activating_counts: Tensor | None
    """``(d,)`` int64 count of samples with feature ``j`` in ``L_i`` (``None`` unless asked for)."""


def qscore_details(
    features: Tensor | np.ndarray,
    discriminative: DiscriminativeLike = None,
    eps: float = 4.0,
    normalize: Normalize = "none",
    chunk_size: int | None = None,
    count_highly_activating: bool = False,
) -> QScoreDetails:
    """``qscore`` plus ``|S_i|`` per sample and, optionally, the column sums of ``L`` (for ``ActivationStats``)."""
    if normalize not in NORMALIZE_OPTIONS:
        raise ValueError(f"normalize must be one of {NORMALIZE_OPTIONS}; got {normalize!r}.")
    eps = validate_eps(eps)
    features = as_feature_matrix(features)
    feature_mask = as_feature_mask(discriminative, features.shape[1], features.device)
    if feature_mask is not None:
        feature_mask = feature_mask.to(torch.float64)
    results = _run_pass(features, _Pass(eps, normalize, feature_mask, count_highly_activating, None), chunk_size)
    _warn_if_negative(results)
    counts = torch.stack([r.counts for r in results]).sum(dim=0) if count_highly_activating else None
    q = [r.q for r in results]
    q_scores = (torch.cat(q) if len(q) > 1 else q[0]).to(_compute_dtype(features))
    return QScoreDetails(q_scores, torch.cat([r.num_selected for r in results]), counts)


def _check_whole_counts(value: Any, name: str) -> None:
    """Counts are whole numbers: an integer tensor, or floats without fractions; a boolean mask or fractional counts
    would otherwise be cast silently (torch's ``copy_`` truncates 1.7 to 1)."""
    tensor = torch.as_tensor(value)
    whole = not tensor.is_complex() and tensor.dtype != torch.bool and (
        not tensor.is_floating_point() or bool((tensor == tensor.round()).all())
    )
    if not whole:
        raise ValueError(
            f"activation statistics {name} must be whole numbers (integers); got dtype {tensor.dtype}"
            f"{' with fractions' if tensor.is_floating_point() else ''}: the file is corrupt, or pass counts, not a mask."
        )


def _float_bits(value: float) -> Tensor:
    return torch.tensor(value, dtype=torch.float64).view(torch.int64)


def _float_from_bits(bits: Tensor) -> float:
    return float(bits.to(torch.int64).view(torch.float64))


class ActivationStats(nn.Module):
    """Streaming activation frequencies ``A_j`` and the discriminative set ``D`` (SPEC §3).

    Holds ``O(d)`` state: how many samples had feature ``j`` highly activating (``counts``) and how many
    samples were seen (``num_samples``), both int64 buffers, so they are saved in a model's safetensors
    and merged across processes by summation. A third buffer, ``counted_eps``, records the ``eps`` the counts
    were made with (as the int64 bits of a float64, which ``model.to(dtype)`` leaves alone), so that loading
    them for another ``eps`` is an error rather than a silently inconsistent ``D``.

    Example::

        stats = ActivationStats(num_features=512)
        for batch in loader:
            stats.update(encoder(batch))
        stats.all_reduce()                 # under torch.distributed / accelerate
        q = qscore(features, discriminative=stats.discriminative())
    """

    counts: Tensor
    num_samples: Tensor
    counted_eps: Tensor

    def __init__(self, num_features: int, eps: float = 4.0) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be positive; got {num_features}.")
        self.num_features = int(num_features)
        self.eps = validate_eps(eps)
        self.register_buffer("counts", torch.zeros(self.num_features, dtype=torch.int64))
        self.register_buffer("num_samples", torch.zeros((), dtype=torch.int64))
        self.register_buffer("counted_eps", _float_bits(self.eps))

    @property
    def counted_with_eps(self) -> float:
        """The ``eps`` the saved counts were made with."""
        return _float_from_bits(self.counted_eps)

    @staticmethod
    def counted_eps_in(state_dict: Mapping[str, Any]) -> float | None:
        """The ``eps`` a saved ``state_dict`` of statistics was counted with; ``None`` when it predates the record."""
        bits = state_dict.get("counted_eps")
        return None if bits is None else _float_from_bits(torch.as_tensor(bits))

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, eps={self.eps}, num_samples={int(self.num_samples)}"

    @torch.no_grad()
    def update(self, features: Tensor | np.ndarray, chunk_size: int | None = None) -> "ActivationStats":
        """Count the highly activating features of a batch of ``N x d`` representations."""
        features = as_feature_matrix(features)
        self._check_width(features.shape[1], "features")
        # Chunk by chunk: the N x d mask of L is never materialised.
        results = _run_pass(features, _Pass(self.eps, None, None, True, None), chunk_size)
        _warn_if_negative(results)
        return self.add_counts(torch.stack([r.counts for r in results]).sum(dim=0), features.shape[0])

    @torch.no_grad()
    def add_counts(self, counts: Tensor, num_samples: int | Tensor) -> "ActivationStats":
        """Add precomputed per-feature counts of ``num_samples`` samples (e.g. a mask's column sums)."""
        self._check_width(counts.shape[-1], "counts")
        self.counts += counts.to(self.counts.device, torch.int64)
        self.num_samples += torch.as_tensor(num_samples, dtype=torch.int64).to(self.num_samples.device)
        return self

    def merge(self, other: "ActivationStats") -> "ActivationStats":
        """Add another instance's counts (e.g. from another shard or process); returns ``self``."""
        if other.num_features != self.num_features or other.eps != self.eps:
            raise ValueError(
                "cannot merge activation statistics of different settings: "
                f"(num_features={self.num_features}, eps={self.eps}) vs "
                f"(num_features={other.num_features}, eps={other.eps})."
            )
        return self.add_counts(other.counts, other.num_samples)

    @torch.no_grad()
    def all_reduce(self) -> "ActivationStats":
        """Sum the statistics over all processes of torch.distributed (no-op in one process); returns ``self``."""
        from .distributed import all_reduce_sum

        self.counts.copy_(all_reduce_sum(self.counts))
        self.num_samples.copy_(all_reduce_sum(self.num_samples))
        return self

    def reset(self) -> "ActivationStats":
        """Forget every sample seen so far."""
        self.counts.zero_()
        self.num_samples.zero_()
        return self.record_eps()

    def record_eps(self) -> "ActivationStats":
        """Record that the counts were made with this instance's ``eps`` (what ``reset`` does; also for counts
        saved before the record existed)."""
        self.counted_eps.copy_(_float_bits(self.eps))
        return self

    def frequency(self) -> Tensor:
        """``A_j``: the fraction of samples for which feature ``j`` was highly activating (float64)."""
        if int(self.num_samples) == 0:
            raise ValueError(
                "ActivationStats has seen no samples; call update(features) on a reference set first "
                "(or score with discriminative=None to use all features)."
            )
        return self.counts.to(torch.float64) / self.num_samples.to(torch.float64)

    def discriminative_mask(self, p_lo: float = 50.0, p_hi: float = 95.0) -> Tensor:
        """Boolean mask of ``D``: features with ``A_j > 0`` whose ``A_j`` lies within the
        ``[p_lo, p_hi]`` percentiles (inclusive, linear interpolation as NumPy's default) of all ``A``."""
        if not 0.0 <= p_lo <= p_hi <= 100.0:
            raise ValueError(f"need 0 <= p_lo <= p_hi <= 100; got p_lo={p_lo}, p_hi={p_hi}.")
        freq = self.frequency()
        bounds = torch.quantile(freq, torch.tensor([p_lo / 100.0, p_hi / 100.0], dtype=freq.dtype, device=freq.device))
        mask = (freq >= bounds[0]) & (freq <= bounds[1]) & (freq > 0)
        if not bool(mask.any()):
            inactive = float((freq == 0).double().mean())
            warnings.warn(
                f"no discriminative features: {100 * inactive:.1f}% of the {self.num_features} features were never "
                f"highly activating (eps={self.eps}) in {int(self.num_samples)} samples, so the [{p_lo}, {p_hi}] "
                "percentile band holds only never-active features and every Q-Score will be 0. Use more reference "
                "samples, a trained encoder, or a smaller eps.",
                stacklevel=2,
            )
        return mask

    def discriminative(self, p_lo: float = 50.0, p_hi: float = 95.0) -> Tensor:
        """Indices (int64, ascending) of the discriminative features ``D``; see ``discriminative_mask``."""
        return self.discriminative_mask(p_lo, p_hi).nonzero().squeeze(1)

    def validate(self, source: str = "the activation statistics") -> "ActivationStats":
        """Raise ``ValueError`` naming ``source`` unless ``0 <= counts[j] <= num_samples`` for every feature and
        the counts were made with this ``eps`` (e.g. after loading saved statistics); returns ``self``."""
        n = int(self.num_samples)
        if n > 0 and self.counted_with_eps != self.eps:
            raise ValueError(
                f"{source} were counted with eps={self.counted_with_eps:g} but are used with eps={self.eps:g} "
                f"(qscore_eps); set qscore_eps to {self.counted_with_eps:g}, or recount the statistics at {self.eps:g}."
            )
        if n < 0:
            raise ValueError(f"{source}: num_samples is {n}, a negative count; the file is corrupt. Recompute them.")
        bad = ((self.counts < 0) | (self.counts > n)).nonzero().squeeze(1)
        if bad.numel():
            j = int(bad[0])
            raise ValueError(
                f"{source}: counts must lie in [0, num_samples={n}] but {bad.numel()} do not "
                f"(feature {j}: {int(self.counts[j])}); the file is corrupt or was edited. Recompute the "
                "statistics (QScoreModel.compute_activation_stats, or `qscore-hf score --stats data`)."
            )
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args: Any, **kwargs: Any) -> None:
        if prefix + "counted_eps" not in state_dict:  # saved before the eps was recorded: assume this eps
            state_dict = {**state_dict, prefix + "counted_eps": _float_bits(self.eps).to(self.counted_eps.device)}
        for name in ("counts", "num_samples"):
            if prefix + name in state_dict:
                _check_whole_counts(state_dict[prefix + name], f"{prefix or 'state_dict'}{'' if prefix else ' '}{name}")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.validate(f"the loaded activation statistics ({prefix or 'state_dict'})")

    def _check_width(self, width: int, name: str) -> None:
        if width != self.num_features:
            raise ValueError(f"{name} have {width} features but these statistics track {self.num_features}.")
