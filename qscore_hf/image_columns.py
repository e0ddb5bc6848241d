"""An image column that holds no decoded images: file paths, URLs, or encoded bytes (a parquet file written without
the ``datasets`` ``Image`` metadata).

Left as they are, such values reach transformers' image processor, which fetches every http(s) URL itself (no
timeout, redirects followed, whatever ``HF_HUB_OFFLINE`` says) and fails with a raw ``TypeError`` on bytes. Here
bytes are decoded as images, paths are read only inside the data set's own folder, and anything else (URLs, paths
outside the folder, paths of a Hub data set) is refused in one line naming the column, before any work.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import datasets

__all__ = ["as_image_column"]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_BINARY = ("binary", "large_binary")
_STRING = ("string", "large_string")


def as_image_column(
    dataset: datasets.Dataset | datasets.IterableDataset, column: str, name: str, root: Path | None
) -> datasets.Dataset | datasets.IterableDataset:
    """``dataset`` with ``column`` as an ``Image`` feature when it holds encoded bytes or file paths (resolved against
    ``root``, the data set's folder, and checked to stay inside it); unchanged when it already holds images or other
    values (arrays). ``ValueError`` in one line naming the column for URLs and paths that are not the data set's."""
    feature = (dataset.features or {}).get(column)
    dtype = getattr(feature, "dtype", None) if isinstance(feature, datasets.Value) else None
    if dtype in _BINARY:
        return dataset.cast_column(column, datasets.Image())
    paths = _struct_paths(feature)
    if dtype not in _STRING and not paths:
        return dataset
    where = f"data set {name!r}: image column {column!r}"
    if not isinstance(dataset, datasets.Dataset):
        raise ValueError(f"{where} holds file paths, which are checked only on a loaded data set; leave out --streaming.")
    if dtype in _STRING:
        resolved = [_local(value, root, where, row) for row, value in enumerate(dataset[column])]
        dataset = dataset.remove_columns(column).add_column(column, resolved)
        return dataset.cast_column(column, datasets.Image())
    for row, value in enumerate(dataset[column]):  # {"bytes", "path"}: a path is read only where there are no bytes
        if value is not None and value.get("bytes") is None and value.get("path") is not None:
            _local(value["path"], root, where, row)
    return dataset.cast_column(column, datasets.Image())


def _struct_paths(feature: Any) -> bool:
    """Whether ``feature`` is the ``{"bytes", "path"}`` struct of an image column stored without its metadata."""
    return (
        isinstance(feature, dict)
        and set(feature) == {"bytes", "path"}
        and getattr(feature["bytes"], "dtype", None) in _BINARY
        and getattr(feature["path"], "dtype", None) in _STRING
    )


def _local(value: str | None, root: Path | None, where: str, row: int) -> str | None:
    """``value`` as an absolute path of a file inside ``root``, or ``ValueError`` naming the row."""
    if value is None:
        return None  # a null image: counted as unreadable where the images are decoded
    if _URL.match(value):
        raise ValueError(
            f"{where} holds URLs (row {row}: {value[:100]}); qscore-hf does not download images: fetch them into the "
            "data set's folder and store relative paths (or the images themselves)."
        )
    if root is None:
        raise ValueError(
            f"{where} holds file paths (row {row}: {value[:100]}), which a Hub data set cannot resolve; store the "
            "images themselves (a datasets Image column)."
        )
    real_root = Path(os.path.realpath(root))
    path = Path(os.path.realpath(real_root / value))
    if real_root not in path.parents:
        raise ValueError(
            f"{where} row {row} names {value[:100]!r}, outside the data set's folder {real_root}; only files inside "
            "it are read."
        )
    return str(path)
