"""How alive a representation is: the fraction of dead features and the effective rank (RankMe).

Both are label-free and cheap, and they catch what a collapsing regularizer does before a linear probe would:
features that never fire, and a representation whose variance lives in a handful of directions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .distributed import all_reduce_max, all_reduce_sum
from .score import tensor_of

__all__ = ["FeatureHealth", "RunningFeatureHealth", "effective_rank", "feature_health"]


@dataclass
class FeatureHealth:
    """Dead-feature fraction, effective rank and mean activation of a set of representations."""

    dead_fraction: float
    """Fraction of features whose maximum over the set is <= 0 (a ReLU unit that never fires)."""
    effective_rank: float
    """RankMe (Garrido et al. 2023): ``exp`` of the entropy of the normalized singular values of the centred
    features; between 1 (one direction) and ``min(N, d)``."""
    mean_activation: float
    num_samples: int

    def to_dict(self) -> dict[str, float]:
        return {"dead_fraction": self.dead_fraction, "effective_rank": self.effective_rank,
                "mean_activation": self.mean_activation, "num_samples": self.num_samples}  # fmt: skip


def effective_rank(singular_values: Tensor | np.ndarray) -> float:
    """RankMe of a spectrum: ``exp(-sum p_k log p_k)`` with ``p_k = s_k / sum s`` (1.0 for an all-zero spectrum)."""
    s = tensor_of(singular_values).to(torch.float64).clamp(min=0)
    total = float(s.sum())
    if total <= 0:
        return 1.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def feature_health(features: Tensor | np.ndarray) -> FeatureHealth:
    """``FeatureHealth`` of an ``N x d`` matrix, computed in float64."""
    x = tensor_of(features).double()
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"features must be a non-empty N x d matrix; got shape {tuple(x.shape)}.")
    singular = torch.linalg.svdvals(x - x.mean(dim=0))
    return FeatureHealth(float((x.amax(dim=0) <= 0).double().mean()), effective_rank(singular), float(x.mean()),
                         int(x.shape[0]))  # fmt: skip


class RunningFeatureHealth:
    """``FeatureHealth`` accumulated over batches in O(d^2) memory (per-feature max, sum and the Gram matrix), and
    summed across processes with ``all_reduce``; the training loop's per-epoch monitor."""

    def __init__(self, num_features: int, device: torch.device | str = "cpu") -> None:
        self.num_features = int(num_features)
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        d = self.num_features
        self.maximum = torch.full((d,), -torch.inf, dtype=torch.float64, device=self.device)
        # Sums around a shift (the first batch's mean): centring a raw Gram matrix would cancel catastrophically when
        # the features' mean is large against their spread, exactly the collapsed case this monitor must catch.
        self.shift: Tensor | None = None
        self.total = torch.zeros(d, dtype=torch.float64, device=self.device)
        self.gram = torch.zeros(d, d, dtype=torch.float64, device=self.device)
        self.count = 0

    @torch.no_grad()
    def update(self, features: Tensor) -> None:
        x = features.detach().to(self.device, torch.float64)
        if x.dim() != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"features must be N x {self.num_features}; got shape {tuple(x.shape)}.")
        if self.shift is None:
            self.shift = x.mean(dim=0)
        self.maximum = torch.maximum(self.maximum, x.amax(dim=0))
        centred = x - self.shift
        self.total += centred.sum(dim=0)
        self.gram += centred.T @ centred
        self.count += x.shape[0]

    @torch.no_grad()
    def all_reduce(self) -> None:
        """Merge every process's accumulators (a no-op in one process): each moves its sums to the processes' mean
        shift, then they are added."""
        d = self.num_features
        shift = torch.zeros(d, dtype=torch.float64, device=self.device) if self.shift is None else self.shift
        seen = float(self.shift is not None)
        packed = all_reduce_sum(torch.cat([shift * seen, shift.new_tensor([seen])]))
        common = packed[:d] / packed[-1].clamp(min=1.0)
        delta = shift - common  # x - c = (x - s) + delta: G_c = G_s + T delta^T + delta T^T + n delta delta^T
        gram = self.gram + torch.outer(self.total, delta) + torch.outer(delta, self.total) + self.count * torch.outer(delta, delta)
        total = self.total + self.count * delta
        self.maximum = all_reduce_max(self.maximum)
        packed = all_reduce_sum(torch.cat([total, gram.reshape(-1), total.new_tensor([float(self.count)])]))
        self.total, self.gram, self.count = packed[:d], packed[d : d + d * d].reshape(d, d), int(packed[-1])
        self.shift = common

    def compute(self) -> FeatureHealth:
        if self.count == 0:
            raise ValueError("no features were seen; call update(features) first.")
        shifted_mean = self.total / self.count
        centred_gram = self.gram - self.count * torch.outer(shifted_mean, shifted_mean)
        eigenvalues = torch.linalg.eigvalsh(centred_gram)
        # Rounding noise of the eigen-solver, not variance: below d * machine epsilon of the largest eigenvalue.
        floor = self.num_features * torch.finfo(torch.float64).eps * float(eigenvalues.abs().max())
        eigenvalues = torch.where(eigenvalues > floor, eigenvalues, 0.0)
        mean = shifted_mean + self.shift
        return FeatureHealth(float((self.maximum <= 0).double().mean()), effective_rank(eigenvalues.sqrt()),
                             float(mean.mean()), self.count)  # fmt: skip
