"""Read a checkpoint file without running its code: ``torch.load(weights_only=True)`` with an explicit allow-list,
or safetensors. Pickles that need anything else load only with ``trust_checkpoint=True``.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import pathlib
import pickle
import re
import sys
import typing
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

__all__ = [
    "CheckpointExpansionError",
    "ConversionError",
    "TrustedCheckpointWarning",
    "UnsafeCheckpointError",
    "file_sha256",
    "read_checkpoint",
    "to_plain",
]

# What a zip checkpoint may declare as its uncompressed size: torch.save stores its entries uncompressed, so a
# real checkpoint declares about its own size; compressed entries may expand this much (and by a fixed allowance).
MAX_EXPANSION_RATIO = 4
EXPANSION_ALLOWANCE_BYTES = 16 * 2**20


class ConversionError(ValueError):
    """A checkpoint cannot be converted; the message names the file or format, the offending keys and the fix."""


class UnsafeCheckpointError(ConversionError):
    """torch's weights-only loader refused a pickle: it names a callable or class that could run code."""


class CheckpointExpansionError(ConversionError):
    """A compressed (zip) checkpoint declares more uncompressed data than a checkpoint of its size can hold."""


class TrustedCheckpointWarning(UserWarning):
    """A checkpoint was unpickled with ``weights_only=False`` because the caller trusted it."""


class InertObject:
    """Stands in for an object of a checkpoint's metadata that conversion never needs (e.g. an omegaconf config):
    the pickle's arguments and state are kept as plain data and none of the original class's code runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


# Globals that the releases' pickles hold outside their tensors, and what each is loaded as.
_REAL_GLOBALS = [
    argparse.Namespace,  # DINO's full checkpoint: `args` (main_dino.py)
    # solo-learn < 1.0.6 saved its argparse arguments (`data_dir`, `train_dir`: `type=Path`) as hyper-parameters;
    # pure paths are built without touching the file system
    (pathlib.PurePosixPath, "pathlib.PosixPath"),
    (pathlib.PureWindowsPath, "pathlib.WindowsPath"),
    (pathlib.PurePosixPath, "pathlib._local.PosixPath"),  # as Python >= 3.13 pickles them
    (pathlib.PureWindowsPath, "pathlib._local.WindowsPath"),
    # types referenced by omegaconf's node metadata (below); referencing or calling them runs no file code
    typing.Any,
    dict,
    list,
    int,
    float,
    str,
    bool,
    collections.defaultdict,
]
# solo-learn >= 1.0.6 saves its hydra/omegaconf config in Lightning's `hyper_parameters`.
_OMEGACONF_CLASSES = (
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.base.Metadata",
    "omegaconf.nodes.AnyNode",
    "omegaconf.nodes.StringNode",
    "omegaconf.nodes.IntegerNode",
    "omegaconf.nodes.FloatNode",
    "omegaconf.nodes.BooleanNode",
    "omegaconf.nodes.BytesNode",
    "omegaconf.nodes.PathNode",
    "omegaconf.nodes.EnumNode",
)
ALLOWED_GLOBALS = _REAL_GLOBALS + [(InertObject, name) for name in _OMEGACONF_CLASSES]

# How torch's weights-only unpickler names what it refused (torch 2.4 and later).
_REFUSED_GLOBAL = re.compile(
    r"Unsupported global: GLOBAL ([\w.]+)|unsupported GLOBAL ([\w.]+) whose module [\w.]+ is blocked"
)
_WEIGHTS_ONLY_REFUSAL = "Weights only load failed"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_checkpoint(path: str | os.PathLike, trust_checkpoint: bool = False) -> Any:
    """Load a ``.pth``/``.pth.tar``/``.ckpt`` pickle or a ``.safetensors`` file onto the CPU.

    Pickles load with ``weights_only=True`` and the allow-list above (``argparse.Namespace``, omegaconf configs as
    inert placeholders, ...). ``trust_checkpoint=True`` unpickles anything and warns: only for files whose origin
    you trust, since unpickling can run arbitrary code.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such checkpoint file.")
    if path.suffix == ".safetensors":
        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError) as error:
            raise ConversionError(
                f"{path} is not a readable safetensors file ({error}); it may be truncated: download it again."
            ) from error
    if zipfile.is_zipfile(path):
        _check_expansion(path)
    if trust_checkpoint:
        warnings.warn(
            f"unpickling {path} with weights_only=False because trust_checkpoint was set: this runs any code the "
            "file contains; do this only for files from a source you trust.",
            TrustedCheckpointWarning,
            stacklevel=3,
        )
    try:
        if trust_checkpoint:
            return _module_states(torch.load(path, map_location="cpu", weights_only=False))
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise _refusal(path, str(error)) from error
    except ModuleNotFoundError as error:  # trusted load of a pickle whose classes are not installed
        raise ConversionError(
            f"{path} pickles objects of module {error.name!r}, which is not installed; install it or re-save the "
            "checkpoint's state dict where it is."
        ) from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as error:
        raise _corrupt(path, error) from error


