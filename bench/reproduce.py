"""Reproduce the paper's claims (SPEC §5, §6) on data we can reach offline: the whole table in one command.

    python bench/reproduce.py --scale cpu      # Fashion-MNIST subset, timm's small ResNet-10, minutes per run on 2 cores
    python bench/reproduce.py --scale gpu      # Fashion-MNIST 60k/10k, ResNet-18 CIFAR stem at 32 px, bf16

For each of the six methods, with the same seed, epochs and recipe: a baseline pre-training and one with Q-Score
regularization from scratch (optionally ``--finetune``: Q-Score fine-tuning of the baseline, lr 1e-5). Every run is
linear-probed (``qscore_hf.linear_eval``) and k-NN evaluated on the test split; Q-Score's AUPRC/AUROC against the
probe's correctness are reported beside the base rate, then the effect of ``eps`` and ``normalize`` on AUPRC for one
method, and the relative top-1 change per method and on average, with the paper's anchors beside ours.

Resumable: each run keeps its own folder under ``--out``; a finished run (``result.json``) is not run again, an
interrupted pre-training continues from its last checkpoint. The table is printed last and written to
``--out/summary.json`` and ``--out/summary.md``, with the PR curves and Q-Score histograms of the sweep's run at
the default and at the best eps/normalize beside them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from _record import environment
from qscore_hf import ActivationStats, misclassification_metrics, qscore
from qscore_hf.knn import knn_accuracy
from qscore_hf.linear_eval import run_linear_eval
from qscore_hf.plots import plot_pr_curve, plot_qscore_histograms
from qscore_hf.pretraining import PretrainConfig, pretrain
from qscore_hf.ssl import METHODS

# The per-method recipes (training/configs/*.yaml) and their parsing live with the training script.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from pretrain import parse_args  # noqa: E402

ANCHORS = {
    "auprc_correct": "91.45 (ImageNet-100) / 78.78 (ImageNet-1K), published",
    "relative_top1_mean": "+1.8 % mean relative top-1 from regularized pre-training (preprint, 6 methods x 5 data sets)",
    "relative_top1_byol": "BYOL +7.2 % relative on ImageNet-100 (preprint)",
}
METHOD_ORDER = ("simclr", "swav", "moco", "byol", "dino", "simsiam")
EPS_SWEEP = (1.0, 2.0, 3.0, 4.0)
NORMALIZE_SWEEP = ("none", "zscore", "l1")


@dataclass
class Scale:
    """Everything that differs between the CPU and the GPU protocol."""

    dataset: str
    backbone: str
    image_size: int
    epochs: int
    batch_size: int
    max_samples: int | None  # per split: the first N training and the first N test images
    probe_epochs: int
    mixed_precision: str
    num_workers: int
    finetune_epochs: int
    notes: str
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)


# Small batches need smaller queues (MoCo's negatives, SwAV's Sinkhorn queue) than the ImageNet recipes.
_SMALL_QUEUES = {"moco": {"queue_size": 4096}, "swav": {"queue_size": 512, "num_prototypes": 300}}
SCALES = {
    "cpu": Scale(
        dataset="fashion_mnist", backbone="resnet10t", image_size=32, epochs=3, batch_size=128, max_samples=2048,
        probe_epochs=100, mixed_precision="no", num_workers=0, finetune_epochs=1,
        notes="a 2-core CPU: a shape check of the protocol, far from convergence", method_overrides=_SMALL_QUEUES,
    ),
    "gpu": Scale(
        dataset="fashion_mnist", backbone="resnet18_cifar", image_size=32, epochs=20, batch_size=256, max_samples=None,
        probe_epochs=100, mixed_precision="bf16", num_workers=8, finetune_epochs=5,
        notes="one H100-class GPU: the 12 runs fit about 25 minutes",
        method_overrides=_SMALL_QUEUES,
    ),
}


def _pretrain_config(scale: Scale, method: str, out: Path, seed: int, qscore_reg: bool,
                     init_from: Path | None = None) -> PretrainConfig:  # fmt: skip
    """The method's recipe (training/configs/<method>.yaml) at this scale."""
    argv = ["--method", method, "--output-dir", str(out), "--dataset", scale.dataset, "--backbone", scale.backbone,
            "--image-size", str(scale.image_size), "--batch-size", str(scale.batch_size), "--seed", str(seed),
            "--epochs", str(scale.finetune_epochs if init_from else scale.epochs), "--eval-split", "none",
            "--mixed-precision", scale.mixed_precision, "--num-workers", str(scale.num_workers), "--log-with", "none",
            "--resume", "auto", "--checkpoint-every", "100"]  # fmt: skip
    if scale.max_samples:
        argv += ["--max-samples", str(scale.max_samples)]
    if qscore_reg:
        argv += ["--qscore-reg", "--qscore-warmup-samples", str(min(10_000, 8 * scale.batch_size))]
    if init_from is not None:
        argv += ["--init-from", str(init_from), "--lr", "1e-5", "--warmup-epochs", "0"]
    if scale.method_overrides.get(method):
        argv += ["--method-kwargs", json.dumps(scale.method_overrides[method])]
    return parse_args(argv)


