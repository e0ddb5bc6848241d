"""Atomic writes: a model folder is either the old one or the complete new one, never half-written; so is a file
written with :func:`atomic_write_text`.

A write replaces only what qscore-hf wrote there itself. A model folder keeps every file a save does not write (a
card, notes, a ``models/`` folder, a linked data folder, kept as a link); only the weight and config files of an
earlier save are replaced as a set. A report folder records the entries it wrote in ``.qscore-hf-output.json`` and
is replaced whole only when it holds nothing else: a folder holding anything more is refused in one line naming it.
A target that is a link to a folder is written through: the linked folder is replaced, the link stays.

Beside ``target`` a write uses hidden folders named ``.<target>.<kind>-<pid>-<random>``: ``tmp`` while it is written,
``new`` once it is complete, ``old`` for the replaced folder until the new one is in place. A process killed at any
instant leaves ``target`` in place, or a complete ``new``/``old`` folder that the next write beside it (or
:func:`recover_directory`) renames back into place; folders of processes that no longer run are then removed.
"""

from __future__ import annotations

import json
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
    "check_output_folder",
    "check_writable",
    "contained_path",
    "recover_directory",
    "resolve_target",
    "sweep_stale_temporaries",
    "temporary_directory_beside",
    "OUTPUT_MANIFEST",
]

# The files of a model folder that a save writes (transformers' weights, shards, indexes and configs): an earlier
# save's are replaced as a set, so that no stale shard survives; nothing else in the folder is touched.
_MODEL_FILE = re.compile(
    r"^(?:config|preprocessor_config|generation_config)\.json$"
    r"|^(?:model|pytorch_model)(?:-\d+-of-\d+)?\.(?:safetensors|bin)$"
    r"|^(?:model\.safetensors|pytorch_model\.bin)\.index\.json$"
)
# A report folder's list of the entries its write made: the next write replaces those and refuses anything else.
OUTPUT_MANIFEST = ".qscore-hf-output.json"
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
        entries.sort(key=lambda entry: entry.lstat().st_mtime, reverse=True)
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
    target = resolve_target(target)
    debris = _debris(target)
    if not target.exists():
        for kind in ("new", "old"):
            if debris[kind]:
                os.rename(debris[kind].pop(0), target)
                break
    for entries in debris.values():
        for entry in entries:
            # a link: what earlier versions left when they renamed a linked target away; never follow it
            entry.unlink() if entry.is_symlink() else shutil.rmtree(entry, ignore_errors=True)