def _check_expansion(path: Path) -> None:
    """Refuse a zip whose entries declare more uncompressed bytes than ``MAX_EXPANSION_RATIO`` times the file's size
    (plus ``EXPANSION_ALLOWANCE_BYTES``), before torch expands any of it."""
    size = path.stat().st_size
    limit = MAX_EXPANSION_RATIO * size + EXPANSION_ALLOWANCE_BYTES
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(entry.file_size for entry in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # torch.load reports it as corrupt
    if declared > limit:
        raise CheckpointExpansionError(
            f"{path} is a {size / 2**20:.1f} MiB zip whose entries expand to {declared / 2**20:.1f} MiB (more than "
            f"{limit / 2**20:.1f} MiB; torch.save writes its entries uncompressed): refused without loading it. "
            "Re-save the state dict with torch.save or safetensors."
        )


def _module_states(value: Any) -> Any:
    """A trusted pickle of a whole ``nn.Module`` (or a dict of them) as its state dict(s)."""
    if isinstance(value, torch.nn.Module):
        return value.state_dict()
    if isinstance(value, dict):
        return {key: _module_states(item) for key, item in value.items()}
    return value


def _refusal(path: Path, message: str) -> ConversionError:
    """The error for a pickle that torch's weights-only loader refused, or that is truncated."""
    refused = _refused_global(message)
    if refused is not None:
        return UnsafeCheckpointError(
            f"{path} was refused as unsafe: it pickles `{refused}`, which is not on the allow-list of known "
            "checkpoint metadata, so it was not loaded (unpickling it could run code). If you trust the file's origin, "
            "convert with --trust-checkpoint (Python: trust_checkpoint=True); otherwise re-save its state dict with "
            "torch.save(state_dict, ...)."
        )
    if _WEIGHTS_ONLY_REFUSAL in message and "Unsupported global" not in message:
        lines = [line.strip() for line in message.splitlines()]
        causes = [line for line in lines if line.startswith(("Unsupported", "Can only"))]
        reason = causes[0] if causes else "not a torch.save pickle"
        return UnsafeCheckpointError(
            f"{path} was refused as unsafe: torch's weights-only loader does not accept it ({reason}), so it was not "
            "loaded. If you trust the file's origin, convert with --trust-checkpoint (Python: trust_checkpoint=True); "
            "otherwise re-save its state dict with torch.save(state_dict, ...)."
        )
    return _corrupt(path, pickle.UnpicklingError(message))


def _refused_global(message: str) -> str | None:
    """The global a weights-only load refused, or ``None`` when the refusal is really a corrupt file: a truncated
    pickle can name a cut-off global (``torch._utils._rebuild_t``) of a module that is loaded but lacks it."""
    match = _REFUSED_GLOBAL.search(message)
    if match is None:
        return None
    name = match.group(1) or match.group(2)
    module, _, attribute = name.rpartition(".")
    if match.group(1) and module in sys.modules and not hasattr(sys.modules[module], attribute):
        return None
    return name


def _corrupt(path: Path, error: BaseException) -> ConversionError:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return ConversionError(
        f"{path} is not a readable PyTorch checkpoint: it looks truncated or corrupt ({reason}). "
        "Download it again and compare its SHA-256 with the published one."
    )


def to_plain(value: Any) -> Any:
    """Plain Python data from loaded metadata: omegaconf placeholders become their dicts, lists and values."""
    if isinstance(value, InertObject):
        state = value.state if isinstance(value.state, dict) else {}
        if "_content" in state:
            return to_plain(state["_content"])
        return to_plain(state.get("_val"))
    if isinstance(value, dict):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    return value
