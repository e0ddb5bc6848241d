"""``eps="auto"`` (SPEC §2): the highly-activating threshold calibrated on the reference set.

The paper's ``eps = 4`` assumes features that stand far above their row's mean; on young or small encoders most rows
then have an empty ``L_i`` and score 0 (a degenerate score). ``eps="auto"`` takes the largest ``eps`` for which a
fraction ``coverage`` (default 0.9) of the reference rows (the set that gives ``A_j``) keeps a non-empty ``L_i``.

``L_i`` is non-empty exactly when the row's largest z-score ``z_i = max_j (h_ij - mu_i) / sigma_i`` exceeds ``eps``.
With ``z_(m)`` the ``m``-th largest ``z_i``, ``m = ceil(coverage * N)``, every ``eps < z_(m)`` qualifies; the resolved
value is the largest multiple of 0.01 strictly below ``z_(m)``, a number a person can read, save and pass back.

That value only depends on which 0.01-wide bin ``(b / 100, (b + 1) / 100]`` each ``z_i`` falls in, so the calibration
streams: a histogram of ``O(sqrt(d))`` bins (``z_i <= sqrt(d - 1)`` for any row), summed across processes like
``ActivationStats``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .baselines import max_zscore
from .distributed import all_reduce_sum
from .eps import AUTO, eps_argument, is_auto, parse_eps
from .score import tensor_of

__all__ = ["AUTO", "DEFAULT_COVERAGE", "EpsCalibrator", "calibrate_eps", "eps_argument", "is_auto", "parse_eps"]

DEFAULT_COVERAGE = 0.9
_STEP = 100  # the resolved eps is a multiple of 1 / _STEP


class EpsCalibrator:
    """Streaming ``eps="auto"``: ``update`` with reference batches, ``all_reduce`` under torch.distributed, then
    ``resolve(coverage)``."""

    def __init__(self, num_features: int, device: torch.device | str = "cpu", bins: Tensor | None = None) -> None:
        if num_features < 1:
            raise ValueError(f"num_features must be positive; got {num_features}.")
        self.num_features = int(num_features)
        # bins[b + 1] counts rows with z in (b / 100, (b + 1) / 100]; bins[0] the rows with z <= 0 (constant rows).
        # ``bins`` may be a module's buffer, so that a checkpoint keeps a calibration in progress.
        self.bins = self.empty_bins(num_features, device) if bins is None else bins

    @staticmethod
    def empty_bins(num_features: int, device: torch.device | str = "cpu") -> Tensor:
        """The zeroed histogram for ``num_features`` features."""
        return torch.zeros(math.ceil(_STEP * math.sqrt(max(1, num_features - 1))) + 2, dtype=torch.int64, device=device)

    def update(self, features: Tensor | np.ndarray) -> "EpsCalibrator":
        """Count the maximum z-scores of a batch of ``N x d`` reference features (a tensor, an array or a list)."""
        features = _as_matrix(features)
        if features.shape[1] != self.num_features:
            raise ValueError(
                f"features have shape {tuple(features.shape)} but this calibrator counts rows of {self.num_features} "
                "features; calibrate each model's features separately."
            )
        try:
            z = torch.from_numpy(max_zscore(features))
        except ValueError:  # NaN or Inf somewhere: name the rows
            finite = torch.isfinite(tensor_of(features)).all(dim=1)
            if bool(finite.all()):
                raise
            rows = (~finite).nonzero().squeeze(1)[:5].tolist()
            raise ValueError(
                f"reference features contain NaN or Inf in row(s) {rows} (first offending rows shown); eps='auto' "
                "cannot calibrate on them. Check the encoder's numerics (e.g. fp16 overflow) or drop those samples."
            ) from None
        index = (torch.ceil(z * _STEP).long() - 1).clamp(min=-1, max=self.bins.numel() - 2) + 1
        self.bins += torch.bincount(index, minlength=self.bins.numel()).to(self.bins.device)
        return self

    def reset(self) -> "EpsCalibrator":
        self.bins.zero_()
        return self

    def all_reduce(self) -> "EpsCalibrator":
        self.bins.copy_(all_reduce_sum(self.bins))
        return self

    @property
    def num_samples(self) -> int:
        return int(self.bins.sum())

    def resolve(self, coverage: float = DEFAULT_COVERAGE) -> float:
        """The largest multiple of 0.01 below which ``coverage`` of the rows seen have their maximum z-score."""
        if not 0.0 < coverage <= 1.0:
            raise ValueError(f"coverage must lie in (0, 1]; got {coverage}.")
        total = self.num_samples
        if total == 0:
            raise ValueError("eps='auto' needs reference samples to calibrate on; none were seen.")
        needed = math.ceil(coverage * total - 1e-9)  # the tolerance keeps 0.9 * 10 at 9 (it is 9.000000000000002)
        above = torch.flip(self.bins[1:], [0]).cumsum(0)  # rows with z above each bin's lower edge, top bin first
        reached = int(torch.nonzero(above >= needed)[0]) if bool((above >= needed).any()) else None
        bin_index = None if reached is None else self.bins.numel() - 2 - reached
        if bin_index is None or bin_index <= 0:
            raise ValueError(
                f"eps='auto' cannot reach coverage {coverage:g}: fewer than {needed} of the {total} reference samples "
                f"have a feature more than 0.01 standard deviations above their mean (constant or near-constant "
                "representations). Check the encoder, or lower the coverage."
            )
        return bin_index / _STEP


def calibrate_eps(reference: Tensor | np.ndarray, coverage: float = DEFAULT_COVERAGE) -> float:
    """``eps="auto"`` of an ``N x d`` reference matrix (a tensor, an array, a memory map or a list of rows)."""
    reference = _as_matrix(reference)
    return EpsCalibrator(reference.shape[1]).update(reference).resolve(coverage)


def _as_matrix(features: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """``features`` (a list becomes a float32 array) if it is a non-empty 2-D matrix, else ``ValueError`` in one line."""
    if not isinstance(features, (Tensor, np.ndarray)):
        features = np.asarray(features, dtype=np.float32)
    if len(features.shape) != 2 or 0 in features.shape:
        raise ValueError(
            "eps='auto' calibrates on a (num_samples, num_features) matrix of reference features, one row per "
            f"sample; got shape {tuple(features.shape)}."
        )
    return features
