"""The released checkpoint layouts as data: one rule table per format (see shared/CHECKPOINTS.md).

Each :class:`Layout` says where the state dict sits in the file, under which prefix(es) the backbone's
torchvision/timm-named tensors are, which other tensors are heads to drop (regex -> group), how to tell the
layout from the keys, which method trained it, the preprocessing the weights expect and the license of the
original weights. The loader (``loader.py``) applies a layout; nothing here runs code on a checkpoint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple

from ..configuration_qscore import IMAGENET_MEAN, IMAGENET_STD
from ..normalization import CIFAR10_MEAN, CIFAR10_STD

__all__ = [
    "FORMATS",
    "FORMAT_ALIASES",
    "DatasetPreprocessing",
    "Layout",
    "License",
    "Preprocessing",
    "RecordedSettings",
    "ssl_family",
]


@dataclass(frozen=True)
class License:
    """The license of the original weights: an SPDX-style Hub id (``cc-by-nc-4.0``, ``mit``, ``unknown``), where it
    is stated, and whether we confirmed that it covers the weights (not only the code)."""

    id: str
    source: str
    confirmed: bool
    note: str = ""


@dataclass(frozen=True)
class Preprocessing:
    """What the weights expect as input: normalization and the evaluation resize/centre-crop."""

    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    image_size: int = 224
    crop_pct: float = 0.875
    note: str = "ImageNet normalization, resize 256 / centre-crop 224"


DatasetPreprocessing = Mapping[str, tuple[str, Preprocessing]]

IMAGENET = Preprocessing()
CIFAR10 = Preprocessing(CIFAR10_MEAN, CIFAR10_STD, 32, 1.0, "CIFAR-10 normalization, 32 px")
# solo-learn's pre-training/eval statistics per data set (solo/data/pretrain_dataloader.py, MEANS_N_STD).
SOLO_LEARN_DATASETS: DatasetPreprocessing = {
    "cifar10": ("cifar10", CIFAR10),
    "cifar100": (
        "cifar100",
        Preprocessing((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 32, 1.0, "CIFAR-100 normalization, 32 px"),
    ),
    "stl10": (
        "stl10",
        Preprocessing((0.4914, 0.4823, 0.4466), (0.247, 0.243, 0.261), 96, 1.0, "STL-10 normalization, 96 px"),
    ),
    "imagenet100": ("imagenet-100", IMAGENET),
    "imagenet": ("imagenet-1k", IMAGENET),
}

# Source method names (as the releases spell them) -> QScoreConfig.ssl_method; methods not listed get None.
_SSL_FAMILY = {
    "simclr": "simclr",
    "moco": "moco",
    "mocov1": "moco",
    "mocov2": "moco",
    "mocov2plus": "moco",
    "mocov3": "moco",
    "byol": "byol",
    "swav": "swav",
    "dino": "dino",
    "simsiam": "simsiam",
}


def ssl_family(method: str | None) -> str | None:
    """``QScoreConfig.ssl_method`` for a source method name (``mocov2plus`` -> ``moco``); ``None`` when the
    method is none of the six (e.g. solo-learn's ``barlow_twins``: it is still recorded in the conversion)."""
    return _SSL_FAMILY.get(method) if method else None


# Words that mark a module as a momentum (EMA) copy of another when they are a `_`-separated part of its name.
_MOMENTUM_WORDS = frozenset({"momentum", "ema", "teacher", "target", "key"})
_ENCODERS = frozenset({"backbone", "encoder"})


def momentum_copy_group(key: str) -> str | None:
    """``"encoder copies"`` or ``"momentum copies"`` when the key's top-level module name has a momentum word as one
    of its ``_``-separated parts (``backbone_momentum.conv1.weight``, ``momentum_projector.0.weight``), else ``None``.
    The copies' own names without those words tell an encoder copy from a head copy."""
    module = key.split(".", 1)[0]
    parts = module.split("_")
    if len(parts) < 2 or not _MOMENTUM_WORDS & set(parts):
        return None
    base = "_".join(part for part in parts if part not in _MOMENTUM_WORDS)
    return "encoder copies" if base in _ENCODERS else "momentum copies"


@dataclass(frozen=True)
class Layout:
    """How one release lays out its checkpoint.

    Args:
        name: the format's name (``--format``).
        title: the release in words, with its code repository.
        container_keys: top-level keys the file's dict must have (empty: the file is the state dict itself).
        state_path: keys leading from the file's dict to the state dict (empty: the file itself).
        prefixes: prefixes of the backbone's keys; stripping one gives torchvision/timm names.
        drop: ``(regex, group)`` rules for the tensors that are not the backbone (heads, copies, queues); a key
            matching one is dropped and counted under its group. Checked before ``prefixes``.
        requires: regexes that must each match some key for auto-detection to pick this layout.
        forbids: regexes that must match no key for auto-detection to pick this layout.
        method: the method that produced the release, or ``None`` when the file does not say.
        method_hints: ``(regexes, method)``: the first entry whose regexes all match some key names the method
            (e.g. MoCo v2's MLP ``fc.0``); used before ``method``.
        read_hparams: reads the method, data set and backbone from the file's Lightning ``hyper_parameters`` (and
            from ``args_file``).
        args_file: a JSON file the release's trainer writes beside each checkpoint with its settings (solo-learn's
            ``args.json``); read with ``read_hparams`` when the file's own hyper-parameters do not say.
        pretraining_data: the data set the release was pre-trained on, when fixed.
        preprocessing: what the weights expect (overridden by a known ``dataset``).
        datasets: preprocessing by the data set named in ``hyper_parameters``.
        cifar_stem_padding: padding of the 3x3 CIFAR stem when the checkpoint has one (not visible in weights).
        arch_args: per backbone name, timm ``create_model`` arguments the weights do not show (e.g. MoCo v3's
            ViT-S has 12 heads where timm's has 6).
        license: license of the original weights.
        notes: caveats for the report and the model card; ``method_notes`` add some per method.
        momentum_copies: drop every top-level module named as a momentum/EMA copy of another, whatever the word's
            place (``momentum_backbone``, ``backbone_momentum``, ``ema_projector``): Lightning modules name them
            freely.
    """

    name: str
    title: str
    container_keys: frozenset[str] = frozenset()
    state_path: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ("",)
    drop: tuple[tuple[str, str], ...] = ()
    requires: tuple[str, ...] = ()
    forbids: tuple[str, ...] = ()
    method: str | None = None
    method_hints: tuple[tuple[tuple[str, ...], str], ...] = ()
    read_hparams: Callable[[Any], RecordedSettings] | None = None
    args_file: str | None = None
    pretraining_data: str | None = "imagenet-1k"
    preprocessing: Preprocessing = IMAGENET
    datasets: DatasetPreprocessing = field(default_factory=dict)
    cifar_stem_padding: int = 1
    arch_args: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    license: License = License("unknown", "see the source repository", False)
    notes: tuple[str, ...] = ()
    method_notes: Mapping[str, str] = field(default_factory=dict)
    momentum_copies: bool = False

    def drop_group(self, key: str) -> str | None:
        """The head group a key belongs to, or ``None`` if no drop rule matches it; with ``momentum_copies``, a
        module whose name marks it as a momentum/EMA copy (see :func:`momentum_copy_group`) is dropped too."""
        group = next((group for pattern, group in self.drop if re.search(pattern, key)), None)
        return group if group is not None or not self.momentum_copies else momentum_copy_group(key)

    def strip_prefix(self, key: str) -> str | None:
        """The key without its backbone prefix, or ``None`` when it is under none of them."""
        return next((key[len(prefix) :] for prefix in self.prefixes if key.startswith(prefix)), None)

    def matches(self, keys: list[str]) -> bool:
        """Whether this layout's detection signature fits a state dict's keys."""

        def found(pattern: str) -> bool:
            return any(re.search(pattern, key) for key in keys)

        return all(found(p) for p in self.requires) and not any(found(p) for p in self.forbids)

    def hinted_method(self, keys: list[str]) -> str | None:
        """The method named by the first hint whose regexes all match some key."""
        for patterns, method in self.method_hints:
            if all(any(re.search(p, key) for key in keys) for p in patterns):
                return method
        return None


class RecordedSettings(NamedTuple):
    """What a checkpoint's own metadata (hyper-parameters, an ``args.json`` beside it) records about its training."""

    method: str | None = None
    dataset: str | None = None
    backbone: str | None = None


def _solo_learn_settings(hparams: Any) -> RecordedSettings:
    """solo-learn's method, data set and backbone: flat argparse arguments before v1.0.6 (``encoder`` before v1.0.3),
    its hydra config after (``cfg`` in Lightning's hyper-parameters; the config itself in ``args.json``)."""
    if not isinstance(hparams, Mapping):
        return RecordedSettings()
    cfg = hparams.get("cfg") if isinstance(hparams.get("cfg"), Mapping) else hparams
    data = cfg.get("data") if isinstance(cfg.get("data"), Mapping) else {}
    backbone = cfg.get("backbone")
    backbone = backbone.get("name") if isinstance(backbone, Mapping) else backbone or cfg.get("encoder")
    method, dataset = cfg.get("method"), data.get("dataset") or cfg.get("dataset")
    return RecordedSettings(*(str(value) if value else None for value in (method, dataset, backbone)))


_TORCHVISION_STEM = r"^conv1\.weight$"
_BN_COUNTER = r"num_batches_tracked$"
_FB_NC = "CC-BY-NC 4.0 (README/LICENSE of the repository)"
_SWAV_HEADS = ((r"^module\.projection_head\.", "projector"), (r"^module\.prototypes", "prototypes"))
_SWAV_PREPROCESSING = Preprocessing(
    IMAGENET_MEAN, (0.228, 0.224, 0.225), 224, 0.875, "ImageNet mean, SwAV's std (0.228, 0.224, 0.225)"
)
_SWAV_PADDING = "SwAV pads by 1 and then convolves with padding 2: the same as torchvision's conv1 padding 3."

FORMATS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout(
            name="moco",
            title="MoCo v1/v2 (github.com/facebookresearch/moco, main_moco.py)",
            container_keys=frozenset({"state_dict"}),
            state_path=("state_dict",),
            prefixes=("module.encoder_q.",),
            drop=(
                (r"^module\.encoder_q\.fc\.", "projector"),
                (r"^module\.encoder_k\.", "encoder copies"),
                (r"^module\.queue(_ptr)?$", "queue"),
            ),
            requires=(r"^module\.encoder_q\.conv1\.weight$",),
            method="mocov1",
            method_hints=(((r"^module\.encoder_q\.fc\.0\.weight$",), "mocov2"),),
            license=License(
                "mit",
                "MIT (LICENSE of facebookresearch/moco since January 2023, CC-BY-NC 4.0 before; its README still "
                "says CC-BY-NC 4.0)",
                False,
                "the repository's LICENSE changed from CC-BY-NC 4.0 to MIT in January 2023 and does not single out "
                "the released weights; its README still names CC-BY-NC 4.0.",
            ),
        ),
        Layout(
            name="mocov3",
            title="MoCo v3 (github.com/facebookresearch/moco-v3, main_moco.py)",
            container_keys=frozenset({"state_dict"}),
            state_path=("state_dict",),
            prefixes=("module.base_encoder.",),
            drop=(
                (r"^module\.base_encoder\.fc\.", "projector"),
                (r"^module\.momentum_encoder\.", "encoder copies"),
                (r"^module\.predictor\.", "predictor"),
            ),
            requires=(r"^module\.base_encoder\.conv1\.weight$",),
            method="mocov3",
            license=License("cc-by-nc-4.0", _FB_NC, False),
        ),
        Layout(
            name="mocov3_vit",
            title="MoCo v3 ViT (github.com/facebookresearch/moco-v3, main_moco.py, vits.py)",
            container_keys=frozenset({"state_dict"}),
            state_path=("state_dict",),
            prefixes=("module.base_encoder.",),
            drop=(
                (r"^module\.base_encoder\.head\.", "projector"),
                (r"^module\.momentum_encoder\.", "encoder copies"),
                (r"^module\.predictor\.", "predictor"),
            ),
            requires=(r"^module\.base_encoder\.cls_token$",),
            method="mocov3",
            arch_args={"vit_small_patch16_224": {"num_heads": 12}},  # vits.py: ViT-S with 12 heads (timm's: 6)
            license=License("cc-by-nc-4.0", _FB_NC, False),
            notes=(
                "Features: the CLS token after the final LayerNorm, as MoCo v3's linear evaluation reads it.",
                "The position embedding is MoCo v3's fixed 2-D sin-cos one, stored in the weights as pos_embed.",
            ),
        ),
        Layout(
            name="simsiam",
            title="SimSiam (github.com/facebookresearch/simsiam, main_simsiam.py)",
            container_keys=frozenset({"state_dict"}),
            state_path=("state_dict",),
            prefixes=("module.encoder.",),
            drop=((r"^module\.encoder\.fc\.", "projector"), (r"^module\.predictor\.", "predictor")),
            requires=(r"^module\.encoder\.conv1\.weight$",),
            method="simsiam",
            license=License("cc-by-nc-4.0", _FB_NC, False),
        ),
        Layout(
            name="swav",
            title="SwAV (github.com/facebookresearch/swav, main_swav.py / hubconf.py)",
            prefixes=("module.",),
            drop=_SWAV_HEADS,
            requires=(r"^module\.conv1\.weight$",),
            method="swav",
            preprocessing=_SWAV_PREPROCESSING,
            license=License("cc-by-nc-4.0", _FB_NC, False),
            notes=(_SWAV_PADDING,),
        ),
        Layout(
            name="swav_train",
            title="SwAV training checkpoint (github.com/facebookresearch/swav, main_swav.py: epoch, state_dict, "
            "optimizer, amp)",
            container_keys=frozenset({"state_dict", "optimizer"}),
            state_path=("state_dict",),
            prefixes=("module.",),
            drop=_SWAV_HEADS,
            requires=(r"^module\.conv1\.weight$",),
            method="swav",
            preprocessing=_SWAV_PREPROCESSING,
            license=License("cc-by-nc-4.0", _FB_NC, False),
            notes=(_SWAV_PADDING,),
        ),
        Layout(
            name="dino_full",
            title="DINO training checkpoint (github.com/facebookresearch/dino, main_dino.py): the teacher",
            container_keys=frozenset({"teacher", "student"}),
            state_path=("teacher",),
            prefixes=("module.backbone.", "backbone."),
            drop=((r"^(module\.)?head\.", "projector"),),
            requires=(r"^(module\.)?backbone\.conv1\.weight$",),
            method="dino",
            license=License("apache-2.0", "Apache-2.0 (LICENSE; weights covered per facebookresearch/dino#108)", True),
            notes=("The teacher's backbone is used, as DINO evaluates it; the student was not read.",),
        ),
        Layout(
            name="dino_backbone",
            title="DINO backbone file (github.com/facebookresearch/dino, dino_resnet50_pretrain.pth): the teacher",
            requires=(_TORCHVISION_STEM,),
            forbids=(r"^fc\.",),
            method="dino",
            license=License("apache-2.0", "Apache-2.0 (LICENSE; weights covered per facebookresearch/dino#108)", True),
            notes=("A torchvision state dict without `fc` looks the same; pass --format torchvision for one.",),
        ),
        Layout(
            name="dino_vit_full",
            title="DINO ViT training checkpoint (github.com/facebookresearch/dino, main_dino.py): the teacher",
            container_keys=frozenset({"teacher", "student"}),
            state_path=("teacher",),
            prefixes=("module.backbone.", "backbone."),
            drop=((r"^(module\.)?head\.", "projector"),),
            requires=(r"^(module\.)?backbone\.cls_token$",),
            method="dino",
            license=License("apache-2.0", "Apache-2.0 (LICENSE; weights covered per facebookresearch/dino#108)", True),
            notes=(
                "The teacher's backbone is used, as DINO evaluates it; the student was not read.",
                "Features: the CLS token after the final LayerNorm (DINO's ViT forward); DINO's linear evaluation "
                "also concatenates the last 4 blocks' CLS tokens (ViT-S) or the mean patch token (ViT-B).",
            ),
        ),
        Layout(
            name="dino_vit_backbone",
            title="DINO ViT backbone file (github.com/facebookresearch/dino, dino_deitsmall16_pretrain.pth, ...)",
            requires=(r"^cls_token$", r"^blocks\.0\.attn\.qkv\.weight$"),
            forbids=(r"^head\.",),
            method="dino",
            license=License("apache-2.0", "Apache-2.0 (LICENSE; weights covered per facebookresearch/dino#108)", True),
            notes=(
                "DINO ViT-S/16, S/8, B/16 and B/8 use timm's names; a timm ViT state dict without `head` looks the "
                "same.",
                "Features: the CLS token after the final LayerNorm (DINO's ViT forward).",
            ),
        ),
        Layout(
            name="byol_converted",
            title="BYOL converted to torchvision names (github.com/ajtejankar/byol-convert)",
            drop=((r"^fc\.", "supervised head"),),
            requires=(_TORCHVISION_STEM, r"^fc\.weight$"),
            forbids=(_BN_COUNTER,),
            method="byol",
            license=License(
                "apache-2.0",
                "Apache-2.0 (github.com/deepmind/deepmind-research); the converter states no license",
                False,
                "The license of DeepMind's released weights could not be confirmed.",
            ),
            notes=(
                "BYOL was trained in JAX with TensorFlow 'SAME' (asymmetric) padding; the torchvision ResNet pads "
                "symmetrically, so features differ slightly from the original model's.",
            ),
        ),
        Layout(
            name="simclr_v1_converted",
            title="SimCLR v1 converted to torchvision names (github.com/tonylins/simclr-converter)",
            container_keys=frozenset({"state_dict"}),
            state_path=("state_dict",),
            drop=((r"^fc\.", "supervised head"),),
            requires=(_TORCHVISION_STEM,),
            method="simclr",
            preprocessing=Preprocessing(
                (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 224, 0.875, "no normalization: inputs in [0, 1]"
            ),
            license=License(
                "apache-2.0",
                "Apache-2.0 (github.com/google-research/simclr; converter Apache-2.0)",
                False,
                "The SimCLR repository's license is Apache-2.0; that it covers the released weights is unconfirmed.",
            ),
            notes=("Any {'state_dict': torchvision names} file looks the same; pass --format torchvision for one.",),
        ),
        Layout(
            name="solo_learn",
            title="solo-learn Lightning checkpoint (github.com/vturrisi/solo-learn)",
            container_keys=frozenset({"state_dict", "pytorch-lightning_version"}),
            state_path=("state_dict",),
            prefixes=("backbone.", "encoder."),  # `encoder.` before v1.0.3
            drop=(
                (r"^momentum_(backbone|encoder)\.", "encoder copies"),
                (r"^(momentum_)?(projector|head)\.", "projector"),
                (r"^predictor\.", "predictor"),
                (r"^prototypes\.", "prototypes"),
                (r"^(momentum_)?classifier\.", "online classifier"),
                (r"^(queue|queue_y|queue_ptr|local_memory_index|local_memory_embeddings)$", "queue"),
                (r"^dino_loss_func\.", "loss state"),
            ),
            requires=(r"^(backbone|encoder)\.conv1\.weight$", r"^classifier\.weight$"),
            method_hints=(
                ((r"^local_memory_index$",), "deepclusterv2"),
                ((r"^prototypes\.",), "swav"),
                ((r"^dino_loss_func\.",), "dino"),
            ),
            read_hparams=_solo_learn_settings,
            args_file="args.json",
            momentum_copies=True,
            pretraining_data=None,
            datasets=SOLO_LEARN_DATASETS,
            cifar_stem_padding=2,
            license=License("mit", "MIT (LICENSE of vturrisi/solo-learn)", True),
            notes=("solo-learn's CIFAR stem is a 3x3 stride-1 conv with padding 2 and no max-pool.",),
            method_notes={"dino": "The backbone is the student's; solo-learn's momentum backbone (teacher) is dropped"},
        ),
        Layout(
            name="lightly",
            title="lightly benchmark Lightning checkpoint (github.com/lightly-ai/lightly, benchmarks/imagenet)",
            container_keys=frozenset({"state_dict", "pytorch-lightning_version"}),
            state_path=("state_dict",),
            prefixes=("backbone.",),
            drop=(
                (r"^(student|teacher|key|query|momentum)_backbone\.", "encoder copies"),
                (r"^((student|teacher|key|query|momentum)_)?projection_head\.", "projector"),
                (r"^prediction_head\.", "predictor"),
                (r"^prototypes\.", "prototypes"),
                (r"^online_classifier\.", "online classifier"),
                (r"^queues?\.", "queue"),
                (r"^criterion\.", "loss state"),
            ),
            requires=(r"^backbone\.conv1\.weight$", r"^online_classifier\."),
            method_hints=(
                ((r"^student_backbone\.",), "dino"),
                ((r"^prototypes\.",), "swav"),
                ((r"^(query|key)_backbone\.",), "mocov2"),
                ((r"^(teacher_backbone|momentum_backbone|backbone_momentum)\.", r"^prediction_head\."), "byol"),
                ((r"^prediction_head\.",), "simsiam"),
            ),
            license=License("mit", "MIT (LICENSE of lightly-ai/lightly)", True),
            momentum_copies=True,
            method_notes={"dino": "lightly's DINO keeps the EMA teacher in `backbone`: the weights are the teacher's"},
        ),
        Layout(
            name="torchvision",
            title="plain torchvision or timm ResNet state dict",
            drop=((r"^fc\.", "supervised head"),),
            requires=(_TORCHVISION_STEM, r"^fc\.weight$", _BN_COUNTER),
            pretraining_data=None,
        ),
    )
}

FORMAT_ALIASES = {"timm": "torchvision"}
