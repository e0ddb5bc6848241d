"""The CIFAR-10 study at ResNet-18 scale on one GPU, budgeted by time (issue 18 item 7, issue 19).

    python studies/cifar10_gpu.py --pack studies/.gpu_data                     # here, once: the data that travels
    python studies/cifar10_gpu.py --data studies/.gpu_data --out $OUT --budget-s 360   # on the GPU machine
    python studies/cifar10_gpu.py --smoke --out /tmp/gpu-smoke               # the same code path on the CPU, small

SimCLR and BYOL, each as a baseline and with the package's default Q-Score regularization, ResNet-18 with solo-learn's
CIFAR stem (3x3, stride 1, padding 2, no max-pool) at 32 px, the methods' solo-learn CIFAR recipes, bf16 and
channels_last, the tensor data pipeline (the images decoded once into a uint8 array, each batch's views drawn on the
GPU by kornia). The schedule is budgeted by time: each run first trains ``CALIBRATION_STEPS`` steps in a scratch
folder to measure its images/s, then its cosine schedule is fixed to the number of epochs that fit ``--budget-s / 4``.
Each run is evaluated with the same report as the CPU study (``trajectory.snapshot_report``: every Q-Score setting,
every baseline, the ceiling, validation chooses, test reports) at epoch 1 and at its last epoch.

The data: ``../shared`` does not travel to the GPU machine (64 MiB of working tree in all), so ``--pack`` writes
CIFAR-10's first ``PACK_TRAIN`` training images (exact PNG), ``PACK_VALIDATION`` held-out training images (from
``train[45000:]``, appended after them) and the 10,000 test images (JPEG) as a data set folder in the Hub's layout,
under 60 MiB, into a git-ignored folder that the run carries.

Into ``--out`` go at most 4 files: ``summary.md``, ``summary.json`` (every report), ``auroc.png`` (test AUROC of every
score, per run) and ``timings.json`` (throughput, epochs, seconds); ``studies/gpu_run.sh`` adds the speed rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

import cifar10_study
import study_summary
from _record import environment
from qscore_hf.plots import _figure

PACK_TRAIN, PACK_VALIDATION = 18_000, 2_500
PACK_LIMIT_BYTES = 60 * 2**20
CALIBRATION_STEPS = 30
RUNS = (("simclr", "baseline"), ("simclr", "qreg"), ("byol", "baseline"), ("byol", "qreg"))


def gpu_setting(train: int, validation: int, smoke: bool) -> cifar10_study.Setting:
    """The protocol on the packed data (training images first, then the held-out ones); ``epochs`` is set later."""
    base = cifar10_study.SETTINGS["cpu"]
    setting = replace(
        base, train_split=f"train[0:{train}]", validation_split=f"train[{train}:{train + validation}]",
        test_split="test", backbone="resnet18_cifar", backbone_args=("--stem-padding", "2"), epochs=1,
        warmup_epochs=1, snapshots=2, knn_monitor_train=0, knn_monitor_eval=0, mixed_precision="bf16",
        num_workers=min(14, os.cpu_count() or 1), device="cuda", data_pipeline="tensor",
        notes="one GPU, each run's schedule fitted to its share of the time budget",
    )  # fmt: skip
    if smoke:  # the same path, small enough for a CPU test
        setting = replace(setting, test_split="test[0:96]", backbone="resnet10t", backbone_args=(), batch_size=32,
                          probe_epochs=3, mixed_precision="no", num_workers=0, device="cpu")  # fmt: skip
    return setting


def pack(out: Path, train: int = PACK_TRAIN, validation: int = PACK_VALIDATION, test: int | None = None) -> Path:
    """Write the travelling copy of CIFAR-10 (module docstring) into ``out``; refuse if it exceeds the limit."""
    import datasets

    from qscore_hf.data import load_image_dataset

    cifar10_study.use_shared_cifar10()
    rows = load_image_dataset("cifar10", f"train[0:{train}]").dataset
    held_out = load_image_dataset("cifar10", f"train[45000:{45000 + validation}]").dataset
    test_rows = load_image_dataset("cifar10", "test" if test is None else f"test[0:{test}]").dataset
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    datasets.concatenate_datasets([rows, held_out]).to_parquet(str(tmp / "train-00000-of-00001.parquet"))
    test_rows.to_parquet(str(tmp / "test-00000-of-00001.parquet"))
    size = sum(p.stat().st_size for p in tmp.iterdir())
    if size > PACK_LIMIT_BYTES:
        shutil.rmtree(tmp)
        raise SystemExit(f"the packed data would take {size / 2**20:.1f} MiB, over {PACK_LIMIT_BYTES / 2**20:.0f} MiB: "
                         "pack fewer images (--train, --validation).")  # fmt: skip
    (tmp / "README.md").write_text(f"CIFAR-10 subset for studies/cifar10_gpu.py: train rows 0-{train - 1} are CIFAR-10 "
                                   f"train[0:{train}], rows {train}-{train + validation - 1} are train[45000:"
                                   f"{45000 + validation}]; test is the test split.\n")  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    print(f"packed {train} + {validation} training and {len(test_rows)} test images into {out} ({size / 2**20:.1f} MiB)")
    return out


def images_per_second(setting: cifar10_study.Setting, method: str, variant: str, scratch: Path,
                      steps: int = CALIBRATION_STEPS) -> float:  # fmt: skip
    """Throughput of the full pre-training loop of this run (data loading and augmentation included), from ``steps``
    steps in ``scratch``; the first of three logging windows (start-up, cuDNN's autotuning) is left out."""
    from qscore_hf.pretraining import TRAIN_LOG, pretrain

    cfg = cifar10_study.pretrain_config(setting, method, variant, 0, scratch)
    cfg = replace(cfg, epochs=-(-steps * setting.batch_size // setting.train_images) + 1, stop_after_steps=steps,
                  log_every=max(1, steps // 3), snapshot_epochs=(), resume=None)  # fmt: skip
    pretrain(cfg)
    log = [json.loads(line) for line in (Path(cfg.output_dir) / TRAIN_LOG).read_text().splitlines()]
    rates = [row["images_per_s"] for row in log if "images_per_s" in row][1:]
    shutil.rmtree(cfg.output_dir, ignore_errors=True)
    return float(np.median(rates))


def budget_epochs(images_per_s: float, seconds: float, num_images: int) -> int:
    """Whole epochs of ``num_images`` that fit ``seconds`` at ``images_per_s`` (at least 2: the report compares
    epoch 1 with the last)."""
    return max(2, int(images_per_s * seconds // num_images))


def plot_runs(reports: dict[str, dict[str, Any]], path: Path) -> None:
    """Test AUROC of every score, a group of bars per run."""
    figure = _figure((9.0, 4.6))
    axes = figure.add_subplot()
    scores = [s for s in study_summary.SCORES if all(s in r["test"]["scores"] for r in reports.values())]
    width = 0.8 / len(reports)
    for k, (name, report) in enumerate(reports.items()):
        axes.bar(np.arange(len(scores)) + k * width, [report["test"]["scores"][s]["auroc"] for s in scores], width,
                 label=f"{name} (top-1 {100 * report['test']['top1']:.1f} %)")  # fmt: skip
    axes.axhline(0.5, color="gray", linewidth=0.8)
    axes.set_xticks(np.arange(len(scores)) + 0.4 - width / 2, scores, rotation=30, ha="right", fontsize=7)
    axes.set_ylabel("test AUROC (correct vs misclassified)")
    axes.set_ylim(0.4, 1.0)
    axes.legend(fontsize=7)
    figure.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pack", type=Path, help="write the travelling data set folder here and stop")
    parser.add_argument("--train", type=int, default=PACK_TRAIN, help=f"training images to pack (default {PACK_TRAIN})")
    parser.add_argument("--validation", type=int, default=PACK_VALIDATION,
                        help=f"held-out training images to pack (default {PACK_VALIDATION})")
    parser.add_argument("--data", type=Path, help="the packed folder (default: pack a small one for --smoke)")
    parser.add_argument("--out", type=Path, required=False, help="at most 4 result files go here")
    parser.add_argument("--work", type=Path, default=None, help="weights and feature caches (default: OUT/../gpu-work)")
    parser.add_argument("--budget-s", type=float, default=360.0, help="training seconds for the 4 runs together")
    parser.add_argument("--calibration-steps", type=int, default=CALIBRATION_STEPS,
                        help=f"steps that measure each run's throughput (default {CALIBRATION_STEPS})")
    parser.add_argument("--smoke", action="store_true", help="the same path on the CPU: tiny data, resnet10t, fp32")
    args = parser.parse_args(argv)
    if args.pack:
        pack(args.pack, args.train, args.validation)
        return 0
    if args.out is None:
        parser.error("--out is required (or --pack DIR)")
    work = args.work or args.out.parent / f"{args.out.name}-work"
    train, validation = (args.train, args.validation) if not args.smoke else (128, 64)
    data = args.data
    if data is None:
        if not args.smoke:
            parser.error("--data is required: the folder written by --pack")
        data = pack(work / "data", train, validation, test=96)
    os.environ["QSCORE_CIFAR10_DIR"] = str(data)
    setting = gpu_setting(train, validation, args.smoke)
    if not args.smoke:
        import torch

        if not torch.cuda.is_available():  # checked after packing so that --smoke needs no GPU
            parser.error("no CUDA GPU is visible here; on a CPU run --smoke")
    started, timings, reports = time.time(), {}, {}
    for method, variant in RUNS:
        name = cifar10_study.run_name(method, variant, 0)
        rate = images_per_second(setting, method, variant, work / "calibration", args.calibration_steps)
        epochs = budget_epochs(rate, args.budget_s / len(RUNS), train)
        run_setting = replace(setting, epochs=epochs, warmup_epochs=max(1, epochs // 10))
        began = time.time()
        cifar10_study.run(run_setting, method, variant, 0, work / "runs", work / "results")
        reports[name] = json.loads((work / "results" / name / f"epoch_{epochs:04d}.json").read_text())
        timings[name] = {"calibrated_images_per_s": rate, "epochs": epochs, "train_images": train,
                         "seconds_train_and_eval": round(time.time() - began, 1)}  # fmt: skip
        print(f"{name}: {rate:.0f} images/s, {epochs} epochs, test top-1 {100 * reports[name]['test']['top1']:.2f} %",
              flush=True)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    machine = environment("cifar10_gpu", torch.device(setting.device))
    study_summary.write_summary(work / "results", command=" ".join(["python", "studies/cifar10_gpu.py", *(argv or sys.argv[1:])]),
                                machine=machine)  # fmt: skip
    for name in ("summary.md", "summary.json"):
        shutil.copy(work / "results" / name, args.out / name)
    plot_runs(reports, args.out / "auroc.png")
    (args.out / "timings.json").write_text(json.dumps({**machine, "budget_s": args.budget_s, "runs": timings,
                                                       "total_s": round(time.time() - started, 1)}, indent=2))  # fmt: skip
    print((args.out / "summary.md").read_text()[:3000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
