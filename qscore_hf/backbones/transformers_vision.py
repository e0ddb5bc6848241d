"""transformers vision models as backbones (library ``"transformers"``): ViT, DINO, DINOv2, ResNet, ConvNeXt.

The features are the representation each family is linearly probed with: the CLS token of the final layer-normed
hidden state (``last_hidden_state[:, 0]``) for ViTs (DINO, DINOv2, MSN); optionally with the mean of the patch
tokens appended (``"cls_mean"``, DINOv2's linear-probe recipe); the pooled output for CNNs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoImageProcessor, AutoModel, PretrainedConfig

__all__ = [
    "POOLINGS",
    "TRANSFORMERS_POOLING",
    "TransformersBackbone",
    "create_transformers_backbone",
    "import_transformers_backbone",
]

POOLINGS = ("cls", "cls_mean", "pooler")
# model_type -> default pooling; adding a family is adding a row here.
TRANSFORMERS_POOLING = {
    "vit": "cls",
    "vit_msn": "cls",
    "dinov2": "cls",
    "dinov2_with_registers": "cls",
    "resnet": "pooler",
    "convnext": "pooler",
    "convnextv2": "pooler",
}
_TOKEN_POOLINGS = ("cls", "cls_mean")
# Weights of a task head that a classification checkpoint holds beside the backbone: dropped on import.
_TASK_HEADS = ("classifier.",)
# Image-processor settings copied from the source's processor into QScoreImageProcessor's.
_PROCESSOR_KEYS = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
                   "do_normalize", "image_mean", "image_std")  # fmt: skip


class TransformersBackbone(nn.Module):
    """A transformers vision model whose ``forward(pixel_values)`` returns ``(batch, num_features)`` features."""

    def __init__(self, model: nn.Module, pooling: str) -> None:
        super().__init__()
        config = model.config
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}; got {pooling!r}.")
        if pooling in _TOKEN_POOLINGS and config.model_type not in _token_types():
            raise ValueError(
                f"pooling {pooling!r} needs a ViT (tokens); {config.model_type!r} is a CNN: use pooling='pooler'."
            )
        self.model = model
        self.pooling = pooling
        width = getattr(config, "hidden_size", None) or list(getattr(config, "hidden_sizes", [0]))[-1]
        self.num_features = int(width) * (2 if pooling == "cls_mean" else 1)
        # DINOv2 with registers keeps its register tokens between the CLS token and the patch tokens.
        self.first_patch = 1 + int(getattr(config, "num_register_tokens", 0) or 0)

    def forward(self, pixel_values: Tensor) -> Tensor:
        output = self.model(pixel_values=pixel_values, return_dict=True)
        if self.pooling == "pooler":
            return output.pooler_output.flatten(1)
        tokens = output.last_hidden_state
        if self.pooling == "cls":
            return tokens[:, 0]
        return torch.cat([tokens[:, 0], tokens[:, self.first_patch :].mean(dim=1)], dim=-1)


def _token_types() -> tuple[str, ...]:
    return tuple(model_type for model_type, pooling in TRANSFORMERS_POOLING.items() if pooling in _TOKEN_POOLINGS)


def _check_type(model_type: Any, where: str) -> str:
    if not isinstance(model_type, str) or model_type not in TRANSFORMERS_POOLING:
        raise ValueError(
            f"{where}: transformers model type {model_type!r} is not supported as a backbone; supported: "
            f"{', '.join(TRANSFORMERS_POOLING)} (add a row to TRANSFORMERS_POOLING for another vision family; "
            "code shipped in a repo (auto_map) is never run)."
        )
    return model_type


def create_transformers_backbone(
    backbone_config: Mapping[str, Any], pooling: str | None = None
) -> TransformersBackbone:
    """A randomly initialised backbone from a transformers config dict (``PretrainedConfig.to_dict()``)."""
    settings = dict(backbone_config)
    model_type = _check_type(settings.get("model_type"), "backbone_config")
    config = AutoConfig.for_model(**settings)
    model = AutoModel.from_config(config, trust_remote_code=False)
    return TransformersBackbone(model, pooling or TRANSFORMERS_POOLING[model_type])


def _processor_settings(folder: Path, model_config: PretrainedConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The source's image-processor settings (for QScoreImageProcessor) and a record of the processor."""
    try:
        processor = AutoImageProcessor.from_pretrained(str(folder), trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{folder} has no usable image processor (preprocessor_config.json: {error}); a transformers vision repo "
            "needs one to say how images are prepared."
        ) from None
    settings = processor.to_dict()
    kept = {key: settings[key] for key in _PROCESSOR_KEYS if key in settings and settings[key] is not None}
    if "resample" in kept:
        kept["resample"] = int(kept["resample"])
    kept.setdefault("do_center_crop", False)  # e.g. ViTImageProcessor: resize to the exact size, no crop
    crop_pct, edge = settings.get("crop_pct"), (kept.get("size") or {}).get("shortest_edge")
    if crop_pct and edge:  # ConvNextImageProcessor (ResNet, ConvNeXt repos): its own resize-then-crop rule
        if edge < 384:
            kept.update(size={"shortest_edge": int(edge / crop_pct)}, crop_size={"height": edge, "width": edge},
                        do_center_crop=True)  # fmt: skip
        else:
            kept.update(size={"height": edge, "width": edge}, do_center_crop=False)
    return kept, {"image_processor_type": type(processor).__name__, **kept}


