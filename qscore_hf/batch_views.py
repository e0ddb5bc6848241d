"""A method's augmented views of a whole batch at once, on the batch's device, with ``kornia.augmentation``.

The recipe stays written once, as the method's lightly transform (``SSLMethod.build_transform``: crop scale and
ratio, flip, colour jitter strength and probability, grayscale, blur, solarization, normalization). ``batch_views``
translates each of its views, op by op, into kornia's batched equivalent, which draws every sample's parameters from
the same ranges and probabilities; an op it has no translation for is refused in one line rather than dropped
(``TensorPipelineRefused``: the default ``auto`` pipeline then augments per image with PIL).

Known differences from the per-image PIL pipeline, none in the distribution of a parameter: kornia draws one
colour-jitter order per batch (torchvision one per image; every image's order is still uniform), works on float
pixels where PIL rounds to 8 bits after each op, blurs with a Gaussian kernel where PIL approximates one with box
blurs, and resizes a crop without antialiasing (it matters only when a crop is larger than the view: multi-crop's
small views; a 32 px view of a 32 px image is never downscaled).
"""

from __future__ import annotations

import math
from typing import Any

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data_pipelines import TensorPipelineRefused

__all__ = ["GEOMETRIC_OPS", "BatchViews", "BatchedResizedCrop", "batch_views", "resized_crops", "shift_hue", "view_ops"]

# The ops that move pixels (which ``batch_views(..., geometric=False)`` leaves to the loader workers,
# ``qscore_hf.worker_views``); the others change their colours only.
GEOMETRIC_OPS = ("RandomResizedCrop", "RandomHorizontalFlip", "RandomVerticalFlip", "RandomRotate")


class BatchViews(nn.Module):
    """``forward(images, seed)``: uint8 images (B x 3 x H x W) -> one normalized float batch per view, each sample's
    augmentation parameters drawn from the random generator of the module's device (kornia's: ``.to(device)`` moves
    it) seeded with ``seed``, without touching the global random streams."""

    def __init__(self, views: list[nn.Sequential]) -> None:
        super().__init__()
        self.views = nn.ModuleList(views)

    def forward(self, images: Tensor | list[Tensor], seed: int) -> list[Tensor]:
        """``images``: one uint8 batch that every view starts from, or one uint8 batch per view (the views already
        cropped, in the loader workers: a module built with ``geometric=False``)."""
        if isinstance(images, Tensor):
            pixels = [images.to(torch.float32).div_(255.0)] * len(self.views)
        elif len(images) == len(self.views):
            pixels = [batch.to(torch.float32).div_(255.0) for batch in images]
        else:
            raise ValueError(f"{len(images)} batches of views for {len(self.views)} views; give one per view.")
        with torch.random.fork_rng(devices=[pixels[0].device] if pixels[0].device.type == "cuda" else []):
            torch.manual_seed(seed)  # every device's generator
            return [view(batch) for view, batch in zip(self.views, pixels)]


def batch_views(transform: Any, geometric: bool = True) -> BatchViews:
    """The kornia translation of a lightly multi-view transform (``MultiViewTransform``: one torchvision
    ``Compose`` per view). ``geometric=False`` leaves out the ops of ``GEOMETRIC_OPS`` (crop, flips, rotation):
    the colour work of views already cropped elsewhere."""
    views = getattr(transform, "transforms", None)
    if views is None:
        name = type(transform).__name__
        raise TensorPipelineRefused(f"{name} is not a lightly multi-view transform; the tensor pipeline translates "
                                    "those (SSLMethod.build_transform).",
                                    reason=f"the recipe's {name} is not a multi-view transform")  # fmt: skip
    return BatchViews([nn.Sequential(*_translate_view(view, geometric)) for view in views])


def _translate_view(view: Any, geometric: bool = True) -> list[nn.Module]:
    ops = [op for op in view_ops(view) if geometric or type(op).__name__ not in GEOMETRIC_OPS]
    return [translated for op in ops if (translated := _translate(op)) is not None]


