"""Time and peak memory of the kNN-density baseline against one brute-force matmul pass, in the same process.

    python bench/knn_density.py [--queries 10000] [--references 50000] [--dim 2048] [--k 10] [--device cpu|cuda]

The brute-force pass is what any kNN over these sets costs at least: normalize both sets and multiply them once,
holding the whole ``queries x references`` similarity matrix. ``knn_density`` does the same multiplications in blocks
of about 64 MiB with a running top-k, so its extra memory stays bounded whatever the reference set's size. Printed
last: the time ratio (knn_density / brute force) and both peaks of additional memory (CPU: private resident memory
sampled by a thread; GPU: torch's peak allocation).
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from _record import environment, save
from qscore_hf.baselines import knn_density


class PeakMemory:
    """Peak additional memory over a block: private resident memory on the CPU, torch's peak allocation on a GPU."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak, self._stop = device, 0, threading.Event()

    @staticmethod
    def _private() -> int:
        info = psutil.Process().memory_full_info()
        return info.uss

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        self.start = self._private()
        self.peak = self.start

        def sample() -> None:
            while not self._stop.is_set():
                self.peak = max(self.peak, self._private())
                time.sleep(0.02)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._private())

    @property
    def extra_mib(self) -> float:
        return (self.peak - self.start) / 2**20


def brute_force(queries: torch.Tensor, references: torch.Tensor, k: int) -> np.ndarray:
    """Normalize, one full similarity matrix, top-k, mean: the reference computation (assumes no zero rows)."""
    q = torch.nn.functional.normalize(queries, dim=1)
    r = torch.nn.functional.normalize(references, dim=1)
    return (q @ r.T).topk(k, dim=1).values.double().mean(dim=1).cpu().numpy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--references", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args()
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    # Non-negative, heavy-tailed like pooled ReLU features.
    queries = torch.rand(args.queries, args.dim, generator=generator).pow(4).to(device)
    references = torch.rand(args.references, args.dim, generator=generator).pow(4).to(device)
    timings = {}
    with PeakMemory(device) as brute_memory:
        started = time.perf_counter()
        expected = brute_force(queries, references, args.k)
        timings["brute_force_s"] = time.perf_counter() - started
    with PeakMemory(device) as knn_memory:
        started = time.perf_counter()
        density = knn_density(queries, references, k=args.k, device=device)
        timings["knn_density_s"] = time.perf_counter() - started
    result = {
        **environment("knn_density", device),
        "queries": args.queries, "references": args.references, "dim": args.dim, "k": args.k,
        **{key: round(value, 3) for key, value in timings.items()},
        "time_ratio_knn_over_brute_force": round(timings["knn_density_s"] / timings["brute_force_s"], 3),
        "brute_force_extra_mib": round(brute_memory.extra_mib, 1),
        "knn_density_extra_mib": round(knn_memory.extra_mib, 1),
        "max_abs_difference": float(np.abs(density - expected).max()),
    }  # fmt: skip
    save(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
