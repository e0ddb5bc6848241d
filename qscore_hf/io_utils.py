"""Atomic writes: a model folder is either the old one or the complete new one, never half-written; so is a file
written with :func:`atomic_write_text`.

Beside ``target`` a write uses hidden folders named ``.<target>.<kind>-<pid>-<random>``: ``tmp`` while it is written,
``new`` once it is complete, ``old`` for the replaced folder until the new one is in place. A process killed at any
instant leaves ``target`` in place, or a complete ``new``/``old`` folder that the next write beside it (or
:func:`recover_directory`) renames back into place; folders of processes that no longer run are then removed.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = [
    "atomic_directory",
    "atomic_write_text",
    "check_model_source",
    "check_writable",
    "recover_directory",
    "sweep_stale_temporaries",
    "temporary_directory_beside",
]

# Files a fresh save replaces as a set: stale ones from an earlier save are not carried over.
_SAVE_OWNED_PREFIXES = ("model", "pytorch_model", "config.json", "preprocessor_config.json")
_KINDS = ("tmp", "new", "old")


def _debris_name(target: Path, kind: str) -> str:
    return f".{target.name}.{kind}-{os.getpid()}-"


def _debris(target: Path) -> dict[str, list[Path]]:
    """The hidden folders of earlier writes of ``target`` whose process is gone, by kind, newest first."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.({'|'.join(_KINDS)})-(?:(\d+)-)?\w+$")
    found: dict[str, list[Path]] = {kind: [] for kind in _KINDS}
    if not target.parent.is_dir():
        return found
    for entry in target.parent.iterdir():
        match = pattern.match(entry.name)
        if match and entry.is_dir() and not _running(match.group(2)):
            found[match.group(1)].append(entry)
    for entries in found.values():
        entries.sort(key=lambda entry: entry.stat().st_mtime, reverse=True)
    return found


def _running(pid: str | None) -> bool:
    """Whether the process that made a folder still runs (folders of earlier versions, without a pid: no)."""
    if pid is None or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def temporary_directory_beside(target: Path) -> Path:
    """A new empty folder ``.<target>.tmp-<pid>-<random>`` beside ``target``, to be renamed into place when complete;
    ``sweep_stale_temporaries`` removes it if this process dies first."""
    return Path(tempfile.mkdtemp(prefix=_debris_name(target, "tmp"), dir=target.parent))


def sweep_stale_temporaries(parent: str | os.PathLike) -> list[Path]:
    """Remove the temporary folders ``.<name>.tmp-<pid>-<random>`` in ``parent`` (of any ``name``) whose process is
    gone, e.g. killed during a write, and those of earlier versions, without a pid; returns what was removed."""
    pattern = re.compile(r"^\..+\.tmp-(?:(\d+)-)?\w+$")
    parent = Path(parent)
    removed = []
    for entry in parent.iterdir() if parent.is_dir() else ():
        match = pattern.match(entry.name)
        if match and entry.is_dir() and not entry.is_symlink() and not _running(match.group(1)):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def recover_directory(target: str | os.PathLike) -> None:
    """Undo what a killed write of ``target`` left: put a complete new (else the old) folder back in place when
    ``target`` is missing, then remove the hidden folders of writes whose process is gone."""
    target = Path(target)
    debris = _debris(target)
    if not target.exists():
        for kind in ("new", "old"):
            if debris[kind]:
                os.rename(debris[kind].pop(0), target)
                break
    for entries in debris.values():
        for entry in entries:
            shutil.rmtree(entry, ignore_errors=True)


def check_writable(folder: str | os.PathLike, what: str = "--out") -> None:
    """Fail at once, in one line, when nothing can be written where ``folder`` is (or would be created)."""
    folder = Path(folder).absolute()
    existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
    if not existing.is_dir():
        raise NotADirectoryError(f"{what} {folder}: {existing} is not a folder; choose another path.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".qscore-hf-write-test-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise PermissionError(
            f"{what} {folder}: cannot write under {existing} ({reason}); choose a writable folder."
        ) from error


def check_model_source(name: str | os.PathLike) -> None:
    """Fail in one line when ``name`` is neither an existing local folder nor shaped like a Hub id (``org/name``),
    instead of letting huggingface_hub reject a missing local path as an invalid repository id."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    text = os.fspath(name)
    path = Path(text).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise NotADirectoryError(f"{text}: not a model folder (a file); pass a QScoreModel folder or a Hub id.")
    looks_local = text.startswith((".", "/", "~")) or text.endswith(("/", os.sep)) or text.count("/") > 1
    if not looks_local:
        try:
            validate_repo_id(text)
            return  # a Hub id: huggingface_hub resolves (or refuses) it
        except HFValidationError:
            pass
    raise FileNotFoundError(f"{text}: no such model folder (and not a Hub id org/name); check the path.")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _apply_umask(root: Path) -> None:
    """Give a folder made by ``mkdtemp`` (mode 0700) and its files the modes the user's umask gives new ones."""
    mask = _umask()
    os.chmod(root, 0o777 & ~mask)
    for folder, subfolders, files in os.walk(root):
        for name in subfolders:
            os.chmod(os.path.join(folder, name), 0o777 & ~mask)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, (0o777 if os.access(path, os.X_OK) else 0o666) & ~mask)


@contextmanager
def atomic_directory(target: str | os.PathLike, keep_other_files: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` by renames.

    With ``keep_other_files`` (for model folders), files of an existing ``target`` that the new save does not write
    (a model card, training logs) are kept; earlier weight and config files are not. Without it (for report folders)
    the new folder replaces the old one whole, so no stale plot of an earlier run survives. On error the temporary
    folder is removed and ``target`` is untouched. The folders and files get the modes of the user's umask.
    """
    target = Path(target)
    recover_directory(target)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder; choose another output path or remove it.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_debris_name(target, "tmp"), dir=target.parent))
    try:
        yield tmp
        if target.exists():
            for entry in target.iterdir() if keep_other_files else ():
                if not (tmp / entry.name).exists() and not entry.name.startswith(_SAVE_OWNED_PREFIXES):
                    (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, tmp / entry.name)
        _apply_umask(tmp)
        # complete: from here on a killed process leaves a `new` folder that the next write puts in place
        ready = tmp.with_name(tmp.name.replace(".tmp-", ".new-", 1))
        os.rename(tmp, ready)
        tmp = ready
        if target.exists():
            backup = tmp.with_name(tmp.name.replace(".new-", ".old-", 1))
            os.rename(target, backup)
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(backup, target)
                raise
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Replace ``path``'s contents with ``text`` in one step (a hidden temporary file beside it, then a rename), so
    that a reader or a killed process sees the old file or the new one, never a partial one. A replaced file keeps its
    permissions."""
    path = Path(path)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as tmp:
        tmp.write(text)
    os.chmod(tmp.name, path.stat().st_mode if path.exists() else 0o666 & ~_umask())
    os.replace(tmp.name, path)
