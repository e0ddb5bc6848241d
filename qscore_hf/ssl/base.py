"""The interface every SSL method implements: views in, SSL loss and per-view backbone features out."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import Tensor, nn

__all__ = ["MethodOutput", "SSLMethod", "TransformSettings"]


@dataclass
class MethodOutput:
    """The SSL loss and the online backbone's pooled features of every view (what Q-Score regularizes)."""

    loss: Tensor
    features: list[Tensor]


@dataclass
class TransformSettings:
    """What the augmentations need to know about the data."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    local_views: int = 0

    @property
    def normalize(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @property
    def small_images(self) -> bool:
        """CIFAR-sized inputs: solo-learn's CIFAR recipes drop Gaussian blur and weaken colour jitter."""
        return self.image_size <= 64


class SSLMethod(nn.Module):
    """Base class: ``forward(views, step, max_steps, epoch) -> MethodOutput``.

    Subclasses own their heads, momentum copies, queues and loss; ``backbone`` is the timm feature extractor
    that ends up in the exported ``QScoreModel``.
    """

    name: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, backbone: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim

    @staticmethod
    def build_transform(settings: TransformSettings) -> Callable[[Any], list[Tensor]]:
        raise NotImplementedError

    def forward(self, views: list[Tensor], step: int, max_steps: int, epoch: int) -> MethodOutput:
        raise NotImplementedError

    def after_backward(self, epoch: int) -> None:
        """Hook between backward and the optimizer step (DINO freezes its last layer here)."""


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy for EMA targets (BYOL, MoCo, DINO teachers)."""
    clone = copy.deepcopy(module)
    deactivate_requires_grad(clone)
    return clone


def ema_update(pairs: list[tuple[nn.Module, nn.Module]], step: int, max_steps: int, start: float, end: float = 1.0) -> float:
    """EMA of online into target modules with a cosine momentum schedule from ``start`` to ``end``."""
    momentum = cosine_schedule(step, max_steps, start, end)
    for online, target in pairs:
        update_momentum(online, target, m=momentum)
    return momentum
