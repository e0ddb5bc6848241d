"""SimCLR (Chen et al., 2020): NT-Xent between two views' projections, negatives from the global batch."""

from __future__ import annotations

from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform
from torch import Tensor, nn

from .base import MethodOutput, SSLMethod, TransformSettings


class SimCLR(SSLMethod):
    name = "simclr"
    defaults = {"temperature": 0.2, "proj_hidden_dim": 2048, "proj_output_dim": 256}

    def __init__(self, backbone: nn.Module, feature_dim: int, temperature: float = 0.2,
                 proj_hidden_dim: int = 2048, proj_output_dim: int = 256) -> None:
        super().__init__(backbone, feature_dim)
        self.projector = SimCLRProjectionHead(feature_dim, proj_hidden_dim, proj_output_dim)
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=True)

    @staticmethod
    def build_transform(settings: TransformSettings) -> SimCLRTransform:
        return SimCLRTransform(
            input_size=settings.image_size, cj_strength=0.5 if settings.small_images else 1.0,
            gaussian_blur=0.0 if settings.small_images else 0.5, normalize=settings.normalize,
        )

    def forward(self, views: list[Tensor], step: int, max_steps: int, epoch: int) -> MethodOutput:
        features = [self.backbone(view) for view in views[:2]]
        z0, z1 = (self.projector(f) for f in features)
        return MethodOutput(self.criterion(z0, z1), features)
