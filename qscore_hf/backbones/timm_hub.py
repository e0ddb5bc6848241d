"""timm Hub repos as backbones: a ``config.json`` with ``architecture`` (e.g. ``timm/vit_small_patch16_224.dino``),
built through timm with ``num_classes=0`` and the repo's own weights."""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any, Mapping

import timm
from timm.models import build_model_with_cfg
from torch import nn

__all__ = ["import_timm_hub_backbone", "timm_preprocessing"]

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# timm's interpolation names -> PIL resampling codes (as transformers' image processors store them).
_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1, "box": 4, "hamming": 5}
# Arguments of timm's factory and builder rather than of the architecture: where weights come from
# (pretrained_cfg_overlay, checkpoint_path, ...) or what the model returns. A repo's model_args may not set them.
_LOADER_ARGS = frozenset(
    {*inspect.signature(timm.create_model).parameters, *inspect.signature(build_model_with_cfg).parameters,
     "features_only", "feature_cls", "out_indices", "flatten_sequential"}  # fmt: skip
) - {"kwargs", "num_classes", "model_cfg"}
# pretrained_cfg keys that say where (or how) weights are loaded: ours always come from the repo's own file.
_WEIGHT_SOURCE_KEYS = ("hf_hub_id", "hf_hub_filename", "source", "url", "state_dict", "file", "custom_load")


def timm_preprocessing(pretrained_cfg: Mapping[str, Any], image_size: int | None = None) -> dict[str, Any]:
    """``QScoreConfig`` preprocessing fields from timm's ``pretrained_cfg`` (input size, crop, mean, std,
    interpolation), as timm's eval transform applies them: resize the short side to ``floor(size / crop_pct)``,
    centre-crop ``size``."""
    size = int(image_size or pretrained_cfg.get("input_size", (3, 224, 224))[-1])
    crop_pct = float(pretrained_cfg.get("crop_pct") or 0.875)
    resize = math.floor(size / crop_pct)
    processor = {
        "size": {"shortest_edge": resize},
        "crop_size": {"height": size, "width": size},
        "do_center_crop": True,
        "resample": _RESAMPLE.get(pretrained_cfg.get("interpolation", "bicubic"), 3),
        "image_mean": [float(v) for v in pretrained_cfg.get("mean", (0.485, 0.456, 0.406))],
        "image_std": [float(v) for v in pretrained_cfg.get("std", (0.229, 0.224, 0.225))],
    }
    return {
        "image_size": size,
        "crop_pct": crop_pct,
        "image_mean": processor["image_mean"],
        "image_std": processor["image_std"],
        "image_processor": processor,
        "source_preprocessing": {
            key: pretrained_cfg[key]
            for key in ("input_size", "crop_pct", "crop_mode", "interpolation", "mean", "std")
            if key in pretrained_cfg
        },
    }


def import_timm_hub_backbone(folder: Path, config_json: Mapping[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """Build a timm Hub repo (a local snapshot folder and its parsed ``config.json``) without classifier and load its
    weights through timm (its checkpoint filters; strict except the dropped classifier).

    Returns the backbone and the ``QScoreConfig`` fields that rebuild it offline and prepare its images.
    """
    architecture = config_json["architecture"]
    if not timm.is_model(architecture):
        raise ValueError(
            f"{folder}: config.json names timm architecture {architecture!r}, which this timm ({timm.__version__}) "
            "does not know; upgrade timm."
        )
    weights = next((folder / name for name in _WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        raise ValueError(f"{folder}: a timm repo needs {' or '.join(_WEIGHT_FILES)} beside config.json; none found.")
    model_args = _architecture_args(folder, config_json.get("model_args"))
    pretrained_cfg = dict(config_json.get("pretrained_cfg") or {})
    for key in _WEIGHT_SOURCE_KEYS:
        pretrained_cfg.pop(key, None)
    pretrained_cfg["file"] = str(weights)
    pretrained_cfg.setdefault("num_classes", config_json.get("num_classes", 0))
    model = timm.create_model(architecture, pretrained=True, pretrained_cfg=pretrained_cfg, num_classes=0, **model_args)
    fields = {
        "backbone": architecture,
        "backbone_library": "timm",
        "backbone_config": model_args or None,
        **timm_preprocessing(pretrained_cfg),
    }
    return model.eval(), fields


def _architecture_args(folder: Path, model_args: Any) -> dict[str, Any]:
    """config.json's ``model_args`` without ``num_classes``; ``ValueError`` in one line for anything but arguments of
    the architecture (timm's loader arguments such as ``pretrained_cfg_overlay`` could load other weights)."""
    if model_args is None:
        return {}
    if not isinstance(model_args, Mapping):
        raise ValueError(
            f"{folder / 'config.json'}: model_args must be an object of the architecture's arguments; got "
            f"{type(model_args).__name__}. Fix or remove model_args."
        )
    refused = sorted(key for key in model_args if key in _LOADER_ARGS)
    if refused:
        raise ValueError(
            f"{folder / 'config.json'}: model_args.{refused[0]} is not an argument of the architecture (it would tell "
            "timm where to load weights from or what to build around the model); a repo's weights are its own "
            f"model.safetensors. Remove {', '.join('model_args.' + key for key in refused)}."
        )
    return {key: value for key, value in model_args.items() if key != "num_classes"}
