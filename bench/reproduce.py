"""Reproduce the paper's claims (SPEC §5, §6) on data we can reach offline: the whole table in one command.

    python bench/reproduce.py --scale cpu      # Fashion-MNIST subset, timm's small ResNet-10, minutes per run on 2 cores
    python bench/reproduce.py --scale gpu      # Fashion-MNIST 60k/10k, ResNet-18 CIFAR stem at 32 px, bf16

For each of the six methods, with the same seed, epochs and recipe: a baseline pre-training and one with Q-Score
regularization from scratch (optionally ``--finetune``: Q-Score fine-tuning of the baseline, lr 1e-5, and
``--also-regularizer L1,L2,EPS``: Q-reg with other settings). Every run is linear-probed (``qscore_hf.linear_eval``)
and k-NN evaluated on the test split; Q-Score's AUPRC/AUROC against the probe's correctness are reported beside the
base rate, with the representation's dead-feature fraction and effective rank, then the effect of ``eps`` and
``normalize`` on AUPRC for one method, and the relative top-1 change per method and on average, with the paper's
anchors beside ours. ``--regularizer-sweep`` adds Q-reg runs of one method over ``(lambda1, lambda2, eps)``, and
``--extra-seeds 1,2`` repeats every method's runs with other seeds for a mean and standard deviation over seeds.

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
# (lambda1, lambda2, eps) beside the published (1e-4, 1e-4, 4): which term kills features, and does the Q term act
# at all when most S_i are empty (eps 4 on a young encoder)?
REGULARIZER_SWEEP = (
    (1e-4, 1e-5, 4.0), (1e-4, 1e-6, 4.0), (1e-4, 0.0, 4.0), (1e-3, 0.0, 4.0),
    (1e-4, 1e-4, 1.0), (1e-4, 1e-6, 1.0), (1e-4, 0.0, 1.0), (1e-2, 0.0, 1.0),
)  # fmt: skip


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
        probe_epochs=100, mixed_precision="no", num_workers=0, finetune_epochs=3,
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
                     init_from: Path | None = None,
                     regularizer: tuple[float, float, float] | None = None) -> PretrainConfig:  # fmt: skip
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
    if regularizer is not None:
        argv += ["--lambda1", str(regularizer[0]), "--lambda2", str(regularizer[1]), "--qscore-eps", str(regularizer[2])]
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


def _run_features(result: dict[str, Any], split: str) -> np.ndarray:
    """A finished run's cached features of ``split`` (``"train"`` or ``"eval"``), found through its eval report."""
    report = json.loads((Path(result["eval_dir"]) / "report.json").read_text())
    return _cached(report["feature_cache"][split])[0]


def feature_health(features: np.ndarray) -> dict[str, float]:
    """How alive a representation is: its mean activation, the fraction of features that never fire (max <= 0 over
    the set, dead ReLU units) and its effective rank (RankMe, Garrido et al. 2023: ``exp`` of the entropy of the
    normalized singular values of the centred features)."""
    singular = np.linalg.svd(features - features.mean(axis=0), compute_uv=False)
    p = singular / max(singular.sum(), np.finfo(np.float64).tiny) + 1e-12
    return {"mean_activation": float(features.mean()), "dead_fraction": float(np.mean(features.max(axis=0) <= 0)),
            "effective_rank": float(np.exp(-(p * np.log(p)).sum()))}  # fmt: skip


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers (e.g. 1,2); got {text!r}")


def _regularizer_setting(text: str) -> tuple[float, float, float]:
    try:
        lambda1, lambda2, eps = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LAMBDA1,LAMBDA2,EPS (three numbers, e.g. 1e-4,1e-6,1); got {text!r}")
    return lambda1, lambda2, eps


def _variant_name(regularizer: tuple[float, float, float]) -> str:
    return "qreg-lambda{:g}-{:g}-eps{:g}".format(*regularizer)


