"""Which ResNet or ViT a torchvision/timm-named state dict is: block type, blocks per stage, stem and width; or
width, patch size and depth."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Mapping

from torch import Tensor

from ..backbones import CIFAR_SUFFIX

__all__ = ["ResNetShape", "ViTShape", "infer_resnet", "infer_vit"]

# (block, blocks per stage) -> timm/torchvision name
_RESNETS = {
    ("BasicBlock", (2, 2, 2, 2)): "resnet18",
    ("BasicBlock", (3, 4, 6, 3)): "resnet34",
    ("Bottleneck", (3, 4, 6, 3)): "resnet50",
    ("Bottleneck", (3, 4, 23, 3)): "resnet101",
    ("Bottleneck", (3, 8, 36, 3)): "resnet152",
}
_BLOCK_KEY = re.compile(r"^layer([1-4])\.(\d+)\.")
_STEM_WIDTH = 64


@dataclass(frozen=True)
class ResNetShape:
    """What a ResNet state dict's keys and shapes say about its architecture."""

    block: str
    depths: tuple[int, ...]
    cifar_stem: bool
    stem_width: int
    block_width: int | None
    name: str | None

    @property
    def wide(self) -> bool:
        """A widened ResNet (SwAV/SimCLR w2..w5, wide_resnet50_2): the stem or the first block is not 64 wide."""
        return self.stem_width != _STEM_WIDTH or self.block_width not in (None, _STEM_WIDTH)

    def describe(self) -> str:
        stem = "3x3 CIFAR stem" if self.cifar_stem else "7x7 ImageNet stem"
        return f"{self.block}, blocks {list(self.depths)}, {stem}"


def infer_resnet(state: Mapping[str, Tensor]) -> ResNetShape | None:
    """Infer the ResNet from torchvision/timm key names; ``None`` when the keys are not a ResNet's.

    ``name`` is the backbone name for :func:`qscore_hf.backbones.create_backbone` (``resnet50``,
    ``resnet18_cifar``), or ``None`` for a depth or width we do not build (wide variants, ResNet-200).
    """
    stem = state.get("conv1.weight")
    if stem is None or stem.dim() != 4:
        return None
    depths = [0, 0, 0, 0]
    for key in state:
        match = _BLOCK_KEY.match(key)
        if match:
            stage, index = int(match.group(1)) - 1, int(match.group(2))
            depths[stage] = max(depths[stage], index + 1)
    block = "Bottleneck" if any(key.endswith(".conv3.weight") for key in state) else "BasicBlock"
    cifar = stem.shape[-1] == 3
    first = state.get("layer1.0.conv1.weight")
    block_width = None if first is None else int(first.shape[0])
    shape = ResNetShape(block, tuple(depths), cifar, int(stem.shape[0]), block_width, None)
    name = None if shape.wide else _RESNETS.get((block, shape.depths))
    if name is not None and cifar:
        name += CIFAR_SUFFIX
    return replace(shape, name=name)


# (embed dim, patch size, depth) -> timm name; the head count is not in the weights (see Layout.arch_args).
_VITS = {
    (384, 16, 12): "vit_small_patch16_224",
    (384, 8, 12): "vit_small_patch8_224",
    (768, 16, 12): "vit_base_patch16_224",
    (768, 8, 12): "vit_base_patch8_224",
}
_VIT_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")


@dataclass(frozen=True)
class ViTShape:
    """What a timm/DINO-named ViT state dict's keys and shapes say about its architecture."""

    embed_dim: int
    patch_size: int
    depth: int
    num_tokens: int
    name: str | None
    wide: bool = False  # the ResNet check of the loader; never true for a ViT

    def describe(self) -> str:
        return f"ViT, width {self.embed_dim}, patch {self.patch_size}, {self.depth} blocks, {self.num_tokens} positions"


def infer_vit(state: Mapping[str, Tensor]) -> ViTShape | None:
    """Infer the ViT from timm's (= DINO's, MoCo v3's) key names; ``None`` when the keys are not a ViT's.

    ``name`` is the timm name (``vit_small_patch16_224``, ..., ``vit_base_patch8_224``), or ``None`` for a width,
    patch size or depth none of DINO's and MoCo v3's releases has.
    """
    proj, pos = state.get("patch_embed.proj.weight"), state.get("pos_embed")
    if proj is None or proj.dim() != 4:
        return None
    depth = 1 + max((int(m.group(1)) for m in map(_VIT_BLOCK_KEY.match, state) if m), default=-1)
    embed_dim, patch = int(proj.shape[0]), int(proj.shape[-1])
    positions = int(pos.shape[1]) if pos is not None and pos.dim() == 3 else 0
    return ViTShape(embed_dim, patch, depth, positions, _VITS.get((embed_dim, patch, depth)))
