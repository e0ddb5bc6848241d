"""The built-in data set names and the typo check of a name, without importing ``datasets``: the command line checks
its ``--dataset`` argument before loading anything heavy (bench/startup.py). ``qscore_hf.data`` re-exports them."""

from __future__ import annotations

import difflib
from pathlib import Path

__all__ = ["BUILTIN_DATASETS", "check_dataset_name"]

BUILTIN_DATASETS = ("digits", "fashion_mnist", "cifar10")


def check_dataset_name(name: str) -> None:
    """Fail at once, before any Hub request, on a likely typo of a built-in name: a name without ``/`` that is no
    local path and is close to a built-in name (``digts``, ``fashion-mnist``), but does not extend one (``cifar100``
    is a Hub data set)."""
    if name in BUILTIN_DATASETS or "/" in name or Path(name).exists():
        return
    if any(name.startswith(builtin) for builtin in BUILTIN_DATASETS):
        return
    close = difflib.get_close_matches(name.lower(), BUILTIN_DATASETS, n=1)
    if close:
        raise ValueError(
            f"unknown data set {name!r}: did you mean {close[0]}? The built-in names are "
            f"{', '.join(BUILTIN_DATASETS)}; a Hub data set is named org/name, a local one by its path."
        )
