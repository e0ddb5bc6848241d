"""The CPU score pass of SPEC §2-4 fused into one loop nest per row, compiled by numba.

Why hand-written: eager PyTorch needs about eight tensor operations per chunk (moments, threshold, masked sums),
and each costs 0.3-0.5 of a read pass over the features even when the chunk is cached; ``torch.compile`` needs a
C++ compiler on the user's machine and emits one loop over all rows per reduction (bench/qscore_fused.py). Here
each row (8 KB at 2048 float32 features) is read once from memory and swept three more times from the L1 cache:
sums, squared deviations, selection. ``bench/qscore_speed.py`` measures both paths against one read pass.

This module only computes raw moments and scores; ``qscore_hf.score`` decides where it applies, checks which
rows' moments over- or underflowed and rescores those exactly, as it does for its eager path.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numba
import numpy as np

# No "nnan"/"ninf": a NaN or Inf must reach the moments, where qscore_hf.score detects it and names the rows.
# "reassoc" lets the row sums use SIMD lanes (a different summation order, float rounding only).
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

MODES = {"none": 0, "zscore": 1, "l1": 2}


def _score_rows(
    x: np.ndarray,
    eps: float,
    feature_mask: np.ndarray,
    mode: int,
    tiny: float,
    count: bool,
    counts: np.ndarray,
    q: np.ndarray,
    num_selected: np.ndarray,
    sign: np.ndarray,
    total: np.ndarray,
    mu_out: np.ndarray,
    sigma_out: np.ndarray,
) -> None:
    """Score the rows of ``x`` (C-contiguous ``rows x d``) into the 1-D outputs, row ``i`` into index ``i``.

    ``feature_mask``: ``D`` as 0/1 in ``x``'s dtype; ``mode``: ``MODES[normalize]``; ``count``: add each row's
    ``L`` (as 0/1) into ``counts`` (``d`` entries of ``x``'s dtype, exact up to 2**24 rows in float32).
    ``sign`` gets -1 for a row with a negative entry, 0 for an all-zero row, 1 otherwise; ``total``, ``mu_out``
    and ``sigma_out`` the raw moments, for the caller's exactness check.
    """
    rows, d = x.shape
    # Every scalar in x's dtype: a Python float or int would promote float32 arithmetic to float64.
    zero = x.dtype.type(0)
    one = x.dtype.type(1)
    width = x.dtype.type(d)
    epsilon = x.dtype.type(eps)
    smallest = x.dtype.type(tiny)
    for i in range(rows):
        row = x[i]
        s = zero
        negatives = zero  # a count in the float dtype (and a comparison, not min()) keeps the loop vectorized
        for j in range(d):  # the one read from memory
            v = row[j]
            s += v
            negatives += one if v < zero else zero
        # Without negative entries the L1 norm is the sum, and only an all-zero row sums to 0.
        l1 = s
        if negatives > 0 and mode == 2:
            l1 = zero
            for j in range(d):
                l1 += abs(row[j])
        mu = s / width
        squares = zero
        for j in range(d):
            t = row[j] - mu
            squares += t * t
        sigma = math.sqrt(squares / width)
        threshold = epsilon * sigma
        # 0/1 products instead of branches, so that the loop vectorizes; t * 0 is 0 for every finite t, and a row
        # holding NaN or Inf is rescored by the caller anyway.
        size = zero
        acc = zero
        # Two copies of the loop on purpose: one loop with `if count:` inside does not vectorize and took twice as
        # long (20,000 x 2048 float32, one thread: 50 ms against 24 ms).
        if count:
            for j in range(d):
                t = row[j] - mu
                selected = one if t > threshold else zero
                counts[j] += selected
                weight = selected * feature_mask[j]
                size += weight
                acc += t * weight
        else:
            for j in range(d):
                t = row[j] - mu
                weight = (one if t > threshold else zero) * feature_mask[j]
                size += weight
                acc += t * weight
        score = acc / size if size > 0 else zero
        if mode == 1:
            score = score / max(sigma, smallest)
        elif mode == 2:
            score = score / max(l1, smallest)
        q[i] = score
        num_selected[i] = int(size)
        sign[i] = -one if negatives > 0 else (zero if s == 0 else one)
        total[i] = s
        mu_out[i] = mu
        sigma_out[i] = sigma


def _compile(function: Callable[..., None]) -> Any:
    """``function`` compiled lazily (on the first call, per dtype), cached on disk where numba finds a writable
    folder (beside this file, else the user's cache folder); without one, numba refuses ``cache=True`` outright,
    so compile in memory (about 2 s per process) rather than lose the kernel."""
    options = {"nogil": True, "fastmath": _FASTMATH, "boundscheck": False}
    try:
        return numba.njit(cache=True, **options)(function)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(**options)(function)


score_rows = _compile(_score_rows)
