"""Decode once: a data set's images as one uint8 array (N x 3 x H x W) on disk, memory-mapped by every later run.

Pre-training reads the same images every epoch; decoding their PNG/JPEG bytes each time (and per image, in loader
processes) costs more than the model's step on small images. ``decode_images`` decodes them once into
``<cache>/<key>/images.npy`` (with ``labels.npy``, ``row_ids.npy`` and ``meta.json``), where ``key`` hashes the data
set's identity (name, split, columns, row count and ``datasets`` fingerprint, as the feature cache does) and the
image size: a changed data set gets another key and is decoded again, never read from an older array.

What the array cannot hold is refused with ``TensorPipelineRefused`` (``qscore_hf.data_pipelines``), from which the
default ``auto`` pipeline falls back to decoding per batch: a streamed data set, an array over ``max_bytes`` or over
the free disk space, and, with ``same_size`` (what ``auto`` asks for), images of several sizes, which the array
would hold only resized to the first one's (the resize policy that an explicit ``tensor`` pipeline applies).

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
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import PIL.Image
from tqdm.auto import tqdm

from .bounded_decode import REDUCING_GAP
from .data import ImageDataset
from .data_pipelines import TensorPipelineRefused
from .features import UnreadableImage, _decode, class_indices, dataset_identity, without_decoding
from .io_utils import atomic_directory

__all__ = ["DecodedImages", "TooLargeToDecode", "decode_images", "decoded_cache_key", "default_decode_dir"]

DECODE_FORMAT_VERSION = 2  # 2: meta.json counts the images resized to the array's size
IMAGES_FILE, LABELS_FILE, ROWS_FILE, META_FILE = "images.npy", "labels.npy", "row_ids.npy", "meta.json"
# Above this the array would not stay in the page cache next to the model: keep decoding per batch (--data-pipeline pil).
DEFAULT_MAX_BYTES = 16 * 2**30
_CHUNK = 1024  # rows read from the data set at a time


class TooLargeToDecode(TensorPipelineRefused):
    """The decoded array would not fit: over ``max_bytes`` or over the free disk space (``reason`` says which). The
    pre-training tensor pipeline then decodes and crops the images in its loader workers (``qscore_hf.worker_views``);
    feature extraction under ``auto`` decodes them per batch (the pil pipeline)."""


@dataclass
class DecodedImages:
    """A data set's images decoded to uint8 ``images`` (N x 3 x H x W, memory-mapped), with each row's ``labels``
    (``None`` without a label column) and ``row_ids`` (its row in the data set; unreadable images are left out and
    listed in ``skipped``); ``resized`` images were of another size than the array's. ``label_error``: the first
    label that is no class index (``features.class_indices``' one-line error; then ``labels`` is ``None``), raised by
    whoever reads the labels: pre-training, which does not, still takes the images."""

    images: np.ndarray
    labels: np.ndarray | None
    row_ids: np.ndarray
    folder: Path
    from_cache: bool
    skipped: list[UnreadableImage] = field(default_factory=list)
    resized: int = 0
    label_error: str | None = None

    def __len__(self) -> int:
        return len(self.images)


def default_decode_dir() -> Path:
    """``$QSCORE_HF_DECODED_CACHE``, else ``decoded`` beside the feature cache (``$QSCORE_HF_CACHE`` or
    ``$HF_HOME/qscore_hf``)."""
    from .features import default_cache_dir

    return Path(os.environ.get("QSCORE_HF_DECODED_CACHE") or default_cache_dir().parent / "decoded")


def _identity(data: ImageDataset, size: tuple[int, int] | None) -> dict[str, Any]:
    if not isinstance(data.dataset, datasets.Dataset):
        raise TensorPipelineRefused(
            f"data set {data.name!r} is streamed: its images cannot be decoded once into an array of known size. "
            "Use --data-pipeline pil, or load it as a map-style data set.",
            reason=f"data set {data.name!r} is streamed; the tensor pipeline needs a map-style data set",
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
    same_size: bool = False,
    model_edge: int | None = None,
) -> DecodedImages:
    """``data``'s images as RGB uint8 (N x 3 x H x W), decoded at most once per data set and size (see the module).

    ``size`` is (height, width); ``None`` keeps the first readable image's. Images of another size are resized to it
    (bilinear, with antialiasing), said in one line; with ``same_size`` they are refused instead
    (``TensorPipelineRefused``, as is a cached array that holds resized images). Images that do not decode are left
    out, each named in one line and in ``skipped``. ``wait_s``: how long to wait for another process building the same
    array before refusing. ``max_bytes``: the largest array built (``None``: ``DEFAULT_MAX_BYTES``); beyond it, or
    beyond the free disk space, ``TooLargeToDecode``. ``model_edge``: the shortest edge the model reads; images
    ``REDUCING_GAP`` times larger are refused (``TensorPipelineRefused``): the loader's pipeline decodes them at a
    reduced size instead of storing them whole.
    """
    identity = _identity(data, size)
    root = Path(cache_dir) if cache_dir is not None else default_decode_dir()
    key = decoded_cache_key(data, size)
    folder = root / key
    cached = _load(folder, identity)
    if cached is not None:
        return _check_same_size(cached, data, same_size)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{key}.lock", "w") as lock:
        _acquire(lock, wait_s, folder)
        try:
            cached = _load(folder, identity)  # built by the process we waited for
            if cached is not None:
                return _check_same_size(cached, data, same_size)
            with atomic_directory(folder, keep_other_files=False) as tmp:
                _build(data, size, identity, tmp, progress, DEFAULT_MAX_BYTES if max_bytes is None else max_bytes,
                       same_size, model_edge)  # fmt: skip
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    loaded = _load(folder, identity)
    if loaded is None:
        raise RuntimeError(f"decoded images written to {folder} could not be read back; check the disk.")
    loaded.from_cache = False
    return loaded


def _check_same_size(decoded: DecodedImages, data: ImageDataset, same_size: bool) -> DecodedImages:
    if same_size and decoded.resized:
        shape = "x".join(str(n) for n in decoded.images.shape[2:])
        raise _several_sizes(data, f"{decoded.resized} of them are not {shape}")
    return decoded


def _several_sizes(data: ImageDataset, which: str) -> TensorPipelineRefused:
    reason = f"the images of {data.name!r} have several sizes ({which}); the tensor pipeline would resize them to one"
    return TensorPipelineRefused(f"{reason}; use --data-pipeline pil, or tensor to resize them.", reason=reason)


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
    return DecodedImages(images, labels, row_ids, folder, from_cache=True, skipped=skipped, resized=meta["resized"],
                         label_error=meta["label_error"])  # fmt: skip


def _build(data: ImageDataset, size: tuple[int, int] | None, identity: dict[str, Any], folder: Path,
           progress: bool, max_bytes: int, same_size: bool, model_edge: int | None) -> None:
    """Decode every image of ``data`` into ``folder`` (a temporary folder renamed into place by the caller)."""
    dataset, decoder = without_decoding(data)
    n = len(dataset)
    images: np.ndarray | None = None
    labels = np.empty(n, dtype=np.int64)
    row_ids = np.empty(n, dtype=np.int64)
    skipped: list[UnreadableImage] = []
    resized, written = 0, 0
    label_error: str | None = None
    # closed however the loop ends: a refusal mid-way leaves no bar standing
    with tqdm(total=n, disable=not progress, desc=f"decoding {data.name} once", unit="img") as bar:
        for start in range(0, n, _CHUNK):
            rows = dataset[start : start + _CHUNK]
            for offset, value in enumerate(rows[data.image_column]):
                image, error = _decode(decoder, value)
                if error is not None:
                    path = value.get("path") if isinstance(value, dict) else None
                    skipped.append(UnreadableImage(start + offset, path, error))
                    where = f" ({path})" if path else ""
                    print(f"skipped the image in row {start + offset} of {data.name!r}{where}: {error}")
                    continue
                image = image.convert("RGB")
                if images is None:
                    size = size or (image.height, image.width)
                    if model_edge is not None and min(size) >= REDUCING_GAP * model_edge:
                        reason = (f"the images of {data.name!r} ({size[0]}x{size[1]}) are much larger than the "
                                  f"{model_edge} px the model reads; the loader decodes them at a reduced "
                                  "size")  # fmt: skip
                        raise TensorPipelineRefused(f"{reason}; use --data-pipeline pil.", reason=reason)
                    _check_room(data, n, size, max_bytes, folder)
                    images = np.lib.format.open_memmap(folder / IMAGES_FILE, mode="w+", dtype=np.uint8,
                                                       shape=(n, 3, *size))  # fmt: skip
                if (image.height, image.width) != size:
                    if same_size:
                        raise _several_sizes(data, f"row {start + offset} is {image.height}x{image.width}, not "
                                                   f"{size[0]}x{size[1]}")  # fmt: skip
                    image = image.resize((size[1], size[0]), PIL.Image.BILINEAR)
                    resized += 1
                images[written] = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
                if data.label_column is not None and label_error is None:
                    try:  # a class index, checked as the loader's pipeline checks it: 0.7 is not truncated to 0
                        labels[written] = class_indices([rows[data.label_column][offset]], np.array([start + offset]),
                                                        data.label_column)[0]  # fmt: skip
                    except ValueError as error:
                        label_error = str(error)
                row_ids[written] = start + offset
                written += 1
            bar.update(len(rows[data.image_column]))
    if images is None:
        raise ValueError(f"data set {data.name!r} has no images{' that decode' if n else ''}; nothing to decode.")
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
    has_labels = data.label_column is not None and label_error is None
    if has_labels:
        np.save(folder / LABELS_FILE, labels[:written])
    meta = {"identity": identity, "has_labels": has_labels, "num_images": written, "resized": resized,
            "skipped": [asdict(image) for image in skipped], "label_error": label_error}  # fmt: skip
    (folder / META_FILE).write_text(json.dumps(meta, default=str))  # inside the temporary folder: atomic by rename


def _check_room(data: ImageDataset, n: int, size: tuple[int, int], max_bytes: int, folder: Path) -> None:
    """``TensorPipelineRefused`` when ``n`` images of ``size`` exceed ``max_bytes`` or the free space under
    ``folder`` (a memory map written on a full disk would end the process with SIGBUS, not an error)."""
    needed = n * 3 * size[0] * size[1]
    what = f"{n} images of {size[0]}x{size[1]} take {_bytes(needed)} decoded"
    if needed > max_bytes:
        raise TooLargeToDecode(
            f"{data.name}: {what}, over {_bytes(max_bytes)}; use --data-pipeline pil (decoding per batch).",
            reason=f"{what}, over the {_bytes(max_bytes)} limit of the decode-once array",
        )
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise TooLargeToDecode(
            f"{data.name}: {what}, more than the {_bytes(free)} free under {folder.parent}; free some space, "
            "set QSCORE_HF_DECODED_CACHE to a larger disk, or use --data-pipeline pil (decoding per batch).",
            reason=f"{what}, more than the {_bytes(free)} free under {folder.parent}",
        )


def _bytes(count: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"
