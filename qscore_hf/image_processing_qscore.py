"""The image processor saved with every ``QScoreModel``: transformers' BiT pipeline plus grayscale handling."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import numpy as np
import PIL.Image
import torch
from transformers import BitImageProcessor

from .configuration_qscore import QScoreConfig

__all__ = ["MAX_ASPECT", "QScoreImageProcessor"]

# A shortest-edge resize of an image longer than this many times its width (or the reverse) would be mostly cut away
# by the centre crop: a 2,000,000 x 1 px strip resized to a 32 px shortest edge is 64,000,000 x 32 px (6.1 GB).
# Such an image is first cut to its centre part of this aspect ratio (see ``QScoreImageProcessor.resize``).
MAX_ASPECT = 16
# Without a centre crop the whole resize is the output, and cutting would change it: an image is then resized whole
# up to this many output pixels (1.5 GB as float32 RGB) and refused in one line beyond.
MAX_UNCROPPED_PIXELS = 2**27
# The centre crop of the processor call in progress (``preprocess`` may turn it off for one call); ``None`` outside
# a call, where ``resize`` goes by the processor's own ``do_center_crop``.
_CALL_CROPS: ContextVar[bool | None] = ContextVar("qscore_call_crops", default=None)


def _to_three_channels(image: Any) -> tuple[Any, bool]:
    """Repeat a single channel three times for 2-D or 1-channel arrays/tensors, channels last; returns the image
    and whether it was converted (PIL images are converted by ``do_convert_rgb``)."""
    if isinstance(image, (np.ndarray, torch.Tensor)):
        if image.ndim == 3 and image.shape[0] == 1 and image.shape[-1] != 1:
            image = image[0]
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        if image.ndim == 2:
            stacked = image[..., None]
            return (stacked.repeat(3, -1) if isinstance(image, np.ndarray) else stacked.expand(-1, -1, 3)), True
    return image, False


def to_eight_bit(image: Any) -> tuple[Any, str | None]:
    """A PIL image of 16-bit (``I;16``), 32-bit integer (``I``) or float (``F``) grey pixels as an 8-bit grey one,
    scaled, where PIL's own conversion clips at 255 (a 16-bit image would reach the encoder almost white). 16-bit
    and 32-bit integer pixels are read on the 16-bit scale (PIL opens 16-bit files as either), float ones on [0, 1];
    pixels outside that scale are an error naming it. Anything else is returned as it is."""
    mode = getattr(image, "mode", None)
    if not isinstance(mode, str) or not (mode.startswith("I") or mode == "F"):
        return image, None
    pixels = np.asarray(image, dtype=np.float64)
    full, scale = (1.0, "[0, 1] (float pixels)") if mode == "F" else (65535.0, "0..65535 (16-bit pixels)")
    low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
    if not (np.isfinite(low) and np.isfinite(high) and 0 <= low and high <= full):
        return None, (
            f"{mode} image with pixels from {low:g} to {high:g}, outside {scale}: no 8-bit reading; convert the "
            "image to 8 bits first"
        )
    return PIL.Image.fromarray(np.round(pixels * (255.0 / full)).astype(np.uint8)), None


def _eight_bit_or_raise(image: Any) -> Any:
    """``to_eight_bit`` for the processor: a PIL image of 16-bit, 32-bit or float pixels scaled to 8 bits (PIL's
    own conversion would saturate them), a ``ValueError`` for pixels outside their scale."""
    converted, error = to_eight_bit(image)
    if error is not None:
        raise ValueError(f"cannot preprocess the image: {error}")
    return converted


class QScoreImageProcessor(BitImageProcessor):
    """Resize the shortest edge, centre-crop, rescale to [0, 1] and normalize with the model's mean/std.

    Grayscale input (PIL mode ``L``, 2-D arrays, one-channel arrays or tensors) becomes 3 channels. Build one for
    a model with ``QScoreImageProcessor.from_model_config(model.config)``; ``QScoreModel.save_pretrained``
    saves it, and ``AutoImageProcessor.from_pretrained`` loads it after ``import qscore_hf``.
    """

    model_input_names = ["pixel_values"]

    @classmethod
    def from_model_config(cls, config: QScoreConfig, **kwargs: Any) -> "QScoreImageProcessor":
        """The processor a model's config describes: the source's settings (``config.image_processor``) when it
        has them, else resize to ``image_size / crop_pct``, centre-crop ``image_size``, normalize."""
        if getattr(config, "image_processor", None):
            return cls(**{**config.image_processor, **kwargs})
        resize = round(config.image_size / config.crop_pct)
        return cls(
            size={"shortest_edge": resize},
            crop_size={"height": config.image_size, "width": config.image_size},
            image_mean=list(config.image_mean),
            image_std=list(config.image_std),
            **kwargs,
        )

    def resize(self, image: torch.Tensor, size: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """transformers' resize, with the memory of a shortest-edge resize bounded: an image (``... x H x W``) whose
        long edge is more than ``MAX_ASPECT`` times its short edge is first cut to its centre part of that aspect
        ratio, whose resize still covers the centre crop (``MAX_ASPECT`` x the shortest edge, at least the crop); the
        crop then differs from an uncut resize by a sub-pixel shift at most (within 2 8-bit levels, 0.07 on average, in
        tests/test_hardening_memory.py). Other images are resized unchanged. Without a centre crop (the processor's, or
        ``do_center_crop=False`` in the call) nothing is cut: the image is resized whole up to ``MAX_UNCROPPED_PIXELS``
        and refused beyond, in one line."""
        edge = getattr(size, "shortest_edge", None)
        height, width = image.shape[-2:]
        if not edge or getattr(size, "longest_edge", None) or min(height, width) == 0:
            return super().resize(image, size, *args, **kwargs)
        short = min(height, width)
        crops = _CALL_CROPS.get()
        if not (self.do_center_crop if crops is None else crops):
            resized = edge * -(-edge * max(height, width) // short)
            if resized > MAX_UNCROPPED_PIXELS:
                raise ValueError(
                    f"an image of {height} x {width} px would be resized to {resized:,} px without a centre crop (over "
                    f"{MAX_UNCROPPED_PIXELS:,}); keep the centre crop on (do_center_crop=True) or cut the image first."
                )
            return super().resize(image, size, *args, **kwargs)
        crop = max(self.crop_size.height or 0, self.crop_size.width or 0)
        # the cut's long edge in source pixels: MAX_ASPECT x the short edge, and enough for the crop plus a margin
        keep = max(MAX_ASPECT * short, -(-(crop + 8) * short // edge))
        if width > keep:
            start = (width - keep) // 2
            image = image[..., :, start : start + keep]
        elif height > keep:
            start = (height - keep) // 2
            image = image[..., start : start + keep, :]
        return super().resize(image, size, *args, **kwargs)

    def preprocess(self, images: Any, *args: Any, **kwargs: Any):  # noqa: D102 (BitImageProcessor's doc applies)
        batch = isinstance(images, (list, tuple))
        converted = [_to_three_channels(image) for image in (images if batch else [images])]
        if converted and all(was_gray for _, was_gray in converted):
            # Our (H, W, 3) arrays are channels-last; say so, or an image of height 1 or 3 looks channels-first.
            kwargs.setdefault("input_data_format", "channels_last")
        images = [_eight_bit_or_raise(image) for image, _ in converted]
        token = _CALL_CROPS.set(kwargs.get("do_center_crop", self.do_center_crop))
        try:
            return super().preprocess(images if batch else images[0], *args, **kwargs)
        finally:
            _CALL_CROPS.reset(token)
