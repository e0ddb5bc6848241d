"""A model folder read as one consistent snapshot while other processes may re-save or overwrite it.

``save_pretrained`` writes ``config.json`` and the weights at one moment, but a reader opens them at two: a save in
between pairs one save's config with another's weights (and activation statistics), without error; a ``cp`` over
``model.safetensors`` while it is memory-mapped kills the reader with SIGBUS. So a save records a content id of its
weight files in ``config.json`` (``weights_digest``), and a load copies the config and weight files into a private
folder, checks that no file changed during the copy and that the weights are the ones the config names, retries a
few times, and otherwise fails in one line. The private copy is what gets memory-mapped, so no writer can pull it
away from under the reader.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["DIGEST_FIELD", "FolderChangedError", "consistent_copy", "record_weights_digest", "weights_digest"]

DIGEST_FIELD = "weights_digest"
CONFIG = "config.json"
_INDEX = "model.safetensors.index.json"
_ATTEMPTS = 5


class FolderChangedError(ValueError):
    """A model folder kept changing while it was read (a save or a copy into it in progress), or its weights are
    not the ones its config.json names."""


def _weight_files(folder: Path) -> list[str]:
    """The weight files a loader reads, in a fixed order: model.safetensors, or the index and its shards, or
    pytorch_model.bin."""
    if (folder / "model.safetensors").is_file():
        return ["model.safetensors"]
    if (folder / _INDEX).is_file():
        try:
            shards = sorted(set(json.loads((folder / _INDEX).read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            shards = []  # a damaged index: check_weight_files names it
        return [_INDEX, *shards]
    return ["pytorch_model.bin"] if (folder / "pytorch_model.bin").is_file() else []


def weights_digest(folder: str | os.PathLike) -> str:
    """Content id of the weight files of ``folder``: BLAKE2b-128 over each file's name, size and bytes (hashlib's,
    not xxhash: the folder's remote code imports this module where only transformers may be installed)."""
    digest = hashlib.blake2b(digest_size=16)
    for name in _weight_files(Path(folder)):
        path = Path(folder) / name
        digest.update(f"{name}|{path.stat().st_size}|".encode())
        with open(path, "rb") as file:
            while block := file.read(1 << 22):
                digest.update(block)
    return f"blake2b_128:{digest.hexdigest()}"


def record_weights_digest(folder: str | os.PathLike) -> str:
    """Write the content id of ``folder``'s weights into its ``config.json`` (a save's last step); returns it."""
    config_path = Path(folder) / CONFIG
    config = json.loads(config_path.read_text())
    config[DIGEST_FIELD] = weights_digest(folder)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return config[DIGEST_FIELD]


def _state(folder: Path, names: list[str]) -> list[tuple[int, int, int] | None]:
    """(inode, size, mtime) of each file: a save (rename) changes the inode, an overwrite the size or mtime."""
    states = []
    for name in names:
        try:
            stat = os.stat(folder / name)
            states.append((stat.st_ino, stat.st_size, stat.st_mtime_ns))
        except FileNotFoundError:
            states.append(None)
    return states


def _copy_once(folder: Path, into: Path) -> str | None:
    """Copy config.json and the weight files of ``folder`` into ``into``; ``None`` when the copy is one snapshot,
    else what changed."""
    names = [CONFIG, *_weight_files(folder)]
    before = _state(folder, names)
    try:
        for name in names:
            shutil.copyfile(folder / name, into / name)
    except FileNotFoundError as error:  # between a save's two renames the folder is briefly absent
        return f"{error.filename} disappeared"
    if _state(folder, names) != before or _weight_files(folder) != names[1:]:
        return "its files were replaced or overwritten during the read"
    recorded = json.loads((into / CONFIG).read_text()).get(DIGEST_FIELD)
    if recorded is not None and recorded != weights_digest(into):
        return (
            f"its weights are not the ones config.json's {DIGEST_FIELD} names: replaced or edited after the save, or a "
            "save in progress"
        )
    return None


def _raise_if_damaged(folder: Path, check: Callable[[Path], None]) -> None:
    """Raise what ``check`` finds wrong with ``folder`` when it finds it twice, a moment apart: a damaged folder
    (no config.json, truncated weights) rather than one caught in the middle of a save."""
    try:
        check(folder)
    except ValueError as first:
        time.sleep(0.05)
        try:
            check(folder)
        except ValueError as second:
            if str(second) == str(first):
                raise


@contextlib.contextmanager
def consistent_copy(folder: str | os.PathLike, check: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """A private copy of ``folder``'s config.json and weight files, taken when no file changed during the copy and
    the weights match the config's ``weights_digest`` (older folders have none: then only the first check).
    Retries a few times (a save in progress finishes within moments), then raises ``FolderChangedError``.

    ``check`` (e.g. ``check_model_folder``) runs on the copy, its errors naming ``folder``'s files; and on ``folder``
    itself before giving up, so that a folder that is damaged rather than changing gets that error instead."""
    folder = Path(folder)
    with tempfile.TemporaryDirectory(prefix="qscore-load-") as tmp:
        problem = None
        for attempt in range(_ATTEMPTS):
            if attempt:
                time.sleep(0.05 * 2**attempt)
            for entry in Path(tmp).iterdir():
                entry.unlink()
            try:
                problem = _copy_once(folder, Path(tmp))
            except (ValueError, OSError) as error:  # a config.json caught half-written by a non-atomic writer
                problem = f"{type(error).__name__}: {error}"
            if problem is not None and attempt == 0 and check is not None:
                _raise_if_damaged(folder, check)
            if problem is None:
                if check is not None:
                    try:
                        check(Path(tmp))
                    except ValueError as error:  # name the user's files, not the private copy's
                        raise type(error)(str(error).replace(tmp, str(folder))) from None
                yield Path(tmp)
                return
        if check is not None:
            check(folder)
        raise FolderChangedError(
            f"{folder}: no consistent save could be read in {_ATTEMPTS} attempts ({problem}). If another process is "
            f"saving or copying into it, load it once that is done; if the weights were edited on purpose, re-save "
            f"the model (save_pretrained) or delete {DIGEST_FIELD} from config.json."
        )
