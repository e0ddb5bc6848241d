"""Images/s of ``qscore-hf score`` on one process and on two (gloo, one thread each), and the merge's share.

    python bench/sharded_scoring.py --rows 4096 --out bench/results/sharded_scoring_cpu.json

Both runs score the same CIFAR-10 rows with the same saved encoder (a seeded random ResNet-18 at 64 px, so that the
encoder dominates as it does for real models), each with a fresh feature cache and ``--eps auto`` (so the statistics
are counted and merged): the one-process run as ``python -m qscore_hf.cli score --shard-rows N``, the two-process run
under ``accelerate launch --num_processes 2``. Images/s is rows over the seconds ``score_dataset`` took (the
``seconds`` of ``summary.json``: model loading and process start-up excluded, reported apart as the command's wall
time); the merge is the ``all_reduce`` of the counts and the gathering of the per-sample columns
(``summary["distributed"]["merge_seconds"]``). The machine is often shared: the load average is recorded before each
run, and a ratio below 2 on 2 cores mostly measures the other jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import environment, save  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(processes: int, model: Path, dataset: Path, rows: int, batch_size: int, shard_rows: int, work: Path) -> dict:
    out, cache = work / f"out-{processes}", work / f"cache-{processes}"
    score = ["-m", "qscore_hf.cli", "score", "--model", str(model), "--dataset", str(dataset), "--split", "train",
             "--max-samples", str(rows), "--batch-size", str(batch_size), "--shard-rows", str(shard_rows),
             "--eps", "auto", "--device", "cpu", "--no-progress", "--out", str(out)]  # fmt: skip
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                     "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                     "--main_process_port", str(_free_port())]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "QSCORE_HF_CACHE": str(cache),
           "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}  # fmt: skip
    load = round(os.getloadavg()[0], 2)
    started = time.perf_counter()
    done = subprocess.run(launcher + score, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(done.stdout[-3000:] + done.stderr[-3000:])
    summary = json.loads((out / "summary.json").read_text())
    distributed = summary["distributed"]
    return {
        "processes": processes,
        "load_average_1min_before": load,
        "score_seconds": summary["seconds"],
        "images_per_second": round(summary["num_samples"] / summary["seconds"], 1),
        "extraction_seconds": distributed["extraction_seconds"],
        "merge_seconds": distributed["merge_seconds"],
        "merge_share": round(distributed["merge_seconds"] / summary["seconds"], 5),
        "command_wall_seconds": round(wall, 2),
        "eps": summary["qscore"]["eps"],
        "num_discriminative": summary["num_discriminative"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4096, help="CIFAR-10 training rows scored (default: 4096)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-rows", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--dataset", default=str(ROOT.parents[1] / "shared" / "data" / "cifar10"),
                        help="the CIFAR-10 folder (default: ../../shared/data/cifar10 from the repository)")
    parser.add_argument("--out", type=Path, default=None, help="JSON result file")
    args = parser.parse_args()
    from qscore_hf import QScoreConfig, QScoreModel

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        torch.manual_seed(0)
        QScoreModel(QScoreConfig(backbone="resnet18", image_size=args.image_size, crop_pct=1.0)).save_pretrained(
            work / "model"
        )
        runs = [run(n, work / "model", Path(args.dataset), args.rows, args.batch_size, args.shard_rows, work)
                for n in (1, 2)]  # fmt: skip
    one, two = runs
    assert one["eps"] == two["eps"] and one["num_discriminative"] == two["num_discriminative"]
    result = {
        **environment("sharded_scoring"),
        "settings": {"rows": args.rows, "batch_size": args.batch_size, "shard_rows": args.shard_rows,
                     "model": f"resnet18 (random, seeded) at {args.image_size} px", "threads_per_process": 1},  # fmt: skip
        "runs": runs,
        "speedup_2_vs_1": round(two["images_per_second"] / one["images_per_second"], 3),
        "target": ">= 1.7",
    }
    save(result, args.out)


if __name__ == "__main__":
    main()
