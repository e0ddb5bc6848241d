"""Three label-free extensions of Q-Score that keep its idea (issue 18, item 6), tried only in the benchmark.

Each keeps S_i = L_i ∩ D (SPEC §2-4: the features of a sample that stand far above its own mean and are neither rare
nor generic in the reference set) and changes one thing that the plain score gets wrong when it tracks the L2 norm:
- ``q_unit``: Q on the unit-L2 row, i.e. Q (normalize none) divided by ||h_i||_2: the norm itself carries no credit;
- ``q_knn_consensus``: S_i further restricted to features that are also highly activating in at least half of the
  sample's k nearest reference neighbours (cosine): only features the sample's neighbourhood agrees on count;
- ``q_feature_rank``: the mean over S_i of the percentile of h_ij among feature j's reference activations: how far the
  sample stands out for the data set, not within its own row, and free of magnitudes.

Plain NumPy in float64 over features that fit in memory (the benchmark's 10,000 x 512): the package's exact kernel
is not needed for a study. Each extension's own settings (eps, band, normalize) are chosen on validation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

EPS_GRID = (1.0, 2.0, 3.0, 4.0)
BAND_GRID = ((50.0, 95.0), (0.0, 100.0))
KNN_K = 10


@dataclass(frozen=True)
class ExtensionSetting:
    eps: float
    p_lo: float
    p_hi: float
    normalize: str = "none"

    @property
    def name(self) -> str:
        return f"eps={self.eps:g}, band={self.p_lo:g}-{self.p_hi:g}, normalize={self.normalize}"


def highly_activating(features: np.ndarray, eps: float) -> np.ndarray:
    """L_i as a boolean mask: ``h_ij > mu_i + eps * sigma_i`` (SPEC §2), in float64."""
    x = np.asarray(features, dtype=np.float64)
    return x > x.mean(axis=1, keepdims=True) + eps * x.std(axis=1, keepdims=True)


def discriminative(reference_mask: np.ndarray, p_lo: float, p_hi: float) -> np.ndarray:
    """D as a boolean mask over features (SPEC §3) from the reference set's L masks."""
    frequency = reference_mask.mean(axis=0)
    low, high = np.percentile(frequency, [p_lo, p_hi])
    return (frequency >= low) & (frequency <= high) & (frequency > 0)


def _mean_over(values: np.ndarray, selected: np.ndarray) -> np.ndarray:
    count = selected.sum(axis=1)
    total = np.where(selected, values, 0.0).sum(axis=1)
    return np.divide(total, count, out=np.zeros(len(count)), where=count > 0)


def q_unit(reference: np.ndarray, features: np.ndarray, setting: ExtensionSetting) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    selected = highly_activating(x, setting.eps) & discriminative(highly_activating(reference, setting.eps),
                                                                  setting.p_lo, setting.p_hi)  # fmt: skip
    q = _mean_over(x - x.mean(axis=1, keepdims=True), selected)
    return q / np.maximum(np.linalg.norm(x, axis=1), np.finfo(np.float64).tiny)


def nearest_reference(reference: np.ndarray, features: np.ndarray, k: int = KNN_K) -> np.ndarray:
    """Indices of each row's ``k`` nearest reference rows by cosine similarity (the reference is another set)."""
    unit = lambda a: a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)  # noqa: E731
    ref, queries = unit(np.asarray(reference, dtype=np.float64)), unit(np.asarray(features, dtype=np.float64))
    rows = []
    for start in range(0, len(queries), 2048):
        similarity = queries[start : start + 2048] @ ref.T
        rows.append(np.argpartition(-similarity, k - 1, axis=1)[:, :k])
    return np.concatenate(rows)


def q_knn_consensus(reference: np.ndarray, features: np.ndarray, setting: ExtensionSetting,
                    neighbours: np.ndarray) -> np.ndarray:  # fmt: skip
    x = np.asarray(features, dtype=np.float64)
    reference_mask = highly_activating(reference, setting.eps)
    consensus = reference_mask[neighbours].mean(axis=1) >= 0.5  # (N, d): fires in at least half of the neighbours
    selected = highly_activating(x, setting.eps) & discriminative(reference_mask, setting.p_lo, setting.p_hi) & consensus
    deviation = x - x.mean(axis=1, keepdims=True)
    if setting.normalize == "zscore":
        deviation = deviation / np.maximum(x.std(axis=1, keepdims=True), np.finfo(np.float64).tiny)
    return _mean_over(deviation, selected)


def q_feature_rank(reference: np.ndarray, features: np.ndarray, setting: ExtensionSetting) -> np.ndarray:
    x, ref = np.asarray(features, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    selected = highly_activating(x, setting.eps) & discriminative(highly_activating(ref, setting.eps),
                                                                  setting.p_lo, setting.p_hi)  # fmt: skip
    ordered = np.sort(ref, axis=0)
    percentile = np.stack([np.searchsorted(ordered[:, j], x[:, j], side="right") for j in range(x.shape[1])], axis=1)
    return _mean_over(percentile / len(ref), selected)


def settings_of(name: str) -> list[ExtensionSetting]:
    normalizes = ("none", "zscore") if name == "q_knn_consensus" else ("none",)
    return [ExtensionSetting(eps, lo, hi, normalize) for eps in EPS_GRID for lo, hi in BAND_GRID for normalize in normalizes]


EXTENSIONS = ("q_unit", "q_knn_consensus", "q_feature_rank")


def scorer(name: str, reference: np.ndarray) -> Callable[[np.ndarray, ExtensionSetting, np.ndarray], np.ndarray]:
    """``score(features, setting, neighbours)`` of extension ``name`` against ``reference``."""
    if name == "q_unit":
        return lambda features, setting, neighbours: q_unit(reference, features, setting)
    if name == "q_knn_consensus":
        return lambda features, setting, neighbours: q_knn_consensus(reference, features, setting, neighbours)
    if name == "q_feature_rank":
        return lambda features, setting, neighbours: q_feature_rank(reference, features, setting)
    raise ValueError(f"unknown extension {name!r}; choose from {EXTENSIONS}")
