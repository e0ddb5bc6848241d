"""Interpretability of the features behind Q-Score (SPEC §7): heatmaps of each sample's selected features, their
overlap with core and spurious image regions, and overlay PNGs.

For sample ``i`` the explained features are its top-k features of ``S_i = L_i ∩ D`` by value (``D`` from the model's
saved activation statistics, all features when it has none). Two heatmap methods, named in every output:

- ``"gradient"`` (default): ``|d h_ij / d x|``, the absolute input gradient, max over colour channels;
- ``"gradcam"``: Grad-CAM on the last convolutional stage (``backbone.forward_features``): the stage's channels
  weighted by the spatial mean of their gradient, ReLU, bilinearly upsampled to the input size. For a ResNet's
  average-pooled feature ``j`` this is the activation map of channel ``j``.

Each feature's map is divided by its maximum (so it lies in [0, 1]); a sample's heatmap combines its (up to k) maps
by their mean (or max) and is normalized again. A sample with an empty ``S_i`` has no heatmap (all zeros) and no IoU
(NaN, left out of the means). Gradients for all samples of a batch come from one backward pass per feature rank: the
batch sum of ``h_{i, j_i}`` with one feature per sample (samples are independent in eval mode).
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, Sequence

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm
from transformers.image_utils import PILImageResampling, get_image_size

from .data import ImageDataset
from .devices import resolve_device
from .features import class_indices
from .io_utils import atomic_directory
from .modeling_qscore import QScoreModel
from .score import as_feature_mask, highly_activating, qscore_details

__all__ = [
    "BatchExplanation",
    "DatasetExplanation",
    "METHODS",
    "Overlay",
    "align_masks",
    "binarize_top",
    "explain_batch",
    "explain_dataset",
    "feature_heatmaps",
    "iou",
    "plot_overlay",
    "save_explanation",
    "select_top_features",
]

Method = Literal["gradient", "gradcam"]
Combine = Literal["mean", "max"]
METHODS = {
    "gradient": "absolute input gradient |d h_ij / d x|, max over colour channels",
    "gradcam": "Grad-CAM on the last convolutional stage (backbone.forward_features), upsampled bilinearly",
}
COMBINE_OPTIONS = ("mean", "max")
EXPLAIN_FILE = "explain.json"
PER_SAMPLE_FILE = "per_sample.parquet"
IMAGES_DIR = "images"
CORRECT_COLUMN = "correct"


# ------------------------------------------------------------------------------------------------- heatmaps
def select_top_features(
    features: Tensor, discriminative: Tensor | None = None, eps: float = 4.0, top_k: int = 5
) -> tuple[Tensor, Tensor]:
    """Each sample's top-k features of ``S_i = L_i ∩ D`` by value.

    Returns ``(indices, valid)``, both ``(N, min(top_k, d))``: feature indices in decreasing value and whether each
    slot holds a selected feature (a sample with ``|S_i| < k`` has ``k - |S_i|`` invalid slots, ignored).
    """
    if top_k < 1:
        raise ValueError(f"top_k must be a positive number of features; got {top_k}.")
    features = features.detach()
    selected = highly_activating(features, eps)
    mask = as_feature_mask(discriminative, features.shape[1], features.device)
    if mask is not None:
        selected &= mask
    values, indices = features.float().masked_fill(~selected, -math.inf).topk(min(top_k, features.shape[1]), dim=1)
    return indices, torch.isfinite(values)


def _normalize_maps(maps: Tensor) -> Tensor:
    """Divide each non-negative ``(..., H, W)`` map by its maximum; all-zero maps stay zero."""
    peak = maps.flatten(-2).amax(-1)[..., None, None]
    return maps / peak.clamp(min=torch.finfo(maps.dtype).tiny)


def _forward(model: QScoreModel, pixel_values: Tensor, method: Method) -> tuple[Tensor, Tensor]:
    """Pooled features and the tensor the heatmap differentiates against (the input, or the last conv stage)."""
    if method == "gradient":
        pixels = pixel_values.detach().requires_grad_(True)
        return model.backbone(pixels), pixels
    stage = model.backbone.forward_features(pixel_values)
    if stage.dim() != 4:
        raise ValueError(
            f"method='gradcam' needs a convolutional backbone whose forward_features returns (batch, channels, height, "
            f"width); {model.config.backbone!r} returns shape {tuple(stage.shape)}. Use method='gradient'."
        )
    return model.backbone.forward_head(stage, pre_logits=True), stage


def _rank_map(gradient: Tensor, wrt: Tensor, method: Method, size: tuple[int, int]) -> Tensor:
    """One normalized ``(N, H, W)`` map per sample from the gradient of the selected features."""
    if method == "gradient":
        return _normalize_maps(gradient.abs().amax(dim=1).float())
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * wrt.detach()).sum(dim=1, keepdim=True)).float()
    return _normalize_maps(F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[:, 0])


@dataclass
class BatchExplanation:
    """Heatmaps of one batch and what they explain."""

    heatmaps: Tensor
    """``(N, H, W)`` float32 in [0, 1]: the combined map of each sample's selected features (zeros if none)."""
    feature_indices: Tensor
    """``(N, k)`` int64 top features of ``S_i`` in decreasing value; only slots with ``feature_valid`` count."""
    feature_valid: Tensor
    """``(N, k)`` bool: which slots of ``feature_indices`` hold a selected feature."""
    q_scores: Tensor
    """``(N,)`` Q-Scores with the model's settings (SPEC §4)."""
    num_selected: Tensor
    """``(N,)`` int64 ``|S_i|``."""


