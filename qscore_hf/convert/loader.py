"""One loader for every layout: read safely, detect the format, map the keys, check strictly, report.

Every tensor of the file's state dict is either consumed as a backbone weight or dropped by an explicit rule of
its layout (counted by group in the :class:`ConversionReport`); every backbone tensor of the target is filled.
Anything else raises :class:`ConversionError` naming the format, the first offending keys and what to do.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from ..configuration_qscore import QScoreConfig
from ..modeling_qscore import QScoreModel
from .architecture import ResNetShape, ViTShape, infer_resnet, infer_vit
from .layouts import CIFAR10, FORMAT_ALIASES, FORMATS, Layout, License, Preprocessing, RecordedSettings, ssl_family
from .reading import ConversionError, file_sha256, read_checkpoint, to_plain

__all__ = ["ConversionReport", "Detection", "convert_checkpoint", "detect_format"]

logger = logging.getLogger(__name__)

_SHOWN = 6  # offending keys named per problem
_BN_COUNTER = "num_batches_tracked"


@dataclass
class ConversionReport:
    """What a conversion read, kept, dropped and assumed; saved as ``config.conversion`` of the converted model.

    ``inferred`` names what no metadata of the file states and was taken from the release whose key layout the file
    has (``method``, ``pretraining data``, ``license``): a file in that layout with other weights gets the same.
    """

    source_file: str
    sha256: str
    format: str
    detection: str
    release: str
    method: str | None
    method_source: str
    arch: str
    stem_padding: int
    consumed: int
    dropped: dict[str, int]
    filled: dict[str, int]
    other_entries: list[str]
    pretraining_data: str | None
    preprocessing: str
    license: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    pretraining_data_source: str = ""
    inferred: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_config(cls, config: QScoreConfig) -> "ConversionReport | None":
        """The report saved in a converted model's config, or ``None`` for a model that was not converted."""
        data = getattr(config, "conversion", None)
        return cls(**data) if data else None

    def summary(self) -> str:
        """A few lines for people: format and why, method, arch, what was kept, dropped and filled."""
        dropped = ", ".join(f"{group} {count}" for group, count in sorted(self.dropped.items())) or "nothing"
        lines = [
            f"source: {self.source_file} (sha256 {self.sha256})",
            f"format: {self.format} ({self.detection})",
            f"method: {self.method or 'unknown'} ({self.method_source})",
            f"arch: {self.arch} (stem padding {self.stem_padding})",
            f"consumed {self.consumed} backbone tensors; dropped {dropped}",
        ]
        if self.filled:
            lines.append("filled with 0 (BatchNorm counters, not weights): " + ", ".join(
                f"{name} {count}" for name, count in self.filled.items()))  # fmt: skip
        if self.other_entries:
            lines.append(f"not read (training state): {', '.join(self.other_entries)}")
        if self.pretraining_data or self.pretraining_data_source:
            lines.append(f"pre-training data: {self.pretraining_data or 'unknown'} ({self.pretraining_data_source})")
        lines.append(f"preprocessing: {self.preprocessing}")
        lines.append(f"license of the original weights: {self.license['id']} ({self.license['source']})")
        if self.inferred:
            lines.append(
                f"inferred from the key layout alone (the file does not record it): {', '.join(self.inferred)}; "
                "state it with --method, --pretraining-data or --license"
            )
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


@dataclass(frozen=True)
class Detection:
    """The format auto-detection chose, and why."""

    format: str
    reason: str


