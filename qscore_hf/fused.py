"""The CPU score pass of SPEC §2-4 fused into one loop per row, compiled by numba.

Why hand-written: eager PyTorch needs about eight tensor operations per chunk (moments, threshold, masked sums),
and each costs 0.3-0.5 of a read pass over the features even when the chunk is cached; ``torch.compile`` needs a
C++ compiler on the user's machine and emits one loop over all rows per reduction (bench/qscore_fused.py). Here
each row (8 KB at 2048 float32 features) is read once from memory, in the same loop that selects the previous row's
highly activating features from the L1 cache (software pipelining: the moments of row ``i + 1`` are summed while
row ``i`` is selected, so the memory latency hides behind the arithmetic). ``bench/qscore_speed.py`` measures both
paths against one read pass.

Every row is computed in float64 whatever its dtype (float32 entries are exact in float64), as the eager path does:
a large common offset (mean/std of 1e5) or a million features then cost no precision. The moments are taken in one
sweep, shifted by the row's first entry: ``sigma_i**2 = mean((h - c)**2) - (mu_i - c)**2``. Entries within the
rounding bound of their threshold (``band`` in ``_score_rows``, an upper bound on the error of that computation)
mark their row ``uncertain``; ``qscore_hf.score`` decides those rows exactly afterwards, so that an exact tie (z
exactly eps) is never selected on either path. It also checks which rows' moments over- or underflowed and rescores
those exactly, as it does for its eager path.
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


def _kernel_source(count: bool, masked: bool) -> Callable[..., None]:
    """``_score_rows`` with ``count`` (column sums of ``L``) and ``masked`` (``D`` is not all features) fixed: numba
    takes them as compile-time constants, so each of the four kernels has one branch-free, vectorized inner loop
    (a loop with a run-time ``if count:`` inside did not vectorize and took twice as long)."""

    def _score_rows(
        x: np.ndarray,
        bits: np.ndarray,
        eps: float,
        feature_mask: np.ndarray,
        mode: int,
        counts: np.ndarray,
        q: np.ndarray,
        num_selected: np.ndarray,
        sign: np.ndarray,
        total: np.ndarray,
        sigma_out: np.ndarray,
        uncertain: np.ndarray,
    ) -> None:
        """Score the rows of ``x`` (C-contiguous ``rows x d``, float32 or float64) into the 1-D outputs, row ``i``
        into index ``i``, computing in float64. ``bits``: ``x`` viewed as signed integers of its width (a sign bit
        set marks a candidate negative entry: one integer OR per entry instead of a comparison and a count).

        ``feature_mask``: ``D`` as 0/1 float64 (read only when ``masked``); ``mode``: ``MODES[normalize]``;
        ``counts``: when ``count``, each certain row's ``L`` (as 0/1) is added into its ``d`` float64 entries
        (uncertain rows are counted by the caller after deciding them). ``sign`` gets -1 for a row with a negative
        entry, 0 for an all-zero row, 1 otherwise; ``total`` and ``sigma_out`` the row sum and standard deviation,
        for the caller's exactness check; ``uncertain`` 1 for a row with an entry within ``band`` of its threshold.
        """
        rows, d = x.shape
        width = float(d)
        # the relative error bound of a float64 sum of d terms (in any order), with room for the few roundings
        # around it
        gamma = (d + 8) * _UNIT_ROUNDOFF
        row = x[0]
        shift = np.float64(row[0])
        s = 0.0
        shifted_squares = 0.0
        signs = bits[0, 0]  # OR of the bit patterns: negative when an entry's sign bit is set
        for j in range(d):  # the moments of row 0; every other row's are summed in the previous row's loop
            v = np.float64(row[j])
            s += v
            y = v - shift
            shifted_squares += y * y
            signs |= bits[0, j]
        for i in range(rows):
            row = x[i]
            last = i + 1 == rows
            following = row if last else x[i + 1]  # the last row sweeps itself again, in the same loop
            following_bits = bits[i] if last else bits[i + 1]
            mu = s / width
            offset = mu - shift
            mean_square = shifted_squares / width
            variance = mean_square - offset * offset
            sigma = math.sqrt(variance) if variance > 0.0 else 0.0
            threshold = eps * sigma
            # An upper bound on |computed - exact| of (h_ij - mu_i) - eps * sigma_i: the errors of the sums
            # (gamma times the sums of absolute values: mean |h| <= |mu| + sigma <= |mu| + 2 sqrt(mean_square) and
            # mean (h - c)**2 = mean_square), of the offset and of the variance, divided by sigma for its square
            # root; twice that, and the roundings of the threshold and of h_ij - mu_i. A row whose variance
            # cancelled away (sigma 0) has an infinite band: it is uncertain (or rescored as a constant row).
            error_mu = gamma * (abs(mu) + 2.0 * math.sqrt(mean_square))
            error_offset = error_mu + _UNIT_ROUNDOFF * abs(offset)
            error_variance = (gamma * mean_square + error_offset * (2.0 * abs(offset) + error_offset)
                              + 4.0 * _UNIT_ROUNDOFF * (offset * offset + abs(variance)))  # fmt: skip
            error_sigma = error_variance / sigma + 2.0 * _UNIT_ROUNDOFF * sigma if sigma > 0.0 else math.inf
            band = 2.0 * (error_mu + eps * error_sigma) + 8.0 * _UNIT_ROUNDOFF * (abs(mu) + threshold)
            # The cuts on the entries themselves (h_ij > mu_i + ...): no subtraction per entry. Their rounding,
            # u * |cut|, is within the band's 8u (|mu| + threshold) term, which has room for it.
            low_cut = mu + (threshold - band)
            high_cut = mu + (threshold + band)
            row_sum = s
            row_signs = signs
            shift = np.float64(following[0])
            s = 0.0
            shifted_squares = 0.0
            signs = following_bits[0]
            # 0/1 products instead of branches, so that the loop vectorizes; t * 0 is 0 for every finite t, and a
            # row holding NaN or Inf is rescored by the caller anyway. An entry above high_cut is in L_i, one at or
            # below low_cut is not; the row is uncertain when the two counts differ. ``acc`` sums the selected
            # entries; mu is taken off once per row, below.
            size = 0.0
            acc = 0.0
            above_low = 0.0
            above_high = 0.0
            for j in range(d):
                t = np.float64(row[j])
                above_low += 1.0 if t > low_cut else 0.0
                selected = 1.0 if t > high_cut else 0.0
                if count:
                    counts[j] += selected
                if masked:
                    above_high += selected
                    weight = selected * feature_mask[j]
                else:
                    weight = selected
                size += weight
                acc += t * weight
                v = np.float64(following[j])  # the following row, from memory
                s += v
                y = v - shift
                shifted_squares += y * y
                signs |= following_bits[j]
            if not masked:
                above_high = size
            near = above_low != above_high
            if count and near:  # take the row back out (the same expression decides the same way); the caller counts
                for j in range(d):
                    counts[j] -= 1.0 if np.float64(row[j]) > high_cut else 0.0
            negative = False
            if row_signs < 0:  # a sign bit: a negative entry, or only -0.0
                for j in range(d):
                    negative |= row[j] < 0
            # Without negative entries the L1 norm is the sum, and only an all-zero row sums to 0.
            l1 = row_sum
            if negative and mode == 2:
                l1 = 0.0
                for j in range(d):
                    l1 += abs(np.float64(row[j]))
            # sum over S_i of (h_ij - mu_i), with mu_i taken off once: every selected entry exceeds mu_i, so the
            # error of acc - size * mu_i is within (size + 2) u (deviations + 2 size |mu_i|), per selected entry at
            # most the error bound of mu_i itself (d u (|mu_i| + sigma_i)), which summing h_ij - mu_i carries too.
            deviations = acc - size * mu
            score = deviations / size if size > 0 else 0.0
            if mode == 1:
                score = score / sigma if sigma > 0 else 0.0
            elif mode == 2:
                score = score / l1 if l1 > 0 else 0.0
            q[i] = score
            num_selected[i] = int(size)
            sign[i] = -1.0 if negative else (0.0 if row_sum == 0 else 1.0)
            total[i] = row_sum
            sigma_out[i] = sigma
            uncertain[i] = near

    return _score_rows


def _compile(function: Callable[..., None]) -> Any:
    """``function`` compiled lazily (on the first call, per dtype), cached on disk where numba finds a writable
    folder (beside this file, else the user's cache folder); without one, numba refuses ``cache=True`` outright,
    so compile in memory (about 2 s per process) rather than lose the kernel."""
    options = {"nogil": True, "fastmath": _FASTMATH, "boundscheck": False}
    try:
        return numba.njit(cache=True, **options)(function)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(**options)(function)


_SCORE = _compile(_kernel_source(count=False, masked=False))
_SCORE_MASKED = _compile(_kernel_source(count=False, masked=True))
_COUNT = _compile(_kernel_source(count=True, masked=False))
_COUNT_MASKED = _compile(_kernel_source(count=True, masked=True))


def _score_rows(
    x: np.ndarray,
    bits: np.ndarray,
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
    """Score the rows of ``x`` (C-contiguous ``rows x d``, float32 or float64, at least one row; ``bits``: ``x``
    viewed as ``int32`` or ``int64``) into the 1-D outputs (see ``_kernel_source``); ``feature_mask``: ``D`` as 0/1
    float64, or an empty array for all features."""
    masked = feature_mask.shape[0] > 0
    args = (x, bits, eps, feature_mask, mode, counts, q, num_selected, sign, total, sigma_out, uncertain)
    if count and masked:
        _COUNT_MASKED(*args)
    elif count:
        _COUNT(*args)
    elif masked:
        _SCORE_MASKED(*args)
    else:
        _SCORE(*args)


score_rows = _compile(_score_rows)
