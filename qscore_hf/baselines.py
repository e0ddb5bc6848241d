"""Label-free per-sample baselines that every misclassification report puts beside Q-Score (SPEC §5).

Each is a score from the same representations, higher meaning "more likely classified correctly", so that a reader
sees whether Q-Score adds anything on their model and data:

- ``l2_norm``: ``||h_i||_2``;
- ``hoyer_sparsity``: ``(sqrt(d) - ||h_i||_1 / ||h_i||_2) / (sqrt(d) - 1)``, 0 for a dense row, 1 for a one-hot one;
- ``max_zscore``: ``max_j (h_ij - mu_i) / sigma_i``;
- ``knn_density``: the mean cosine similarity of ``h_i`` to its ``k`` nearest neighbours in a reference set (the
  probe's training features), a sample never being its own neighbour;

and the label-using ceiling ``probe_confidence``: the linear probe's maximum softmax probability.

All are computed chunk by chunk in float64 after dividing each row by its largest magnitude, so they are exact at
any finite magnitude (``l2_norm`` multiplies the scale back).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .devices import resolve_device
from .score import as_feature_matrix, tensor_of

__all__ = [
    "BASELINES",
    "CEILING",
    "baseline_scores",
    "hoyer_sparsity",
    "knn_density",
    "l2_norm",
    "max_zscore",
    "probe_confidence",
]

BASELINES = ("l2_norm", "hoyer_sparsity", "max_zscore", "knn_density")
"""The label-free baselines, in report order."""
CEILING = "probe_confidence"
"""The label-using ceiling: a label-free score is not expected to beat it."""

ArrayLike = Tensor | np.ndarray
_ROW_CHUNK = 4096
# Elements of one query x reference similarity block of knn_density (64 MiB in float32).
_BLOCK_ELEMENTS = 2**24


def _scaled_rows(rows: ArrayLike) -> tuple[Tensor, Tensor]:
    """Rows divided by their largest magnitude (float64) and that magnitude (0 for an all-zero row)."""
    x = torch.from_numpy(np.array(rows, dtype=np.float64)) if not isinstance(rows, Tensor) else rows.detach()
    x = as_feature_matrix(x).to(torch.float64)
    scale = _finite_row_scale(x)
    return x / torch.where(scale > 0, scale, 1.0), scale.squeeze(1)


def _finite_row_scale(x: Tensor) -> Tensor:
    """Each row's largest magnitude ``(N, 1)``, or ``ValueError`` when a row holds NaN or Inf (both propagate into
    the maximum, so one small check covers the whole matrix)."""
    scale = x.abs().amax(dim=1, keepdim=True)
    if not bool(torch.isfinite(scale).all()):
        raise ValueError("features contain NaN or Inf; baselines are undefined there.")
    return scale


def _as_matrix(features: ArrayLike) -> ArrayLike:
    """Tensors, arrays and memory maps as they are (read chunk by chunk later); anything else (nested lists) as a
    float32 array."""
    return features if hasattr(features, "shape") else np.asarray(features, dtype=np.float32)


def _num_rows(features: ArrayLike) -> int:
    if len(features.shape) != 2:
        raise ValueError(f"features must be a 2-D (num_samples, num_features) matrix; got shape {tuple(features.shape)}.")
    return int(features.shape[0])


def _per_row(features: ArrayLike, function: Callable[[Tensor, Tensor], Tensor]) -> np.ndarray:
    """``function(scaled rows, row scales)`` over row chunks (a memory map is read one chunk at a time)."""
    features = _as_matrix(features)
    num_rows = _num_rows(features)
    if num_rows == 0:
        raise ValueError("features is an empty batch (0 rows); pass at least one sample.")
    parts = [function(*_scaled_rows(features[start : start + _ROW_CHUNK])) for start in range(0, num_rows, _ROW_CHUNK)]
    return torch.cat(parts).cpu().numpy()


def l2_norm(features: ArrayLike) -> np.ndarray:
    """``||h_i||_2`` of every row (float64)."""
    return _per_row(features, lambda rows, scale: torch.linalg.vector_norm(rows, dim=1) * scale)


def hoyer_sparsity(features: ArrayLike) -> np.ndarray:
    """Hoyer's sparsity ``(sqrt(d) - ||h_i||_1 / ||h_i||_2) / (sqrt(d) - 1)`` of every row, in [0, 1]; 0 for an
    all-zero row (nothing stands out) and for ``d = 1``."""

    def hoyer(rows: Tensor, scale: Tensor) -> Tensor:
        d = rows.shape[1]
        if d == 1:
            return torch.zeros(rows.shape[0], dtype=rows.dtype, device=rows.device)
        l1, l2 = rows.abs().sum(dim=1), torch.linalg.vector_norm(rows, dim=1)
        ratio = torch.where(scale > 0, l1 / torch.where(scale > 0, l2, 1.0), math.sqrt(d))
        return (math.sqrt(d) - ratio) / (math.sqrt(d) - 1)

    return _per_row(features, hoyer)


def max_zscore(features: ArrayLike) -> np.ndarray:
    """``max_j (h_ij - mu_i) / sigma_i`` of every row (population std); 0 for a constant row."""

    def zscore(rows: Tensor, scale: Tensor) -> Tensor:
        deviation = rows - rows.mean(dim=1, keepdim=True)
        sigma = torch.linalg.vector_norm(deviation, dim=1) / math.sqrt(rows.shape[1])
        constant = rows.amax(dim=1) == rows.amin(dim=1)
        return torch.where(constant, 0.0, deviation.amax(dim=1) / torch.where(constant, 1.0, sigma))

    return _per_row(features, zscore)


def _unit_rows(rows: ArrayLike, device: torch.device) -> Tensor:
    """Rows scaled to unit L2 norm in float32 on ``device`` (all-zero rows stay 0: cosine 0 to everything).

    Dividing by the row's largest magnitude first keeps the norm finite and exact at any magnitude, in float32."""
    x = torch.from_numpy(np.array(rows, dtype=np.float32)) if not isinstance(rows, Tensor) else rows.detach()
    x = as_feature_matrix(x).to(device, torch.float32)
    scale = _finite_row_scale(x)
    x = x / torch.where(scale > 0, scale, 1.0)
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return x / torch.where(norm > 0, norm, 1.0)


