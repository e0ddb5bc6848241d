"""Peak memory of ``qscore-hf score`` over a small and a ten times larger data set: it should be flat.

    python bench/memory.py [--sizes 10000,100000] [--backbone resnet10t] [--image-size 16]

Each size is a saved ``datasets`` folder of 28 x 28 grayscale images (Fashion-MNIST's when Debian's package is
installed, repeated to the size; random otherwise), scored in a fresh ``qscore-hf score`` process with
``--stats data`` (the two-pass path: features go through the memory-mapped on-disk cache). The peak resident memory of
that process is sampled with psutil (resident, and private = resident minus file-backed pages such as the
memory-mapped cache). The ratio of the private peaks (largest over smallest size; flat means close to 1) is
printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np
import psutil

from _record import environment, save
from qscore_hf.data import FASHION_MNIST_DIR, _read_idx


def _images(count: int) -> np.ndarray:
    source = FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz"
    if source.exists():
        base = _read_idx(source)
    else:
        base = np.random.default_rng(0).integers(0, 256, size=(10_000, 28, 28), dtype=np.uint8)
    return base[np.arange(count) % len(base)]


def _write_dataset(count: int, folder: Path) -> None:
    images = _images(count)

    def rows():
        for index in range(count):
            yield {"image": images[index], "label": index % 10}

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    datasets.Dataset.from_generator(rows, features=features, cache_dir=str(folder / "hf-cache")).save_to_disk(
        str(folder / "data")
    )


def _peak_memory(command: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run ``command``; return its peak resident and peak private memory (MiB, sampled every 50 ms) and wall time.

    Resident memory counts the pages of memory-mapped files (the feature cache) that the process touched; the kernel
    can drop those at any time. Private memory (resident minus shared/file-backed) is what the process really holds.
    """
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watched = psutil.Process(process.pid)
    peak_rss = peak_private = 0
    while process.poll() is None:
        try:
            infos = [p.memory_info() for p in (watched, *watched.children(recursive=True))]
            peak_rss = max(peak_rss, sum(info.rss for info in infos))
            peak_private = max(peak_private, sum(info.rss - info.shared for info in infos))
        except psutil.Error:
            pass
        time.sleep(0.05)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{process.stderr.read()[-3000:]}")
    return {"peak_rss_mib": peak_rss / 2**20, "peak_private_mib": peak_private / 2**20,
            "seconds": time.perf_counter() - started}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--backbone", default="resnet10t")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            folder = Path(tmp) / str(size)
            _write_dataset(size, folder)
            command = [sys.executable, "-m", "qscore_hf.cli", "score", "--model", args.backbone, "--backbone-only",
                       "--image-size", str(args.image_size), "--dataset", str(folder / "data"), "--stats", "data",
                       "--batch-size", str(args.batch_size), "--cache-dir", str(folder / "features"),
                       "--out", str(folder / "scores"), "--no-progress"]  # fmt: skip
            runs[size] = _peak_memory(command, env)
            print(size, json.dumps(runs[size]), flush=True)
    ratio = runs[sizes[-1]]["peak_private_mib"] / runs[sizes[0]]["peak_private_mib"]
    result = {
        **environment("memory"),
        "settings": {"backbone": args.backbone, "image_size": args.image_size, "batch_size": args.batch_size,
                     "stats": "data (two passes over the on-disk feature cache)"},  # fmt: skip
        "runs": runs,
        "peak_ratio": ratio,
    }
    save(result, args.out)
    print(f"peak private memory of qscore-hf score, {sizes[-1]} vs {sizes[0]} images: {ratio:.3f}x (flat: close to 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
