"""Decode once: a data set's images as one uint8 array (N x 3 x H x W) on disk, memory-mapped by every later run.

Pre-training reads the same images every epoch; decoding their PNG/JPEG bytes each time (and per image, in loader
processes) costs more than the model's step on small images. ``decode_images`` decodes them once into
``<cache>/<key>/images.npy`` (with ``labels.npy``, ``row_ids.npy`` and ``meta.json``), where ``key`` hashes the data
set's identity (name, split, columns, row count and ``datasets`` fingerprint, as the feature cache does) and the
image size: a changed data set gets another key and is decoded again, never read from an older array.

The folder is written beside its final name and renamed into place (``io_utils.atomic_directory``), under an
exclusive lock on ``<cache>/.<key>.lock``: a second process asking for the same images waits for the first to finish
(at most ``wait_s``, then it is refused in one line), and a process killed mid-build leaves no folder that a later
run could mistake for a complete one (the kernel drops its lock; the next build sweeps its temporary folder).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import PIL.Image
from tqdm.auto import tqdm

from .data import ImageDataset
from .features import UnreadableImage, _decode, dataset_identity, without_decoding
from .io_utils import atomic_directory

__all__ = ["DecodedImages", "TooLargeToDecode", "decode_images", "decoded_cache_key", "default_decode_dir"]

DECODE_FORMAT_VERSION = 1
IMAGES_FILE, LABELS_FILE, ROWS_FILE, META_FILE = "images.npy", "labels.npy", "row_ids.npy", "meta.json"
# Above this the array would not stay in the page cache next to the model: keep decoding per batch (--data-pipeline pil).
DEFAULT_MAX_BYTES = 16 * 2**30
_CHUNK = 1024  # rows read from the data set at a time


class TooLargeToDecode(ValueError):
    """The decoded array would exceed ``max_bytes``: ``num_images`` images of ``size`` (height, width)."""

    def __init__(self, name: str, num_images: int, size: tuple[int, int], max_bytes: int) -> None:
        self.num_images, self.size, self.max_bytes = num_images, size, max_bytes
        self.nbytes = num_images * 3 * size[0] * size[1]
        super().__init__(f"{name}: {self.describe()}; use --data-pipeline pil (decoding per batch).")

    def describe(self) -> str:
        size, limit = f"{self.size[0]}x{self.size[1]}", self.max_bytes / 2**30
        return f"{self.num_images} images of {size} take {self.nbytes / 2**30:.1f} GiB decoded, over {limit:.1f} GiB"


@dataclass
class DecodedImages:
    """A data set's images decoded to uint8 ``images`` (N x 3 x H x W, memory-mapped), with each row's ``labels``
    (``None`` without a label column) and ``row_ids`` (its row in the data set; unreadable images are left out and
    listed in ``skipped``)."""

    images: np.ndarray
    labels: np.ndarray | None
    row_ids: np.ndarray
    folder: Path
    from_cache: bool
    skipped: list[UnreadableImage] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


def default_decode_dir() -> Path:
    """``$QSCORE_HF_DECODED_CACHE``, else ``decoded`` beside the feature cache (``$QSCORE_HF_CACHE`` or
    ``$HF_HOME/qscore_hf``)."""
    from .features import default_cache_dir

    return Path(os.environ.get("QSCORE_HF_DECODED_CACHE") or default_cache_dir().parent / "decoded")


def _identity(data: ImageDataset, size: tuple[int, int] | None) -> dict[str, Any]:
    if not isinstance(data.dataset, datasets.Dataset):
        raise ValueError(
            f"data set {data.name!r} is streamed: its images cannot be decoded once into an array of known size. "
            "Use --data-pipeline pil, or load it as a map-style data set."
        )
    return {"format": DECODE_FORMAT_VERSION, "size": None if size is None else list(size), "dataset": dataset_identity(data)}


def decoded_cache_key(data: ImageDataset, size: tuple[int, int] | None = None) -> str:
    """The cache folder name of ``data``'s decoded images at ``size`` (``None``: the first image's size)."""
    identity = json.dumps(_identity(data, size), sort_keys=True, default=str)
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def decode_images(
    data: ImageDataset,
    size: tuple[int, int] | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    wait_s: float = 3600.0,
    max_bytes: int | None = None,
) -> DecodedImages:
    """``data``'s images as RGB uint8 (N x 3 x H x W), decoded at most once per data set and size (see the module).

    ``size`` is (height, width); ``None`` keeps the first readable image's. Images of another size are resized to it
    (bilinear, with antialiasing), said in one line. Images that do not decode are left out, each named in one line
    and in ``skipped``. ``wait_s``: how long to wait for another process building the same array before refusing.
    An array over ``max_bytes`` (``None``: ``DEFAULT_MAX_BYTES``) is refused with ``TooLargeToDecode``.
    """
    identity = _identity(data, size)
    root = Path(cache_dir) if cache_dir is not None else default_decode_dir()
    key = decoded_cache_key(data, size)
    folder = root / key
    cached = _load(folder, identity)
    if cached is not None:
        return cached
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{key}.lock", "w") as lock:
        _acquire(lock, wait_s, folder)
        try:
            cached = _load(folder, identity)  # built by the process we waited for
            if cached is not None:
                return cached
            with atomic_directory(folder, keep_other_files=False) as tmp:
                _build(data, size, identity, tmp, progress, DEFAULT_MAX_BYTES if max_bytes is None else max_bytes)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    loaded = _load(folder, identity)
    if loaded is None:
        raise RuntimeError(f"decoded images written to {folder} could not be read back; check the disk.")
    loaded.from_cache = False
    return loaded


def _acquire(lock, wait_s: float, folder: Path) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"another process is decoding these images into {folder} (waited {wait_s:g} s); wait for it to "
                    "finish, or stop it, then run again."
                ) from None
            time.sleep(min(0.2, max(wait_s, 0.01)))


def _load(folder: Path, identity: dict[str, Any]) -> DecodedImages | None:
    """The complete decoded images in ``folder`` for exactly ``identity``, or ``None``."""
    try:
        meta = json.loads((folder / META_FILE).read_text())
        if meta.get("identity") != json.loads(json.dumps(identity, default=str)):
            return None
        images = np.load(folder / IMAGES_FILE, mmap_mode="r")
        row_ids = np.load(folder / ROWS_FILE)
        labels = np.load(folder / LABELS_FILE) if meta["has_labels"] else None
    except (OSError, ValueError, KeyError):
        return None
    skipped = [UnreadableImage(**image) for image in meta.get("skipped", [])]
    return DecodedImages(images, labels, row_ids, folder, from_cache=True, skipped=skipped)


def _build(data: ImageDataset, size: tuple[int, int] | None, identity: dict[str, Any], folder: Path,
           progress: bool, max_bytes: int) -> None:
    """Decode every image of ``data`` into ``folder`` (a temporary folder renamed into place by the caller)."""
    dataset, decoder = without_decoding(data)
    n = len(dataset)
    images: np.ndarray | None = None
    labels = np.empty(n, dtype=np.int64)
    row_ids = np.empty(n, dtype=np.int64)
    skipped: list[UnreadableImage] = []
    resized, written = 0, 0
    bar = tqdm(total=n, disable=not progress, desc=f"decoding {data.name} once", unit="img")
    for start in range(0, n, _CHUNK):
        rows = dataset[start : start + _CHUNK]
        for offset, value in enumerate(rows[data.image_column]):
            image, error = _decode(decoder, value)
            if error is not None:
                path = value.get("path") if isinstance(value, dict) else None
                skipped.append(UnreadableImage(start + offset, path, error))
                print(f"skipped the image in row {start + offset} of {data.name!r}{f' ({path})' if path else ''}: {error}")
                continue
            image = image.convert("RGB")
            if images is None:
                size = size or (image.height, image.width)
                if n * 3 * size[0] * size[1] > max_bytes:
                    bar.close()
                    raise TooLargeToDecode(data.name, n, size, max_bytes)
                images = np.lib.format.open_memmap(folder / IMAGES_FILE, mode="w+", dtype=np.uint8,
                                                   shape=(n, 3, *size))  # fmt: skip
            if (image.height, image.width) != size:
                image = image.resize((size[1], size[0]), PIL.Image.BILINEAR)
                resized += 1
            images[written] = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
            if data.label_column is not None:
                labels[written] = rows[data.label_column][offset]
            row_ids[written] = start + offset
            written += 1
        bar.update(len(rows[data.image_column]))
    bar.close()
    if images is None:
        raise ValueError(f"data set {data.name!r} has no readable image; nothing to decode.")
    if resized:
        print(f"{resized} of {n} images of {data.name!r} were not {size[0]}x{size[1]} and were resized to it (bilinear).")
    images.flush()
    if written < n:  # unreadable images left out: the array holds only the decoded rows
        compact = np.lib.format.open_memmap(folder / f"compact-{IMAGES_FILE}", mode="w+", dtype=np.uint8,
                                            shape=(written, *images.shape[1:]))  # fmt: skip
        compact[:] = images[:written]
        compact.flush()
        del images, compact
        os.replace(folder / f"compact-{IMAGES_FILE}", folder / IMAGES_FILE)
    else:
        del images
    np.save(folder / ROWS_FILE, row_ids[:written])
    if data.label_column is not None:
        np.save(folder / LABELS_FILE, labels[:written])
    meta = {"identity": identity, "has_labels": data.label_column is not None, "num_images": written,
            "skipped": [asdict(image) for image in skipped]}  # fmt: skip
    (folder / META_FILE).write_text(json.dumps(meta, default=str))  # inside the temporary folder: atomic by rename
