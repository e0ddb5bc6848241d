"""SwAV (Caron et al., 2020): swapped prediction of Sinkhorn codes over prototypes; optional multi-crop and a
feature queue for small batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.loss import SwaVLoss
from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes
from lightly.models.modules.memory_bank import MemoryBankModule
from lightly.transforms import SwaVTransform
from torch import Tensor, nn

from .base import MethodOutput, SSLMethod, TransformSettings


class SwAV(SSLMethod):
    name = "swav"
    defaults = {"temperature": 0.1, "proj_hidden_dim": 2048, "proj_output_dim": 128, "num_prototypes": 3000,
                "queue_size": 3840, "queue_start_epoch": 1, "freeze_prototypes_steps": 300}

    def __init__(self, backbone: nn.Module, feature_dim: int, temperature: float = 0.1, proj_hidden_dim: int = 2048,
                 proj_output_dim: int = 128, num_prototypes: int = 3000, queue_size: int = 3840,
                 queue_start_epoch: int = 1, freeze_prototypes_steps: int = 300) -> None:
        super().__init__(backbone, feature_dim)
        self.projector = SwaVProjectionHead(feature_dim, proj_hidden_dim, proj_output_dim)
        self.prototypes = SwaVPrototypes(proj_output_dim, num_prototypes, n_steps_frozen_prototypes=freeze_prototypes_steps)
        self.criterion = SwaVLoss(temperature=temperature, sinkhorn_gather_distributed=True)
        # One queue per high-resolution view: with small batches Sinkhorn needs more samples than the batch has.
        self.queues = nn.ModuleList(
            [MemoryBankModule((queue_size, proj_output_dim), feature_dim_first=False) for _ in range(2)]
        ) if queue_size > 0 else None
        self.queue_start_epoch = queue_start_epoch

    @staticmethod
    def build_transform(settings: TransformSettings) -> SwaVTransform:
        size = settings.image_size
        return SwaVTransform(
            crop_sizes=(size, max(8, round(size * 96 / 224))), crop_counts=(2, settings.local_views),
            crop_min_scales=(0.14, 0.05), crop_max_scales=(1.0, 0.14),
            cj_strength=0.5 if settings.small_images else 1.0,
            gaussian_blur=0.0 if settings.small_images else 0.5, normalize=settings.normalize,
        )

    def forward(self, views: list[Tensor], step: int, max_steps: int, epoch: int) -> MethodOutput:
        self.prototypes.normalize()
        features = [self.backbone(view) for view in views]
        embeddings = [F.normalize(self.projector(f), dim=1) for f in features]
        scores = [self.prototypes(z, step) for z in embeddings]
        queue_scores = None
        if self.queues is not None:
            with torch.no_grad():
                queued = [queue(z.detach(), update=True)[1] for queue, z in zip(self.queues, embeddings[:2])]
            if epoch >= self.queue_start_epoch:
                queue_scores = [self.prototypes(q, step) for q in queued]
        loss = self.criterion(scores[:2], scores[2:], queue_scores)
        return MethodOutput(loss, features)
