"""Frozen features of a ``QScoreModel`` over an image data set: batched, on the GPU when there is one, cached on disk.

Two entry points:

- ``iter_features`` yields one batch of pooled features (and labels) at a time: memory stays flat in the data set
  size, for one-pass uses such as computing activation statistics and Q-Scores on the fly.
- ``extract_features`` writes all features to a ``.npy`` file, memory-mapped, inside a cache folder keyed by the
  model's weights and preprocessing and by the data set; a second call with the same inputs loads the file
  (``mmap_mode="r"``) without running the model.

A cache folder appears under its final name only once complete (it is written under a temporary name and renamed),
so an interrupted extraction leaves nothing that a later call would trust; the temporary folder of a killed one is
removed by the next extraction into the same cache.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import datasets
import numpy as np
import PIL.Image
import torch
from datasets.utils.file_utils import is_local_path
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .bounded_decode import decode_bounded, shortest_edge_of, shrink
from .data import ImageDataset
from .data_pipelines import DEFAULT_DATA_PIPELINE, check_data_pipeline, tensor_or_none
from .devices import resolve_device
from .image_processing_qscore import to_eight_bit as _eight_bit
from .io_utils import sweep_stale_temporaries, temporary_directory_beside
from .modeling_qscore import QScoreModel
from .score import ActivationStats

if TYPE_CHECKING:  # decoded builds on this module's decoding helpers: imported where it is used
    from .decoded import DecodedImages

__all__ = [
    "FeatureBatch",
    "FeatureSet",
    "UnreadableImage",
    "UnreadableImageError",
    "count_activation_stats",
    "dataset_identity",
    "default_cache_dir",
    "feature_chunks",
    "extract_features",
    "feature_cache_key",
    "iter_features",
    "resolve_data_pipeline",
    "row_chunks",
    "without_decoding",
]

CACHE_FORMAT_VERSION = 2  # 2: JPEGs decoded no larger than the processor needs (qscore_hf.bounded_decode)
FEATURES_FILE = "features.npy"
LABELS_FILE = "labels.npy"
META_FILE = "meta.json"
RAW_FILE = "features.raw"  # streaming rows before their count is known; never left in a finished cache folder
_NO_LABEL = -1
CHUNK_BYTES = 2**25  # float32 features read per chunk from a (memory-mapped) matrix: 32 MiB, whatever its size


@dataclass
class UnreadableImage:
    """An image that could not be decoded: its row in the data set, its file (when known) and the error."""

    row_id: int
    path: str | None
    error: str


class UnreadableImageError(ValueError):
    """An image of the data set cannot be decoded and unreadable images are not being skipped."""

    def __init__(self, image: UnreadableImage, dataset_name: str) -> None:
        where = f" ({image.path})" if image.path else ""
        super().__init__(
            f"cannot read the image in row {image.row_id} of data set {dataset_name!r}{where}: {image.error}. "
            "Replace or delete that file, or skip unreadable images (skip_unreadable=True; `qscore-hf score` skips "
            "them unless --strict-images is given)."
        )
        self.image = image


@dataclass
class FeatureBatch:
    """One batch of ``iter_features``: float32 features on the extraction device, labels (or ``None``), the data
    set rows they come from, and the images of this batch that were skipped as unreadable."""

    features: Tensor
    labels: Tensor | None
    row_ids: Tensor
    skipped: list[UnreadableImage] = field(default_factory=list)


@dataclass
class FeatureSet:
    """Frozen features of a whole data set split.

    Attributes:
        features: ``(N, d)`` float32, a read-only ``np.memmap`` when loaded from or written to a cache folder.
        labels: ``(N,)`` int64 class labels, or ``None`` for a data set without labels.
        row_ids: ``(N,)`` int64 position of each row in the data set (iteration order for streaming data).
        cache_path: the cache folder holding the arrays, or ``None`` when nothing was cached.
        from_cache: whether the features were loaded from the cache instead of computed.
        skipped: the unreadable images left out (``skip_unreadable=True``), in row order.
    """

    features: np.ndarray
    labels: np.ndarray | None
    row_ids: np.ndarray
    cache_path: Path | None = None
    from_cache: bool = False
    skipped: list[UnreadableImage] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def num_features(self) -> int:
        """Width ``d`` of the features."""
        return int(self.features.shape[1])


def row_chunks(num_rows: int, num_features: int) -> Iterator[slice]:
    """Row slices of about ``CHUNK_BYTES`` of float32 features each, so that a pass over a feature matrix needs the
    same memory for 10 thousand or 10 million rows."""
    step = max(1, CHUNK_BYTES // (4 * max(1, num_features)))
    for start in range(0, num_rows, step):
        yield slice(start, start + step)


def feature_chunks(features: np.ndarray) -> Iterator[Tensor]:
    """Row chunks (``row_chunks``) of a (possibly memory-mapped) ``N x d`` matrix as float32 tensors."""
    for rows in row_chunks(*features.shape):
        yield torch.from_numpy(np.array(features[rows], dtype=np.float32))


def count_activation_stats(features: np.ndarray, eps: float) -> ActivationStats:
    """Activation statistics (SPEC §3) of a (possibly memory-mapped) feature matrix, counted chunk by chunk."""
    stats = ActivationStats(features.shape[1], eps)
    for chunk in feature_chunks(features):
        stats.update(chunk)
    return stats


def default_cache_dir() -> Path:
    """Where features are cached by default: ``$QSCORE_HF_CACHE`` or ``$HF_HOME/qscore_hf/features``."""
    from huggingface_hub import constants

    return Path(os.environ.get("QSCORE_HF_CACHE") or Path(constants.HF_HOME) / "qscore_hf" / "features")


def without_decoding(
    image_dataset: ImageDataset,
) -> tuple[datasets.Dataset | datasets.IterableDataset, datasets.Image | None]:
    """The data set with its image column left encoded (``{"bytes", "path"}``) and the ``Image`` feature that decodes
    one value; the data set unchanged and ``None`` when the column is not a decoding ``Image`` feature."""
    dataset, column = image_dataset.dataset, image_dataset.image_column
    feature = (dataset.features or {}).get(column)
    if not isinstance(feature, datasets.Image) or not feature.decode:
        return dataset, None
    return dataset.cast_column(column, datasets.Image(mode=feature.mode, decode=False)), feature


def _decode(decoder: datasets.Image | None, value: Any, processor: Any = None,
            at_least: int | None = None) -> tuple[Any, str | None]:
    """``(image, None)``, or ``(None, error)`` for a value that cannot be decoded (corrupt, truncated, of an unknown
    format, a decompression bomb, or of pixels that have no 8-bit reading; see ``_eight_bit``). With ``processor``
    the image is decoded and resized no larger than that processor needs (``bounded_decode``), so that a batch of
    large photos is not held at full resolution; with ``at_least``, a JPEG is decoded at the smallest draft scale
    whose shortest edge is still at least ``at_least`` pixels (the caller does the rest of the resizing)."""
    if value is None:
        return None, "the row holds no image (null value)"
    if decoder is None:
        image, error = _eight_bit(value)
        return (shrink(image, processor) if error is None else None), error
    try:
        if isinstance(value, dict) and (value.get("bytes") is not None or is_local_path(value.get("path") or "")):
            image = (decode_bounded(value, shortest_edge_of(processor)) if at_least is None
                     else decode_bounded(value, at_least, gap=1.0))
            if decoder.mode and decoder.mode != image.mode:
                image = image.convert(decoder.mode)
        else:  # a remote path: datasets reads it
            image = decoder.decode_example(value)
        image, error = _eight_bit(image)
        return (shrink(image, processor) if error is None else None), error
    # what PIL raises for corrupt, truncated or unknown files, and for images above its pixel limit
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as error:
        return None, f"{type(error).__name__}: {error}"


def _collate(processor: Any, image_column: str, label_column: str | None, decoder: datasets.Image | None):
    """A DataLoader collate function: decode each image (recording the ones that fail), run the model's image
    processor on the others, labels as an int64 tensor."""

    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        images, kept, failures = [], [], []
        for position, row in enumerate(rows):
            image, error = _decode(decoder, row[image_column], processor)
            if error is None:
                images.append(image)
                kept.append(position)
            else:
                path = row[image_column].get("path") if isinstance(row[image_column], dict) else None
                failures.append((position, path, error))
        batch: dict[str, Any] = {"num_rows": len(rows), "kept": torch.tensor(kept, dtype=torch.int64),
                                 "failures": failures}  # fmt: skip
        if images:
            batch["pixel_values"] = processor(images, return_tensors="pt")["pixel_values"]
        if label_column is not None:
            batch["labels"] = [rows[p][label_column] for p in kept]  # checked where the rows' numbers are known
        return batch

    return collate


MAX_CLASSES = 100_000  # labels are class indices: a probe over more classes (ImageNet-21k has 21,841) is a corrupt label


def class_indices(values: list[Any], row_ids: Tensor, column: str) -> Tensor:
    """A label column's values as an int64 tensor of class indices (``-1``: no label, as in datasets' unlabelled
    test splits), or ``ValueError`` in one line naming the column and the first bad row: ``int()`` would truncate
    0.7 and 1.7, fail on None with a raw TypeError, and a corrupt 10**9 would make a probe of a billion classes."""
    for position, value in enumerate(values):
        whole = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            whole = True  # 3.0: a class index stored as a float
        if not whole or not -1 <= value < MAX_CLASSES:
            fix = (
                "map the names to class indices with --encode-labels (encode_labels=True)" if isinstance(value, str)
                else f"labels must be class indices 0..{MAX_CLASSES - 1} (or -1 for none); fix or drop that row"
            )  # fmt: skip
            raise ValueError(
                f"label column {column!r}: row {int(row_ids[position])} holds {value!r}, not a class index; {fix}."
            )
    return torch.tensor([int(value) for value in values], dtype=torch.int64)


def _num_rows(image_dataset: ImageDataset) -> int | None:
    """Number of rows of a map-style data set, ``None`` for a streaming (iterable) one."""
    return len(image_dataset.dataset) if isinstance(image_dataset.dataset, datasets.Dataset) else None


def iter_features(
    model: QScoreModel,
    image_dataset: ImageDataset,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    num_workers: int = 0,
    progress: bool = True,
    skip_unreadable: bool = False,
    data_pipeline: str = DEFAULT_DATA_PIPELINE,
) -> Iterator[FeatureBatch]:
    """Yield the pooled features of ``image_dataset`` batch by batch, in data set order.

    Args:
        model: the encoder; moved to ``device`` and put in eval mode for the pass (its training mode is restored).
        image_dataset: images (and labels) from ``qscore_hf.data.load_image_dataset``, map-style or streaming.
        batch_size: images per forward pass.
        device: where the model runs; the GPU when available by default.
        dtype: autocast dtype for the forward pass (e.g. ``torch.bfloat16``); ``None`` runs in the model's dtype.
            Features are always returned as float32.
        num_workers: DataLoader worker processes decoding and preprocessing images.
        progress: show a tqdm progress bar.
        skip_unreadable: leave out images that cannot be decoded (listed in each batch's ``skipped``; a batch whose
            images all failed has no feature rows) instead of raising ``UnreadableImageError``.
        data_pipeline: ``"pil"``: each batch's images decoded and preprocessed in the loader (``num_workers``
            processes); ``"tensor"``: the data set decoded once into a memory-mapped uint8 array
            (``qscore_hf.decoded``, reused by later calls) and each batch preprocessed on ``device`` by the model's
            image processor (a map-style data set only; images of another size than the first are resized to it
            when decoded, said in one line); ``"auto"`` (default): ``"tensor"`` where it can hold the data set,
            ``"pil"`` otherwise, said in one line (``resolve_data_pipeline``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive number of images; got {batch_size}.")
    check_data_pipeline(data_pipeline)
    device = resolve_device(device)
    decoded = _decoded_or_none(model, image_dataset, data_pipeline, progress)
    if decoded is not None:
        yield from _iter_decoded_features(model, image_dataset, decoded, batch_size, device, dtype, progress,
                                          skip_unreadable)  # fmt: skip
        return
    columns = [image_dataset.image_column] + ([image_dataset.label_column] if image_dataset.label_column else [])
    dataset, decoder = without_decoding(image_dataset)
    loader = DataLoader(
        dataset.select_columns(columns),
        batch_size=batch_size,
        collate_fn=_collate(model.image_processor(), image_dataset.image_column, image_dataset.label_column, decoder),
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    rows = _num_rows(image_dataset)
    total = None if rows is None else -(-rows // batch_size)
    was_training = model.training
    model.to(device).eval()
    try:
        bar = tqdm(loader, total=total, desc=f"features {image_dataset.name}/{image_dataset.split}", unit="batch",
                   disable=not progress)  # fmt: skip
        offset = 0  # batches arrive in data set order, so a batch's rows start where the previous one ended
        for batch in bar:
            skipped = [UnreadableImage(offset + position, path, error) for position, path, error in batch["failures"]]
            if skipped and not skip_unreadable:
                raise UnreadableImageError(skipped[0], image_dataset.name)
            row_ids = offset + batch["kept"]
            offset += batch["num_rows"]
            if "labels" in batch:
                batch["labels"] = class_indices(batch["labels"], row_ids, image_dataset.label_column)
            if "pixel_values" not in batch:
                empty = torch.zeros(0, model.config.hidden_size, device=device)
                yield FeatureBatch(empty, batch.get("labels"), row_ids, skipped)
                continue
            pixels = batch["pixel_values"].to(device, model.dtype, non_blocking=True)
            yield FeatureBatch(_forward(model, pixels, dtype), batch.get("labels"), row_ids, skipped)
    finally:
        model.train(was_training)


def _forward(model: QScoreModel, pixels: Tensor, dtype: torch.dtype | None) -> Tensor:
    autocast = torch.autocast(pixels.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        return model(pixels, return_qscore=False).features.float()


def _batch_preprocessing(processor: Any) -> Callable[[Tensor], Tensor]:
    """The image processor's resize, centre crop, rescale and normalize applied to a whole uint8 batch (N x 3 x H x W,
    on its device) through transformers' torchvision backend's own methods: calling the processor itself goes image
    by image in Python first (25 of its 29 ms on 256 CIFAR images). A processor of another kind (or that pads) is
    called as usual."""
    from transformers.image_processing_backends import TorchvisionBackend

    if not isinstance(processor, TorchvisionBackend) or getattr(processor, "do_pad", False):
        return lambda images: processor(list(images), return_tensors="pt", device=images.device)["pixel_values"]

    def preprocess(images: Tensor) -> Tensor:
        if processor.do_resize:
            images = processor.resize(images, processor.size, processor.resample)
        if processor.do_center_crop:
            images = processor.center_crop(images, processor.crop_size)
        return processor.rescale_and_normalize(images, processor.do_rescale, processor.rescale_factor,
                                               processor.do_normalize, processor.image_mean, processor.image_std)

    return preprocess


def resolve_data_pipeline(model: QScoreModel, image_dataset: ImageDataset, data_pipeline: str = DEFAULT_DATA_PIPELINE,
                          progress: bool = True) -> str:
    """``"pil"`` or ``"tensor"``: the way ``data_pipeline`` takes for ``model``'s features of ``image_dataset``.
    ``"tensor"`` and ``"auto"`` decode the images once here (``qscore_hf.decoded``; a later call loads them from its
    cache); ``"auto"`` falls back to ``"pil"`` in one printed line when the array cannot hold them (a streamed data
    set, over the size limit or the free disk space, images of several sizes) or when they are much larger than the
    model reads (the loader decodes those at a reduced size), where ``"tensor"`` raises or decodes them whole."""
    return "pil" if _decoded_or_none(model, image_dataset, data_pipeline, progress) is None else "tensor"


def _decoded_or_none(model: QScoreModel, image_dataset: ImageDataset, data_pipeline: str,
                     progress: bool) -> DecodedImages | None:  # fmt: skip
    """The decoded images of ``image_dataset`` when ``data_pipeline`` takes the tensor pipeline, else ``None``."""
    from .decoded import decode_images  # decoded builds on this module's decoding helpers

    auto = data_pipeline == "auto"  # an explicit "tensor" resizes images of other sizes to the first one's
    model_edge = shortest_edge_of(model.image_processor()) if auto else None
    return tensor_or_none(data_pipeline, lambda: decode_images(image_dataset, progress=progress, same_size=auto,
                                                               model_edge=model_edge))  # fmt: skip


def _iter_decoded_features(model: QScoreModel, image_dataset: ImageDataset, decoded: DecodedImages, batch_size: int,
                           device: torch.device, dtype: torch.dtype | None, progress: bool,
                           skip_unreadable: bool) -> Iterator[FeatureBatch]:  # fmt: skip
    """``iter_features`` through the tensor pipeline: slices of the ``decoded`` uint8 array, preprocessed on
    ``device`` by the model's image processor (transformers' torchvision backend: resize, centre crop, rescale and
    normalize on a whole batch, the same operations the loader path runs per batch on the CPU)."""
    if decoded.skipped and not skip_unreadable:
        raise UnreadableImageError(decoded.skipped[0], image_dataset.name)
    if decoded.label_error is not None:
        raise ValueError(decoded.label_error)
    preprocess = _batch_preprocessing(model.image_processor())
    was_training = model.training
    model.to(device).eval()
    try:
        starts = range(0, len(decoded), batch_size)
        bar = tqdm(starts, desc=f"features {image_dataset.name}/{image_dataset.split}", unit="batch",
                   disable=not progress)  # fmt: skip
        for start in bar:
            rows = slice(start, start + batch_size)
            row_ids = torch.from_numpy(np.asarray(decoded.row_ids[rows], dtype=np.int64))
            images = torch.from_numpy(np.array(decoded.images[rows]))  # read from the memory map
            if device.type == "cuda":
                images = images.pin_memory()
            images = images.to(device, non_blocking=True)
            pixels = preprocess(images)
            labels = None
            if decoded.labels is not None:
                labels = class_indices(decoded.labels[rows].tolist(), row_ids, image_dataset.label_column)
            skipped = decoded.skipped if start == 0 else []  # all named once, with the first batch
            yield FeatureBatch(_forward(model, pixels.to(model.dtype), dtype), labels, row_ids, skipped)
    finally:
        model.train(was_training)


# ------------------------------------------------------------------------------------------------------ cache key
def _weights_digest(model: QScoreModel) -> str:
    """Hash of the backbone's tensors (names, dtypes, shapes and bytes): what determines the features."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.backbone.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _iterable_pipeline(dataset: datasets.IterableDataset) -> list[str]:
    """Describe a streaming data set's chain of operations (take/skip/shuffle with their sizes and seeds)."""
    steps, node = [], getattr(dataset, "_ex_iterable", None)
    while node is not None:
        settings = {key: value for key, value in vars(node).items() if key in ("n", "seed", "generator_seed")}
        steps.append(f"{type(node).__name__}{sorted(settings.items())}")
        node = getattr(node, "ex_iterable", None)
    return steps


def dataset_identity(image_dataset: ImageDataset) -> dict[str, Any]:
    """What a report records to name its data: name, split, columns, and size and fingerprint (or, streamed, the
    pipeline)."""
    dataset = image_dataset.dataset
    identity: dict[str, Any] = {
        "name": image_dataset.name,
        "split": image_dataset.split,
        "image_column": image_dataset.image_column,
        "label_column": image_dataset.label_column,
    }
    if isinstance(dataset, datasets.Dataset):
        identity.update(num_rows=len(dataset), fingerprint=dataset._fingerprint)
    else:
        identity.update(streaming=True, pipeline=_iterable_pipeline(dataset))
    return identity


def _cache_identity(model: QScoreModel, image_dataset: ImageDataset, dtype: torch.dtype | None,
                    data_pipeline: str) -> dict[str, Any]:
    # The tensor pipeline resizes on the device (and images of a mixed-size data set once more, when decoded): its
    # features may differ from the loader's in the last bits, so each pipeline has its own cache entry (the loader's
    # keeps the key it had before the switch existed). Keyed on the pipeline taken, "pil" or "tensor", never "auto".
    if data_pipeline not in ("pil", "tensor"):
        raise ValueError(f"the feature cache is keyed on the data pipeline taken (pil or tensor), not "
                         f"{data_pipeline!r}.")  # fmt: skip
    return {
        **({"data_pipeline": data_pipeline} if data_pipeline != "pil" else {}),
        "format": CACHE_FORMAT_VERSION,
        "backbone": model.config.backbone,
        "stem_padding": model.config.stem_padding,
        **({"pooling": model.config.backbone_pooling} if model.config.backbone_pooling else {}),
        **({"backbone_config": model.config.backbone_config} if model.config.backbone_config else {}),
        "weights": _weights_digest(model),
        "preprocessing": model.image_processor().to_dict(),
        "autocast_dtype": None if dtype is None else str(dtype),
        "dataset": dataset_identity(image_dataset),
    }


def _key_of(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:32]


def feature_cache_key(model: QScoreModel, image_dataset: ImageDataset, dtype: torch.dtype | None = None,
                      data_pipeline: str = "pil") -> str:
    """The cache folder name for these features: a hash of the backbone's weights, the preprocessing, the autocast
    dtype, the data pipeline taken (``"pil"`` or ``"tensor"``: what ``resolve_data_pipeline`` gives for ``"auto"``)
    and the data set (name, split, columns, and its fingerprint or streaming pipeline)."""
    return _key_of(_cache_identity(model, image_dataset, dtype, data_pipeline))


# ------------------------------------------------------------------------------------------------------ writing
class _FeatureWriter:
    """Appends float32 feature batches to ``features.npy`` in a folder with flat memory.

    With a known row count the ``.npy`` file is preallocated and filled through ``open_memmap``; for a streaming data
    set rows go to a raw file that ``finish`` turns into a ``.npy`` (header, then the raw bytes copied in blocks).
    """

    def __init__(self, folder: Path, num_rows: int | None) -> None:
        self.folder = folder
        self.num_rows = num_rows
        self.written = 0
        self.width: int | None = None
        self._memmap: np.memmap | None = None
        self._raw = None if num_rows is not None else open(folder / RAW_FILE, "wb")

    def append(self, features: np.ndarray) -> None:
        if self.width is None:
            self.width = features.shape[1]
            if self.num_rows is not None:
                self._memmap = np.lib.format.open_memmap(
                    self.folder / FEATURES_FILE, mode="w+", dtype=np.float32, shape=(self.num_rows, self.width)
                )
                self._reserve(self.folder / FEATURES_FILE)
        if self._memmap is not None:
            self._memmap[self.written : self.written + len(features)] = features
        else:
            self._raw.write(np.ascontiguousarray(features, dtype=np.float32).tobytes())
        self.written += len(features)

    def _reserve(self, path: Path) -> None:
        """Allocate the memory-mapped file's blocks now: a sparse file that meets a full disk kills the writer with
        SIGBUS (exit 135, no message), where this fails in one line."""
        size = path.stat().st_size
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                return  # a file system without fallocate: write as before
            self._memmap = None
            raise OSError(
                error.errno, f"cannot reserve {size / 2**20:.1f} MiB for the features in the cache folder "
                f"{self.folder.parent} ({error.strerror}); free space there or choose another cache folder "
                "(--cache-dir, or $QSCORE_HF_CACHE)"
            ) from None
        finally:
            os.close(fd)

    def finish(self) -> None:
        if self.written == 0:
            raise ValueError("the data set yielded no images; nothing to extract.")
        if self._memmap is not None:
            if self.written != self.num_rows:
                raise RuntimeError(f"expected {self.num_rows} rows but the data loader yielded {self.written}.")
            self._memmap.flush()
            del self._memmap
            return
        self._raw.close()
        raw_path = self.folder / RAW_FILE
        with open(self.folder / FEATURES_FILE, "wb") as out, open(raw_path, "rb") as raw:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                      "shape": (self.written, self.width)}  # fmt: skip
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(raw, out, length=1 << 24)
        raw_path.unlink()

    def close(self) -> None:
        """Release open files (after an error)."""
        if self._raw is not None and not self._raw.closed:
            self._raw.close()
        self._memmap = None


def _load_cached(folder: Path, identity: dict[str, Any]) -> FeatureSet | None:
    """The cached features in ``folder``, or ``None`` when it is missing, incomplete or for other inputs."""
    try:
        meta = json.loads((folder / META_FILE).read_text())
        if meta.get("identity") != json.loads(json.dumps(identity, default=str)):
            return None
        features = np.load(folder / FEATURES_FILE, mmap_mode="r")
        labels = np.load(folder / LABELS_FILE) if meta["has_labels"] else None
    except (OSError, ValueError, KeyError):
        return None
    if features.shape != (meta["num_rows"], meta["num_features"]) or features.dtype != np.float32:
        return None
    skipped = [UnreadableImage(**image) for image in meta.get("skipped", [])]
    all_rows = np.arange(len(features) + len(skipped), dtype=np.int64)
    row_ids = np.delete(all_rows, np.asarray([image.row_id for image in skipped], dtype=np.int64))
    return FeatureSet(features, labels, row_ids, folder, from_cache=True, skipped=skipped)


def _write_cache(
    folder: Path, identity: dict[str, Any], batches: Iterator[FeatureBatch], num_rows: int | None, has_labels: bool,
    sweep: bool = True,
) -> None:
    """Run the extraction into a temporary folder beside ``folder`` and rename it into place when complete; first
    (``sweep``) remove the temporary folders that killed extractions left in the cache (each as large as its
    features)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    if sweep:
        sweep_stale_temporaries(folder.parent)
    tmp = temporary_directory_beside(folder)
    writer = _FeatureWriter(tmp, num_rows)
    try:
        labels, skipped = [], []
        for batch in batches:
            writer.append(batch.features.cpu().numpy())
            skipped.extend(batch.skipped)
            if has_labels:
                labels.append(batch.labels.numpy())
        writer.finish()
        if has_labels:
            np.save(tmp / LABELS_FILE, np.concatenate(labels).astype(np.int64))
        meta = {"identity": identity, "num_rows": writer.written, "num_features": writer.width,
                "has_labels": has_labels, "skipped": [asdict(image) for image in skipped]}  # fmt: skip
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        _move_into_place(tmp, folder, identity)
    except BaseException:
        writer.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _move_into_place(tmp: Path, folder: Path, identity: dict[str, Any]) -> None:
    """Rename the finished ``tmp`` to ``folder``. A folder already there is either a valid cache written meanwhile
    by a concurrent extraction (kept; ``tmp`` is dropped) or a damaged one (replaced)."""
    try:
        os.rename(tmp, folder)
    except OSError:
        if _load_cached(folder, identity) is not None:
            shutil.rmtree(tmp)
            return
        shutil.rmtree(folder)
        os.rename(tmp, folder)


def _extract_in_memory(batches: Iterator[FeatureBatch], has_labels: bool) -> FeatureSet:
    features, labels, row_ids, skipped = [], [], [], []
    for batch in batches:
        features.append(batch.features.cpu().numpy())
        row_ids.append(batch.row_ids.numpy())
        skipped.extend(batch.skipped)
        if has_labels:
            labels.append(batch.labels.numpy())
    if sum(len(array) for array in features) == 0:
        raise ValueError("the data set yielded no images; nothing to extract.")
    array = np.concatenate(features)
    return FeatureSet(array, np.concatenate(labels) if has_labels else None, np.concatenate(row_ids), skipped=skipped)


def extract_features(
    model: QScoreModel,
    image_dataset: ImageDataset,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    num_workers: int = 0,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    skip_unreadable: bool = False,
    data_pipeline: str = DEFAULT_DATA_PIPELINE,
) -> FeatureSet:
    """Pooled features of every image of ``image_dataset`` (see ``iter_features`` for the arguments).

    With ``cache_dir`` the features go to ``cache_dir/<feature_cache_key>/features.npy`` (plus ``labels.npy`` and
    ``meta.json``), written batch by batch through a memory map, so memory stays flat in the data set size; a later
    call with the same model weights, preprocessing, autocast dtype, data pipeline taken (``"auto"`` resolved first:
    ``resolve_data_pipeline``) and data set loads them memory-mapped without running the model (only the labels,
    8 bytes a row, are gathered in memory). A map-style data set is identified by its fingerprint (its content and
    transformations); a streaming one by name, split and pipeline (take/skip/shuffle), not by content. Without
    ``cache_dir`` the features are gathered in memory.

    With ``skip_unreadable`` images that cannot be decoded are left out and listed in ``FeatureSet.skipped`` (also in
    the cache's ``meta.json``, so a cached extraction reports them too; without ``skip_unreadable`` such a cache
    raises ``UnreadableImageError`` as a fresh extraction would).
    """
    has_labels = image_dataset.label_column is not None
    data_pipeline = resolve_data_pipeline(model, image_dataset, data_pipeline, progress)
    batches = iter_features(model, image_dataset, batch_size, device, dtype, num_workers, progress, skip_unreadable,
                            data_pipeline)  # fmt: skip
    if cache_dir is None:
        return _extract_in_memory(batches, has_labels)
    identity = _cache_identity(model, image_dataset, dtype, data_pipeline)
    folder = Path(cache_dir) / _key_of(identity)
    cached = _load_cached(folder, identity)
    if cached is not None:
        if cached.skipped and not skip_unreadable:
            raise UnreadableImageError(cached.skipped[0], image_dataset.name)
        return cached
    # Skipped images make the row count unknown in advance: write as for a streaming data set then.
    _write_cache(folder, identity, batches, None if skip_unreadable else _num_rows(image_dataset), has_labels)
    loaded = _load_cached(folder, identity)
    if loaded is None:
        raise RuntimeError(
            f"features written to {folder} could not be read back; check the disk (free space, permissions)."
        )
    return FeatureSet(loaded.features, loaded.labels, loaded.row_ids, folder, from_cache=False, skipped=loaded.skipped)
