"""Checks of a local model folder before transformers reads it: each problem is one line naming the file and the fix."""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import SafetensorError, safe_open

__all__ = ["ModelFolderError", "check_model_folder", "check_weight_files"]

_REDOWNLOAD = "copy or download the model folder again, or re-save it with save_pretrained"


class ModelFolderError(ValueError):
    """A model folder that cannot be loaded: missing, damaged or refused files."""


def check_model_folder(folder: str | os.PathLike) -> None:
    """Raise ``ModelFolderError`` unless ``folder`` (a local folder) holds a ``config.json`` and weights that
    transformers can read: an intact ``model.safetensors`` (or every shard of a sharded one) or, failing that, a
    ``pytorch_model.bin`` that loads with ``weights_only=True``. Does nothing for a path that is not a folder
    (a Hub id)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    if not (folder / "config.json").is_file():
        inside = _model_folders_inside(folder)
        hint = (
            f"did you mean {inside[0]}? (a training run keeps its model in the `model/` subfolder)"
            if inside
            else "point to the folder save_pretrained wrote, or import a released checkpoint with `qscore-hf convert`"
        )
        raise ModelFolderError(
            f"{folder / 'config.json'} is missing, so {folder} is not a saved QScoreModel folder; {hint}."
        )
    if not check_weight_files(folder):
        raise ModelFolderError(
            f"{folder} has a config.json but no weights (model.safetensors or pytorch_model.bin); {_REDOWNLOAD}."
        )


def _model_folders_inside(folder: Path) -> list[Path]:
    """Direct subfolders holding a ``config.json``, ``model/`` (where training runs export) first."""
    children = sorted(child for child in folder.iterdir() if (child / "config.json").is_file())
    return sorted(children, key=lambda child: child.name != "model")


def check_weight_files(folder: str | os.PathLike) -> bool:
    """Raise ``ModelFolderError`` for weights in ``folder`` that cannot be read safely (a truncated or damaged
    safetensors file or shard, a ``pytorch_model.bin`` that does not load with ``weights_only=True``), the ones a
    loader would use; returns whether there were weights (a Hub snapshot may hold only config.json so far)."""
    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        _check_safetensors(folder / "model.safetensors")
    elif (folder / "model.safetensors.index.json").is_file():
        for shard in _shards(folder / "model.safetensors.index.json"):
            _check_safetensors(folder / shard)
    elif (folder / "pytorch_model.bin").is_file():
        _check_pickle(folder / "pytorch_model.bin")
    else:
        return False
    return True


def _check_safetensors(path: Path) -> None:
    if not path.is_file():
        raise ModelFolderError(f"{path} is missing (listed in the shard index); {_REDOWNLOAD}.")
    if path.stat().st_size == 0:
        raise ModelFolderError(f"{path} is empty (0 bytes): an interrupted copy or download; {_REDOWNLOAD}.")
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except SafetensorError as error:
        raise ModelFolderError(
            f"{path} is not a readable safetensors file ({error}): truncated or damaged; {_REDOWNLOAD}."
        ) from None


def _shards(index: Path) -> list[str]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        return sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ModelFolderError(f"{index} is not a valid shard index ({error}); {_REDOWNLOAD}.") from None


def _check_pickle(path: Path) -> None:
    from torch.serialization import get_unsafe_globals_in_checkpoint

    try:
        unsafe = get_unsafe_globals_in_checkpoint(str(path))
    except (ValueError, RuntimeError, OSError) as error:
        raise ModelFolderError(
            f"{path} is not a readable PyTorch checkpoint ({error}): truncated or damaged; {_REDOWNLOAD}."
        ) from None
    if unsafe:
        raise ModelFolderError(
            f"{path} was refused as unsafe: unpickling it would run or import {', '.join(unsafe[:5])}; "
            "weights load only with weights_only=True. Use a model.safetensors copy of the model, or, if you "
            "trust its source, re-save it as safetensors (torch.load(weights_only=False), then save_pretrained)."
        )
