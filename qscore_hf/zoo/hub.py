"""Publish built zoo releases: each folder as the Hub model ``ORG/NAME``, all gathered in one Hub collection."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

__all__ = ["COLLECTION_TITLE", "push_releases"]

COLLECTION_TITLE = "Q-Score zoo: self-supervised backbones"
_DESCRIPTION = (
    "Released SSL backbones converted to qscore-hf QScoreModels, with their published numbers (qscore-hf zoo)."
)


def push_releases(
    folders: Mapping[str, str | os.PathLike], org: str, title: str = COLLECTION_TITLE, private: bool | None = None
) -> str:
    """Upload each ``{name: folder}`` as ``org/name`` and add it to the collection ``title`` of ``org`` (created if
    needed); returns the collection's slug. The token is huggingface_hub's (``HF_TOKEN`` or the login)."""
    from huggingface_hub import HfApi

    from ..publish import push_folder

    for name, folder in folders.items():
        push_folder(Path(folder), f"{org}/{name}", private=private, commit_message=f"Add {name} (qscore-hf zoo)")
    api = HfApi()
    collection = api.create_collection(title, namespace=org, description=_DESCRIPTION, private=bool(private),
                                       exists_ok=True)  # fmt: skip
    for name in folders:
        api.add_collection_item(collection.slug, f"{org}/{name}", "model", exists_ok=True)
    return collection.slug
