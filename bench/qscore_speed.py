"""Q-Score speed: vectorized ``qscore_hf.qscore`` vs a per-row NumPy loop, same process, same data.

    python bench/qscore_speed.py [--rows 50000] [--dim 2048] [--device cpu|cuda] [--busy-cores K]
                                 [--out bench/results/x.json]

On a GPU it also measures what Q-Score adds to a ResNet-50 bf16 forward at batch 256 (``--model-overhead``).
It also times one read pass over the same features (a sum) and reports the score's time in read passes
("passes": memory-bound work can hardly go below 1), for the paper's ``normalize="none"`` and for each other
``normalize`` (``"l1"`` is what models trained with this package score with). On the CPU it times both paths:
the default fused kernel (qscore_hf/fused.py) and the eager PyTorch one (``QSCORE_HF_FUSED=0``).
``--busy-cores K`` keeps K other processes spinning while it times, as a busy machine would. The figures (and,
with --model-overhead, the overhead) are printed last.

Beside its own input it times ``qscore(x, eps=4)`` and ``eps=1`` on ``x = relu(randn)**2`` with all features (issue
34's input) on each path, in read passes of that matrix, with the share of rows that had an entry within the rounding
band of its threshold and were decided again in integer arithmetic ("exact_rows_share"). On the CPU it also times
single tensor operations over that matrix in the eager path's chunks ("eager_operation_passes"): the floor of any
eager implementation is the number of operations it needs (moments, threshold, selection, masked sums) times these.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from _record import environment, save
from qscore_hf import ActivationStats, qscore
from qscore_hf.score import FUSED_ENV, NORMALIZE_OPTIONS, _Pass, _run_pass, default_chunk_rows

RELU_SQUARED_EPS = (4.0, 1.0)


def numpy_per_row(features: np.ndarray, discriminative: np.ndarray, eps: float) -> np.ndarray:
    """The baseline: SPEC §2-4 row by row with NumPy."""
    in_d = np.zeros(features.shape[1], dtype=bool)
    in_d[discriminative] = True
    out = np.zeros(features.shape[0], dtype=np.float64)
    for i, row in enumerate(features):
        mu, sigma = row.mean(), row.std()
        selected = (row > mu + eps * sigma) & in_d
        if sigma > 0 and selected.any():
            out[i] = (row[selected] - mu).mean()
    return out


def interleaved_best(repeats: int, functions: dict, sync=lambda: None) -> dict[str, float]:
    """The best time of each function over ``repeats`` rounds, each round running every function once."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