def _evaluate(model_dir: Path, scale: Scale, out: Path, cache: Path) -> dict[str, Any]:
    """Linear probe + Q-Score metrics (SPEC §5), k-NN top-1, on the test split."""
    report = run_linear_eval(model_dir, scale.dataset, out / "eval", max_samples=scale.max_samples,
                             epochs=scale.probe_epochs, cache_dir=cache, update_model_card=True, progress=False)  # fmt: skip
    train = _cached(report["feature_cache"]["train"])
    test = _cached(report["feature_cache"]["eval"])
    knn = knn_accuracy(torch.from_numpy(train[0]), torch.from_numpy(train[1]), torch.from_numpy(test[0]),
                       torch.from_numpy(test[1]), k=20)  # fmt: skip
    keys = ("top1", "auprc_correct", "auprc_misclassified", "auroc", "base_rate_correct", "base_rate_misclassified")
    return {**{key: report[key] for key in keys}, "knn_top1": knn,
            "num_discriminative": report["qscore"]["num_discriminative"], "eval_dir": str(out / "eval")}  # fmt: skip


def _cached(folder: str) -> tuple[np.ndarray, np.ndarray]:
    return np.load(Path(folder) / "features.npy"), np.load(Path(folder) / "labels.npy")


def run_one(scale: Scale, method: str, variant: str, root: Path, seed: int) -> dict[str, Any]:
    """One pre-training (or fine-tuning) run and its evaluation; skipped when its result exists."""
    out = root / f"{method}-{variant}"
    done = out / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    started = time.time()
    init_from = root / f"{method}-baseline" / "model" if variant == "finetune" else None
    cfg = _pretrain_config(scale, method, out, seed, qscore_reg=variant != "baseline", init_from=init_from)
    model_dir = pretrain(cfg)
    result = {"method": method, "variant": variant, **_evaluate(model_dir, scale, out, root / "feature_cache"),
              "seconds": round(time.time() - started, 1)}  # fmt: skip
    done.write_text(json.dumps(result, indent=2))
    return result


def eps_normalize_sweep(result: dict[str, Any], plots_dir: Path) -> list[dict[str, Any]]:
    """AUPRC of one run's Q-Scores for every eps and normalize, with D recounted from its training features; the PR
    curve and histograms of the run at its default (eps 4) and at the best setting go to ``plots_dir``."""
    report = json.loads((Path(result["eval_dir"]) / "report.json").read_text())
    train, _ = _cached(report["feature_cache"]["train"])
    test, _ = _cached(report["feature_cache"]["eval"])
    correct = pq.read_table(Path(result["eval_dir"]) / "per_sample.parquet").column("correct").to_numpy()
    rows, scores = [], {}
    for eps in EPS_SWEEP:
        discriminative = ActivationStats(train.shape[1], eps).update(train).discriminative()
        for normalize in NORMALIZE_SWEEP:
            scores[eps, normalize] = qscore(torch.from_numpy(test), discriminative, eps, normalize).numpy()
            metrics = misclassification_metrics(scores[eps, normalize], correct.astype(np.int64))
            rows.append({"eps": eps, "normalize": normalize, "num_discriminative": int(discriminative.numel()),
                         "empty_fraction": float(np.mean(scores[eps, normalize] == 0)), **metrics})  # fmt: skip
    best = max(rows, key=lambda row: row["auprc_correct"])
    for name, (eps, normalize) in (("default", (4.0, "none")), ("best", (best["eps"], best["normalize"]))):
        setting = f"{result['method']} {result['variant']}, eps={eps:g}, normalize={normalize}"
        plot_pr_curve(scores[eps, normalize], correct, plots_dir / f"pr_curve_{name}.png", title=f"PR curves ({setting})")
        plot_qscore_histograms(scores[eps, normalize], correct, plots_dir / f"qscore_hist_{name}.png",
                               title=f"Q-Score, correct vs misclassified ({setting})")  # fmt: skip
    return rows


def _relative(results: dict[str, dict[str, Any]], variant: str) -> dict[str, float]:
    changes = {}
    for method in METHOD_ORDER:
        base, other = results.get(f"{method}-baseline"), results.get(f"{method}-{variant}")
        if base and other:
            changes[method] = 100.0 * (other["top1"] - base["top1"]) / base["top1"]
    return changes


