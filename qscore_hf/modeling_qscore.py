"""``QScoreModel``: a feature-only SSL backbone that returns its pooled features and per-sample Q-Scores."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .backbones import create_backbone
from .configuration_qscore import QScoreConfig
from .image_processing_qscore import QScoreImageProcessor
from .io_utils import atomic_directory
from .model_files import check_model_folder
from .score import ActivationStats, highly_activating, qscore

__all__ = ["QScoreModel", "QScoreModelOutput", "WeightsMismatchError"]


class WeightsMismatchError(ValueError):
    """The weights of a model folder do not fit its config."""


@dataclass
class QScoreModelOutput(ModelOutput):
    """Output of :class:`QScoreModel`.

    Args:
        features: ``(batch, hidden_size)`` pooled backbone features, before any head.
        q_scores: ``(batch,)`` per-sample Q-Scores (float32, detached), using the model's saved discriminative
            features (all features when it has no activation statistics yet).
        highly_activating: ``(batch, hidden_size)`` boolean mask of each sample's highly activating features
            ``L_i`` (when asked for).
        logits: ``(batch, num_labels)`` linear-probe logits when the config has ``probe_head=True``.
    """

    features: Tensor | None = None
    q_scores: Tensor | None = None
    highly_activating: Tensor | None = None
    logits: Tensor | None = None


class QScoreModel(PreTrainedModel):
    """A timm backbone without classifier, its activation statistics (SPEC §3) and an optional probe head.

    Example::

        model = QScoreModel.from_pretrained("org/byol-r50-qreg")
        processor = AutoImageProcessor.from_pretrained("org/byol-r50-qreg")
        out = model(**processor(images, return_tensors="pt"))
        out.features, out.q_scores
    """

    config_class = QScoreConfig
    base_model_prefix = "qscore"
    main_input_name = "pixel_values"

    def __init__(self, config: QScoreConfig) -> None:
        super().__init__(config)
        self.backbone = create_backbone(config.backbone, config.stem_padding)
        width = int(self.backbone.num_features)
        if config.hidden_size is None:
            config.hidden_size = width
        elif config.hidden_size != width:
            raise ValueError(
                f"config.hidden_size={config.hidden_size} but backbone {config.backbone!r} has {width} features; "
                "leave hidden_size unset or fix the backbone name."
            )
        self.activation_stats = ActivationStats(width, config.qscore_eps)
        self.classifier = nn.Linear(width, config.num_labels) if config.probe_head else None
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # timm initialised the backbone already; only the probe head needs an init (the usual linear-probe one).
        if module is self.classifier:
            nn.init.normal_(module.weight, std=0.01)
            nn.init.zeros_(module.bias)

    # ----------------------------------------------------------------------------------------------- scoring
    def discriminative_features(self) -> Tensor | None:
        """Indices of the discriminative features ``D`` from the saved statistics; ``None`` (all features)
        when the model has seen no reference data."""
        if int(self.activation_stats.num_samples) == 0:
            return None
        return self.activation_stats.discriminative(self.config.qscore_p_lo, self.config.qscore_p_hi)

    def forward(
        self,
        pixel_values: Tensor,
        return_qscore: bool = True,
        return_highly_activating: bool = False,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> QScoreModelOutput | tuple:
        """Pooled features, and (by default) their Q-Scores; ``pixel_values`` as the image processor makes them."""
        if pixel_values.dim() != 4:
            raise ValueError(
                f"pixel_values must have shape (batch, channels, height, width); got {tuple(pixel_values.shape)}. "
                "Use the model's image processor (AutoImageProcessor.from_pretrained) to prepare images."
            )
        features = self.backbone(pixel_values)
        q_scores = mask = None
        if return_qscore or return_highly_activating:
            with torch.no_grad():
                detached = features.detach()
                if return_qscore:
                    q_scores = qscore(
                        detached, self.discriminative_features(), self.config.qscore_eps, self.config.qscore_normalize
                    )
                if return_highly_activating:
                    mask = highly_activating(detached, self.config.qscore_eps)
        logits = self.classifier(features) if self.classifier is not None else None
        output = QScoreModelOutput(features=features, q_scores=q_scores, highly_activating=mask, logits=logits)
        use_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if use_dict else output.to_tuple()

    @torch.no_grad()
    def compute_activation_stats(
        self,
        batches: Iterable[Tensor | Mapping[str, Tensor]],
        reset: bool = True,
        progress: bool = True,
        all_reduce: bool = True,
    ) -> ActivationStats:
        """One pass over reference data to (re)compute the activation statistics saved with the model.

        ``batches`` yields ``pixel_values`` tensors or dicts holding them (e.g. a DataLoader over a processed
        ``datasets.Dataset``). Under torch.distributed each process passes its shard and the counts are summed.
        """
        was_training = self.training
        self.eval()
        if reset:
            self.activation_stats.reset()
        for batch in tqdm(batches, desc="activation statistics", disable=not progress, unit="batch"):
            pixel_values = batch["pixel_values"] if isinstance(batch, Mapping) else batch
            features = self.backbone(pixel_values.to(self.device, self.dtype))
            self.activation_stats.update(features)
        if all_reduce:
            self.activation_stats.all_reduce()
        self.train(was_training)
        return self.activation_stats

    def image_processor(self) -> QScoreImageProcessor:
        """The image processor matching this model's input size and normalization."""
        return QScoreImageProcessor.from_model_config(self.config)

    # ----------------------------------------------------------------------------------------------- saving
    def save_pretrained(
        self, save_directory: str | os.PathLike, *args: Any, is_main_process: bool = True, push_to_hub: bool = False, **kwargs: Any
    ) -> None:
        """``PreTrainedModel.save_pretrained`` (safetensors) plus the image processor, written atomically:
        the folder appears complete or not at all."""
        if not is_main_process:
            return
        hub_kwargs = {key: kwargs.pop(key) for key in ("repo_id", "commit_message", "private", "token") if key in kwargs}
        with atomic_directory(save_directory) as tmp:
            super().save_pretrained(tmp, *args, is_main_process=True, push_to_hub=False, **kwargs)
            self.image_processor().save_pretrained(tmp)
        if push_to_hub:
            repo_id = hub_kwargs.pop("repo_id", Path(save_directory).name)
            self.push_to_hub(repo_id, **hub_kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        """``PreTrainedModel.from_pretrained`` (local folder or Hub id, through huggingface_hub's cache), but
        strict: a checkpoint whose tensors do not match the config raises ``WeightsMismatchError`` naming them.

        Missing ``classifier.*`` tensors are allowed (a probe head added to a backbone-only checkpoint), and
        ``ignore_mismatched_sizes=True`` allows mismatched shapes as in transformers.
        """
        check_model_folder(pretrained_model_name_or_path)
        want_info = kwargs.pop("output_loading_info", False)
        allow_mismatch = kwargs.pop("ignore_mismatched_sizes", False)
        # Load with transformers' own check off so that we can name every offending tensor ourselves.
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *args, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
        )
        missing = sorted(key for key in info.get("missing_keys", ()) if not key.startswith(_OPTIONAL_TENSORS))
        if _RECORDED_EPS in info.get("missing_keys", ()):  # saved before the eps was recorded: assume the config's
            model.activation_stats.record_eps()
        unexpected = sorted(info.get("unexpected_keys", ()))
        mismatched = [] if allow_mismatch else sorted(_describe_mismatch(item) for item in info.get("mismatched_keys", ()))
        if missing or unexpected or mismatched:
            raise WeightsMismatchError(_mismatch_message(str(pretrained_model_name_or_path), missing, unexpected, mismatched))
        model.activation_stats.validate(f"the activation statistics saved in {pretrained_model_name_or_path}")
        return (model, info) if want_info else model