def explain_batch(
    model: QScoreModel, pixel_values: Tensor, top_k: int = 5, method: Method = "gradient", combine: Combine = "mean"
) -> BatchExplanation:
    """Heatmaps of each sample's top-k features of ``S_i`` (see the module docstring), with Q-Scores.

    ``pixel_values`` as the model's image processor makes them, on the model's device. The model runs in eval mode
    (its mode is restored): batch norm in training mode would mix samples and break the one-backward-per-rank trick.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}; got {method!r}.")
    if combine not in COMBINE_OPTIONS:
        raise ValueError(f"combine must be one of {COMBINE_OPTIONS}; got {combine!r}.")
    config = model.config
    discriminative = model.discriminative_features()
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            features, wrt = _forward(model, pixel_values, method)
            indices, valid = select_top_features(features, discriminative, config.qscore_eps, top_k)
            maps = []
            for rank in range(indices.shape[1]):
                target = (features.gather(1, indices[:, rank : rank + 1]).squeeze(1) * valid[:, rank]).sum()
                (gradient,) = torch.autograd.grad(target, wrt, retain_graph=rank + 1 < indices.shape[1])
                maps.append(_rank_map(gradient, wrt, method, tuple(pixel_values.shape[-2:])))
    finally:
        model.train(was_training)
    details = qscore_details(features.detach(), discriminative, config.qscore_eps, config.qscore_normalize)
    return BatchExplanation(_combine(torch.stack(maps, dim=1), valid, combine), indices, valid, details.q_scores,
                            details.num_selected)  # fmt: skip


def _combine(maps: Tensor, valid: Tensor, combine: Combine) -> Tensor:
    """Combine ``(N, k, H, W)`` per-feature maps over each sample's valid slots into ``(N, H, W)`` in [0, 1]."""
    # An invalid slot's feature entered the backward target with weight 0, so its map is zero already.
    combined = maps.amax(dim=1) if combine == "max" else maps.sum(dim=1) / valid.sum(dim=1).clamp(min=1)[:, None, None]
    return _normalize_maps(combined)


