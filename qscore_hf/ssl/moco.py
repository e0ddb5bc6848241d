"""MoCo v2 (Chen et al., 2020): momentum key encoder and a queue of negatives (symmetric loss, solo-learn's v2+)."""

from __future__ import annotations

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import MoCoProjectionHead
from lightly.transforms import MoCoV2Transform
from torch import Tensor, nn

from .base import MethodOutput, SSLMethod, TransformSettings, ema_update, momentum_copy


class MoCo(SSLMethod):
    name = "moco"
    defaults = {"temperature": 0.2, "proj_hidden_dim": 2048, "proj_output_dim": 256, "queue_size": 32768,
                "momentum_start": 0.99, "momentum_end": 1.0}

    def __init__(self, backbone: nn.Module, feature_dim: int, temperature: float = 0.2, proj_hidden_dim: int = 2048,
                 proj_output_dim: int = 256, queue_size: int = 32768, momentum_start: float = 0.99,
                 momentum_end: float = 1.0) -> None:
        super().__init__(backbone, feature_dim)
        self.projector = MoCoProjectionHead(feature_dim, proj_hidden_dim, proj_output_dim)
        self.momentum_backbone = momentum_copy(backbone)
        self.momentum_projector = momentum_copy(self.projector)
        # lightly's memory bank is the MoCo queue (a buffer, so it is checkpointed and resumed).
        self.criterion = NTXentLoss(temperature=temperature, memory_bank_size=(queue_size, proj_output_dim),
                                    gather_distributed=True)
        self.momentum_start, self.momentum_end = momentum_start, momentum_end

    @staticmethod
    def build_transform(settings: TransformSettings) -> MoCoV2Transform:
        return MoCoV2Transform(
            input_size=settings.image_size, cj_strength=0.5 if settings.small_images else 1.0,
            gaussian_blur=0.0 if settings.small_images else 0.5, normalize=settings.normalize,
        )

    def forward(self, views: list[Tensor], step: int, max_steps: int, epoch: int) -> MethodOutput:
        ema_update([(self.backbone, self.momentum_backbone), (self.projector, self.momentum_projector)],
                   step, max_steps, self.momentum_start, self.momentum_end)
        features = [self.backbone(view) for view in views[:2]]
        queries = [self.projector(f) for f in features]
        with torch.no_grad():
            keys = [self.momentum_projector(self.momentum_backbone(view)) for view in views[:2]]
        loss = 0.5 * (self.criterion(queries[0], keys[1]) + self.criterion(queries[1], keys[0]))
        return MethodOutput(loss, features)