def _markdown(summary: dict[str, Any]) -> str:
    cfg = summary["settings"]
    data = f"the first {cfg['max_samples']} training and test images" if cfg["max_samples"] else "all images"
    setting = (f"{cfg['dataset']} ({data}) at {cfg['image_size']} px, `{cfg['backbone']}`, {cfg['epochs']} epochs of "
               f"batch {cfg['batch_size']}, same seed and recipe per pair; {summary['notes']}.")  # fmt: skip
    lines = [f"# Q-Score reproduction, scale `{summary['scale']}`", "", setting, "",
             f"Command: `{summary['command']}`  ", f"Machine: {summary['machine']}, {summary['cpu_threads']} threads, device {summary['device']}", "",
             "| method | run | linear top-1 | kNN top-1 | AUPRC correct (base rate) | AUPRC misclassified (base rate) "
             "| AUROC | abs(D) |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for key, r in summary["runs"].items():
        lines.append(
            f"| {r['method']} | {r['variant']} | {100 * r['top1']:.2f} | {100 * r['knn_top1']:.2f} | "
            f"{100 * r['auprc_correct']:.2f} ({100 * r['base_rate_correct']:.2f}) | "
            f"{100 * r['auprc_misclassified']:.2f} ({100 * r['base_rate_misclassified']:.2f}) | "
            f"{r['auroc']:.3f} | {r['num_discriminative']} |"
        )
    for variant, changes in summary["relative_top1_change_percent"].items():
        if changes["per_method"]:
            per = ", ".join(f"{m} {v:+.2f} %" for m, v in changes["per_method"].items())
            lines += ["", f"Relative top-1 change, {variant} vs baseline: {per}; mean {changes['mean']:+.2f} %."]
    lines += ["", f"Anchors (paper): {'; '.join(ANCHORS.values())}.", ""]
    sweep = summary.get("eps_normalize_sweep")
    if sweep:
        lines += [f"Effect of eps and normalize on AUPRC ({sweep['run']}):", "",
                  "| eps | normalize | abs(D) | empty | AUPRC correct | AUPRC misclassified | AUROC |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for row in sweep["rows"]:
            lines.append(f"| {row['eps']:g} | {row['normalize']} | {row['num_discriminative']} | "
                         f"{100 * row['empty_fraction']:.1f} % | {100 * row['auprc_correct']:.2f} | "
                         f"{100 * row['auprc_misclassified']:.2f} | {row['auroc']:.3f} |")  # fmt: skip
        best = max(sweep["rows"], key=lambda row: row["auprc_correct"])
        lines += ["", f"Best AUPRC (correct): eps={best['eps']:g}, normalize={best['normalize']}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), required=True)
    parser.add_argument("--methods", default=",".join(METHOD_ORDER))
    parser.add_argument("--finetune", action="store_true", help="also Q-Score fine-tune each baseline (lr 1e-5)")
    parser.add_argument("--sweep-method", default="byol", help="the method whose baseline gets the eps/normalize sweep")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="override the scale's pre-training epochs")
    parser.add_argument("--max-samples", type=int, default=None, help="override the scale's images per split")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/reproduce_<scale>")
    args = parser.parse_args()
    scale = replace(SCALES[args.scale], epochs=args.epochs or SCALES[args.scale].epochs,
                    max_samples=args.max_samples or SCALES[args.scale].max_samples)  # fmt: skip
    root = args.out or Path(__file__).resolve().parent / "results" / f"reproduce_{args.scale}"
    root.mkdir(parents=True, exist_ok=True)
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown method(s) {sorted(unknown)}; choose from {sorted(METHODS)}")

    variants = ["baseline", "qreg"] + (["finetune"] if args.finetune else [])
    results: dict[str, dict[str, Any]] = {}
    for method in methods:
        for variant in variants:
            print(f"== {method} {variant}", flush=True)
            results[f"{method}-{variant}"] = run_one(scale, method, variant, root, args.seed)
            print(json.dumps(results[f"{method}-{variant}"]), flush=True)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    summary: dict[str, Any] = {
        **environment("reproduce", device), "scale": args.scale, "notes": scale.notes, "settings": asdict(scale),
        "runs": results, "anchors": ANCHORS, "relative_top1_change_percent": {},
    }  # fmt: skip
    for variant in variants[1:]:
        changes = _relative(results, variant)
        summary["relative_top1_change_percent"][variant] = {
            "per_method": changes, "mean": float(np.mean(list(changes.values()))) if changes else None,
        }
    sweep_run = f"{args.sweep_method}-baseline"
    if sweep_run in results:
        summary["eps_normalize_sweep"] = {"run": sweep_run, "rows": eps_normalize_sweep(results[sweep_run], root)}
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    table = _markdown(summary)
    (root / "summary.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