def feature_heatmaps(
    model: QScoreModel, pixel_values: Tensor, top_k: int = 5, method: Method = "gradient", combine: Combine = "mean"
) -> Tensor:
    """``(N, H, W)`` heatmaps in [0, 1] of each sample's top-k features of ``S_i``; see ``explain_batch``."""
    return explain_batch(model, pixel_values, top_k, method, combine).heatmaps


def binarize_top(heatmap: Tensor, fraction: float = 0.1) -> Tensor:
    """Boolean mask of the ``round(fraction * H * W)`` highest pixels (at least one) of each ``(..., H, W)`` map.

    Exactly that many pixels are kept per map; ties at the threshold are broken by position (``torch.topk``).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1]; got {fraction}.")
    flat = heatmap.flatten(-2)
    keep = max(1, math.floor(fraction * flat.shape[-1] + 0.5))
    mask = torch.zeros(flat.shape, dtype=torch.bool, device=heatmap.device)
    mask.scatter_(-1, flat.topk(keep, dim=-1).indices, True)
    return mask.view(heatmap.shape)


def iou(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union of boolean ``(..., H, W)`` masks, per map (float32; NaN where both are empty)."""
    if a.shape != b.shape:
        raise ValueError(f"masks must have the same shape; got {tuple(a.shape)} and {tuple(b.shape)}.")
    a, b = a.bool(), b.bool()
    intersection = (a & b).flatten(-2).sum(-1).float()
    union = (a | b).flatten(-2).sum(-1).float()
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.full_like(union, math.nan))


# --------------------------------------------------------------------------------------------------- masks
def _image_size(image: Any) -> tuple[int, int]:
    """``(height, width)`` of a PIL image or an image array."""
    if isinstance(image, Image.Image):
        return image.height, image.width
    array = np.asarray(image)
    return array.shape if array.ndim == 2 else get_image_size(array)


def _mask_image(value: Any, size: tuple[int, int], column: str, row: int) -> np.ndarray:
    """A mask cell (PIL image or array, non-zero = inside) as a ``(H, W)`` uint8 0/255 array of the image's size."""
    array = np.asarray(value.convert("L") if isinstance(value, Image.Image) else value)
    array = np.squeeze(array)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        array = array.max(axis=-1)
    if array.ndim != 2:
        raise ValueError(
            f"mask column {column!r}, row {row}: expected a 2-D mask (image or array), got shape {array.shape}."
        )
    mask = Image.fromarray(np.where(array > 0, 255, 0).astype(np.uint8))
    if (mask.height, mask.width) != size:
        mask = mask.resize((size[1], size[0]), Image.Resampling.NEAREST)
    return np.asarray(mask)


def align_masks(
    processor: Any, masks: Sequence[Any], images: Sequence[Any], column: str = "mask", start: int = 0
) -> Tensor:
    """Binary masks aligned with the model input: ``(N, H, W)`` bool, like ``processor(images)["pixel_values"]``.

    Each mask (PIL image or array, non-zero = inside) is first resized to its image's size, then goes through the
    image processor's resize and centre crop, all with nearest-neighbour interpolation. ``column`` and ``start`` (the
    first row's index) only name the offending row in errors.
    """
    arrays = [_mask_image(mask, _image_size(image), column, start + k)
              for k, (mask, image) in enumerate(zip(masks, images))]  # fmt: skip
    out = processor(arrays, resample=PILImageResampling.NEAREST, do_rescale=False, do_normalize=False,
                    return_tensors="pt")["pixel_values"]  # fmt: skip
    return out[:, 0] > 0


# ------------------------------------------------------------------------------------------------- dataset
@dataclass
class Overlay:
    """What one overlay PNG shows."""

    row_id: int
    image: np.ndarray  # (H, W, 3) in [0, 1]: the model's input, de-normalized
    heatmap: np.ndarray
    region: np.ndarray  # binarized heatmap
    caption: str
    masks: dict[str, np.ndarray]  # core / spurious, aligned with the input