@contextmanager
def busy_cores(count: int):
    """``count`` processes spinning on the CPU for the duration (killed on exit)."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(0.5 if count else 0)  # let them start
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def on_path(fused: bool, function):
    """``function`` run with the fused CPU kernel on or off (QSCORE_HF_FUSED)."""

    def run():
        os.environ[FUSED_ENV] = "1" if fused else "0"
        try:
            return function()
        finally:
            os.environ.pop(FUSED_ENV)

    return run


def eager_operations(features: torch.Tensor) -> dict:
    """Single tensor operations of the kinds the eager path is made of, each over every chunk the eager path would
    take (cache-sized on the CPU), for ``interleaved_best``."""
    rows = default_chunk_rows(features.shape[1], features.device)
    chunks = list(torch.split(features, rows))
    column = torch.ones(rows, 1, dtype=features.dtype, device=features.device)
    scratch = torch.empty(rows, features.shape[1], dtype=features.dtype, device=features.device)

    def each_chunk(operation):
        def run() -> None:
            for chunk in chunks:  # each result dropped at once, as the eager path drops its temporaries
                operation(chunk, column[: len(chunk)], scratch[: len(chunk)])

        return run

    return {
        "row_sum": each_chunk(lambda x, c, out: x.sum(dim=1)),
        "row_sum_in_float64": each_chunk(lambda x, c, out: x.sum(dim=1, dtype=torch.float64)),
        "row_minimum": each_chunk(lambda x, c, out: x.amin(dim=1)),
        "square": each_chunk(lambda x, c, out: torch.mul(x, x, out=out)),
        "compare_with_row_threshold": each_chunk(lambda x, c, out: torch.gt(x, c, out=out)),
        "copy_to_float64": each_chunk(lambda x, c, out: x.to(torch.float64)),
    }


def exact_rows_share(features: torch.Tensor, eps: float) -> float:
    """The share of rows that ``qscore(features, eps=eps)`` decides exactly (an entry within the rounding band)."""
    results = _run_pass(features, _Pass(eps, "none", None, False, None), None)
    return float(torch.cat([r.uncertain for r in results]).double().mean())


def model_overhead(device: torch.device, batch: int = 256) -> dict:
    """ResNet-50 bf16 forward with vs without Q-Score (QScoreModel with 2048-d statistics)."""
    from qscore_hf import QScoreConfig, QScoreModel

    model = QScoreModel(QScoreConfig(backbone="resnet50")).to(device).eval().to(memory_format=torch.channels_last)
    model.activation_stats.update(torch.rand(4096, 2048, device=device) ** 4)
    pixels = torch.randn(batch, 3, 224, 224, device=device).to(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run(return_qscore: bool) -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            model(pixels, return_qscore=return_qscore)

    for _ in range(3):
        run(True), run(False)
    best = interleaved_best(10, {"bare": lambda: run(False), "scored": lambda: run(True)}, sync)
    bare, scored = best["bare"], best["scored"]
    return {"batch": batch, "forward_s": bare, "forward_with_qscore_s": scored, "overhead": scored / bare - 1}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--eps", type=float, default=4.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-overhead", action="store_true")
    parser.add_argument("--busy-cores", type=int, default=0, help="processes kept spinning while timing (default 0)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    # Heavy-tailed, non-negative, sparse like pooled ReLU features.
    features = np.maximum(rng.standard_normal((args.rows, args.dim), dtype=np.float32), 0) ** 3
    stats = ActivationStats(args.dim, args.eps).update(features[:10_000])
    discriminative = stats.discriminative()

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    tensor = torch.from_numpy(features).to(device)
    generator = torch.Generator().manual_seed(0)
    relu_squared = (torch.relu(torch.randn(args.rows, args.dim, generator=generator)) ** 2).to(device)
    d_index = discriminative.to(device)
    paths = {"": True, "eager_": False} if device.type == "cpu" else {"": True}
    for fused in paths.values():
        on_path(fused, lambda: qscore(tensor, d_index, args.eps))()  # warm-up (and the kernel's compilation)
        on_path(fused, lambda: qscore(relu_squared))()
    # Interleaved rounds, so that a drift in the machine's speed (other tenants of a VM) touches every figure alike.
    timed = {"read_pass": lambda: tensor.sum(), "relu_squared_read_pass": lambda: relu_squared.sum()}
    for prefix, fused in paths.items():
        for normalize in NORMALIZE_OPTIONS:
            timed[prefix + normalize] = on_path(fused, lambda n=normalize: qscore(tensor, d_index, args.eps, n))
        for eps in RELU_SQUARED_EPS:
            timed[f"{prefix}relu_squared_{eps:g}"] = on_path(fused, lambda e=eps: qscore(relu_squared, eps=e))
    operations = eager_operations(relu_squared) if device.type == "cpu" else {}
    timed.update({f"operation_{name}": operation for name, operation in operations.items()})
    with busy_cores(args.busy_cores):
        best = interleaved_best(args.repeats, timed, sync)
    read_pass = best.pop("read_pass")
    relu_squared_pass = best.pop("relu_squared_read_pass")
    operation_passes = {name: best.pop(f"operation_{name}") / relu_squared_pass for name in operations}
    relu_squared_figures = {
        f"eps_{eps:g}": {
            **{f"{prefix}{unit}": best[f"{prefix}relu_squared_{eps:g}"] / (relu_squared_pass if unit == "passes" else 1)
               for prefix in paths for unit in ("seconds", "passes")},
            **{f"{prefix}exact_rows_share": on_path(fused, lambda e=eps: exact_rows_share(relu_squared, e))()
               for prefix, fused in paths.items()},
        }
        for eps in RELU_SQUARED_EPS
    }  # fmt: skip
    by_normalize = {
        name: {f"{prefix}{unit}": best[prefix + name] / (read_pass if unit == "passes" else 1)
               for prefix in paths for unit in ("seconds", "passes")}
        for name in NORMALIZE_OPTIONS
    }  # fmt: skip
    vectorized = by_normalize["none"]["seconds"]
    start = time.perf_counter()
    reference = numpy_per_row(features, discriminative.numpy(), args.eps)
    baseline = time.perf_counter() - start
    ours = qscore(tensor, d_index, args.eps).double().cpu().numpy()
    mismatched_rows = int((np.abs(ours - reference) > 1e-4 * np.maximum(1.0, np.abs(reference))).sum())

    result = {
        **environment("qscore_speed", device),
        "rows": args.rows,
        "dim": args.dim,
        "num_discriminative": int(discriminative.numel()),
        "numpy_per_row_s": baseline,
        "vectorized_s": vectorized,
        "read_pass_s": read_pass,
        "passes": vectorized / read_pass,
        "by_normalize": by_normalize,
        "relu_squared": {"read_pass_s": relu_squared_pass, "discriminative": "all features", **relu_squared_figures,
                         **({"eager_operation_passes": operation_passes} if operation_passes else {})},
        "busy_cores": args.busy_cores,
        "rows_differing_from_numpy": mismatched_rows,
        "speedup": baseline / vectorized,
    }
    if args.model_overhead:
        result["resnet50_bf16"] = model_overhead(device)
    save(result, args.out)
    if args.model_overhead:
        print(f"qscore overhead on resnet50 bf16 forward (batch 256): {100 * result['resnet50_bf16']['overhead']:.2f}%")
    print(f"speedup vectorized vs per-row numpy: {result['speedup']:.1f}x")
    print(f"qscore time in read passes over the same features: {result['passes']:.1f}")
    print("by normalize: " + ", ".join(f"{k} {v['passes']:.1f} passes" for k, v in by_normalize.items()))
    if device.type == "cpu":
        print("eager path (QSCORE_HF_FUSED=0): "
              + ", ".join(f"{k} {v['eager_passes']:.1f} passes" for k, v in by_normalize.items()))
    for name, figures in relu_squared_figures.items():
        print(f"relu(randn)**2, {name.replace('_', ' ')}: " + ", ".join(
            f"{prefix.rstrip('_') or 'fused'} {figures[prefix + 'passes']:.2f} passes "
            f"({100 * figures[prefix + 'exact_rows_share']:.3f} % of rows decided exactly)" for prefix in paths))
    if operation_passes:
        print("one eager tensor operation over every chunk, in read passes: "
              + ", ".join(f"{name.replace('_', ' ')} {passes:.2f}" for name, passes in operation_passes.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
