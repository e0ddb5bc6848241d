"""``QScoreConfig``: what a ``QScoreModel`` is (backbone, provenance, preprocessing, Q-Score settings)."""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

from transformers import PretrainedConfig

from .calibration import AUTO, is_auto
from .score import NORMALIZE_OPTIONS, validate_eps

__all__ = ["QScoreConfig"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKBONE_LIBRARIES = ("timm", "transformers")
SSL_METHODS = ("simclr", "swav", "moco", "byol", "dino", "simsiam")
# The Q-Score settings of encoders trained at small scale (this package's pre-training and demo exports), chosen on a
# validation split over 18 encoders among 45 settings (studies/reproduce.py; README "Results"): at the paper's eps 4
# (the ``QScoreConfig`` default, kept for converted checkpoints) most samples of such encoders have an empty S_i.
SMALL_SCALE_SCORING: dict[str, Any] = {
    "qscore_eps": 1.0, "qscore_normalize": "l1", "qscore_p_lo": 0.0, "qscore_p_hi": 100.0,
}


# Bounds that catch a corrupt or mistyped config.json before it allocates gigabytes: an input side (pixels), a
# feature width, a probe's classes (ImageNet-21k has 21,841).
MAX_SIDE = 8192
MAX_FEATURES = 1 << 20
MAX_LABELS = 100_000
_DTYPES = ("float32", "float16", "bfloat16", "float64", "auto")


def _check_processor_sizes(settings: dict[str, Any] | None) -> None:
    """The image processor's ``size``/``crop_size`` (a number or a dict of numbers) are pixel counts in
    ``1..MAX_SIDE``; its ``crop_pct`` a fraction in (0, 1]."""
    for key in ("size", "crop_size"):
        value = (settings or {}).get(key)
        for name, side in (value.items() if isinstance(value, dict) else [(None, value)] if value is not None else []):
            where = f"image_processor.{key}" + (f".{name}" if name else "")
            if side is not None:
                _whole_number(where, side, minimum=1, maximum=MAX_SIDE)
    crop_pct = (settings or {}).get("crop_pct")
    if crop_pct is not None and not 0.0 < _number("image_processor.crop_pct", crop_pct) <= 1.0:
        raise ValueError(f"config field image_processor.crop_pct must be in (0, 1]; got {crop_pct!r}.")


def _check_dtype(dtype: Any) -> None:
    import torch

    if dtype is None or isinstance(dtype, torch.dtype) or dtype in _DTYPES:
        return
    raise ValueError(f"config field dtype must be one of {_DTYPES} or null; got {dtype!r}.")


class QScoreConfig(PretrainedConfig):
    """Configuration of a :class:`QScoreModel`.

    Args:
        backbone: timm model name, or a ResNet name with ``_cifar`` for the 3x3 stride-1 CIFAR stem; for a
            transformers backbone its ``model_type`` (``vit``, ``dinov2``, ``resnet``, ``convnext``).
        backbone_library: ``"timm"`` or ``"transformers"``: which library builds the backbone.
        backbone_config: what the library needs besides the name to rebuild the architecture offline: timm's
            ``create_model`` arguments (e.g. ``{"img_size": 32}``), or the transformers config as a dict.
        backbone_pooling: transformers backbones: ``"cls"`` (CLS token of the final layer-normed hidden state),
            ``"cls_mean"`` (that and the mean patch token, concatenated) or ``"pooler"`` (CNNs' pooled output).
        backbone_source: where the backbone came from: ``{"library", "repo_id", "revision", "commit"}`` (or
            ``"path"`` for a local folder); ``None`` for a model built here.
        image_processor: ``QScoreImageProcessor`` settings (size, crop, resample, mean, std, ...) copied from the
            source; ``None``: derived from ``image_size``, ``crop_pct``, ``image_mean`` and ``image_std``.
        source_preprocessing: the source's preprocessing as it stated it (its image processor's settings, or
            timm's ``pretrained_cfg`` mean, std, crop and size), for the record.
        stem_padding: padding of the CIFAR stem's conv (1 by default; 2 in solo-learn's checkpoints).
        hidden_size: width ``d`` of the pooled features; filled in from the backbone when ``None``.
        ssl_method: the self-supervised method that trained the backbone (simclr, swav, moco, byol, dino,
            simsiam) or ``None``.
        pretraining_data: the data set the backbone was pre-trained on (e.g. ``"imagenet-1k"``).
        image_size: input resolution; ``crop_pct`` is the centre-crop fraction (resize to
            ``image_size / crop_pct``, then crop ``image_size``).
        image_mean, image_std: per-channel normalization the backbone expects.
        qscore_eps, qscore_normalize, qscore_p_lo, qscore_p_hi: Q-Score parameters (SPEC §2-4). ``qscore_eps="auto"``
            is calibrated on the reference data by ``QScoreModel.compute_activation_stats``, which then stores the
            resolved number here and the calibration's coverage and sample count in ``qscore_eps_calibration``.
        qscore_regularized: whether the backbone was trained with Q-Score regularization (SPEC §6);
            ``qscore_regularization`` may record its settings (lambda1, lambda2, ...).
        probe_head: add a linear head on the features (``num_labels`` outputs) for a linear probe.
    """

    model_type = "qscore"

    def __init__(
        self,
        backbone: str = "resnet50",
        stem_padding: int = 1,
        backbone_library: str = "timm",
        backbone_config: dict[str, Any] | None = None,
        backbone_pooling: str | None = None,
        backbone_source: dict[str, Any] | None = None,
        image_processor: dict[str, Any] | None = None,
        source_preprocessing: dict[str, Any] | None = None,
        hidden_size: int | None = None,
        ssl_method: str | None = None,
        pretraining_data: str | None = None,
        image_size: int = 224,
        crop_pct: float = 0.875,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        qscore_eps: float | str = 4.0,
        qscore_eps_calibration: dict[str, Any] | None = None,
        qscore_normalize: str = "none",
        qscore_p_lo: float = 50.0,
        qscore_p_hi: float = 95.0,
        qscore_regularized: bool = False,
        qscore_regularization: dict[str, Any] | None = None,
        probe_head: bool = False,
        **kwargs: Any,
    ) -> None:
        stem_padding = _whole_number("stem_padding", stem_padding, minimum=0)
        image_size = _whole_number("image_size", image_size, minimum=1, maximum=MAX_SIDE)
        if not isinstance(backbone, str) or not backbone.strip():
            raise ValueError(f"config field backbone must be a model name (a non-empty string); got {backbone!r}.")
        for field, value in (("backbone_config", backbone_config), ("backbone_source", backbone_source),
                             ("image_processor", image_processor), ("source_preprocessing", source_preprocessing),
                             ("qscore_eps_calibration", qscore_eps_calibration),
                             ("qscore_regularization", qscore_regularization)):  # fmt: skip
            if value is not None and not (isinstance(value, dict) and all(isinstance(key, str) for key in value)):
                raise ValueError(f"config field {field} must be an object (a dict of named values) or null; got "
                                 f"{type(value).__name__} {str(value)[:60]}.")  # fmt: skip
        if hidden_size is not None:
            hidden_size = _whole_number("hidden_size", hidden_size, minimum=1, maximum=MAX_FEATURES)
        _check_processor_sizes(image_processor)
        _check_dtype(kwargs.get("dtype", kwargs.get("torch_dtype")))
        try:
            qscore_eps = AUTO if is_auto(qscore_eps) else validate_eps(qscore_eps)
        except ValueError as error:
            raise ValueError(f"config field qscore_eps: {error}") from None
        qscore_p_lo, qscore_p_hi = _number("qscore_p_lo", qscore_p_lo), _number("qscore_p_hi", qscore_p_hi)
        crop_pct = _number("crop_pct", crop_pct)
        if qscore_normalize not in NORMALIZE_OPTIONS:
            raise ValueError(f"qscore_normalize must be one of {NORMALIZE_OPTIONS}; got {qscore_normalize!r}.")
        if not 0.0 <= qscore_p_lo <= qscore_p_hi <= 100.0:
            raise ValueError(f"need 0 <= qscore_p_lo <= qscore_p_hi <= 100; got {qscore_p_lo}, {qscore_p_hi}.")
        if ssl_method is not None and ssl_method.lower() not in SSL_METHODS:
            raise ValueError(f"ssl_method must be one of {SSL_METHODS} or None; got {ssl_method!r}.")
        if len(image_mean) != 3 or len(image_std) != 3:
            raise ValueError("image_mean and image_std need one value per RGB channel (3 each).")
        if not 0.0 < crop_pct <= 1.0 or image_size / crop_pct > MAX_SIDE:
            raise ValueError(
                f"config field crop_pct must be in (0, 1] with image_size / crop_pct (the resize) at most {MAX_SIDE}; "
                f"got {crop_pct}."
            )
        if backbone_library not in BACKBONE_LIBRARIES:
            raise ValueError(f"backbone_library must be one of {BACKBONE_LIBRARIES}; got {backbone_library!r}.")
        if backbone_library == "transformers" and not isinstance(backbone_config, dict):
            raise ValueError("a transformers backbone needs backbone_config: its config as a dict (config.to_dict()).")
        self.backbone = backbone
        self.stem_padding = int(stem_padding)
        self.backbone_library = backbone_library
        self.backbone_config = dict(backbone_config) if backbone_config else None
        self.backbone_pooling = backbone_pooling
        self.backbone_source = dict(backbone_source) if backbone_source else None
        self.image_processor = dict(image_processor) if image_processor else None
        self.source_preprocessing = dict(source_preprocessing) if source_preprocessing else None
        self.hidden_size = hidden_size
        self.ssl_method = ssl_method.lower() if ssl_method else None
        self.pretraining_data = pretraining_data
        self.image_size = int(image_size)
        self.crop_pct = float(crop_pct)
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]
        self.qscore_eps = qscore_eps
        self.qscore_eps_calibration = dict(qscore_eps_calibration) if qscore_eps_calibration else None
        self.qscore_normalize = qscore_normalize
        self.qscore_p_lo = float(qscore_p_lo)
        self.qscore_p_hi = float(qscore_p_hi)
        self.qscore_regularized = bool(qscore_regularized)
        self.qscore_regularization = dict(qscore_regularization) if qscore_regularization else None
        self.probe_head = bool(probe_head)
        labels = kwargs.get("id2label")
        labels = len(labels) if isinstance(labels, dict) else kwargs.get("num_labels")
        if labels is not None:  # checked before PretrainedConfig builds an id2label entry for each
            _whole_number("num_labels (id2label)", labels, minimum=1, maximum=MAX_LABELS)
        super().__init__(**kwargs)


def _number(field: str, value: Any, kind: str = "a finite number") -> float:
    """``value`` as a finite float, or ``ValueError`` naming the config field."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"config field {field} must be {kind}; got {value!r}.")
    return float(value)


def _whole_number(field: str, value: Any, minimum: int, maximum: float = math.inf) -> int:
    """``value`` as an int in ``[minimum, maximum]`` (a float such as 2.0 is accepted), or ``ValueError`` naming the
    field."""
    kind = f"a whole number >= {minimum}" + (f" and <= {maximum}" if maximum < math.inf else "")
    number = _number(field, value, kind)
    if number != int(number) or not minimum <= number <= maximum:
        raise ValueError(f"config field {field} must be {kind}; got {value!r}.")
    return int(number)