def detect_format(checkpoint: str | os.PathLike | Any, trust_checkpoint: bool = False) -> Detection:
    """Detect a checkpoint's layout from its container and keys.

    ``checkpoint`` is a file path (read safely, see :func:`convert_checkpoint`) or an already loaded object. When
    several layouts fit (e.g. a torchvision state dict without ``fc`` and DINO's backbone file), the first in
    ``FORMATS`` order wins and the reason names the others.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = read_checkpoint(checkpoint, trust_checkpoint)
    fitting = [layout for layout in FORMATS.values() if _fits(layout, checkpoint)]
    if not fitting:
        raise ConversionError(
            f"no known checkpoint layout fits ({_describe_container(checkpoint)}). Known formats: "
            f"{', '.join(FORMATS)}; pass --format NAME if one of them applies, or re-save the backbone as a "
            "torchvision-named state dict."
        )
    chosen = fitting[0]
    reason = f"auto-detected: {chosen.title}"
    if len(fitting) > 1:
        reason += f"; also fits {', '.join(layout.name for layout in fitting[1:])} (pass --format to choose)"
    return Detection(chosen.name, reason)


def convert_checkpoint(
    path: str | os.PathLike,
    method: str | None = None,
    format: str = "auto",
    arch: str | None = None,
    trust_checkpoint: bool = False,
    pretraining_data: str | None = None,
    license: str | None = None,
) -> QScoreModel:
    """Convert a released SSL checkpoint into a :class:`QScoreModel` (random-free: every weight from the file).

    Args:
        path: ``.pth``/``.pth.tar``/``.ckpt`` (read with ``torch.load(weights_only=True)`` and an allow-list) or
            ``.safetensors``.
        method: the SSL method, when the file does not say (lightly/solo-learn checkpoints whose heads are
            ambiguous, plain torchvision state dicts); overrides what the file says.
        format: a name from ``qscore_hf.convert.FORMATS`` (or ``timm``), or ``auto`` to detect it from the keys.
        arch: backbone name (``resnet50``, ``resnet18_cifar``); by default inferred from the keys and shapes.
        trust_checkpoint: unpickle with ``weights_only=False`` (runs the file's code; warns). A pickled
            ``nn.Module`` is then read as its state dict.
        pretraining_data: the data set the weights were pre-trained on, when you know it (otherwise: what the file's
            metadata or solo-learn's ``args.json`` records, else the release's, marked as inferred).
        license: the license id of the weights, when you know it (otherwise the release's, marked as inferred).

    Returns:
        The model in eval mode; ``ConversionReport.from_config(model.config)`` gives the report.

    Raises:
        ConversionError: unreadable file, unknown layout, unknown or missing keys, wrong shapes, wide variants.
    """
    path = Path(path)
    checkpoint = read_checkpoint(path, trust_checkpoint)
    if format == "auto":
        detection = detect_format(checkpoint)
    else:
        name = FORMAT_ALIASES.get(format, format)
        if name not in FORMATS:
            known = ", ".join([*FORMATS, *FORMAT_ALIASES])
            raise ConversionError(f"unknown format {format!r}; choose auto or one of {known}.")
        detection = Detection(name, f"given: {FORMATS[name].title}")
    layout = FORMATS[detection.format]
    logger.info("%s: format %s (%s)", path.name, layout.name, detection.reason)
    state = _find_state(layout, checkpoint, explicit=format != "auto")
    if state is None:
        raise ConversionError(
            f"{path.name} is not a '{layout.name}' checkpoint: {_describe_container(checkpoint)}, but that layout "
            f"keeps its state dict under {'/'.join(layout.state_path)!r}. Pass --format auto or another format."
        )
    backbone, origin, dropped, unknown = _split(layout, state)
    shape = infer_resnet(backbone) or infer_vit(backbone)
    arch_name = _choose_arch(path, layout, shape, arch, backbone)
    cifar_stem = arch_name.endswith("_cifar")
    recorded, recorded_source = _recorded_settings(path, layout, checkpoint)
    chosen_method, method_source = _choose_method(path, layout, list(state), method, recorded, recorded_source, dropped)
    data_name, data_source, preprocessing, notes = _choose_data(layout, pretraining_data, recorded, recorded_source,
                                                                cifar_stem)  # fmt: skip
    stem_padding = layout.cifar_stem_padding if cifar_stem else 1
    if chosen_method in layout.method_notes:
        notes.append(layout.method_notes[chosen_method])
    if recorded.backbone and shape is not None and shape.name and not shape.name.startswith(recorded.backbone):
        notes.append(f"{recorded_source} names the backbone {recorded.backbone!r}, but the weights are a {shape.name}.")
    inferred = [name for name, source in (("method", method_source), ("pretraining data", data_source))
                if source.startswith(_INFERRED)]  # fmt: skip
    if license:
        license_info = License(license.strip().lower(), "given (--license)", True)
    else:
        license_info = replace(layout.license, source=f"{layout.license.source}; {_INFERRED}")
        inferred.append("license")

    config = QScoreConfig(
        backbone=arch_name,
        stem_padding=stem_padding,
        ssl_method=ssl_family(chosen_method),
        pretraining_data=data_name,
        image_size=preprocessing.image_size,
        crop_pct=preprocessing.crop_pct,
        image_mean=preprocessing.image_mean,
        image_std=preprocessing.image_std,
        backbone_config=dict(layout.arch_args[arch_name]) if arch_name in layout.arch_args else None,
    )
    model = QScoreModel(config)
    filled = _check_and_fill(path, layout, detection, arch_name, shape, model, backbone, origin, unknown)
    model.backbone.load_state_dict(backbone, strict=True)
    report = ConversionReport(
        source_file=path.name,
        sha256=file_sha256(path),
        format=layout.name,
        detection=detection.reason,
        release=layout.title,
        method=chosen_method,
        method_source=method_source,
        arch=arch_name,
        stem_padding=stem_padding,
        consumed=len(backbone) - sum(filled.values()),
        dropped=dict(sorted(dropped.items())),
        filled=filled,
        other_entries=_other_entries(layout, checkpoint),
        pretraining_data=data_name,
        preprocessing=preprocessing.note,
        license=asdict(license_info),
        notes=[*layout.notes, *notes],
        pretraining_data_source=data_source,
        inferred=inferred,
    )
    model.config.conversion = report.to_dict()
    return model.eval()


# ----------------------------------------------------------------------------------------------- detection
def _find_state(layout: Layout, checkpoint: Any, explicit: bool = False) -> Mapping[str, Any] | None:
    """The state dict at the layout's path; with an explicit format a flat state dict is taken as it is, and so is
    one under a training checkpoint's ``state_dict`` key (e.g. SwAV's own checkpoints given as ``--format swav``)."""
    node = checkpoint
    for key in layout.state_path:
        if not isinstance(node, Mapping) or key not in node:
            node = None
            break
        node = node[key]
    if not _is_state_dict(node) and explicit:
        if _is_state_dict(checkpoint):
            node = checkpoint
        elif isinstance(checkpoint, Mapping) and _is_state_dict(checkpoint.get("state_dict")):
            node = checkpoint["state_dict"]
    return node if _is_state_dict(node) else None


def _is_state_dict(node: Any) -> bool:
    return isinstance(node, Mapping) and bool(node) and any(isinstance(value, Tensor) for value in node.values())


def _fits(layout: Layout, checkpoint: Any) -> bool:
    if not isinstance(checkpoint, Mapping) or not layout.container_keys <= set(checkpoint):
        return False
    state = _find_state(layout, checkpoint)
    return state is not None and layout.matches(list(state))


def _describe_container(checkpoint: Any) -> str:
    if not isinstance(checkpoint, Mapping):
        return f"the file holds a {type(checkpoint).__name__}, not a dict"
    keys = list(checkpoint)
    if _is_state_dict(checkpoint):
        return f"a flat state dict whose first keys are {_first(keys)}"
    return f"a dict with top-level keys {_first(keys)}"


def _other_entries(layout: Layout, checkpoint: Any) -> list[str]:
    if not layout.state_path or not isinstance(checkpoint, Mapping):
        return []
    return [str(key) for key in checkpoint if key != layout.state_path[0]]


# ------------------------------------------------------------------------------------------------- mapping
def _split(
    layout: Layout, state: Mapping[str, Any]
) -> tuple[dict[str, Tensor], dict[str, str], Counter[str], list[str]]:
    """Backbone tensors under torchvision names (and each one's key in the file), dropped counts by group, and the
    keys no rule explains."""
    backbone: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    dropped: Counter[str] = Counter()
    unknown: list[str] = []
    for key, value in state.items():
        group = layout.drop_group(key)
        if group is not None:
            dropped[group] += 1
            continue
        name = layout.strip_prefix(key)
        if name is None or not isinstance(value, Tensor):
            unknown.append(key)
        else:
            backbone[name] = value
            origin[name] = key
    return backbone, origin, dropped, unknown


def _choose_arch(
    path: Path, layout: Layout, shape: ResNetShape | ViTShape | None, arch: str | None, backbone: Mapping[str, Tensor]
) -> str:
    """The backbone name: ``arch`` when given, else the one the keys and shapes show; wide ResNets fail."""
    if shape is not None and shape.wide:
        raise ConversionError(
            f"{path.name} ({layout.name}): the backbone is a wide ResNet (conv1 has {shape.stem_width} output "
            f"channels, layer1.0.conv1 has {shape.block_width}; torchvision's ResNets have 64): wide variants "
            "(SwAV/SimCLR w2/w4/w5 or 2x/4x, wide_resnet50_2) are not supported. Convert the 1x model instead."
        )
    if arch is not None:
        return arch
    if shape is None:
        raise ConversionError(
            f"{path.name} ({layout.name}): no ResNet or ViT found under prefix(es) {list(layout.prefixes)} (no "
            f"conv1.weight or patch_embed.proj.weight; first backbone keys: {_first(list(backbone))}). Only "
            "torchvision/timm-named ResNets and ViTs are supported; pass --format if the layout was mis-detected, or "
            "--arch if the stem is missing from an otherwise known backbone."
        )
    if shape.name is None and isinstance(shape, ViTShape):
        raise ConversionError(
            f"{path.name} ({layout.name}): a {shape.describe()} is none of DINO's and MoCo v3's ViT-S/16, S/8, B/16, "
            "B/8 (width 384 or 768, patch 16 or 8, 12 blocks); pass --arch with its timm name."
        )
    if shape.name is None:
        raise ConversionError(
            f"{path.name} ({layout.name}): a ResNet with {shape.describe()} is none of resnet18/34/50/101/152; pass "
            "--arch with the timm name of this depth."
        )
    return shape.name


def _recorded_settings(path: Path, layout: Layout, checkpoint: Any) -> tuple[RecordedSettings, str]:
    """What the file's hyper-parameters, else the release's settings file beside it (solo-learn's ``args.json``),
    record about the training; and where that came from."""
    if layout.read_hparams is None:
        return RecordedSettings(), ""
    hparams = to_plain(checkpoint.get("hyper_parameters")) if isinstance(checkpoint, Mapping) else None
    recorded = layout.read_hparams(hparams)
    if any(recorded):
        return recorded, "the checkpoint's hyper_parameters"
    args_path = path.parent / layout.args_file if layout.args_file else None
    if args_path is None or not args_path.is_file():
        return recorded, ""
    try:
        args = json.loads(args_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConversionError(
            f"{args_path} (the settings {layout.name} writes beside {path.name}) is not readable JSON ({error}); fix "
            "or remove it, or pass --method and --pretraining-data."
        ) from error
    return layout.read_hparams(args), f"{layout.args_file} beside the checkpoint"


# How the report marks what only the key layout says (see ConversionReport.inferred).
_INFERRED = "inferred from the key layout"


def _choose_method(
    path: Path,
    layout: Layout,
    keys: list[str],
    given: str | None,
    recorded: RecordedSettings,
    recorded_source: str,
    dropped: Counter[str],
) -> tuple[str | None, str]:
    if given:
        return given.strip().lower(), "given"
    if recorded.method:
        return recorded.method.strip().lower(), f"from {recorded_source}"
    hinted = layout.hinted_method(keys)
    if hinted:
        return hinted, f"{_INFERRED}: the heads in the checkpoint"
    if layout.method:
        return layout.method, f"{_INFERRED}: the {layout.name} release's method"
    if layout.method_hints:  # a multi-method layout whose file does not say
        raise ConversionError(
            f"{path.name} ({layout.name}): the checkpoint does not say which method trained it and its heads "
            f"({', '.join(sorted(dropped)) or 'none'}) fit several; pass --method (e.g. simclr, byol, mocov2plus, "
            "barlow_twins, vicreg)."
        )
    return None, "unknown (pass --method to record it)"


def _choose_data(
    layout: Layout, given: str | None, recorded: RecordedSettings, recorded_source: str, cifar_stem: bool
) -> tuple[str | None, str, Preprocessing, list[str]]:
    """The pre-training data set, where it came from, the preprocessing the weights expect, and notes."""
    dataset, source = (given, "given") if given else (recorded.dataset, f"from {recorded_source}")
    if dataset and dataset.lower() in layout.datasets:
        name, preprocessing = layout.datasets[dataset.lower()]
        return name, source, preprocessing, []
    if dataset:
        known = dataset == layout.pretraining_data
        return dataset, source, layout.preprocessing, [] if known else [
            f"no preprocessing known for data set {dataset!r}: used {layout.preprocessing.note}; check it."
        ]
    if cifar_stem and layout.preprocessing.image_size != CIFAR10.image_size:
        return None, "not recorded", CIFAR10, [
            "CIFAR stem and no data set recorded: assumed CIFAR-10 preprocessing; check it."
        ]
    if layout.pretraining_data:
        return layout.pretraining_data, f"{_INFERRED}: the {layout.name} release's data", layout.preprocessing, []
    return None, "not recorded", layout.preprocessing, []


# ------------------------------------------------------------------------------------------------ checking
def _check_and_fill(
    path: Path,
    layout: Layout,
    detection: Detection,
    arch: str,
    shape: ResNetShape | ViTShape | None,
    model: QScoreModel,
    backbone: dict[str, Tensor],
    origin: Mapping[str, str],
    unknown: list[str],
) -> dict[str, int]:
    """Compare with the target backbone; fill absent BatchNorm counters with 0 (they are not weights: the
    torchvision conversions of BYOL omit them) and raise on anything else that does not fit."""
    target = model.backbone.state_dict()
    counters = [key for key in target if key not in backbone and key.endswith(_BN_COUNTER)]
    for key in counters:
        backbone[key] = torch.zeros_like(target[key])
    missing = [key for key in target if key not in backbone]
    unexpected = unknown + [origin[key] for key in backbone if key not in target]
    mismatched = [
        f"{origin[key]} (checkpoint {tuple(value.shape)}, {arch} expects {tuple(target[key].shape)})"
        for key, value in backbone.items()
        if key in target and value.shape != target[key].shape
    ] + [  # a float weight stored as integers or complex numbers would be cast silently
        f"{origin[key]} (checkpoint dtype {value.dtype}, {arch} expects {target[key].dtype})"
        for key, value in backbone.items()
        if key in target and _dtype_kind(value) != _dtype_kind(target[key])
    ]
    if missing or unexpected or mismatched:
        raise ConversionError(
            _problem_message(path, layout, detection, arch, shape, missing, unexpected, mismatched)
        )
    return {_BN_COUNTER: len(counters)} if counters else {}


def _dtype_kind(tensor: Tensor) -> str:
    return "complex" if tensor.is_complex() else "float" if tensor.is_floating_point() else "bool" if (
        tensor.dtype == torch.bool) else "integer"


def _problem_message(
    path: Path,
    layout: Layout,
    detection: Detection,
    arch: str,
    shape: ResNetShape | ViTShape | None,
    missing: list[str],
    unexpected: list[str],
    mismatched: list[str],
) -> str:
    lines = [f"{path.name}: cannot convert as format '{layout.name}' ({detection.reason}) with arch {arch}:"]
    if shape is not None and shape.name is not None and shape.name != arch:
        lines.append(f"the checkpoint has a {shape.describe()} ({shape.name}) but {arch} was asked for")
    if mismatched:
        lines.append(f"tensors with another shape or dtype: {_first(mismatched)}")
    if unexpected:
        lines.append(f"unknown keys (neither backbone weights nor a known head of {layout.name}): {_first(unexpected)}")
    if missing:
        prefix = layout.prefixes[0]
        lines.append(f"missing backbone tensors: {_first([prefix + key for key in missing])}")
    hints = []
    wrong_arch = shape is not None and shape.name is not None and shape.name != arch
    if wrong_arch:
        hints.append(f"pass --arch {shape.name} or leave --arch out")
    if unexpected:
        hints.append(
            "if these keys are heads of this release, its layout differs from the table in "
            "qscore_hf/convert/layouts.py: pass the right --format or remove those keys from the file"
        )
    if missing and not wrong_arch:
        hints.append("the file lacks backbone weights: it is incomplete or another layout; download it again")
    if detection.reason.startswith("auto") and not wrong_arch:
        hints.append(f"pass --format to override the detected one (known: {', '.join(FORMATS)})")
    lines.append("How to proceed: " + "; ".join(hints) + ".")
    return "\n  ".join(lines)


def _first(keys: list[str]) -> str:
    shown = ", ".join(str(key) for key in keys[:_SHOWN])
    return shown + (f" (and {len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")
