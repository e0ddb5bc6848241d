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

__all__ = ["architecture_args", "import_timm_hub_backbone", "timm_preprocessing"]

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


def timm_preprocessing(
    pretrained_cfg: Mapping[str, Any], image_size: int | None = None, source: str = "pretrained_cfg"
) -> dict[str, Any]:
    """``QScoreConfig`` preprocessing fields from timm's ``pretrained_cfg`` (input size, crop, mean, std,
    interpolation), as timm's eval transform applies them: resize the short side to ``floor(size / crop_pct)``,
    centre-crop ``size``. A value of the wrong kind is a ``ValueError`` naming ``source`` and the field."""
    input_size = _numbers(pretrained_cfg, "input_size", (3, 224, 224), source)
    size = int(image_size or input_size[-1])
    crop_pct = _numbers(pretrained_cfg, "crop_pct", (0.875,), source)[0] if pretrained_cfg.get("crop_pct") else 0.875
    if not size > 0 or not 0 < crop_pct <= 1:
        raise ValueError(f"{source}: input_size {input_size} or crop_pct {crop_pct} out of range; fix them.")
    resize = math.floor(size / crop_pct)
    processor = {
        "size": {"shortest_edge": resize},
        "crop_size": {"height": size, "width": size},
        "do_center_crop": True,
        "resample": _RESAMPLE.get(str(pretrained_cfg.get("interpolation", "bicubic")), 3),
        "image_mean": _numbers(pretrained_cfg, "mean", (0.485, 0.456, 0.406), source),
        "image_std": _numbers(pretrained_cfg, "std", (0.229, 0.224, 0.225), source),
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


def _numbers(settings: Mapping[str, Any], key: str, default: tuple[float, ...], source: str) -> list[float]:
    """``settings[key]`` (``default`` when absent) as a list of finite numbers, or ``ValueError`` naming the field."""
    value = settings.get(key, default)
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in items):
        raise ValueError(f"{source}.{key} must be a number or a list of numbers (e.g. {list(default)}); got {value!r}.")
    return [float(v) for v in items]


def import_timm_hub_backbone(folder: Path, config_json: Mapping[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """Build a timm Hub repo (a local snapshot folder and its parsed ``config.json``) without classifier and load its
    weights through timm (its checkpoint filters; strict except the dropped classifier).

    Returns the backbone and the ``QScoreConfig`` fields that rebuild it offline and prepare its images.
    """
    config_file = folder / "config.json"
    architecture = config_json["architecture"]
    if not isinstance(architecture, str):
        raise ValueError(f"{config_file}: architecture must be a timm model name (a string); got {architecture!r}.")
    if not timm.is_model(architecture):
        raise ValueError(
            f"{config_file} names timm architecture {architecture!r}, which this timm ({timm.__version__}) "
            "does not know; upgrade timm."
        )
    weights = next((folder / name for name in _WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        raise ValueError(f"{folder}: a timm repo needs {' or '.join(_WEIGHT_FILES)} beside config.json; none found.")
    model_args = _architecture_args(folder, config_json.get("model_args"))
    pretrained_cfg = config_json.get("pretrained_cfg") or {}
    if not isinstance(pretrained_cfg, Mapping):
        raise ValueError(f"{config_file}: pretrained_cfg must be an object of settings; got {pretrained_cfg!r}.")
    pretrained_cfg = {key: value for key, value in pretrained_cfg.items() if key not in _WEIGHT_SOURCE_KEYS}
    preprocessing = timm_preprocessing(pretrained_cfg, source=f"{config_file}: pretrained_cfg")
    pretrained_cfg["file"] = str(weights)
    pretrained_cfg.setdefault("num_classes", config_json.get("num_classes", 0))
    try:
        model = timm.create_model(architecture, pretrained=True, pretrained_cfg=pretrained_cfg, num_classes=0,
                                  **model_args)  # fmt: skip
    except TypeError as error:  # an argument the architecture does not take
        raise ValueError(f"{config_file}: model_args do not build timm's {architecture} ({error}); fix model_args.") from None
    except (RuntimeError, KeyError) as error:  # strict loading: tensors of another architecture or size
        detail = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
        raise ValueError(
            f"{weights}: the weights do not fit timm's {architecture} as config.json builds it "
            f"({detail[:400]}{'...' if len(detail) > 400 else ''}); fix config.json's architecture or model_args, "
            "or download the repo again."
        ) from None
    fields = {
        "backbone": architecture,
        "backbone_library": "timm",
        "backbone_config": model_args or None,
        **preprocessing,
    }
    return model.eval(), fields


def _architecture_args(folder: Path, model_args: Any) -> dict[str, Any]:
    """config.json's ``model_args`` without ``num_classes``; ``ValueError`` in one line for anything but arguments of
    the architecture (timm's loader arguments such as ``pretrained_cfg_overlay`` could load other weights)."""
    if model_args is None:
        return {}
    return architecture_args(model_args, "model_args", f"{folder / 'config.json'}: ", "a repo's weights are its own")


def architecture_args(
    model_args: Any, field: str, where: str = "", owner: str = "a model's weights are its own"
) -> dict[str, Any]:
    """``model_args`` (a timm repo's, or a ``QScoreConfig.backbone_config``) without ``num_classes``, for
    ``timm.create_model``; ``ValueError`` in one line naming ``where`` and ``field`` for anything but arguments of the
    architecture (timm's loader arguments such as ``checkpoint_path`` or ``pretrained_cfg_overlay`` would read
    weights from another file)."""
    if not isinstance(model_args, Mapping):
        raise ValueError(
            f"{where}{field} must be an object of the architecture's arguments; got {type(model_args).__name__}. Fix or "
            "remove it."
        )
    refused = sorted(str(key) for key in model_args if key in _LOADER_ARGS)
    if refused:
        raise ValueError(
            f"{where}{field}.{refused[0]} is not an argument of the architecture (it would tell timm where to load weights "
            f"from or what to build around the model); {owner} model.safetensors. Remove "
            f"{', '.join(f'{field}.{key}' for key in refused)}."
        )
    return {key: value for key, value in model_args.items() if key != "num_classes"}
