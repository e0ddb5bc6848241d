"""BYOL (Grill et al., 2020): online network + predictor regress an EMA target network (symmetric)."""

from __future__ import annotations

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform
from torch import Tensor, nn

from .base import MethodOutput, SSLMethod, TransformSettings, ema_update, momentum_copy


class BYOL(SSLMethod):
    name = "byol"
    defaults = {"proj_hidden_dim": 4096, "proj_output_dim": 256, "pred_hidden_dim": 4096,
                "momentum_start": 0.99, "momentum_end": 1.0}

    def __init__(self, backbone: nn.Module, feature_dim: int, proj_hidden_dim: int = 4096, proj_output_dim: int = 256,
                 pred_hidden_dim: int = 4096, momentum_start: float = 0.99, momentum_end: float = 1.0) -> None:
        super().__init__(backbone, feature_dim)
        self.projector = BYOLProjectionHead(feature_dim, proj_hidden_dim, proj_output_dim)
        self.predictor = BYOLPredictionHead(proj_output_dim, pred_hidden_dim, proj_output_dim)
        self.momentum_backbone = momentum_copy(backbone)
        self.momentum_projector = momentum_copy(self.projector)
        self.criterion = NegativeCosineSimilarity()
        self.momentum_start, self.momentum_end = momentum_start, momentum_end

    @staticmethod
    def build_transform(settings: TransformSettings) -> BYOLTransform:
        blur = not settings.small_images
        common = dict(input_size=settings.image_size, normalize=settings.normalize)
        return BYOLTransform(
            view_1_transform=BYOLView1Transform(gaussian_blur=1.0 if blur else 0.0, **common),
            view_2_transform=BYOLView2Transform(gaussian_blur=0.1 if blur else 0.0, **common),
        )

    def forward(self, views: list[Tensor], step: int, max_steps: int, epoch: int) -> MethodOutput:
        ema_update([(self.backbone, self.momentum_backbone), (self.projector, self.momentum_projector)],
                   step, max_steps, self.momentum_start, self.momentum_end)
        features = [self.backbone(view) for view in views[:2]]
        predictions = [self.predictor(self.projector(f)) for f in features]
        with torch.no_grad():
            targets = [self.momentum_projector(self.momentum_backbone(view)) for view in views[:2]]
        loss = 0.5 * (self.criterion(predictions[0], targets[1]) + self.criterion(predictions[1], targets[0]))
        return MethodOutput(loss, features)
