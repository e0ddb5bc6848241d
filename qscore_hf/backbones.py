"""Feature-only backbones built with timm by name, including the CIFAR-stem ResNets used for 32 px data."""

from __future__ import annotations

import timm
from torch import nn

__all__ = ["CIFAR_SUFFIX", "create_backbone"]

CIFAR_SUFFIX = "_cifar"


def create_backbone(name: str, stem_padding: int = 1) -> nn.Module:
    """A timm model without classifier whose ``forward`` returns pooled features of size ``num_features``.

    ``name`` is any timm model name (``resnet18``, ``resnet50``, ...) or a ResNet name with the suffix
    ``_cifar`` (e.g. ``resnet18_cifar``): the CIFAR stem of SimCLR/solo-learn, a 3x3 stride-1 ``conv1`` with
    ``stem_padding`` (1 by default, 2 in solo-learn's checkpoints) and no max-pool. Weights are random;
    load trained ones with ``QScoreModel.from_pretrained`` or ``qscore_hf`` checkpoint conversion.
    """
    cifar = name.endswith(CIFAR_SUFFIX)
    timm_name = name[: -len(CIFAR_SUFFIX)] if cifar else name
    if not timm.is_model(timm_name):
        raise ValueError(
            f"unknown backbone {name!r}: {timm_name!r} is not a timm model name. "
            "Use a name from timm.list_models(), e.g. 'resnet18', 'resnet50' or 'resnet18_cifar'."
        )
    model = timm.create_model(timm_name, pretrained=False, num_classes=0)
    if cifar:
        if not (hasattr(model, "conv1") and hasattr(model, "maxpool") and isinstance(model.conv1, nn.Conv2d)):
            raise ValueError(f"the CIFAR stem ({name!r}) exists for timm ResNets only; {timm_name!r} is not one.")
        # timm's ResNet offers deep stems but not the 3x3 stride-1 CIFAR stem, so swap the first conv by hand.
        model.conv1 = nn.Conv2d(
            model.conv1.in_channels, model.conv1.out_channels, kernel_size=3, stride=1, padding=stem_padding, bias=False
        )
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as timm inits ResNets
        model.maxpool = nn.Identity()
    return model