def _loading_problems(info: Mapping[str, Any], pooling: str) -> list[str]:
    """What transformers' loading report says is wrong, as short phrases; empty when the weights fill the model.

    By rule, a task head (``classifier.*``) is not part of the backbone and is dropped, and the pooler may be
    missing or extra unless the features are its output (``pooling="pooler"``). Every other missing, unexpected or
    mis-shaped tensor is a problem: features computed without it would come from another model."""
    def unused(key: str) -> bool:
        return key.startswith(_TASK_HEADS) or (pooling != "pooler" and key.startswith("pooler."))

    def first(keys: list[str]) -> str:
        return ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")

    missing = sorted(key for key in info.get("missing_keys", ()) if not unused(key))
    unexpected = sorted(key for key in info.get("unexpected_keys", ()) if not unused(key))
    mismatched = sorted(f"{key} saved {tuple(saved)}, config needs {tuple(needed)}"
                        for key, saved, needed in info.get("mismatched_keys", ()))  # fmt: skip
    named = (("missing tensors", missing), ("unexpected tensors", unexpected), ("tensors of another shape", mismatched))
    return [f"{what}: {first(keys)}" for what, keys in named if keys]


def import_transformers_backbone(
    folder: Path, config_json: Mapping[str, Any], pooling: str | None = None
) -> tuple[TransformersBackbone, dict[str, Any]]:
    """Load a transformers vision repo (a local snapshot folder and its parsed ``config.json``) as a backbone with
    its weights, strictly.

    Only the families of ``TRANSFORMERS_POOLING`` are built, by transformers' own classes: code shipped in the repo
    (``auto_map``) is never run, and transformers never prompts for it (``trust_remote_code=False`` throughout).
    Returns the backbone and the ``QScoreConfig`` fields that rebuild it offline and prepare its images.
    """
    _check_type(config_json.get("model_type"), str(folder / "config.json"))
    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    model_type = _check_type(config.model_type, str(folder / "config.json"))
    pooling = pooling or TRANSFORMERS_POOLING[model_type]
    # Shapes that disagree are reported below, in one line, rather than by transformers' own RuntimeError.
    model, info = AutoModel.from_pretrained(
        str(folder), config=config, output_loading_info=True, ignore_mismatched_sizes=True, trust_remote_code=False
    )
    problems = _loading_problems(info, pooling)
    if problems:
        raise ValueError(
            f"{folder}: the weights do not fit config.json's {type(model).__name__} ({'; '.join(problems)}); the repo "
            "is incomplete or its config.json does not describe its weights: fix config.json or download the repo again."
        )
    backbone = TransformersBackbone(model.eval(), pooling)
    processor, record = _processor_settings(folder, config)
    size = processor.get("crop_size") if processor.get("do_center_crop") else processor.get("size")
    image_size = (size or {}).get("height") or (size or {}).get("shortest_edge") or 224
    fields = {
        "backbone": model_type,
        "backbone_library": "transformers",
        "backbone_config": config.to_dict(),
        "backbone_pooling": pooling,
        "image_size": int(image_size),
        "crop_pct": 1.0,
        "image_mean": processor.get("image_mean", (0.5, 0.5, 0.5)),
        "image_std": processor.get("image_std", (0.5, 0.5, 0.5)),
        "image_processor": processor,
        "source_preprocessing": record,
    }
    return backbone, fields