def resolve_target(target: str | os.PathLike) -> Path:
    """The folder a write of ``target`` replaces: a link (to a folder, or dangling) is written through, so the link
    stays a link; ``.`` and relative paths get their real name."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(target))))


def _written_entries(folder: Path) -> set[str] | None:
    """The entries a report write recorded in ``folder``'s manifest, or ``None`` without a readable one."""
    try:
        names = json.loads((folder / OUTPUT_MANIFEST).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        return None
    return set(names)


def _not_written(folder: Path, model_folder: bool) -> list[str]:
    """The entries of an existing ``folder`` that no qscore-hf write made: in a model folder all but a save's weight
    and config files (links and folders never count as those), in a report folder all but its manifest's."""
    names = sorted(os.listdir(folder))
    if model_folder:
        return [name for name in names if not (_MODEL_FILE.match(name) and os.path.isfile(folder / name)
                                               and not os.path.islink(folder / name))]  # fmt: skip
    written = (_written_entries(folder) or set()) | {OUTPUT_MANIFEST}
    return [name for name in names if name not in written]


def check_output_folder(folder: str | os.PathLike, what: str = "--out") -> None:
    """Fail at once, in one line, when a report write into ``folder`` would have to delete what it did not write
    (entries not in the folder's ``.qscore-hf-output.json``), or when nothing can be written there."""
    target = resolve_target(folder)
    check_writable(target, what)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{what} {folder} exists and is not a folder; choose another output path or remove it.")
    _check_replaceable(target, what)
    foreign = _not_written(target, model_folder=False) if target.is_dir() else []
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise FileExistsError(
            f"{what} {folder} already holds what qscore-hf did not write there ({shown}); nothing was changed: choose "
            "a new or empty folder, or move those out."
        )


def _check_replaceable(target: Path, what: str) -> None:
    """A root, or a folder above the current one, is never swapped away."""
    cwd = _cwd()
    if target.parent == target or (cwd is not None and target in cwd.parents):
        raise ValueError(f"{what} {target} is a root or holds the current folder; choose an output folder below it.")


def _cwd() -> Path | None:
    try:
        return Path(os.path.realpath(os.getcwd()))
    except OSError:  # the current folder was deleted
        return None


def _link_or_copy(source: str, destination: str) -> None:
    """A file carried into the new folder: hard-linked (no second copy of a large file), else copied."""
    try:
        os.link(source, destination, follow_symlinks=False)
    except OSError:
        shutil.copy2(source, destination, follow_symlinks=False)


def _carry(source: Path, destination: Path) -> None:
    """Put an entry of the replaced folder into the new one as it is: a link stays a link (a dangling one too, a
    linked data folder is not copied), a folder is rebuilt with its files hard-linked."""
    if source.is_symlink():
        os.symlink(os.readlink(source), destination)
    elif source.is_dir():
        shutil.copytree(source, destination, symlinks=True, copy_function=_link_or_copy)
    else:
        _link_or_copy(str(source), str(destination))


def contained_path(root: str | os.PathLike, *parts: str, what: str = "a path") -> Path:
    """``root/parts...``, checked to stay strictly inside ``root`` after normalization (no ``..``, no absolute part,
    no empty name that would make it ``root`` itself); ``ValueError`` in one line naming ``what`` otherwise."""
    root = Path(os.path.abspath(os.fspath(root)))
    path = Path(os.path.normpath(os.path.join(root, *parts)))
    if path == root or root not in path.parents:
        raise ValueError(f"{what} {'/'.join(parts)!r} would lie outside {root}; it must be a plain name below it.")
    return path


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
            if not os.path.islink(os.path.join(folder, name)):  # chmod would follow a link
                os.chmod(os.path.join(folder, name), 0o777 & ~mask)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, (0o777 if os.access(path, os.X_OK) else 0o666) & ~mask)


@contextmanager
def atomic_directory(target: str | os.PathLike, keep_other_files: bool = True, what: str = "--out") -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` by renames.

    With ``keep_other_files`` (for model folders), the entries of an existing ``target`` that a save does not write
    (a model card, training logs, sub-folders, links) are kept as they are; the weight and config files of an earlier
    save are not. Without it (for report folders) the new folder replaces the old one whole, so no stale plot of an
    earlier run survives, but only when the old one holds nothing but what a write recorded in its
    ``.qscore-hf-output.json``; anything else is refused (``FileExistsError``, naming it) before and after the
    work. A ``target`` that links to a folder is written through. On error the temporary folder is removed and
    ``target`` is untouched. The folders and written files get the modes of the user's umask.
    """
    target = resolve_target(target)
    recover_directory(target)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder; choose another output path or remove it.")
    if not keep_other_files:
        check_output_folder(target, what)
    _check_replaceable(target, what)
    cwd = _cwd()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_debris_name(target, "tmp"), dir=target.parent))
    try:
        yield tmp
        if not keep_other_files:
            written = sorted(name for name in os.listdir(tmp) if name != OUTPUT_MANIFEST)
            (tmp / OUTPUT_MANIFEST).write_text(json.dumps({"files": written}, indent=2) + "\n", encoding="utf-8")
        _apply_umask(tmp)
        if target.exists():
            if keep_other_files:
                for name in _not_written(target, model_folder=True):
                    if not os.path.lexists(tmp / name):
                        _carry(target / name, tmp / name)
            else:  # what appeared during the work is not deleted either
                check_output_folder(target, what)
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
        if cwd == target:  # the process stood in the replaced folder: it stands in the new one
            os.chdir(target)
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