def run_one(scale: Scale, method: str, variant: str, root: Path, seed: int,
            regularizer: tuple[float, float, float] | None = None, suffix: str = "") -> dict[str, Any]:  # fmt: skip
    """One pre-training (or fine-tuning) run and its evaluation; skipped when its result exists. ``regularizer``
    replaces the published ``(lambda1, lambda2, eps)`` of a Q-reg run (``eps`` also becomes the model's scoring eps);
    ``suffix`` names the run folders of a repeat with another seed."""
    variant = _variant_name(regularizer) if regularizer else variant
    out = root / f"{method}-{variant}{suffix}"
    init_from = root / f"{method}-baseline{suffix}" / "model" if variant == "finetune" else None
    cfg = _pretrain_config(scale, method, out, seed, qscore_reg=variant != "baseline", init_from=init_from,
                           regularizer=regularizer)  # fmt: skip
    weights = {"regularizer": {"lambda1": cfg.lambda1, "lambda2": cfg.lambda2, "eps": cfg.qscore_eps}
               if cfg.qscore_reg else None}  # fmt: skip
    done = out / "result.json"
    if done.exists():
        return {**json.loads(done.read_text()), **weights, "seed": seed}
    started = time.time()
    model_dir = pretrain(cfg)
    result = {"method": method, "variant": variant, **_evaluate(model_dir, scale, out, root / "feature_cache"),
              **weights, "seed": seed, "seconds": round(time.time() - started, 1)}  # fmt: skip
    done.write_text(json.dumps(result, indent=2))
    return result


def eps_normalize_sweep(result: dict[str, Any], plots_dir: Path) -> list[dict[str, Any]]:
    """AUPRC of one run's Q-Scores for every eps and normalize, with D recounted from its training features; the PR
    curve and histograms of the run at its default (eps 4) and at the best setting go to ``plots_dir``."""
    train, test = _run_features(result, "train"), _run_features(result, "eval")
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


def _run_methods(scale: Scale, methods: list[str], runs: list[tuple[str, tuple[float, float, float] | None]],
                 root: Path, seed: int, suffix: str) -> dict[str, dict[str, Any]]:  # fmt: skip
    results = {}
    for method in methods:
        for variant, regularizer in runs:
            print(f"== {method} {variant} seed {seed}", flush=True)
            results[f"{method}-{variant}"] = run_one(scale, method, variant, root, seed, regularizer, suffix)
            print(json.dumps(results[f"{method}-{variant}"]), flush=True)
    return results


def over_seeds(by_seed: dict[int, dict[str, dict[str, Any]]], methods: list[str], variants: list[str]) -> dict[str, Any]:
    """Linear top-1 (%) of every method and variant over seeds, and each variant's relative change against the
    baseline of the same seed, per method and averaged over methods (mean and sample standard deviation)."""
    seeds = list(by_seed)
    top1 = {(m, v): np.array([100 * by_seed[s][f"{m}-{v}"]["top1"] for s in seeds]) for m in methods for v in variants}
    table: dict[str, Any] = {"seeds": seeds, "methods": {}, "mean_relative_change": {}}
    for method in methods:
        base = top1[method, "baseline"]
        table["methods"][method] = {}
        for variant in variants:
            values = top1[method, variant]
            row = {"top1": values.tolist(), "mean": float(values.mean()), "std": float(values.std(ddof=1))}
            if variant != "baseline":
                relative = 100 * (values - base) / base
                row.update(relative=relative.tolist(), relative_mean=float(relative.mean()),
                           relative_std=float(relative.std(ddof=1)))  # fmt: skip
            table["methods"][method][variant] = row
    for variant in variants[1:]:
        per_seed = np.mean([table["methods"][m][variant]["relative"] for m in methods], axis=0)
        table["mean_relative_change"][variant] = {"per_seed": per_seed.tolist(), "mean": float(per_seed.mean()),
                                                  "std": float(per_seed.std(ddof=1))}  # fmt: skip
    return table


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
             "| AUROC | abs(D) | dead features | effective rank |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in summary["runs"].values():
        lines.append(
            f"| {r['method']} | {r['variant']} | {100 * r['top1']:.2f} | {100 * r['knn_top1']:.2f} | "
            f"{100 * r['auprc_correct']:.2f} ({100 * r['base_rate_correct']:.2f}) | "
            f"{100 * r['auprc_misclassified']:.2f} ({100 * r['base_rate_misclassified']:.2f}) | "
            f"{r['auroc']:.3f} | {r['num_discriminative']} | {_health_cells(r)} |"
        )
    lines += ["", "Dead features: the fraction of the encoder's features that never fire on the test split; effective "
              "rank: RankMe (exp of the entropy of the normalized singular values of the centred test features)."]
    for variant, changes in summary["relative_top1_change_percent"].items():
        if changes["per_method"]:
            per = ", ".join(f"{m} {v:+.2f} %" for m, v in changes["per_method"].items())
            lines += ["", f"Relative top-1 change, {variant} vs baseline: {per}; mean {changes['mean']:+.2f} %."]
    lines += ["", f"Anchors (paper): {'; '.join(ANCHORS.values())}.", ""]
    if summary.get("over_seeds"):
        lines += _over_seeds_lines(summary["over_seeds"])
    if summary["regularizer_sweep"]:
        lines += _regularizer_sweep_lines(summary)
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


