"""Do the two data pipelines train the same? A short CIFAR-10 pre-training per (pipeline, seed), kNN top-1 compared.

    QSCORE_CIFAR10_DIR=../shared/data/cifar10 python bench/pipeline_equivalence.py --runs pil:0,tensor:0 --work /tmp/eq
    python bench/pipeline_equivalence.py --work /tmp/eq --summarize --out bench/results/pipeline_equivalence_cpu.json

Each run is ``qscore_hf.pretraining.pretrain`` with ``data_pipeline`` ``pil`` (per-image PIL augmentation) or
``tensor`` (decoded once, kornia per batch), everything else equal; its kNN top-1 (the per-epoch monitor: CIFAR-10
test images against the training images) after the last epoch is kept in ``<work>/<pipeline>_seed<seed>.json``. A run
already done is skipped, so the runs can be spread over several invocations; with ``--steps-per-call N`` one invocation
trains at most N steps of a run and the next continues it from its checkpoint (``resume="auto"``), so a long run
fits in short slots on a shared machine. ``--summarize`` writes, per pipeline, the
kNN top-1 of each seed, their mean and spread, and the difference of the means against the seed-to-seed spread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from _record import environment, save
from qscore_hf.pretraining import TRAIN_LOG, PretrainConfig, pretrain


def run(pipeline: str, seed: int, args: argparse.Namespace) -> dict | None:
    """The run's result, or ``None`` when ``--steps-per-call`` stopped it early (its wall time so far is kept)."""
    out = args.work / f"{pipeline}_seed{seed}"
    cfg = PretrainConfig(
        method=args.method, output_dir=str(out), backbone=args.backbone, dataset="cifar10",
        max_samples=args.train_images, image_size=32, epochs=args.epochs, batch_size=args.batch_size,
        warmup_epochs=args.warmup_epochs, num_workers=args.num_workers, log_with="none", progress=False,
        checkpoint_every=0, keep_checkpoints=1, eval_split="test", knn_max_train=args.train_images,
        knn_max_eval=args.eval_images, seed=seed, data_pipeline=pipeline, resume="auto",
        stop_after_steps=args.steps_per_call,
    )  # fmt: skip
    start = time.perf_counter()
    finished = pretrain(cfg) is not None
    wall = args.work / f"{pipeline}_seed{seed}.wall_s"
    wall_s = (float(wall.read_text()) if wall.exists() else 0.0) + time.perf_counter() - start
    wall.write_text(str(wall_s))
    if not finished:
        return None
    log = [json.loads(line) for line in (out / TRAIN_LOG).read_text().splitlines()]
    knn = [entry for entry in log if "knn_top1_k20" in entry]
    rates = [entry["images_per_s"] for entry in log if "images_per_s" in entry]
    return {"pipeline": pipeline, "seed": seed, "knn_top1_k20": knn[-1]["knn_top1_k20"],
            "knn_by_epoch": [entry["knn_top1_k20"] for entry in knn], "final_ssl_loss": [e for e in log if "ssl_loss" in e][-1]["ssl_loss"],
            "mean_images_per_s": statistics.mean(rates), "wall_s": wall_s}  # fmt: skip


def summarize(work: Path) -> dict:
    runs = [json.loads(path.read_text()) for path in sorted(work.glob("*_seed*.json"))]
    by_pipeline: dict[str, list[dict]] = {}
    for result in runs:
        by_pipeline.setdefault(result["pipeline"], []).append(result)
    summary = {}
    for pipeline, results in by_pipeline.items():
        values = [r["knn_top1_k20"] for r in results]
        summary[pipeline] = {"seeds": [r["seed"] for r in results], "knn_top1_k20": values,
                             "mean": statistics.mean(values), "seed_spread": max(values) - min(values),
                             "mean_images_per_s": statistics.mean(r["mean_images_per_s"] for r in results)}  # fmt: skip
    if {"pil", "tensor"} <= set(summary):
        difference = summary["tensor"]["mean"] - summary["pil"]["mean"]
        spread = max(summary["pil"]["seed_spread"], summary["tensor"]["seed_spread"])
        summary["tensor_minus_pil"] = {"knn_top1_difference_of_means": difference, "largest_seed_spread": spread,
                                       "within_seed_spread": abs(difference) <= spread}  # fmt: skip
    return {"runs": runs, "summary": summary}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="", help="PIPELINE:SEED,... to run (skipped when done)")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--backbone", default="resnet10t")
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--eval-images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--warmup-epochs", type=float, default=0.5)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--steps-per-call", type=int, default=None, help="train at most this many steps per invocation")
    parser.add_argument("--summarize", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    for item in filter(None, args.runs.split(",")):
        pipeline, seed = item.split(":")
        done = args.work / f"{pipeline}_seed{seed}.json"
        if not done.exists():
            result = run(pipeline, int(seed), args)
            if result is None:
                print(f"{pipeline}:{seed} not finished; run the same command again to continue it", flush=True)
                continue
            done.write_text(json.dumps(result, indent=2))
            print(json.dumps(result), flush=True)
    if args.summarize:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("out", "runs")}
        save({**environment("pipeline_equivalence"), "settings": settings, **summarize(args.work)}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