def view_ops(op: Any) -> list[Any]:
    """The single torchvision/lightly ops of one view of a multi-view transform, in order: torchvision ``Compose``s
    and lightly's view transforms (which hold one in ``.transform``) opened recursively."""
    if type(op).__name__ == "Compose":
        return [leaf for inner in op.transforms for leaf in view_ops(inner)]
    inner = vars(op).get("transform") if hasattr(op, "__dict__") else None
    if inner is not None and type(inner).__name__ == "Compose":
        return view_ops(inner)
    return [op]


_RESAMPLE = {"bilinear": "BILINEAR", "bicubic": "BICUBIC", "nearest": "NEAREST"}


class BatchedResizedCrop(K.RandomResizedCrop):
    """kornia's ``RandomResizedCrop`` (its parameter draws, its slice-mode pixels) with the bilinear crop-and-resize
    of the whole batch in one ``grid_sample`` (``resized_crops``). Why not kornia's own: its slice mode resizes image
    by image in a Python loop, one ``interpolate`` per image (7x slower at 32 px on the CPU, a kernel launch per image
    on a GPU), and its batched gather is private to ``torch.compile`` and slower than that loop on the CPU."""

    def apply_transform(
        self, input: Tensor, params: dict[str, Tensor], flags: dict[str, Any], transform: Tensor | None = None
    ) -> Tensor:
        if flags["cropping_mode"] != "slice" or flags["align_corners"] or flags["resample"].name != "BILINEAR":
            return super().apply_transform(input, params, flags, transform)
        return resized_crops(input, params["src"], tuple(flags["size"]))


