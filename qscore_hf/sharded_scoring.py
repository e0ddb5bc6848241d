"""Scoring a data set on several processes (``accelerate launch``, ``torchrun``; gloo on CPUs, NCCL on GPUs).

The data set is cut into fixed row ranges, the *shards* (``shard_rows`` rows each, a multiple of the batch size),
whose boundaries do not depend on the number of processes. Each process extracts the features of a contiguous run of
shards (``PartialState.split_between_processes``) into the feature cache, one folder per shard, each written under
a temporary name and renamed when complete (``qscore_hf.features``): a run killed at any moment and relaunched, with
the same or another number of processes, reuses every finished shard and never reads a half-written one. Because a
shard's batches start at its first row, every image goes through the encoder in the same batch whatever the number of
processes, and the features are the same as in one process (with the same threads per process). A streaming data set
(``--streaming``) has no row index: it is cut into the same blocks as it is read, and
``datasets.distributed.split_dataset_by_node`` deals the blocks out one in ``num_processes`` (every process reads the
stream with the images left encoded, and decodes and encodes only its own blocks); finished blocks are reused the same
way.

The dataset-level state is merged exactly: the activation counts ``A_j`` and the ``eps="auto"`` histogram are integer
counts summed across processes (``all_reduce``), so ``D`` and ``eps`` are bit-identical to one process; the linear
probe (whose standardization uses the mean and spread of all training rows) is trained once, on the main process, on
every shard of its split and sent to the others; ``knn_density`` reads every shard of the probe's split as its
reference. Each process scores its own rows; the per-sample columns (a few numbers a row) are gathered on the main
process, which computes the summary and the misclassification report once from all rows and writes the outputs.

Every process must see the same cache folder (one node: the default; several nodes: a shared file system).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import time
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Iterator

import datasets
import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object
from datasets.distributed import split_dataset_by_node
from tqdm.auto import tqdm

from .calibration import DEFAULT_COVERAGE, EpsCalibrator, is_auto
from .configuration_qscore import QScoreConfig
from .data import ImageDataset
from .data_pipelines import TensorPipelineRefused, tensor_or_none
from .features import (
    FeatureSet,
    UnreadableImage,
    UnreadableImageError,
    _cache_identity,
    _key_of,
    _load_cached,
    _write_cache,
    feature_chunks,
    iter_features,
    without_decoding,
)
from .io_utils import sweep_stale_temporaries
from .modeling_qscore import QScoreModel
from .probe import LinearProbe, Optimizer, train_linear_probe
from .score import ActivationStats

__all__ = ["DEFAULT_SHARD_BATCHES", "RowBlocks", "ShardedScores", "check_sharded_pipeline", "extract_all_shards",
           "is_main_process", "launched_processes", "score_shards", "shard_file_names", "share_from_main",
           "use_sharding"]  # fmt: skip

DEFAULT_SHARD_BATCHES = 32  # shard_rows = 32 batches by default: 8192 rows at the default batch size of 256
# The other processes wait while the main one trains the probe and writes the outputs, longer than torch's default
# collective timeout (10 minutes with NCCL) on a large data set.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=3)


def launched_processes() -> int:
    """How many processes a launcher (``accelerate launch``, ``torchrun``) started: ``$WORLD_SIZE``, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def use_sharding(shard_rows: int | None) -> bool:
    """Whether scoring goes through feature shards: ``shard_rows`` was given, or several processes were launched."""
    return shard_rows is not None or launched_processes() > 1


def check_sharded_pipeline(shard_rows: int | None, data_pipeline: str) -> str:
    """``data_pipeline``, or ``"pil"`` when scoring goes through shards (``use_sharding``): the shards decode their
    images in the loader. There ``"auto"`` says so in one line (on the main process) and ``"tensor"`` is refused
    (``TensorPipelineRefused``)."""
    if not use_sharding(shard_rows):
        return data_pipeline

    def refuse() -> None:
        raise TensorPipelineRefused(
            "sharded extraction (--shard-rows, or several processes) decodes images in its loader; use "
            "--data-pipeline pil with it.",
            reason="the features are extracted in shards, whose images are decoded in the loader",
        )

    main = int(os.environ.get("RANK", "0")) == 0  # the process state is set up later, for the chosen device
    tensor_or_none(data_pipeline, refuse, say=lambda line: print(line) if main else None)
    return "pil"


