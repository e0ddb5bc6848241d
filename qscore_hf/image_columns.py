"""An image column that holds no decoded images: file paths, URLs, or encoded bytes (a parquet file written without
the ``datasets`` ``Image`` metadata).

Left as they are, such values reach transformers' image processor, which fetches every http(s) URL itself (no
timeout, redirects followed, whatever ``HF_HUB_OFFLINE`` says) and fails with a raw ``TypeError`` on bytes. Here
bytes are decoded as images, paths are read only inside the data set's own folder, http(s) URLs are fetched only when
the user asks (``allow_downloads``, within the bounds of ``ImageDownloads``, never under ``HF_HUB_OFFLINE=1``), and
anything else (other URLs, paths outside the folder, paths of a Hub data set) is refused in one line naming the
column, before any work.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import datasets
import xxhash

from .image_downloads import ImageDownloads, fetch_image

__all__ = ["as_image_column"]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_HTTP = re.compile(r"^https?://", re.IGNORECASE)
_BINARY = ("binary", "large_binary")
_STRING = ("string", "large_string")


def as_image_column(
    dataset: datasets.Dataset | datasets.IterableDataset,
    column: str,
    name: str,
    root: Path | None,
    allow_downloads: bool | ImageDownloads = False,
) -> datasets.Dataset | datasets.IterableDataset:
    """``dataset`` with ``column`` as an ``Image`` feature when it holds encoded bytes or file paths (resolved against
    ``root``, the data set's folder, and checked to stay inside it); unchanged when it already holds images or other
    values (arrays). ``ValueError`` in one line naming the column for URLs and paths that are not the data set's.

    ``allow_downloads`` (``True``, or an ``ImageDownloads`` with its bounds) fetches the http(s) URLs of a string
    column into the column's bytes at once, as ``map`` writes them (to the data set's cache files when it has them),
    failing in one line naming the row and the URL."""
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
        downloads = _downloads(allow_downloads)
        resolved = [_local(value, root, where, row, downloads is not None) for row, value in enumerate(dataset[column])]
        dataset = dataset.remove_columns(column).add_column(column, resolved)
        if downloads is not None and any(value is not None and _HTTP.match(value) for value in resolved):
            return _fetched(dataset, column, where, downloads)
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
        and getattr(feature["path"], "dtype", None) in (*_STRING, "null")  # "null": every path None
    )


def _downloads(allow_downloads: bool | ImageDownloads) -> ImageDownloads | None:
    if allow_downloads is False:
        return None
    return allow_downloads if isinstance(allow_downloads, ImageDownloads) else ImageDownloads()


def _fetched(dataset: datasets.Dataset, column: str, where: str, downloads: ImageDownloads) -> datasets.Dataset:
    """``dataset`` with the http(s) URLs of ``column`` replaced by the images' bytes (local paths kept as paths),
    fingerprinted by what was fetched: the feature cache, keyed by the fingerprint, is not reused when a URL serves
    another image."""
    content = xxhash.xxh3_128(dataset._fingerprint.encode())

    def fetch(batch: dict[str, list], rows: list[int]) -> dict[str, list]:
        images = []
        for row, value in zip(rows, batch[column]):
            if value is None or not _HTTP.match(value):
                images.append(None if value is None else {"bytes": None, "path": value})
                content.update(b"\0" if value is None else value.encode() + b"\0")
                continue
            try:
                images.append({"bytes": fetch_image(value, downloads), "path": None})
            except ValueError as error:
                raise ValueError(f"{where} row {row}: could not fetch {value[:200]}: {error}.") from None
            content.update(len(images[-1]["bytes"]).to_bytes(8, "little") + images[-1]["bytes"])
        return {column: images}

    features = dataset.features.copy()
    features[column] = datasets.Image()
    fetched = dataset.map(fetch, batched=True, batch_size=16, writer_batch_size=16, with_indices=True,
                          features=features, load_from_cache_file=False, new_fingerprint=content.hexdigest(),
                          desc=f"fetching {column}")  # fmt: skip  # 16 images at a time in memory
    return fetched.cast_column(column, datasets.Image(), new_fingerprint=content.hexdigest())


def _local(value: str | None, root: Path | None, where: str, row: int, downloads: bool = False) -> str | None:
    """``value`` as an absolute path of a file inside ``root`` (or, with ``downloads``, an http(s) URL as it is), or
    ``ValueError`` naming the row."""
    if value is None:
        return None  # a null image: counted as unreadable where the images are decoded
    if downloads and _HTTP.match(value):
        if datasets.config.HF_HUB_OFFLINE:
            raise ValueError(
                f"{where} holds URLs (row {row}: {value[:100]}), and HF_HUB_OFFLINE=1 is set: images are not "
                "downloaded offline; unset it to fetch them, or store the images in the data set."
            )
        return value
    if _URL.match(value):
        raise ValueError(
            f"{where} holds URLs (row {row}: {value[:100]}); qscore-hf downloads http(s) images only when asked "
            "(--allow-downloads, allow_downloads=True): ask for it, or fetch them into the data set's folder and "
            "store relative paths (or the images themselves)."
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
