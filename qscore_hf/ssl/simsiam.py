"""SimSiam (Chen & He, 2021): a predictor regresses the other view's projection under stop-gradient."""

from __future__ import annotations

from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead
from lightly.transforms import SimSiamTransform
from torch import Tensor, nn

from .base import MethodOutput, SSLMethod, TransformSettings


class SimSiam(SSLMethod):
    name = "simsiam"
    defaults = {"proj_hidden_dim": 2048, "proj_output_dim": 2048, "pred_hidden_dim": 512}

    def __init__(self, backbone: nn.Module, feature_dim: int, proj_hidden_dim: int = 2048, proj_output_dim: int = 2048,
                 pred_hidden_dim: int = 512) -> None:
        super().__init__(backbone, feature_dim)
        self.projector = SimSiamProjectionHead(feature_dim, proj_hidden_dim, proj_output_dim)
        self.predictor = SimSiamPredictionHead(proj_output_dim, pred_hidden_dim, proj_output_dim)
        self.criterion = NegativeCosineSimilarity()

    @staticmethod
    def build_transform(settings: TransformSettings) -> SimSiamTransform:
        return SimSiamTransform(
            input_size=settings.image_size, cj_strength=0.5 if settings.small_images else 1.0,
            gaussian_blur=0.0 if settings.small_images else 0.5, normalize=settings.normalize,
        )

    def forward(self, views: list[Tensor], step: int, max_steps: int, epoch: int) -> MethodOutput:
        features = [self.backbone(view) for view in views[:2]]
        z0, z1 = (self.projector(f) for f in features)
        p0, p1 = self.predictor(z0), self.predictor(z1)
        loss = 0.5 * (self.criterion(p0, z1.detach()) + self.criterion(p1, z0.detach()))
        return MethodOutput(loss, features)
