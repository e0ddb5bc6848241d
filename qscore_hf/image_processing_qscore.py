"""The image processor saved with every ``QScoreModel``: transformers' BiT pipeline plus grayscale handling."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import BitImageProcessor

from .configuration_qscore import QScoreConfig

__all__ = ["QScoreImageProcessor"]


def _to_three_channels(image: Any) -> Any:
    """Repeat a single channel three times for 2-D or 1-channel arrays/tensors (PIL images are converted by
    ``do_convert_rgb``)."""
    if isinstance(image, (np.ndarray, torch.Tensor)):
        if image.ndim == 2:
            return image[..., None].repeat(3, -1) if isinstance(image, np.ndarray) else image[None].expand(3, -1, -1)
        if image.ndim == 3 and image.shape[-1] == 1:
            return image.repeat(3, -1) if isinstance(image, np.ndarray) else image.expand(-1, -1, 3)
        if image.ndim == 3 and image.shape[0] == 1:
            return image.repeat(3, 0) if isinstance(image, np.ndarray) else image.expand(3, -1, -1)
    return image


class QScoreImageProcessor(BitImageProcessor):
    """Resize the shortest edge, centre-crop, rescale to [0, 1] and normalize with the model's mean/std.

    Grayscale input (PIL mode ``L``, 2-D arrays, one-channel arrays or tensors) becomes 3 channels. Build one for
    a model with ``QScoreImageProcessor.from_model_config(model.config)``; ``QScoreModel.save_pretrained``
    saves it, and ``AutoImageProcessor.from_pretrained`` loads it after ``import qscore_hf``.
    """

    model_input_names = ["pixel_values"]

    @classmethod
    def from_model_config(cls, config: QScoreConfig, **kwargs: Any) -> "QScoreImageProcessor":
        resize = round(config.image_size / config.crop_pct)
        return cls(
            size={"shortest_edge": resize},
            crop_size={"height": config.image_size, "width": config.image_size},
            image_mean=list(config.image_mean),
            image_std=list(config.image_std),
            **kwargs,
        )

    def preprocess(self, images: Any, *args: Any, **kwargs: Any):  # noqa: D102 (BitImageProcessor's doc applies)
        if isinstance(images, (list, tuple)):
            images = [_to_three_channels(image) for image in images]
        else:
            images = _to_three_channels(images)
        return super().preprocess(images, *args, **kwargs)
