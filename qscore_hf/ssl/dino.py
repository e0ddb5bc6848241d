"""DINO (Caron et al., 2021): self-distillation from an EMA teacher with centering and a teacher-temperature
schedule; optional multi-crop (local views go through the student only)."""

from __future__ import annotations

import torch
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad
from lightly.transforms import DINOTransform
from torch import Tensor, nn

from .base import MethodOutput, SSLMethod, TransformSettings, ema_update, momentum_copy


class DINO(SSLMethod):
    name = "dino"
    defaults = {"proj_hidden_dim": 2048, "bottleneck_dim": 256, "num_prototypes": 4096, "student_temp": 0.1,
                "teacher_temp_start": 0.04, "teacher_temp_end": 0.07, "teacher_temp_warmup_epochs": 50,
                "momentum_start": 0.9995, "momentum_end": 1.0, "freeze_last_layer_epochs": 1}

    def __init__(self, backbone: nn.Module, feature_dim: int, proj_hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 num_prototypes: int = 4096, student_temp: float = 0.1, teacher_temp_start: float = 0.04,
                 teacher_temp_end: float = 0.07, teacher_temp_warmup_epochs: int = 50, momentum_start: float = 0.9995,
                 momentum_end: float = 1.0, freeze_last_layer_epochs: int = 1) -> None:
        super().__init__(backbone, feature_dim)
        head_args = (feature_dim, proj_hidden_dim, bottleneck_dim, num_prototypes)
        self.head = DINOProjectionHead(*head_args, batch_norm=True, freeze_last_layer=freeze_last_layer_epochs)
        self.teacher_backbone = momentum_copy(backbone)
        # The head's weight-normalised last layer cannot be deep-copied: build the teacher's and copy the weights.
        self.teacher_head = DINOProjectionHead(*head_args, batch_norm=True)
        self.teacher_head.load_state_dict(self.head.state_dict())
        deactivate_requires_grad(self.teacher_head)
        self.criterion = DINOLoss(output_dim=num_prototypes, warmup_teacher_temp=teacher_temp_start,
                                  teacher_temp=teacher_temp_end, warmup_teacher_temp_epochs=teacher_temp_warmup_epochs,
                                  student_temp=student_temp)
        self.momentum_start, self.momentum_end = momentum_start, momentum_end

    @staticmethod
    def build_transform(settings: TransformSettings) -> DINOTransform:
        size = settings.image_size
        blur = (1.0, 0.1, 0.5) if not settings.small_images else (0.0, 0.0, 0.0)
        return DINOTransform(
            global_crop_size=size, local_crop_size=max(8, round(size * 96 / 224)), n_local_views=settings.local_views,
            gaussian_blur=blur, solarization_prob=0.2, normalize=settings.normalize,
        )

    def forward(self, views: list[Tensor], step: int, max_steps: int, epoch: int) -> MethodOutput:
        ema_update([(self.backbone, self.teacher_backbone), (self.head, self.teacher_head)],
                   step, max_steps, self.momentum_start, self.momentum_end)
        features = [self.backbone(view) for view in views]
        student = [self.head(f) for f in features]
        with torch.no_grad():
            teacher = [self.teacher_head(self.teacher_backbone(view)) for view in views[:2]]
        return MethodOutput(self.criterion(teacher, student, epoch=epoch), features)

    def after_backward(self, epoch: int) -> None:
        """DINO keeps the last layer of its head frozen during the first epoch(s)."""
        self.head.cancel_last_layer_gradients(epoch)