_RECORDED_EPS = "activation_stats.counted_eps"
# A probe head added to a backbone-only checkpoint, and the eps record that older folders lack.
_OPTIONAL_TENSORS = ("classifier.", _RECORDED_EPS)


def _describe_mismatch(item: Any) -> str:
    if isinstance(item, (tuple, list)) and len(item) == 3:
        key, saved, expected = item
        return f"{key} (saved {tuple(saved)}, config needs {tuple(expected)})"
    return str(item)


def _mismatch_message(source: str, missing: list[str], unexpected: list[str], mismatched: list[str]) -> str:
    def first(keys: list[str]) -> str:
        return ", ".join(keys[:8]) + (f" (and {len(keys) - 8} more)" if len(keys) > 8 else "")

    parts = [f"the weights in {source} do not match its config.json:"]
    if missing:
        parts.append(f"missing tensors: {first(missing)}")
    if unexpected:
        parts.append(f"unexpected tensors: {first(unexpected)}")
    if mismatched:
        parts.append(f"tensors with another shape: {first(mismatched)}")
    parts.append(
        "Check that config.json's backbone (and stem_padding/probe_head) is the architecture the weights were "
        "saved from; to import a released SSL checkpoint use `qscore-hf convert`."
    )
    return "\n  ".join(parts)
