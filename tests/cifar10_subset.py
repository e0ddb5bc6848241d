"""A few hundred real CIFAR-10 training images as a parquet file laid out as the Hub's (columns img, label)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
_CANDIDATES = [os.environ.get("QSCORE_CIFAR10_DIR"), ROOT.parent / "shared" / "data" / "cifar10",
               "/work/shared/data/cifar10"]  # fmt: skip


def cifar10_dir() -> Path:
    for candidate in _CANDIDATES:
        if candidate and (Path(candidate) / "train-00000-of-00001.parquet").exists():
            return Path(candidate)
    pytest.skip("CIFAR-10 not found (set QSCORE_CIFAR10_DIR to a copy laid out as the Hub's uoft-cs/cifar10)")


def cifar10_rows(start: int, count: int) -> pa.Table:
    """Rows ``start`` to ``start + count`` of CIFAR-10's training split (read batch by batch, not the whole file)."""
    source = pq.ParquetFile(cifar10_dir() / "train-00000-of-00001.parquet")
    batches, seen = [], 0
    for batch in source.iter_batches(batch_size=256):
        batches.append(batch)
        seen += len(batch)
        if seen >= start + count:
            break
    return pa.Table.from_batches(batches).slice(start, count)


def write_cifar10_subset(folder: Path, start: int = 0, count: int = 300, table: pa.Table | None = None) -> Path:
    """``folder/train-00000-of-00001.parquet`` with ``count`` CIFAR-10 images from row ``start`` (or ``table``)."""
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(cifar10_rows(start, count) if table is None else table, folder / "train-00000-of-00001.parquet")
    return folder
