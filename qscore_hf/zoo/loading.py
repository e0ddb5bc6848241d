"""``QScoreModel.from_pretrained("<zoo name>")``: a registry name that is neither a folder nor a Hub id is built once
into the zoo's cache and loaded from there afterwards."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

from .registry import load_registry

__all__ = ["resolve_zoo_name"]


def _log(line: str) -> None:
    print(line, file=sys.stderr)


def resolve_zoo_name(name: str | os.PathLike) -> Path | None:
    """The built folder of the zoo release ``name`` (building it on first use), or ``None`` when ``name`` is a
    path, a Hub id (``org/name``) or no zoo release. Warns when the build has no activation statistics."""
    from .build import build_release, build_state, built_folder, read_zoo_record

    if not isinstance(name, str) or "/" in name or os.sep in name or Path(name).exists():
        return None
    registry = load_registry()
    if name not in registry:
        return None
    folder = built_folder(name)
    state = build_state(registry[name], folder)
    if state != "yes":  # not built, or built from another record of the release: (re)built, by one process at a time
        if state == "stale":
            _log(f"{name}: the built folder {folder} was built from another registry record; rebuilding it")
        build_release(registry[name], folder, log=_log, rebuild=False)
    measured = (read_zoo_record(folder) or {}).get("measured", {})
    if not measured.get("stats"):
        hidden = json.loads((folder / "config.json").read_text()).get("hidden_size")
        warnings.warn(
            f"{name} has no activation statistics: D is all {hidden or 'the'} features, not the discriminative ones. "
            f"Add them with `qscore-hf zoo build {name} --stats DATASET[:SPLIT]` (e.g. an ImageNet validation "
            "folder), or call model.compute_activation_stats(batches).",
            stacklevel=3,
        )
    return folder