@dataclass
class DatasetExplanation:
    """Result of ``explain_dataset``: one row per sample, the settings and means, and the overlays to draw."""

    per_sample: dict[str, list]
    summary: dict[str, Any]
    overlays: list[Overlay]


def _check_columns(image_dataset: ImageDataset, mask_columns: Sequence[str], correct_column: str | None) -> str | None:
    """Validate the mask columns; return the correctness column to use (``"correct"`` when present), or ``None``."""
    columns = list(image_dataset.dataset.features or {})
    if len(mask_columns) not in (0, 2):
        raise ValueError(f"mask_columns must name two columns (core, spurious); got {list(mask_columns)}.")
    for column in [*mask_columns, *([correct_column] if correct_column else [])]:
        if column not in columns:
            raise ValueError(
                f"data set {image_dataset.name!r} has no column {column!r}; its columns are {columns}. "
                "Fix --mask-columns (core,spurious) or --correct-column."
            )
    if correct_column is None and CORRECT_COLUMN in columns:
        return CORRECT_COLUMN
    return correct_column


def _correctness(values: list, column: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype != bool and not np.isin(array, (0, 1)).all():
        raise ValueError(f"correctness column {column!r} must hold 0/1 or booleans; got values {np.unique(array)[:5]}.")
    return array.astype(bool)


def _display_images(processor: Any, pixel_values: Tensor) -> np.ndarray:
    """``(N, H, W, 3)`` images in [0, 1] from processed pixel values (normalization undone)."""
    pixels = pixel_values.detach().float().cpu()
    if processor.do_normalize:
        mean = torch.tensor(processor.image_mean, dtype=pixels.dtype)[:, None, None]
        std = torch.tensor(processor.image_std, dtype=pixels.dtype)[:, None, None]
        pixels = pixels * std + mean
    return pixels.clamp(0, 1).permute(0, 2, 3, 1).numpy()


def _nan_mean(values: np.ndarray) -> float | None:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else None


def _group_means(per_sample: dict[str, list], iou_columns: list[str], correct: np.ndarray | None) -> dict[str, Any]:
    """Means of Q-Score and the IoUs over all samples and, with correctness, over correct / misclassified ones."""
    has_heatmap = np.asarray(per_sample["num_selected"]) > 0
    groups = {"all": np.ones_like(has_heatmap)}
    if correct is not None:
        groups.update(correct=correct, misclassified=~correct)
    means = {}
    for name, members in groups.items():
        entry: dict[str, Any] = {
            "num_samples": int(members.sum()), "num_with_heatmap": int((members & has_heatmap).sum())
        }  # fmt: skip
        entry["q_score"] = _nan_mean(np.asarray(per_sample["q_score"], dtype=np.float64)[members])
        for column in iou_columns:
            entry[column] = _nan_mean(np.asarray(per_sample[column], dtype=np.float64)[members])
        means[name] = entry
    return means


def explain_dataset(
    model: QScoreModel,
    image_dataset: ImageDataset,
    mask_columns: Sequence[str] = (),
    correct_column: str | None = None,
    top_k: int = 5,
    top_fraction: float = 0.1,
    method: Method = "gradient",
    combine: Combine = "mean",
    batch_size: int = 32,
    max_images: int = 32,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> DatasetExplanation:
    """Heatmaps of every sample's top-k ``S_i`` features over a (map-style) data set, with IoUs against masks.

    Args:
        model: the encoder with its activation statistics (``D``) and Q-Score settings.
        image_dataset: from ``qscore_hf.data.load_image_dataset``.
        mask_columns: ``(core, spurious)`` columns of binary masks (images or 2-D arrays, non-zero = inside, any
            resolution with the image's aspect ratio); they get the image processor's resize and centre crop with
            nearest-neighbour interpolation. Empty: no IoUs.
        correct_column: a 0/1 (or boolean) column saying whether a classifier got the sample right; by default the
            column ``"correct"`` when the data set has one. With it, means are also split by correct / misclassified.
        top_k: features explained per sample; top_fraction: fraction of pixels kept by ``binarize_top``.
        method: ``"gradient"`` or ``"gradcam"``; combine: how a sample's k maps are combined (``"mean"``/``"max"``).
        batch_size: images per forward pass; max_images: overlays kept for the first samples.
        device: where the model runs (the GPU when available by default).
    """
    if not isinstance(image_dataset.dataset, datasets.Dataset):
        raise ValueError("explain_dataset needs a map-style data set; load it without streaming.")
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1]; got {top_fraction}.")
    correct_column = _check_columns(image_dataset, mask_columns, correct_column)
    dataset = image_dataset.dataset
    # the label and correctness columns are checked before the heatmaps are computed, not after
    row_ids = torch.arange(len(dataset))
    labels = class_indices(dataset[image_dataset.label_column], row_ids, image_dataset.label_column).tolist() \
        if image_dataset.label_column else None  # fmt: skip
    correct = _correctness(list(dataset[correct_column]), correct_column) if correct_column else None
    model.to(resolve_device(device))
    processor = model.image_processor()
    mask_names = dict(zip(("core", "spurious"), mask_columns))
    explain = partial(explain_batch, model, top_k=top_k, method=method, combine=combine)
    per_sample: dict[str, list] = defaultdict(list)
    overlays: list[Overlay] = []
    batches = dataset.select_columns([image_dataset.image_column, *mask_columns]).iter(batch_size=batch_size)
    total = -(-len(dataset) // batch_size)
    for batch in tqdm(batches, total=total, desc="explain", unit="batch", disable=not progress):
        images = batch[image_dataset.image_column]
        pixels = processor(images, return_tensors="pt")["pixel_values"].to(model.device, model.dtype)
        rows, drawn = _explain_rows(explain(pixels), processor, pixels, images, batch, len(per_sample["row_id"]),
                                    mask_names, top_fraction, max_images - len(overlays))  # fmt: skip
        for name, values in rows.items():
            per_sample[name].extend(values)
        overlays.extend(drawn)
    if labels is not None:
        per_sample["label"] = labels
    if correct is not None:
        per_sample["correct"] = correct.tolist()
    summary = {
        "method": method,
        "method_description": METHODS[method],
        "top_k": top_k,
        "top_fraction": top_fraction,
        "combine": combine,
        "qscore_eps": model.config.qscore_eps,
        "qscore_normalize": model.config.qscore_normalize,
        "num_discriminative": _num_discriminative(model),
        "num_samples": len(per_sample["row_id"]),
        "mask_columns": mask_names,
        "correct_column": correct_column,
        **({"label_names": image_dataset.class_names} if labels is not None and image_dataset.class_names else {}),
        "means": _group_means(per_sample, [f"iou_{kind}" for kind in mask_names], correct),
    }
    return DatasetExplanation(dict(per_sample), summary, overlays)


def _num_discriminative(model: QScoreModel) -> int:
    discriminative = model.discriminative_features()
    return int(model.config.hidden_size if discriminative is None else discriminative.numel())


def _explain_rows(
    result: BatchExplanation,
    processor: Any,
    pixels: Tensor,
    images: list,
    batch: dict[str, list],
    start: int,
    mask_names: dict[str, str],
    top_fraction: float,
    room: int,
) -> tuple[dict[str, list], list[Overlay]]:
    """Per-sample columns of one explained batch of rows (from ``start``) and overlays of its first ``room`` samples."""
    region = binarize_top(result.heatmaps, top_fraction)
    masks = {kind: align_masks(processor, batch[column], images, column, start).to(region.device)
             for kind, column in mask_names.items()}  # fmt: skip
    indices, valid = result.feature_indices.cpu(), result.feature_valid.cpu()
    rows: dict[str, list] = {
        "row_id": list(range(start, start + len(images))),
        "q_score": result.q_scores.float().cpu().tolist(),
        "num_selected": result.num_selected.cpu().tolist(),
        "top_features": [row[ok].tolist() for row, ok in zip(indices, valid)],
    }
    has_heatmap = result.feature_valid.any(dim=1)
    for kind, mask in masks.items():
        rows[f"iou_{kind}"] = torch.where(has_heatmap, iou(region, mask), math.nan).cpu().tolist()
    return rows, _overlays(processor, pixels[: max(0, room)], result, region, masks, rows)


def _overlays(processor: Any, pixels: Tensor, result: BatchExplanation, region: Tensor, masks: dict[str, Tensor],
              rows: dict[str, list]) -> list[Overlay]:  # fmt: skip
    """One overlay for each of the samples in ``pixels`` (the first ones of the batch)."""
    overlays = []
    for k, image in enumerate(_display_images(processor, pixels)):
        parts = [f"row {rows['row_id'][k]}", f"Q = {rows['q_score'][k]:.3g}", f"features {rows['top_features'][k]}"]
        parts += [f"IoU {kind} = {rows[f'iou_{kind}'][k]:.2f}" for kind in masks]
        aligned = {kind: mask[k].cpu().numpy() for kind, mask in masks.items()}
        overlays.append(Overlay(rows["row_id"][k], image, result.heatmaps[k].cpu().numpy(), region[k].cpu().numpy(),
                                "  ".join(parts), aligned))  # fmt: skip
    return overlays


# ------------------------------------------------------------------------------------------------- writing
_MASK_COLORS = {"core": "lime", "spurious": "red"}


def _outline(axes: Any, mask: np.ndarray, color: str) -> None:
    if mask.any() and not mask.all():  # a contour of a constant mask does not exist
        axes.contour(mask.astype(np.float32), levels=[0.5], colors=color, linewidths=1.2)


def plot_overlay(overlay: Overlay, path: str | os.PathLike, method: str) -> None:
    """PNG: the model's input beside the input with the heatmap overlaid, outlining the binarized heatmap (white)
    and the core (green) and spurious (red) masks."""
    figure = Figure(figsize=(7.0, 3.9), dpi=110, layout="tight")
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    left.imshow(overlay.image)
    left.set_title("input")
    right.imshow(overlay.image)
    right.imshow(overlay.heatmap, cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
    _outline(right, overlay.region, "white")
    for kind, mask in overlay.masks.items():
        _outline(right, mask, _MASK_COLORS[kind])
    right.set_title(f"{method} heatmap")
    for axes in (left, right):
        axes.set_axis_off()
    figure.suptitle(overlay.caption, fontsize="small", wrap=True)
    figure.savefig(path)


def save_explanation(
    explanation: DatasetExplanation, out_dir: str | os.PathLike, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``explain.json`` (settings, means, file names, plus ``extra``), ``per_sample.parquet`` and
    ``images/row_XXXXXX.png`` into ``out_dir``, atomically (the folder appears complete or not at all)."""
    out_dir = Path(out_dir)
    images = [f"{IMAGES_DIR}/row_{overlay.row_id:06d}.png" for overlay in explanation.overlays]
    summary = {**(extra or {}), **explanation.summary, "files": {"per_sample": PER_SAMPLE_FILE, "images": images}}
    with atomic_directory(out_dir, keep_other_files=False) as tmp:
        (tmp / IMAGES_DIR).mkdir()
        for overlay, name in zip(explanation.overlays, images):
            plot_overlay(overlay, tmp / name, explanation.summary["method"])
        table = pa.table({name: pa.array(values) for name, values in explanation.per_sample.items()})
        pq.write_table(table, tmp / PER_SAMPLE_FILE)
        (tmp / EXPLAIN_FILE).write_text(json.dumps(summary, indent=2, allow_nan=False))
    return out_dir
