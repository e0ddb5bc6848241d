"""The CPU score pass of SPEC §2-4 fused into one loop nest per row, compiled by numba.

Why hand-written: eager PyTorch needs about eight tensor operations per chunk (moments, threshold, masked sums),
and each costs 0.3-0.5 of a read pass over the features even when the chunk is cached; ``torch.compile`` needs a
C++ compiler on the user's machine and emits one loop over all rows per reduction (bench/qscore_fused.py). Here
each row (8 KB at 2048 float32 features) is read once from memory and swept three more times from the L1 cache:
sums, squared deviations, selection. ``bench/qscore_speed.py`` measures both paths against one read pass.

Every row is computed in float64 whatever its dtype (float32 entries are exact in float64), as the eager path does:
a large common offset (mean/std of 1e5) or a million features then cost no precision. Entries within the rounding
bound of their threshold (``qscore_hf.score.rounding_band``) mark their row ``uncertain``; ``qscore_hf.score``
decides those rows exactly afterwards, so that an exact tie (z exactly eps) is never selected on either path. It
also checks which rows' moments over- or underflowed and rescores those exactly, as it does for its eager path.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

try:  # transformers' remote-code loader skips imports in a try block: a saved model folder loads without numba
    import numba
except ImportError as error:  # qscore_hf.score then scores on the eager path and says so
    raise ImportError(f"the fused Q-Score kernel needs numba ({error})") from error

# No "nnan"/"ninf": a NaN or Inf must reach the moments, where qscore_hf.score detects it and names the rows.
# "reassoc" lets the row sums use SIMD lanes (a different summation order, within the rounding band).
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

MODES = {"none": 0, "zscore": 1, "l1": 2}
_UNIT_ROUNDOFF = 2.0**-53


def _score_rows(
    x: np.ndarray,
    eps: float,
    feature_mask: np.ndarray,
    mode: int,
    count: bool,
    counts: np.ndarray,
    q: np.ndarray,
    num_selected: np.ndarray,
    sign: np.ndarray,
    total: np.ndarray,
    sigma_out: np.ndarray,
    uncertain: np.ndarray,
) -> None:
    """Score the rows of ``x`` (C-contiguous ``rows x d``, float32 or float64) into the 1-D outputs, row ``i`` into
    index ``i``, computing in float64.

    ``feature_mask``: ``D`` as 0/1 float64; ``mode``: ``MODES[normalize]``; ``count``: add each row's ``L`` (as
    0/1) into ``counts`` (``d`` float64 entries), except for uncertain rows, which the caller counts after deciding
    them. ``sign`` gets -1 for a row with a negative entry, 0 for an all-zero row, 1 otherwise; ``total`` and
    ``sigma_out`` the row sum and standard deviation, for the caller's exactness check; ``uncertain`` 1 for a row
    with an entry within ``rounding_band`` of its threshold.
    """
    rows, d = x.shape
    width = float(d)
    gamma = (d + 4) * _UNIT_ROUNDOFF  # the relative error bound of a float64 sum of d terms, in any order
    for i in range(rows):
        row = x[i]
        s = 0.0
        negatives = 0.0  # a count (and a comparison, not min()) keeps the loop vectorized
        for j in range(d):  # the one read from memory
            v = np.float64(row[j])
            s += v
            negatives += 1.0 if v < 0.0 else 0.0
        # Without negative entries the L1 norm is the sum, and only an all-zero row sums to 0.
        l1 = s
        if negatives > 0 and mode == 2:
            l1 = 0.0
            for j in range(d):
                l1 += abs(np.float64(row[j]))
        mu = s / width
        squares = 0.0
        for j in range(d):
            t = np.float64(row[j]) - mu
            squares += t * t
        sigma = math.sqrt(squares / width)
        threshold = eps * sigma
        band = 8.0 * (1.0 + eps) * gamma * (sigma + abs(mu))  # qscore_hf.score.rounding_band
        # 0/1 products instead of branches, so that the loops vectorize; t * 0 is 0 for every finite t, and a row
        # holding NaN or Inf is rescored by the caller anyway.
        size = 0.0
        acc = 0.0
        near = 0.0
        # Two copies of the loop on purpose: one loop with `if count:` inside does not vectorize and took twice as
        # long (20,000 x 2048 float32, one thread: 50 ms against 24 ms).
        if count:
            for j in range(d):
                t = np.float64(row[j]) - mu
                selected = 1.0 if t > threshold else 0.0
                counts[j] += selected
                weight = selected * feature_mask[j]
                size += weight
                acc += t * weight
                near += 1.0 if abs(t - threshold) < band else 0.0
            if near > 0:  # take the row back out (the same expression decides the same way); the caller counts it
                for j in range(d):
                    counts[j] -= 1.0 if np.float64(row[j]) - mu > threshold else 0.0
        else:
            for j in range(d):
                t = np.float64(row[j]) - mu
                weight = (1.0 if t > threshold else 0.0) * feature_mask[j]
                size += weight
                acc += t * weight
                near += 1.0 if abs(t - threshold) < band else 0.0
        score = acc / size if size > 0 else 0.0
        if mode == 1:
            score = score / sigma if sigma > 0 else 0.0
        elif mode == 2:
            score = score / l1 if l1 > 0 else 0.0
        q[i] = score
        num_selected[i] = int(size)
        sign[i] = -1.0 if negatives > 0 else (0.0 if s == 0 else 1.0)
        total[i] = s
        sigma_out[i] = sigma
        uncertain[i] = near > 0


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