def process_state(device: str | torch.device | None) -> PartialState:
    """accelerate's process state; its CPU (gloo) flavour where the work runs on the CPU, so that ``torchrun`` or
    ``accelerate launch`` on a machine without GPUs still gives a process group."""
    cpu = not torch.cuda.is_available() if device is None else torch.device(device).type == "cpu"
    return PartialState(cpu=cpu, timeout=COLLECTIVE_TIMEOUT)


def shard_file_names(prefix: str, count: int) -> list[str]:
    """``prefix-00000-of-00002.parquet``...: the Hugging Face naming, whose name order is the row order."""
    return [f"{prefix}-{index:05d}-of-{count:05d}.parquet" for index in range(count)]


class RowBlocks:
    """Feature blocks (memory maps) read as one ``N x d`` matrix: a row slice reads only the blocks it spans, and
    ``np.asarray`` concatenates them (what the probe's training does; ``knn_density`` and the probe's mean and spread
    read slices, so they never hold more than a chunk)."""

    def __init__(self, blocks: list[np.ndarray]) -> None:
        self.blocks = blocks
        self.starts = np.cumsum([0] + [len(block) for block in blocks])
        self.shape = (int(self.starts[-1]), int(blocks[0].shape[1]))
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        if not isinstance(rows, slice):
            raise TypeError("RowBlocks supports row slices only.")
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise TypeError("RowBlocks supports contiguous row slices only.")
        parts = []
        for index, block in enumerate(self.blocks):
            low, high = max(start, self.starts[index]), min(stop, self.starts[index + 1])
            if low < high:
                parts.append(np.asarray(block[low - self.starts[index] : high - self.starts[index]]))
        return np.concatenate(parts) if parts else np.zeros((0, self.shape[1]), dtype=np.float32)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        array = self[:]
        return array if dtype is None else array.astype(dtype)


def _joined(blocks: list[FeatureSet]) -> FeatureSet:
    """The shards of one split as one ``FeatureSet`` whose features are a ``RowBlocks``."""
    labels = None if blocks[0].labels is None else np.concatenate([block.labels for block in blocks])
    return FeatureSet(RowBlocks([block.features for block in blocks]), labels,  # type: ignore[arg-type]
                      np.concatenate([block.row_ids for block in blocks]), blocks[0].cache_path.parent,
                      skipped=[image for block in blocks for image in block.skipped])  # fmt: skip


@dataclass
class _Shards:
    """Every shard of a split (row ids global) and which of them are this process's."""

    blocks: list[FeatureSet]
    mine: list[int]
    root: Path
    extracted: int  # shards this process computed (the others it owns were in the cache)

    def local(self) -> list[FeatureSet]:
        return [self.blocks[index] for index in self.mine]


def _shift(block: FeatureSet, start: int) -> FeatureSet:
    """A shard's ``FeatureSet`` with row ids (and skipped images' rows) counted from the data set's first row."""
    skipped = [dataclasses.replace(image, row_id=image.row_id + start) for image in block.skipped]
    return dataclasses.replace(block, row_ids=block.row_ids + start, skipped=skipped)


def _extract_shard(model: QScoreModel, part: ImageDataset, folder: Path, identity: dict[str, Any], num_rows: int,
                   batch_size: int, device: torch.device, dtype: torch.dtype | None, num_workers: int,
                   skip_unreadable: bool) -> bool:  # fmt: skip
    """Extract the rows of ``part`` (one shard) into ``folder`` unless it is cached; whether it was extracted."""
    if _load_cached(folder, identity) is not None:
        return False
    batches = iter_features(model, part, batch_size, device, dtype, num_workers, False, skip_unreadable, "pil")
    _write_cache(folder, identity, batches, None if skip_unreadable else num_rows, part.label_column is not None,
                 sweep=False)  # extract_shards swept the killed runs' temporaries before any process wrote
    return True