def resized_crops(images: Tensor, boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Each image's box (kornia's ``B x 4 x 2`` corners, inclusive pixel indices, truncated to integers as kornia's
    slice mode does) resized to ``size`` the way ``F.interpolate(slice, size, mode="bilinear",
    align_corners=False)`` resizes that slice: sample positions on the half-pixel grid, clamped to the box (not the
    image: a tap outside the box would blend in a pixel the slice does not hold). Equal up to float rounding."""
    height, width = images.shape[-2:]
    corners = boxes.to(device=images.device, dtype=torch.long)
    left, top = corners[:, 0, 0:1].to(torch.float32), corners[:, 0, 1:2].to(torch.float32)
    right, bottom = corners[:, 1, 0:1].to(torch.float32) + 1, corners[:, 3, 1:2].to(torch.float32) + 1

    def positions(start: Tensor, end: Tensor, out: int, extent: int) -> Tensor:
        step = torch.arange(out, device=images.device, dtype=torch.float32) + 0.5
        inside = (step * ((end - start) / out) - 0.5).clamp(min=0)  # interpolate's source index, in the slice
        pixel = (start + inside).minimum(end - 1)
        return (2 * pixel + 1) / extent - 1  # grid_sample's coordinates (align_corners=False)

    x = positions(left, right, size[1], width)[:, None, :].expand(-1, size[0], -1)
    y = positions(top, bottom, size[0], height)[:, :, None].expand(-1, -1, size[1])
    grid = torch.stack((x, y), dim=-1).to(images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _translate(op: Any) -> nn.Module | None:
    """The kornia op drawing the same parameters as ``op``; ``None`` for an op that does nothing here (a
    probability 0, or the conversion to a float tensor, done once for the batch)."""
    name = type(op).__name__
    if name == "RandomResizedCrop":
        mode = getattr(op.interpolation, "value", str(op.interpolation)).lower()
        # align_corners=False: torchvision's resize maps pixel centres (half-pixel grid)
        return BatchedResizedCrop(tuple(op.size), scale=tuple(op.scale), ratio=tuple(op.ratio),
                                  resample=_RESAMPLE[mode], align_corners=False)  # fmt: skip
    if name in ("RandomHorizontalFlip", "RandomVerticalFlip"):
        return None if op.p == 0 else getattr(K, name)(p=op.p)
    if name == "RandomRotate":  # lightly's: 90 degrees with probability prob
        if op.prob == 0:
            return None
        raise _untranslated("lightly's RandomRotate")
    if name == "ColorJitter":  # always applied (SwAV's view holds an empty one: the identity)
        return _color_jitter(op, p=1.0)
    if name == "RandomApply" and len(op.transforms) == 1 and type(op.transforms[0]).__name__ == "ColorJitter":
        return _color_jitter(op.transforms[0], p=op.p)
    if name == "RandomGrayscale":
        return None if op.p == 0 else K.RandomGrayscale(p=op.p)
    if name == "GaussianBlur":  # lightly's: sigma uniform in sigmas, with probability prob
        if op.prob == 0:
            return None
        kernel = 2 * math.ceil(3 * op.sigmas[1]) + 1  # +-3 sigma of the widest blur
        return K.RandomGaussianBlur(kernel, sigma=tuple(op.sigmas), p=op.prob)
    if name == "RandomSolarization":  # lightly's: PIL's solarize (invert pixels >= threshold) with probability prob
        if op.prob == 0:
            return None
        if op.threshold != 128:
            raise TensorPipelineRefused(
                f"the tensor pipeline solarizes at 128 only (kornia's threshold 0.5), not {op.threshold}.",
                reason=f"the recipe solarizes at {op.threshold}; the tensor pipeline solarizes at 128 only",
            )
        return K.RandomSolarize(thresholds=0.0, additions=0.0, p=op.prob)
    if name in ("ToTensor", "ToImage", "ToDtype"):  # uint8 to float in [0, 1], done for the whole batch
        return None
    if name == "Normalize":
        return K.Normalize(mean=torch.tensor(op.mean), std=torch.tensor(op.std))
    raise _untranslated(name)


def _untranslated(name: str) -> TensorPipelineRefused:
    return TensorPipelineRefused(f"the tensor pipeline has no translation of {name}; use --data-pipeline pil.",
                                 reason=f"the recipe's {name} has no kornia translation")  # fmt: skip


def _color_jitter(jitter: Any, p: float) -> nn.Module | None:
    """torchvision's ``ColorJitter`` (factor ranges, ``None`` for a colour property left alone) applied with
    probability ``p``."""
    ranges = {key: tuple(getattr(jitter, key)) for key in ("brightness", "contrast", "saturation", "hue")
              if getattr(jitter, key) is not None}  # fmt: skip
    if p == 0 or not ranges:
        return None
    jitter = K.ColorJitter(**ranges, p=p)
    # kornia's hook for its hue step (the function its ``compile`` compiles): the same shift, 2-3x faster
    jitter._hue_fn = shift_hue
    return jitter


def shift_hue(images: Tensor, angle: Tensor | float) -> Tensor:
    """``kornia.enhance.adjust_hue``'s result (torchvision's ``adjust_hue``: the hue turned by ``angle`` radians, one
    per image, saturation and value kept) without its two HSV conversions: the hue in sixths of a turn from the
    channel holding the maximum (ties go to red, then green, as torchvision decides them), and each channel back
    from value and chroma as ``v - c * clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + hue) mod 6``, n = 5, 3, 1
    for red, green, blue. Equal up to float rounding."""
    red, green, blue = images.unbind(-3)
    value = images.amax(dim=-3)
    chroma = value - images.amin(dim=-3)
    safe = torch.where(chroma > 0, chroma, 1.0)  # a grey pixel keeps hue 0 and comes back as its value
    sixths = torch.where(value == red, (green - blue) / safe,
                         torch.where(value == green, (blue - red) / safe + 2, (red - green) / safe + 4))  # fmt: skip
    if isinstance(angle, Tensor):
        angle = angle.to(images).reshape(-1, *([1] * (sixths.dim() - 1)))
    sixths = sixths + angle * (3 / math.pi)
    offsets = torch.tensor([5.0, 3.0, 1.0], device=images.device, dtype=images.dtype).reshape(3, 1, 1)
    k = torch.remainder(sixths.unsqueeze(-3) + offsets, 6)
    return value.unsqueeze(-3) - chroma.unsqueeze(-3) * torch.minimum(k, 4 - k).clamp_(0, 1)
