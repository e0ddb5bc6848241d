"""The six SSL methods, built from lightly's heads, losses, transforms and momentum utilities."""

from __future__ import annotations

from .base import MethodOutput, SSLMethod, TransformSettings
from .byol import BYOL
from .dino import DINO
from .moco import MoCo
from .simclr import SimCLR
from .simsiam import SimSiam
from .swav import SwAV

METHODS: dict[str, type[SSLMethod]] = {cls.name: cls for cls in (SimCLR, SwAV, MoCo, BYOL, DINO, SimSiam)}

__all__ = ["METHODS", "MethodOutput", "SSLMethod", "TransformSettings", "build_method"]


def build_method(name: str, backbone, feature_dim: int, **hparams) -> SSLMethod:
    """Instantiate method ``name`` (simclr, swav, moco, byol, dino, simsiam) around ``backbone``."""
    if name not in METHODS:
        raise ValueError(f"unknown SSL method {name!r}; choose one of {sorted(METHODS)}.")
    cls = METHODS[name]
    unknown = set(hparams) - set(cls.defaults)
    if unknown:
        raise ValueError(f"{name} has no hyper-parameter(s) {sorted(unknown)}; it takes {sorted(cls.defaults)}.")
    return cls(backbone, feature_dim, **{**cls.defaults, **hparams})