@torch.no_grad()
def knn_density(
    features: ArrayLike,
    reference: ArrayLike | None = None,
    k: int = 10,
    query_chunk: int | None = None,
    reference_chunk: int | None = None,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Mean cosine similarity of each row of ``features`` to its ``k`` nearest rows of ``reference`` (float64).

    Args:
        features: ``N x d`` queries (a tensor, an array or a read-only memory map).
        reference: ``M x d`` reference set, e.g. the linear probe's training features; ``None`` scores ``features``
            against themselves, where row ``i`` is never its own neighbour.
        k: neighbours per query (fewer when the reference has fewer rows).
        query_chunk, reference_chunk: rows per block of the similarity matrix; by default blocks of about 64 MiB, so
            memory beyond the (unit-normalized) queries stays bounded whatever ``M`` (e.g. 10k queries against 1M
            references of 2048, read chunk by chunk from a memory map).
        device: where the blocks are multiplied; the GPU when available by default.

    A running top-``k`` is merged block by block (exact; the result does not depend on the chunk sizes).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be a whole number of neighbours (e.g. 10); got {k!r}.")
    exclude_self = reference is None
    queries = _as_matrix(features)
    reference = queries if reference is None else _as_matrix(reference)
    num_queries, num_reference = _num_rows(queries), _num_rows(reference)
    if queries.shape[1] != reference.shape[1]:
        raise ValueError(
            f"features have {queries.shape[1]} columns but the reference set has {reference.shape[1]}; "
            "use features of the same model for both."
        )
    available = num_reference - (1 if exclude_self else 0)
    if k < 1:
        raise ValueError(f"k must be a positive number of neighbours; got {k}.")
    if available < 1:
        raise ValueError("the reference set needs at least one row other than the query itself.")
    k = min(k, available)
    device = resolve_device(device)
    query_chunk = query_chunk or max(1, min(num_queries, 4096))
    reference_chunk = reference_chunk or max(k + 1, _BLOCK_ELEMENTS // query_chunk)
    if query_chunk < 1 or reference_chunk < 1:
        raise ValueError("query_chunk and reference_chunk must be positive numbers of rows.")
    # The unit queries are held (the size of the input); each reference chunk is normalized once and compared with
    # every block of queries, so memory is the queries plus one chunk and one similarity block.
    unit_queries = torch.cat([_unit_rows(queries[start : start + query_chunk], device)
                              for start in range(0, num_queries, query_chunk)])  # fmt: skip
    best = torch.full((num_queries, k), -torch.inf, device=device)
    for r_start in range(0, num_reference, reference_chunk):
        r = _unit_rows(reference[r_start : r_start + reference_chunk], device)
        for q_start in range(0, num_queries, query_chunk):
            q = unit_queries[q_start : q_start + query_chunk]
            similarity = q @ r.T
            if exclude_self:  # query i is reference row q_start + i
                rows = torch.arange(q.shape[0], device=device)
                columns = rows + q_start - r_start
                inside = (columns >= 0) & (columns < r.shape[0])
                similarity[rows[inside], columns[inside]] = -torch.inf
            block = best[q_start : q_start + query_chunk]
            best[q_start : q_start + query_chunk] = torch.cat([block, similarity], dim=1).topk(k, dim=1).values
    return best.double().mean(dim=1).cpu().numpy()


def probe_confidence(logits: ArrayLike) -> np.ndarray:
    """The label-using ceiling: the maximum softmax probability of a linear probe's ``N x C`` logits (float64)."""
    z = tensor_of(logits).detach().double()
    return torch.softmax(z, dim=1).amax(dim=1).cpu().numpy()


def baseline_scores(
    features: ArrayLike, reference: ArrayLike | None = None, k: int = 10, device: str | torch.device | None = None
) -> dict[str, np.ndarray]:
    """Every label-free baseline of ``features`` as ``{name: (N,) float64}`` in ``BASELINES`` order; without a
    ``reference`` set, ``knn_density`` is left out (it needs one)."""
    scores = {"l2_norm": l2_norm(features), "hoyer_sparsity": hoyer_sparsity(features),
              "max_zscore": max_zscore(features)}  # fmt: skip
    if reference is not None:
        scores["knn_density"] = knn_density(features, reference, k=k, device=device)
    return scores
