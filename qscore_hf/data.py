"""Resolve a data set name to a ``datasets.Dataset`` of images (and labels when it has them).

Accepted: the built-in names ``digits`` (scikit-learn's 8x8 digits), ``fashion_mnist`` (read from Debian's
``dataset-fashion-mnist`` files) and ``cifar10`` (the folder named by ``$QSCORE_CIFAR10_DIR`` when set, else the Hub's
``uoft-cs/cifar10``), a local image folder (``imagefolder`` layout), a local parquet file or folder of parquet
files, a folder written by ``Dataset.save_to_disk``, or a Hugging Face Hub data set id.

``dataset_normalization`` gives the per-channel mean and std a data set is trained with (CIFAR-10's, solo-learn's,
also for a CIFAR-10 copy given by path or Hub id); ``None`` for data sets it does not know.
"""

from __future__ import annotations

import gzip
import os
import re
from dataclasses import dataclass
from collections.abc import Sequence
from pathlib import Path

import datasets
import datasets.data_files
import numpy as np
import xxhash

from .dataset_names import BUILTIN_DATASETS, check_dataset_name
from .image_columns import as_image_column
from .image_downloads import ImageDownloads
from .normalization import DATASET_NORMALIZATION

__all__ = ["BUILTIN_DATASETS", "CIFAR10_ENV", "CIFAR10_HUB_ID", "ImageDataset", "ImageDownloads",
           "check_dataset_name", "dataset_normalization", "load_image_dataset"]