def _health_cells(result: dict[str, Any]) -> str:
    health = result["health"]
    return f"{100 * health['dead_fraction']:.0f} % | {health['effective_rank']:.1f}"


def _over_seeds_lines(table: dict[str, Any]) -> list[str]:
    variants = list(next(iter(table["methods"].values())))
    lines = [f"Linear top-1 over seeds {', '.join(map(str, table['seeds']))} (mean +- sample std; in brackets the "
             "relative change against the same seed's baseline):", "",
             "| method | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]  # fmt: skip
    for method, rows in table["methods"].items():
        cells = [f"{rows['baseline']['mean']:.2f} +- {rows['baseline']['std']:.2f}"]
        cells += [f"{r['mean']:.2f} +- {r['std']:.2f} ({r['relative_mean']:+.2f} +- {r['relative_std']:.2f} %)"
                  for v, r in rows.items() if v != "baseline"]  # fmt: skip
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    means = [f"{c['mean']:+.2f} +- {c['std']:.2f} %" for c in table["mean_relative_change"].values()]
    return lines + ["| mean relative change | | " + " | ".join(means) + " |", ""]


def _regularizer_sweep_lines(summary: dict[str, Any]) -> list[str]:
    first = next(iter(summary["regularizer_sweep"].values()))
    base = summary["runs"].get(f"{first['method']}-baseline")
    published = summary["runs"].get(f"{first['method']}-qreg")
    runs = [r for r in (base, published) if r] + list(summary["regularizer_sweep"].values())
    lines = [f"Effect of the regularizer's settings on {first['method']} (Q-reg from scratch, same seed and recipe; "
             "eps is the regularizer's and the evaluation's):", "",
             "| lambda1 | lambda2 | eps | linear top-1 | relative change | AUPRC correct (base rate) | AUROC "
             "| dead features | effective rank |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in runs:
        settings = r.get("regularizer") or {"lambda1": 0.0, "lambda2": 0.0, "eps": 4.0}
        change = f"{100 * (r['top1'] - base['top1']) / base['top1']:+.2f} %" if base else "n/a"
        lines.append(f"| {settings['lambda1']:g} | {settings['lambda2']:g} | {settings['eps']:g} | {100 * r['top1']:.2f} "
                     f"| {change} | {100 * r['auprc_correct']:.2f} ({100 * r['base_rate_correct']:.2f}) | "
                     f"{r['auroc']:.3f} | {_health_cells(r)} |")  # fmt: skip
    return lines + [""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), required=True)
    parser.add_argument("--methods", default=",".join(METHOD_ORDER))
    parser.add_argument("--finetune", action="store_true", help="also Q-Score fine-tune each baseline (lr 1e-5)")
    parser.add_argument("--also-regularizer", type=_regularizer_setting, metavar="LAMBDA1,LAMBDA2,EPS",
                        help="also Q-reg pre-train every method with these settings (e.g. 1e-4,1e-6,1)")
    parser.add_argument("--sweep-method", default="byol",
                        help="the method whose baseline gets the eps/normalize sweep (and --regularizer-sweep's runs)")
    parser.add_argument("--regularizer-sweep", action="store_true",
                        help=f"also Q-reg pre-train the sweep method with each (lambda1, lambda2, eps) of {REGULARIZER_SWEEP}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extra-seeds", type=_int_list, default=[], metavar="S1,S2",
                        help="repeat every method's runs with these seeds too; the summary adds mean +- std over seeds")
    parser.add_argument("--epochs", type=int, default=None, help="override the scale's pre-training epochs")
    parser.add_argument("--max-samples", type=int, default=None, help="override the scale's images per split")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/reproduce_<scale>")
    args = parser.parse_args()
    if SCALES[args.scale].mixed_precision != "no" and not torch.cuda.is_available():
        parser.error(f"--scale {args.scale} trains in {SCALES[args.scale].mixed_precision} on a CUDA GPU and none is "
                     "visible here (on a CPU it would take hours); use --scale cpu")  # fmt: skip
    scale = replace(SCALES[args.scale], epochs=args.epochs or SCALES[args.scale].epochs,
                    max_samples=args.max_samples or SCALES[args.scale].max_samples)  # fmt: skip
    root = args.out or Path(__file__).resolve().parent / "results" / f"reproduce_{args.scale}"
    root.mkdir(parents=True, exist_ok=True)
    if args.seed in args.extra_seeds or len(set(args.extra_seeds)) < len(args.extra_seeds):
        parser.error(f"--extra-seeds {args.extra_seeds} must be distinct seeds other than --seed {args.seed}")
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown method(s) {sorted(unknown)}; choose from {sorted(METHODS)}")

    runs: list[tuple[str, tuple[float, float, float] | None]] = [("baseline", None), ("qreg", None)]
    runs += [("finetune", None)] if args.finetune else []
    runs += [(_variant_name(args.also_regularizer), args.also_regularizer)] if args.also_regularizer else []
    variants = [variant for variant, _ in runs]
    results = _run_methods(scale, methods, runs, root, args.seed, suffix="")
    regularizer_runs: dict[str, dict[str, Any]] = {}
    if args.regularizer_sweep:
        for regularizer in REGULARIZER_SWEEP:
            print(f"== {args.sweep_method} {_variant_name(regularizer)}", flush=True)
            result = run_one(scale, args.sweep_method, "qreg", root, args.seed, regularizer=regularizer)
            regularizer_runs[f"{args.sweep_method}-{result['variant']}"] = result
            print(json.dumps(result), flush=True)
    for result in [*results.values(), *regularizer_runs.values()]:
        result["health"] = feature_health(_run_features(result, "eval"))
    by_seed = {args.seed: results}
    for seed in args.extra_seeds:
        by_seed[seed] = _run_methods(scale, methods, runs, root, seed, suffix=f"-seed{seed}")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    summary: dict[str, Any] = {
        **environment("reproduce", device), "scale": args.scale, "notes": scale.notes, "settings": asdict(scale),
        "runs": results, "regularizer_sweep": regularizer_runs, "anchors": ANCHORS, "relative_top1_change_percent": {},
    }  # fmt: skip
    for variant in variants[1:]:
        changes = _relative(results, variant)
        summary["relative_top1_change_percent"][variant] = {
            "per_method": changes, "mean": float(np.mean(list(changes.values()))) if changes else None,
        }
    if len(by_seed) > 1:
        summary["over_seeds"] = over_seeds(by_seed, methods, variants)
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
