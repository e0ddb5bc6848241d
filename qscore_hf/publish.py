"""Write a model as a complete folder (weights, config, image processor, model card) and push it to the Hub.

Used by checkpoint conversion (``qscore-hf convert``) and by pre-training (``training/pretrain.py``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from huggingface_hub import EvalResult, HfApi

from .cards import render_model_card
from .io_utils import OUTPUT_MANIFEST, atomic_directory
from .modeling_qscore import QScoreModel

__all__ = ["push_folder", "save_model_folder"]


def save_model_folder(
    model: QScoreModel,
    out: str | os.PathLike,
    repo_id: str | None = None,
    provenance: Mapping[str, Any] | None = None,
    results: Sequence[EvalResult] | None = None,
) -> Path:
    """Save ``model`` (safetensors, config, image processor) and its model card ``README.md`` into ``out``,
    atomically: the folder appears complete or not at all. ``repo_id`` names the model in the card's usage code
    (default: ``out`` as given, so that the code loads the folder from where it was written, e.g. pre-training's
    ``runs/NAME/model``); ``provenance`` (the training recipe) and ``results`` go into the card."""
    out = Path(out)
    card = render_model_card(
        model.config,
        results=results,
        provenance=provenance,
        repo_id=repo_id or str(out),
        stats_samples=int(model.activation_stats.num_samples),
    )
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        card.save(tmp / "README.md")
    return out


def push_folder(
    folder: str | os.PathLike, repo_id: str, private: bool | None = None, commit_message: str = "Add QScoreModel"
) -> str:
    """Upload a saved model folder to the Hub repository ``repo_id`` (created if needed); returns the commit URL.

    The token comes from ``HF_TOKEN`` or ``huggingface-cli login``, as huggingface_hub finds it; it is never shown.
    """
    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", commit_message=commit_message,
                               ignore_patterns=[OUTPUT_MANIFEST])
    return str(getattr(commit, "commit_url", commit))
