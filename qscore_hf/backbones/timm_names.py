"""timm backbones by name, including the CIFAR-stem ResNets used for 32 px data (library ``"timm"``)."""

from __future__ import annotations

from typing import Any, Mapping

import timm
from torch import nn

__all__ = ["CIFAR_SUFFIX", "create_timm_backbone", "timm_size_kwargs"]

CIFAR_SUFFIX = "_cifar"


def create_timm_backbone(name: str, stem_padding: int = 1, model_args: Mapping[str, Any] | None = None) -> nn.Module:
    """A timm model without classifier whose ``forward`` returns pooled features of size ``num_features``.

    ``name`` is any timm model name (``resnet18``, ``vit_small_patch16_224``, ...) or a ResNet name with the suffix
    ``_cifar`` (e.g. ``resnet18_cifar``): the CIFAR stem of SimCLR/solo-learn, a 3x3 stride-1 ``conv1`` with
    ``stem_padding`` (1 by default, 2 in solo-learn's checkpoints) and no max-pool. ``model_args`` are passed to
    ``timm.create_model`` (e.g. ``{"img_size": 32}`` for a ViT, or a timm Hub config's ``model_args``). Weights
    are random; load trained ones with ``QScoreModel.from_pretrained`` or checkpoint conversion.
    """
    cifar = name.endswith(CIFAR_SUFFIX)
    timm_name = name[: -len(CIFAR_SUFFIX)] if cifar else name
    if not timm.is_model(timm_name):
        raise ValueError(
            f"unknown backbone {name!r}: {timm_name!r} is not a timm model name. "
            "Use a name from timm.list_models(), e.g. 'resnet18', 'resnet50' or 'resnet18_cifar'."
        )
    from .timm_hub import architecture_args

    model_args = architecture_args(model_args, "backbone_config") if model_args else {}
    model = timm.create_model(timm_name, pretrained=False, num_classes=0, **model_args)
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


def timm_size_kwargs(name: str, image_size: int | None) -> dict[str, Any]:
    """``create_timm_backbone`` arguments that build ``name`` for ``image_size`` px input.

    Models with a global pool (ResNets, ConvNeXts) take any size and need none. Models with a fixed input size
    (ViTs: the position embedding has one entry per patch) are built with timm's ``img_size=``; a family that
    takes no ``img_size`` raises a one-line ``ValueError`` before any work starts.
    """
    if image_size is None:
        return {}
    timm_name = name[: -len(CIFAR_SUFFIX)] if name.endswith(CIFAR_SUFFIX) else name
    if not timm.is_model(timm_name):
        raise ValueError(f"unknown backbone {name!r}: not a timm model name (see timm.list_models()).")
    pretrained_cfg = timm.models.get_pretrained_cfg(timm_name)
    fixed = bool(pretrained_cfg and pretrained_cfg.fixed_input_size)
    default = pretrained_cfg.input_size[-1] if pretrained_cfg else None
    if not fixed or image_size == default:
        return {}
    try:
        timm.create_model(timm_name, pretrained=False, num_classes=0, img_size=image_size)
    except (TypeError, AssertionError, ValueError) as error:
        raise ValueError(
            f"{name} takes only {default} px input and timm cannot build it for {image_size} px ({error}); "
            f"leave --image-size out or pass {default}."
        ) from None
    return {"img_size": image_size}