FASHION_MNIST_DIR = Path(os.environ.get("QSCORE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_CLASSES = [
    "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
]  # fmt: skip
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_HUB_ID = "uoft-cs/cifar10"
# A local copy of CIFAR-10 laid out as the Hub's (parquet files train-*/test-*, columns img and label).
CIFAR10_ENV = "QSCORE_CIFAR10_DIR"
_DIGITS_TEST_FRACTION = 0.2
_SPLIT_SEED = 0
# "train[50000:60000]": rows 50000..59999 of a split, as datasets' own split slicing (which only Hub and script
# data sets get); both bounds are optional.
_SLICE = re.compile(r"^(?P<split>[\w.-]+)\[(?P<start>\d*):(?P<stop>\d*)\]$")


@dataclass
class ImageDataset:
    """A data set with the names of its image column and (if any) label column."""

    dataset: datasets.Dataset | datasets.IterableDataset
    image_column: str
    label_column: str | None
    name: str
    split: str

    @property
    def num_classes(self) -> int | None:
        names = self.class_names
        return None if names is None else len(names)

    @property
    def class_names(self) -> list[str] | None:
        if self.label_column is None:
            return None
        feature = self.dataset.features[self.label_column] if self.dataset.features else None
        return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None

    @property
    def known_as(self) -> str | None:
        """The built-in data set this is (by name, or a CIFAR-10 copy recognised by its classes), else ``None``."""
        if self.name in BUILTIN_DATASETS:
            return self.name
        return "cifar10" if self.class_names == CIFAR10_CLASSES else None


def dataset_normalization(data: ImageDataset) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The (mean, std) that encoders of ``data`` are trained with, or ``None`` when it is not a known data set."""
    known = data.known_as
    return None if known is None else DATASET_NORMALIZATION[known]


def cifar10_source() -> str:
    """Where ``cifar10`` is read from: ``$QSCORE_CIFAR10_DIR`` when set, else the Hub id ``uoft-cs/cifar10``."""
    local = os.environ.get(CIFAR10_ENV)
    if not local:
        return CIFAR10_HUB_ID
    if not Path(local).is_dir():
        raise ValueError(
            f"{CIFAR10_ENV}={local} is not a folder. Point it at a copy of CIFAR-10 laid out as the Hub's "
            f"{CIFAR10_HUB_ID} (train-*.parquet, test-*.parquet), or unset it to download from the Hub."
        )
    return local


def load_image_dataset(
    name: str,
    split: str = "train",
    image_column: str | None = None,
    label_column: str | None = None,
    streaming: bool = False,
    max_samples: int | None = None,
    *,
    allow_downloads: bool | ImageDownloads = False,
    encode_labels: bool | Sequence[str] = False,
) -> ImageDataset:
    """Load ``name`` (see the module docstring) and find its image and label columns.

    ``image_column`` defaults to the first ``Image`` feature (or a column named ``image``/``img``);
    ``label_column`` to the first ``ClassLabel`` feature or a column named ``label``/``labels`` (``None`` if absent).
    ``split`` may select rows, as in ``datasets``: ``"train[50000:60000]"`` (e.g. a validation split carved out of
    the training data); ``max_samples`` then counts from the slice's start.

    ``allow_downloads``: fetch an image column of http(s) URLs (``True``, or an ``ImageDownloads`` with the timeout,
    deadline and size cap per image); refused without it, and under ``HF_HUB_OFFLINE=1``.
    ``encode_labels``: map a label column of strings to class indices, ``True`` by its sorted unique values, or by a
    given list of names (e.g. the training split's ``class_names``, so that two splits share one mapping; a value not
    in it is refused). The names become the column's ``ClassLabel``.
    """
    check_dataset_name(name)
    base_split, start, stop = _parse_split(split)
    if start is not None and max_samples is not None:
        stop = start + max_samples if stop is None else min(stop, start + max_samples)
    source = cifar10_source() if name == "cifar10" else name
    if name in ("digits", "fashion_mnist"):
        used = max_samples if start is None else stop  # Fashion-MNIST encodes only the rows that are used
        dataset = _load_digits(base_split) if name == "digits" else _load_fashion_mnist(base_split, used)
    elif Path(source).exists():
        dataset = _load_external(source, base_split, streaming and start is None)
    else:  # a Hub data set: datasets slices it itself
        try:
            dataset, start = _load_external(source, split, streaming), None
        except ValueError as error:
            if name != "cifar10":
                raise
            raise ValueError(f"{error} To read a local copy of CIFAR-10, set {CIFAR10_ENV} to its folder (laid out "
                             f"as the Hub's {CIFAR10_HUB_ID}: train-*.parquet, test-*.parquet).") from error
    if start is not None:
        dataset = _slice(dataset, name, split, start, stop)
    if streaming and not isinstance(dataset, datasets.IterableDataset):
        dataset = dataset.to_iterable_dataset()
    if max_samples is not None:
        dataset = dataset.take(max_samples) if isinstance(dataset, datasets.IterableDataset) else dataset.select(
            range(min(max_samples, len(dataset)))
        )
    features = dataset.features or {}
    image_column = image_column or _find_column(features, datasets.Image, ("image", "img", "pixel_values"))
    if image_column is None or image_column not in features:
        raise ValueError(
            f"data set {name!r} has no image column{f' {image_column!r}' if image_column else ''}; "
            f"its columns are {list(features)}. Pass the image column's name (--image-column)."
        )
    local = Path(source) if Path(source).exists() else None  # paths in the column are read only inside its folder
    dataset = as_image_column(dataset, image_column, name, local if local is None or local.is_dir() else local.parent,
                              allow_downloads)  # fmt: skip
    if label_column is not None and label_column not in features:
        raise ValueError(
            f"data set {name!r} has no label column {label_column!r}; its columns are {list(features)}."
        )
    label_column = label_column or _find_column(features, datasets.ClassLabel, ("label", "labels"))
    if encode_labels is not False and label_column is not None:
        dataset = _encode_labels(dataset, name, label_column, None if encode_labels is True else list(encode_labels))
    return ImageDataset(dataset, image_column, label_column, name, split)


def _encode_labels(dataset: datasets.Dataset | datasets.IterableDataset, name: str, column: str,
                   names: list[str] | None) -> datasets.Dataset:  # fmt: skip
    """``dataset`` with its string label ``column`` as a ``ClassLabel`` of ``names`` (default: its sorted unique
    values; nulls stay null), or ``ValueError`` naming the column (and the row of a value not in ``names``)."""
    feature = (dataset.features or {}).get(column)
    if isinstance(feature, datasets.ClassLabel):
        return dataset  # class indices already
    where = f"data set {name!r}: label column {column!r}"
    if not isinstance(feature, datasets.Value) or feature.dtype not in ("string", "large_string"):
        raise ValueError(f"{where} holds {feature}, not strings; only string labels are mapped to class indices.")
    if not isinstance(dataset, datasets.Dataset):
        raise ValueError(f"{where}: string labels are mapped on a loaded data set only; leave out --streaming.")
    values = dataset[column]
    if names is None:
        names = sorted({value for value in values if value is not None})
    known = set(names)
    for row, value in enumerate(values):
        if value is not None and value not in known:
            raise ValueError(f"{where} row {row} holds {value!r}, which is not among the {len(names)} labels of the "
                             f"split the mapping was built from ({names[:10]}...); fix or drop that row.")  # fmt: skip
    return dataset.cast_column(column, datasets.ClassLabel(names=names))


def _parse_split(split: str) -> tuple[str, int | None, int | None]:
    """``"train[10:20]"`` -> ``("train", 10, 20)``; a plain name -> ``(name, None, None)``."""
    match = _SLICE.match(split)
    if match is None:
        if "[" in split:
            raise ValueError(f"split {split!r}: a row slice is written NAME[START:STOP], e.g. train[50000:60000].")
        return split, None, None
    start, stop = int(match["start"] or 0), int(match["stop"]) if match["stop"] else None
    if stop is not None and stop <= start:
        raise ValueError(f"split {split!r} selects no rows: STOP must be larger than START.")
    return match["split"], start, stop


def _slice(dataset: datasets.Dataset, name: str, split: str, start: int, stop: int | None) -> datasets.Dataset:
    stop = len(dataset) if stop is None else stop
    if start >= len(dataset):
        raise ValueError(f"split {split!r} of data set {name!r} starts at row {start}, but it has {len(dataset)} rows.")
    return dataset.select(range(start, min(stop, len(dataset))))


def _find_column(features: datasets.Features, kind: type, names: tuple[str, ...]) -> str | None:
    for column, feature in features.items():
        if isinstance(feature, kind):
            return column
    return next((column for column in names if column in features), None)


def _load_external(name: str, split: str, streaming: bool) -> datasets.Dataset | datasets.IterableDataset:
    path = Path(name)
    if path.exists():
        if path.is_file():
            kind = {".parquet": "parquet", ".arrow": "arrow"}.get(path.suffix)
            if kind is None:
                raise ValueError(f"{name}: a data set file must be .parquet or .arrow.")
            files = _by_content(datasets.data_files.DataFilesDict.from_patterns({"train": [str(path.resolve())]}))
            return datasets.load_dataset(kind, data_files=files, split="train", streaming=streaming)
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                _check_split(name, split, list(loaded))
                loaded = loaded[split]
            return loaded.to_iterable_dataset() if streaming else loaded
        builder = "parquet" if any(path.rglob("*.parquet")) else "imagefolder"
        base = path.resolve().as_posix()
        files = datasets.data_files.DataFilesDict.from_patterns(datasets.data_files.get_data_patterns(base), base)
        loaded = datasets.load_dataset(builder, data_files=_by_content(files), streaming=streaming)
        _check_split(name, split, list(loaded))
        return loaded[split]
    if name.count("/") > 1 or name.startswith((".", "/")):
        raise ValueError(f"{name}: no such file or folder.")
    _check_hub_resolves(name)
    try:
        return datasets.load_dataset(name, split=split, streaming=streaming)
    except (FileNotFoundError, ConnectionError) as error:  # offline, an unknown id raises ConnectionError
        raise ValueError(
            f"data set {name!r} is neither a local path, a built-in name {BUILTIN_DATASETS}, nor reachable on the "
            f"Hugging Face Hub ({error})."
        ) from error


def _by_content(files: datasets.data_files.DataFilesDict) -> datasets.data_files.DataFilesDict:
    """``files`` identified by content (size and xxh3-128 of the bytes of each file) instead of datasets' path and
    modification time, which keeps serving the old rows (its Arrow cache, then the feature cache keyed by the data
    set's fingerprint) when a file is replaced by another with its mtime kept (``cp -p``, ``rsync -a``, archives)."""
    identified = datasets.data_files.DataFilesDict()
    for split, paths in files.items():
        _check_parquet(list(paths))
        identified[split] = datasets.data_files.DataFilesList(list(paths), [_content_id(path) for path in paths])
    return identified


def _check_parquet(paths: list[str]) -> None:
    """``ValueError`` naming the first parquet file whose footer cannot be read (truncated, or no parquet at all),
    where datasets would end in a raw DatasetGenerationError."""
    import pyarrow.parquet as pq

    for path in paths:
        if path.endswith(".parquet"):
            try:
                pq.read_metadata(path)
            except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
                raise ValueError(f"{path} is not a readable parquet file ({error}): truncated or damaged; copy or "
                                 "download it again.") from None  # fmt: skip


def _content_id(path: str) -> tuple[str, ...]:
    digest = xxhash.xxh3_128()  # xxhash comes with datasets; about as fast as the disk reads
    with open(path, "rb") as file:
        while block := file.read(1 << 22):
            digest.update(block)
    return (str(os.path.getsize(path)), digest.hexdigest())


def _check_hub_resolves(name: str) -> None:
    """Fail in one line, at once, when the Hub's host name does not resolve (no network): huggingface_hub would retry
    a DNS failure five times with back-off (about 30 s) before datasets reports it. Skipped in offline mode
    (``HF_HUB_OFFLINE=1``), where datasets reads its cache without asking the Hub."""
    from .backbones.hub import hub_unreachable

    problem = None if datasets.config.HF_HUB_OFFLINE else hub_unreachable()
    if problem is not None:
        raise ValueError(
            f"data set {name!r} is no local path or built-in name {BUILTIN_DATASETS}, and the Hugging Face Hub is "
            f"unreachable ({problem}). Check the network, give a local copy's path, or set HF_HUB_OFFLINE=1 to read "
            "a copy already in the Hugging Face cache."
        )


def _check_split(name: str, split: str, available: list[str]) -> None:
    if split not in available:
        raise ValueError(f"data set {name!r} has no split {split!r}; it has {available}.")


def _load_digits(split: str) -> datasets.Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    _check_split("digits", split, ["train", "test", "all"])
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    index = np.arange(len(images))
    if split != "all":
        train, test = train_test_split(
            index, test_size=_DIGITS_TEST_FRACTION, random_state=_SPLIT_SEED, stratify=digits.target
        )
        index = np.sort(train if split == "train" else test)
    return _from_arrays(images[index], digits.target[index], [str(k) for k in range(10)])


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip'ed) as a uint8 array, or ``ValueError`` naming the file when it is truncated or damaged."""
    try:
        with gzip.open(path) as file:
            raw = file.read()
        dims = raw[3]
        shape = [int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(dims)]
        return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)
    except (OSError, EOFError, IndexError, ValueError) as error:  # gzip.BadGzipFile is an OSError
        raise ValueError(
            f"{path} is truncated or damaged ({type(error).__name__}: {error}); reinstall it (apt-get install "
            "--reinstall dataset-fashion-mnist) or point QSCORE_FASHION_MNIST_DIR at a good copy."
        ) from None


def _load_fashion_mnist(split: str, max_samples: int | None) -> datasets.Dataset:
    _check_split("fashion_mnist", split, ["train", "test"])
    prefix = "train" if split == "train" else "t10k"
    images_path = FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz"
    if not images_path.exists():
        raise ValueError(
            f"Fashion-MNIST files not found in {FASHION_MNIST_DIR}. Install Debian's package "
            "(apt-get install dataset-fashion-mnist) or set QSCORE_FASHION_MNIST_DIR to a folder holding the "
            "IDX .gz files."
        )
    images = _read_idx(images_path)
    labels_path = FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    labels = _read_idx(labels_path)
    if len(labels) != len(images):
        raise ValueError(
            f"{labels_path} holds {len(labels)} labels but {images_path} {len(images)} images: one of them is "
            "truncated or from another release; reinstall dataset-fashion-mnist."
        )
    if max_samples is not None:  # encode only what is used
        images, labels = images[:max_samples], labels[:max_samples]
    return _from_arrays(images, labels, FASHION_MNIST_CLASSES)


def _from_arrays(images: np.ndarray, labels: np.ndarray, class_names: list[str]) -> datasets.Dataset:
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=class_names)})
    return datasets.Dataset.from_dict({"image": list(images), "label": labels.astype(np.int64).tolist()}, features=features)