def _extract_streamed(image_dataset: ImageDataset, state: PartialState, shard_rows: int,
                      folder_of: Callable[[int, int], tuple[Path, dict[str, Any]]], bar: tqdm,
                      extract: Callable[..., bool]) -> tuple[int, int]:  # fmt: skip
    """This process's shards of a streaming data set: the stream cut into blocks of ``shard_rows`` rows from its
    first row (images left encoded), the blocks dealt out by ``datasets.distributed.split_dataset_by_node`` (one in
    ``num_processes``: process ``r`` gets blocks ``r``, ``r + num_processes``...); each block is extracted as a small
    map-style data set, so its batches are those of one process. Returns the data set's rows (from every process's
    count) and the shards this process extracted."""
    stream, decoder = without_decoding(image_dataset)
    columns = [image_dataset.image_column] + ([image_dataset.label_column] if image_dataset.label_column else [])
    stream = stream.select_columns(columns)
    encoded = stream.features
    # "examples": the blocks are dealt one by one whatever the number of files; "shards" (whole files a process)
    # would cut batches at file ends and lose the rows' global positions.
    blocks = split_dataset_by_node(stream.batch(shard_rows), state.process_index, state.num_processes,
                                   strategy="examples")  # fmt: skip
    seen, extracted = 0, 0
    for position, block in enumerate(blocks):
        index = position * state.num_processes + state.process_index
        rows = len(block[image_dataset.image_column])
        seen += rows
        start = index * shard_rows
        folder, identity = folder_of(start, start + rows)
        part = datasets.Dataset.from_dict(block, features=encoded)
        if decoder is not None:
            part = part.cast_column(image_dataset.image_column, decoder)
        extracted += extract(dataclasses.replace(image_dataset, dataset=part), folder, identity, rows)
        bar.update()
    return sum(gather_object([seen])), extracted


def extract_shards(model: QScoreModel, image_dataset: ImageDataset, state: PartialState, shard_rows: int,
                   cache_dir: Path, batch_size: int, device: torch.device, dtype: torch.dtype | None, num_workers: int,
                   progress: bool, skip_unreadable: bool) -> _Shards:  # fmt: skip
    """Extract this process's shards of ``image_dataset`` that are not in the cache yet, wait for the other processes,
    and return every shard (memory-mapped).

    A map-style data set is split by index, each process taking a contiguous run of shards; a streaming one is read
    by every process, which extracts one block of ``shard_rows`` rows in ``num_processes`` (``_extract_streamed``).
    The shards are the same row ranges either way, so a streamed run and a map-style one share nothing but the
    layout (their cache keys differ)."""
    dataset = image_dataset.dataset
    if shard_rows < 1 or shard_rows % batch_size:
        raise ValueError(
            f"shard_rows ({shard_rows}) must be a positive multiple of the batch size ({batch_size}), so that every "
            "image is encoded in the same batch whatever the number of processes; pick e.g. "
            f"{DEFAULT_SHARD_BATCHES * batch_size}."
        )
    base = _cache_identity(model, image_dataset, dtype, "pil")  # shards decode in the loader (check_sharded_pipeline)
    root = cache_dir / f"{_key_of(base)}-shards"
    keys = gather_object([root.name])
    if len(set(keys)) > 1:
        raise ValueError(
            "the processes disagree on the model or the data set (their feature cache keys differ): load the same "
            "model folder (not a randomly initialised one) and the same data set on every process."
        )

    # The temporaries of killed runs are swept once, by the main process, before any process writes: a sweep during
    # the run would take another node's live temporaries (whose process ids are not running here) for debris.
    if state.is_main_process:
        sweep_stale_temporaries(root)
    state.wait_for_everyone()

    def folder_of(start: int, stop: int) -> tuple[Path, dict[str, Any]]:
        return root / f"rows-{start:012d}-{stop:012d}", {**base, "rows": [start, stop]}

    def extract(part: ImageDataset, folder: Path, identity: dict[str, Any], num_rows: int) -> bool:
        return _extract_shard(model, part, folder, identity, num_rows, batch_size, device, dtype, num_workers,
                              skip_unreadable)  # fmt: skip

    streamed = not isinstance(dataset, datasets.Dataset)
    bar = tqdm(desc=f"feature shards {image_dataset.name}/{image_dataset.split}", unit="shard",
               disable=not (progress and state.is_local_main_process))  # fmt: skip
    if streamed:
        num_rows, extracted = _extract_streamed(image_dataset, state, shard_rows, folder_of, bar, extract)
    else:
        num_rows, extracted = len(dataset), 0
    bounds = [(start, min(start + shard_rows, num_rows)) for start in range(0, num_rows, shard_rows)]
    with state.split_between_processes(list(range(len(bounds)))) as mine:
        mine = list(mine)  # the shards this process scores (and, map-style, extracts)
    if not streamed:
        bar.reset(total=len(mine))
        for index in mine:
            start, stop = bounds[index]
            part = dataclasses.replace(image_dataset, dataset=dataset.select(range(start, stop)))
            extracted += extract(part, *folder_of(start, stop), stop - start)
            bar.update()
    bar.close()
    state.wait_for_everyone()
    blocks = []
    for start, stop in bounds:
        folder, identity = folder_of(start, stop)
        block = _load_cached(folder, identity)
        if block is None:
            raise RuntimeError(
                f"the features of rows {start}..{stop - 1} are not in {folder}: every process must see the same "
                "--cache-dir (on several nodes, a shared file system)."
            )
        if block.skipped and not skip_unreadable:
            raise UnreadableImageError(dataclasses.replace(block.skipped[0], row_id=block.skipped[0].row_id + start),
                                       image_dataset.name)  # fmt: skip
        blocks.append(_shift(block, start))
    if not blocks:
        raise ValueError(f"split {image_dataset.split!r} of data set {image_dataset.name!r} has no rows to score.")
    return _Shards(blocks, mine, root, extracted)


