"""Atomic folder writes: a model folder is either the old one or the complete new one, never half-written."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_directory"]

# Files a fresh save replaces as a set: stale ones from an earlier save are not carried over.
_SAVE_OWNED_PREFIXES = ("model", "pytorch_model", "config.json", "preprocessor_config.json")


@contextmanager
def atomic_directory(target: str | os.PathLike, keep_other_files: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` by a rename.

    With ``keep_other_files`` (for model folders), files of an existing ``target`` that the new save does not write
    (a model card, training logs) are kept; earlier weight and config files are not. Without it (for report folders)
    the new folder replaces the old one whole, so no stale plot of an earlier run survives. On error the temporary
    folder is removed and ``target`` is untouched.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder; choose another output path or remove it.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            for entry in target.iterdir() if keep_other_files else ():
                if not (tmp / entry.name).exists() and not entry.name.startswith(_SAVE_OWNED_PREFIXES):
                    (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, tmp / entry.name)
            backup = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(target, backup)
            os.rename(tmp, target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
