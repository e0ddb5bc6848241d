"""Backbones: one entry point per source, one registry.

- ``timm_names``: timm models by name, including the CIFAR-stem ResNets (library ``"timm"``);
- ``timm_hub``: timm Hub repos (``config.json`` with ``architecture``), rebuilt by name afterwards;
- ``transformers_vision``: transformers vision models (ViT/DINO/DINOv2 CLS token, CNN pooled output).

``BUILDERS`` rebuilds a backbone offline from a ``QScoreConfig`` (random weights, then the saved ones are loaded);
``IMPORTERS`` loads a foreign repo with its weights. Adding a family is adding a file and its rows here.

This package's modules import each other only as ``from .name import ...`` of sibling files, so the saved remote
code (``QScoreModel.save_pretrained``) can carry them as flat files beside ``backbones.py`` (a copy of this file).
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from .hub import SourceRepo, find_source, hub_unreachable
from .timm_hub import import_timm_hub_backbone, timm_preprocessing
from .timm_names import CIFAR_SUFFIX, create_timm_backbone, timm_size_kwargs
from .transformers_vision import (
    POOLINGS,
    TRANSFORMERS_POOLING,
    TransformersBackbone,
    create_transformers_backbone,
    import_transformers_backbone,
)

__all__ = [
    "BUILDERS",
    "CIFAR_SUFFIX",
    "IMPORTERS",
    "POOLINGS",
    "TRANSFORMERS_POOLING",
    "SourceRepo",
    "TransformersBackbone",
    "build_backbone",
    "create_backbone",
    "create_timm_backbone",
    "find_source",
    "hub_unreachable",
    "import_backbone",
    "timm_preprocessing",
    "timm_size_kwargs",
]

# QScoreConfig.backbone_library -> builder(config) with random weights.
BUILDERS: dict[str, Callable[[Any], nn.Module]] = {
    "timm": lambda config: create_timm_backbone(config.backbone, config.stem_padding, config.backbone_config),
    "transformers": lambda config: create_transformers_backbone(config.backbone_config, config.backbone_pooling),
}


def _import_timm(repo: SourceRepo, folder: Any, pooling: str | None) -> tuple[nn.Module, dict[str, Any]]:
    if pooling is not None:
        raise ValueError(f"pooling={pooling!r} applies to transformers models; a timm model pools as timm builds it.")
    return import_timm_hub_backbone(folder, repo.config)


# SourceRepo.library -> importer(repo, snapshot folder, pooling) -> (backbone with weights, QScoreConfig fields).
IMPORTERS: dict[str, Callable[[SourceRepo, Any, str | None], tuple[nn.Module, dict[str, Any]]]] = {
    "timm": _import_timm,
    "transformers": lambda repo, folder, pooling: import_transformers_backbone(folder, repo.config, pooling),
}


def create_backbone(name: str, stem_padding: int = 1) -> nn.Module:
    """A timm backbone by name (see :func:`create_timm_backbone`); kept for callers that build one by hand."""
    return create_timm_backbone(name, stem_padding)


def build_backbone(config: Any) -> nn.Module:
    """The backbone a ``QScoreConfig`` describes, randomly initialised (``config.backbone_library`` picks it)."""
    library = getattr(config, "backbone_library", "timm")
    if library not in BUILDERS:
        raise ValueError(f"backbone_library must be one of {sorted(BUILDERS)}; got {library!r}.")
    return BUILDERS[library](config)


def import_backbone(
    repo: SourceRepo, pooling: str | None = None, **hub_kwargs: Any
) -> tuple[nn.Module, dict[str, Any]]:
    """A foreign repo's backbone with its weights, and the ``QScoreConfig`` fields that rebuild it offline (the
    source's library, repo id, revision, commit, pooling and preprocessing included)."""
    importer = IMPORTERS.get(repo.library)
    if importer is None:
        raise ValueError(f"{repo.repo_id or repo.folder} is already a QScoreModel; load it with from_pretrained.")
    backbone, fields = importer(repo, repo.snapshot(**hub_kwargs), pooling)
    fields["backbone_source"] = repo.record()
    return backbone, fields