def extract_all_shards(model: QScoreModel, image_dataset: ImageDataset, batch_size: int = 256,
                       device: str | torch.device | None = None, dtype: torch.dtype | None = None, num_workers: int = 0,
                       cache_dir: str | os.PathLike | None = None, progress: bool = True, skip_unreadable: bool = False,
                       shard_rows: int | None = None) -> FeatureSet:  # fmt: skip
    """``qscore_hf.features.extract_features`` (same arguments) split across the launched processes: each extracts its
    shards (``shard_rows`` rows, ``DEFAULT_SHARD_BATCHES`` batches by default) into the cache; every process gets
    every row, memory-mapped shard by shard (``FeatureSet.features`` is a ``RowBlocks``)."""
    from .features import default_cache_dir

    state = process_state(device)
    device = state.device if device is None else torch.device(device)
    shard_rows = shard_rows if shard_rows is not None else DEFAULT_SHARD_BATCHES * batch_size
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    shards = extract_shards(model, image_dataset, state, shard_rows, cache, batch_size, device, dtype, num_workers,
                            progress, skip_unreadable)  # fmt: skip
    return _joined(shards.blocks)


def is_main_process() -> bool:
    """Whether this is the main process of a launch (or the only process)."""
    return PartialState().is_main_process if launched_processes() > 1 else True


def share_from_main(value: Any) -> Any:
    """The main process's ``value`` on every process (a no-op in one process)."""
    return broadcast_object_list([value])[0] if launched_processes() > 1 else value


@dataclass
class ShardedScores:
    """What ``score_shards`` leaves for ``score_dataset`` to summarise and write (``columns`` on the main process
    only, ``None`` on the others)."""

    state: PartialState
    columns: dict[str, np.ndarray] | None
    activation_stats: ActivationStats
    skipped: list[UnreadableImage]
    probe: LinearProbe | None
    probe_train: FeatureSet | None
    shard_sizes: list[int]  # scored rows of each process, in rank order (the per-sample parquet shards)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def is_main_process(self) -> bool:
        return self.state.is_main_process

    def share(self, summary: dict[str, Any] | None) -> dict[str, Any]:
        """The main process's ``summary`` on every process (after the main process has written the outputs)."""
        shared = broadcast_object_list([summary])
        return shared[0]


def _merged_stats(config: QScoreConfig, local: list[FeatureSet], num_features: int) -> ActivationStats:
    """``eps="auto"`` and ``A_j`` of all rows of all processes: integer histograms and counts, summed exactly."""
    if is_auto(config.qscore_eps):
        calibrator = EpsCalibrator(num_features)
        for block in local:
            for chunk in feature_chunks(block.features):
                calibrator.update(chunk)
        calibrator.all_reduce()
        config.qscore_eps = calibrator.resolve(DEFAULT_COVERAGE)
        config.qscore_eps_calibration = {"coverage": DEFAULT_COVERAGE, "num_samples": calibrator.num_samples}
    stats = ActivationStats(num_features, config.qscore_eps)
    for block in local:
        for chunk in feature_chunks(block.features):
            stats.update(chunk)
    return stats.all_reduce()


def _probe(model: QScoreModel, probe_dataset: ImageDataset, state: PartialState, extract: Callable[..., _Shards],
           epochs: int, optimizer: Optimizer, seed: int, device: torch.device,
           progress: bool) -> tuple[LinearProbe, FeatureSet]:  # fmt: skip
    """The probe's split extracted on all processes, the probe trained once on the main process and sent to all."""
    if probe_dataset.label_column is None:
        raise ValueError(
            f"split {probe_dataset.split!r} of data set {probe_dataset.name!r} has no label column, so no linear probe "
            "can be trained on it. Name the column with --label-column or leave out --probe."
        )
    train = _joined(extract(probe_dataset).blocks)
    probe = None
    if state.is_main_process:
        probe = train_linear_probe(train.features, train.labels, epochs=epochs, optimizer=optimizer,
                                   num_classes=probe_dataset.num_classes, device=device, seed=seed,
                                   progress=progress).cpu()  # fmt: skip
    probe = broadcast_object_list([probe])[0]
    return probe.to(device), train


def _rows_of(blocks: list[FeatureSet], cached_rows: Callable[[FeatureSet], Iterator[Any]]) -> Iterator[Any]:
    return chain.from_iterable(cached_rows(block) for block in blocks)


def score_shards(model: QScoreModel, image_dataset: ImageDataset, source: str, probe_dataset: ImageDataset | None,
                 probe_epochs: int, probe_optimizer: Optimizer, seed: int, extraction: dict[str, Any],
                 shard_rows: int | None, score_rows: Callable[..., dict[str, np.ndarray]],
                 cached_rows: Callable[[FeatureSet], Iterator[Any]]) -> ShardedScores:  # fmt: skip
    """The sharded middle of ``qscore_hf.scoring.score_dataset``: extraction, merged statistics, this process's
    scores (``score_rows`` over ``cached_rows`` of its shards) gathered on the main process.

    ``extraction`` holds ``score_dataset``'s extraction settings and ``cache_dir``; ``shard_rows`` defaults to
    ``DEFAULT_SHARD_BATCHES`` batches.
    """
    device = extraction["device"]
    state = process_state(device)
    device = state.device if device is None else torch.device(device)
    batch_size = extraction["batch_size"]
    shard_rows = shard_rows if shard_rows is not None else DEFAULT_SHARD_BATCHES * batch_size
    timings: dict[str, float] = {}

    def extract(split: ImageDataset) -> _Shards:
        started = time.perf_counter()
        shards = extract_shards(model, split, state, shard_rows, Path(extraction["cache_dir"]), batch_size, device,
                                extraction["dtype"], extraction["num_workers"], extraction["progress"],
                                extraction["skip_unreadable"])  # fmt: skip
        timings["extraction_seconds"] = timings.get("extraction_seconds", 0.0) + time.perf_counter() - started
        return shards

    probe, probe_train = None, None
    if probe_dataset is not None:
        probe, probe_train = _probe(model, probe_dataset, state, extract, probe_epochs, probe_optimizer, seed, device,
                                    extraction["progress"])  # fmt: skip
    shards = extract(image_dataset)
    local = [block for block in shards.local() if len(block)]  # a shard of unreadable images only has no rows
    merge_started = time.perf_counter()
    if source == "saved":
        stats = model.activation_stats
    else:
        stats = _merged_stats(model.config, local, shards.blocks[0].num_features)
    timings["merge_seconds"] = time.perf_counter() - merge_started
    config = model.config
    discriminative = stats.discriminative_mask(config.qscore_p_lo, config.qscore_p_hi)
    started = time.perf_counter()
    columns = score_rows(_rows_of(local, cached_rows), discriminative, config, probe, probe_train) if local else None
    timings["scoring_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    gathered = gather_object([columns])
    timings["merge_seconds"] += time.perf_counter() - started
    parts = [part for part in gathered if part is not None]
    if not parts:
        raise ValueError("no image of the data set could be read, so there is nothing to score.")
    shard_sizes = [0 if part is None else len(part["row_id"]) for part in gathered]
    merged = None
    if state.is_main_process:
        merged = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    info = {"num_processes": state.num_processes, "backend": state.backend, "shard_rows": shard_rows,
            "num_shards": len(shards.blocks), "shards_extracted_by_main_process": shards.extracted,
            "feature_shards": str(shards.root), **{key: round(value, 3) for key, value in timings.items()}}  # fmt: skip
    skipped = [image for block in shards.blocks for image in block.skipped]
    return ShardedScores(state, merged, stats, skipped, probe, probe_train, shard_sizes, info)
