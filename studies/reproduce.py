"""Reproduce the paper's claims (SPEC §5, §6) on data we can reach offline, choosing every default on a validation
split and reporting on the test split only what was chosen.

    python studies/reproduce.py --scale cpu --seeds 0,1,2 --regularizer-selection   # Fashion-MNIST subset, 2-core CPU
    python studies/reproduce.py --scale cpu-long --seeds 0                            # 10k images, 20 epochs (hours)
    python studies/reproduce.py --scale gpu                                           # Fashion-MNIST 60k/10k, bf16
    python studies/reproduce.py --scale cpu --backbone vit_tiny_patch16_224 --variants baseline  # the scoring study on
        --out studies/results/reproduce_cpu_vit                                                   # a ViT

For each method and seed, with the same recipe: a baseline pre-training and the ``--variants`` beside it (``qreg``:
the package's default Q-Score regularization; ``literal``: SPEC §6 as published; ``finetune``: Q-Score fine-tuning of
the baseline, lr 1e-5). Every run is linear-probed (``qscore_hf.linear_eval``) on its first ``max_samples`` training
images and evaluated on the validation split (the training images right after them) and on the test split, each
report with Q-Score beside its label-free baselines and the probe-confidence ceiling, plus the representation's
dead-feature fraction and effective rank.

Choices, on the validation split only (``studies/selection.py``):
- Q-Score's scoring settings (eps 1-4 or auto, normalize, percentile band), by mean AUROC over every baseline encoder;
  the test table then shows the chosen and the default setting beside every baseline;
- with ``--regularizer-selection``, the regularizer among ``CANDIDATES`` (and the literal form), by mean relative
  validation top-1 change on ``SELECTION_METHODS`` at seed 0, among those that keep their features alive.

Resumable: each run keeps its own folder under ``--out``; a finished run (``result.json``) is not run again, an
interrupted pre-training continues from its last checkpoint, so the long scale can run in the background across
sittings. Each run records the ``--data-pipeline`` it ran with (the scale's by default: ``pil`` on the CPU scales, as
their recorded runs, ``auto`` on the GPU), and one ``--out`` holds one pipeline's runs. The tables are printed last
and written to ``--out/summary.json`` and ``--out/summary.md``, with the PR curves of Q-Score (chosen setting) and the
baselines on one encoder beside them.
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

import selection
from _record import environment
from qscore_hf.baselines import BASELINES, CEILING
from qscore_hf.data_pipelines import DATA_PIPELINES
from qscore_hf.health import feature_health
from qscore_hf.knn import knn_accuracy
from qscore_hf.linear_eval import run_linear_eval
from qscore_hf.metrics import auroc_text
from qscore_hf.plots import plot_pr_curves
from qscore_hf.pretraining import PretrainConfig, pretrain
from qscore_hf.regularizer import DEFAULT_EPS, DEFAULT_L1_FORM, DEFAULT_LAMBDA1, DEFAULT_LAMBDA2
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
# The methods whose seed-0 runs choose the regularizer on the validation split (the rest only report the choice).
SELECTION_METHODS = ("byol", "simclr")


@dataclass(frozen=True)
class Regularizer:
    """One Q-Score regularization setting (SPEC §6): the L1 term's form, the two lambdas and eps."""

    form: str
    lambda1: float
    lambda2: float
    eps: float | str

    @property
    def name(self) -> str:
        eps = self.eps if isinstance(self.eps, str) else f"{self.eps:g}"
        return f"qreg-{self.form}-l{self.lambda1:g}-{self.lambda2:g}-eps{eps}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


LITERAL = Regularizer("sum", 1e-4, 1e-4, 4.0)  # SPEC §6 as published: a batch sum, the preprint's lambdas
DEFAULT = Regularizer(DEFAULT_L1_FORM, DEFAULT_LAMBDA1, DEFAULT_LAMBDA2, DEFAULT_EPS)  # the package's default
# Chosen among on the validation split (--regularizer-selection).
CANDIDATES = (
    Regularizer("normalized", 1e-4, 1e-3, 4.0), Regularizer("normalized", 1e-4, 1e-2, 4.0),
    Regularizer("mean", 1e-4, 1e-4, 4.0), Regularizer("normalized", 1e-2, 1e-2, "auto"),
)  # fmt: skip
# Named variants of every method's runs: (regularizer or None, fine-tune the baseline?).
VARIANTS: dict[str, tuple[Regularizer | None, bool]] = {
    "baseline": (None, False), "qreg": (DEFAULT, False), "literal": (LITERAL, False), "finetune": (DEFAULT, True),
}


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
    methods: tuple[str, ...] = METHOD_ORDER
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    # training/pretrain.py's and linear evaluation's --data-pipeline. The CPU scales' recorded runs trained and were
    # evaluated with per-image PIL decoding, the only pipeline then: a resumed or added run does the same, so that the
    # runs of a study compare like with like (main refuses to mix pipelines in one --out).
    data_pipeline: str = "pil"


# Small batches need smaller queues (MoCo's negatives, SwAV's Sinkhorn queue) than the ImageNet recipes.
_SMALL_QUEUES = {"moco": {"queue_size": 4096}, "swav": {"queue_size": 512, "num_prototypes": 300}}
SCALES = {
    "cpu": Scale(
        dataset="fashion_mnist", backbone="resnet10t", image_size=32, epochs=3, batch_size=128, max_samples=2048,
        probe_epochs=100, mixed_precision="no", num_workers=0, finetune_epochs=3,
        notes="a 2-core CPU: a shape check of the protocol, far from convergence", method_overrides=_SMALL_QUEUES,
    ),
    "cpu-long": Scale(
        dataset="fashion_mnist", backbone="resnet10t", image_size=32, epochs=20, batch_size=128, max_samples=10_000,
        probe_epochs=100, mixed_precision="no", num_workers=0, finetune_epochs=5, methods=("simclr", "byol"),
        notes="a 2-core CPU, about 75 minutes a run: does Q-Score's standing change with training length?",
        method_overrides=_SMALL_QUEUES,
    ),
    "gpu": Scale(
        dataset="fashion_mnist", backbone="resnet18_cifar", image_size=32, epochs=20, batch_size=256, max_samples=50_000,
        probe_epochs=100, mixed_precision="bf16", num_workers=8, finetune_epochs=5,
        notes="one H100-class GPU: the 12 runs fit about 25 minutes",
        method_overrides=_SMALL_QUEUES, data_pipeline="auto",  # no recorded runs: the package's default
    ),
}


def _pretrain_config(scale: Scale, method: str, out: Path, seed: int, regularizer: Regularizer | None,
                     init_from: Path | None = None) -> PretrainConfig:  # fmt: skip
    """The method's recipe (training/configs/<method>.yaml) at this scale."""
    argv = ["--method", method, "--output-dir", str(out), "--dataset", scale.dataset, "--backbone", scale.backbone,
            "--image-size", str(scale.image_size), "--batch-size", str(scale.batch_size), "--seed", str(seed),
            "--epochs", str(scale.finetune_epochs if init_from else scale.epochs), "--eval-split", "none",
            "--mixed-precision", scale.mixed_precision, "--num-workers", str(scale.num_workers), "--log-with", "none",
            "--resume", "auto", "--checkpoint-every", "100", "--no-progress",
            "--data-pipeline", scale.data_pipeline]  # fmt: skip
    if scale.max_samples:
        argv += ["--max-samples", str(scale.max_samples)]
    if regularizer is not None:
        argv += ["--qscore-reg", "--qscore-warmup-samples", str(min(10_000, 8 * scale.batch_size)),
                 "--qscore-l1-form", regularizer.form, "--lambda1", str(regularizer.lambda1),
                 "--lambda2", str(regularizer.lambda2), "--qscore-eps", str(regularizer.eps)]  # fmt: skip
    if init_from is not None:
        argv += ["--init-from", str(init_from), "--lr", "1e-5", "--warmup-epochs", "0"]
    if scale.method_overrides.get(method):
        argv += ["--method-kwargs", json.dumps(scale.method_overrides[method])]
    return parse_args(argv)


def runs_with_another_pipeline(root: Path, data_pipeline: str) -> list[str]:
    """The finished runs under ``root`` drawn with another data pipeline than ``data_pipeline`` (a ``result.json``
    without the key predates the switch: its run used ``pil``, the only pipeline then), as ``folder (pipeline)``."""
    other = []
    for done in sorted(root.glob("*/result.json")):
        used = json.loads(done.read_text()).get("data_pipeline", "pil")
        if used != data_pipeline:
            other.append(f"{done.parent.name} ({used})")
    return other


def validation_split(scale: Scale) -> str:
    """The validation split: the training images right after the ones pre-training and the probe use (at most
    10,000), so that settings are chosen on images that are neither the test split nor the probe's training set."""
    start = scale.max_samples or 50_000
    return f"train[{start}:{start + min(start, 10_000)}]"


def _evaluate(model_dir: Path, scale: Scale, out: Path, cache: Path) -> dict[str, Any]:
    """Linear probe + Q-Score metrics with their baselines (SPEC §5) and k-NN top-1, on the test split and on the
    validation split (the probe is trained on the same training images for both)."""
    results = {}
    for name, split in (("validation", validation_split(scale)), ("test", "test")):
        report = run_linear_eval(model_dir, scale.dataset, out / ("eval" if name == "test" else "eval-validation"),
                                 eval_split=split, max_samples=scale.max_samples, epochs=scale.probe_epochs,
                                 cache_dir=cache, update_model_card=name == "test", progress=False,
                                 data_pipeline=scale.data_pipeline)  # fmt: skip
        train, evaluation = _cached(report["feature_cache"]["train"]), _cached(report["feature_cache"]["eval"])
        knn = knn_accuracy(torch.from_numpy(train[0]), torch.from_numpy(train[1]), torch.from_numpy(evaluation[0]),
                           torch.from_numpy(evaluation[1]), k=20)  # fmt: skip
        keys = ("top1", "auprc_correct", "auprc_misclassified", "auroc", "base_rate_correct", "base_rate_misclassified")
        results[name] = {**{key: report[key] for key in keys}, "knn_top1": knn,
                         "num_discriminative": report["qscore"]["num_discriminative"],
                         "comparison": report["comparison"]["scores"], "degeneracy": report["degeneracy"],
                         "eval_dir": str(out / ("eval" if name == "test" else "eval-validation"))}  # fmt: skip
    # The test split's numbers stay at the top level (the tables read them); validation numbers choose settings.
    return {**results["test"], "validation": results["validation"]}


def _cached(folder: str) -> tuple[np.ndarray, np.ndarray]:
    return np.load(Path(folder) / "features.npy"), np.load(Path(folder) / "labels.npy")


def _run_features(result: dict[str, Any], split: str, evaluation: str = "test") -> np.ndarray:
    """A finished run's cached features of ``split`` (``"train"`` or ``"eval"``) as read by its ``evaluation``
    (``"test"`` or ``"validation"``) report."""
    folder = result["eval_dir"] if evaluation == "test" else result["validation"]["eval_dir"]
    report = json.loads((Path(folder) / "report.json").read_text())
    return _cached(report["feature_cache"][split])[0]


def _run_correct(result: dict[str, Any], evaluation: str = "test") -> np.ndarray:
    folder = result["eval_dir"] if evaluation == "test" else result["validation"]["eval_dir"]
    return pq.read_table(Path(folder) / "per_sample.parquet").column("correct").to_numpy()


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers (e.g. 0,1,2); got {text!r}")


def run_folder(root: Path, method: str, name: str, seed: int) -> Path:
    """Where a run lives: ``name`` is "baseline", a variant's name or a regularizer setting's ``name``."""
    return root / f"{method}-{name}-seed{seed}"


def run_one(scale: Scale, method: str, variant: str, regularizer: Regularizer | None, root: Path, seed: int,
            finetune: bool = False, run: bool = True) -> dict[str, Any] | None:  # fmt: skip
    """One pre-training (or fine-tuning of the same seed's baseline) and its evaluation on the validation and test
    splits; skipped when its ``result.json`` exists (``run=False``: ``None`` when it does not). ``regularizer``'s eps
    is the regularizer's only: the exported model scores with ``PretrainConfig``'s scoring settings (the package
    default), and the evaluation compares Q-Score settings on the features themselves."""
    # A regularized run's folder is named by its settings, so that a variant and a selection candidate with the same
    # settings (e.g. the default after it was chosen) share one run.
    out = run_folder(root, method, regularizer.name if regularizer is not None and not finetune else variant, seed)
    done = out / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    if not run:
        return None
    init_from = run_folder(root, method, "baseline", seed) / "model" if finetune else None
    cfg = _pretrain_config(scale, method, out, seed, regularizer, init_from)
    started = time.time()
    model_dir = pretrain(cfg)
    result = {"method": method, "variant": variant, "seed": seed, "data_pipeline": scale.data_pipeline,
              "regularizer": regularizer.to_dict() if regularizer else None,
              **_evaluate(model_dir, scale, out, root / "feature_cache")}  # fmt: skip
    result["health"] = feature_health(_run_features(result, "eval")).to_dict()
    result["validation_health"] = feature_health(_run_features(result, "eval", "validation")).to_dict()
    result["seconds"] = round(time.time() - started, 1)
    done.write_text(json.dumps(result, indent=2))
    return result


def scoring_selection(baselines: list[dict[str, Any]], plots_dir: Path) -> dict[str, Any]:
    """Q-Score settings chosen on the validation split over every baseline encoder; the chosen and the default
    setting, each label-free baseline and the ceiling, reported on the test split."""
    per_encoder = []
    for result in baselines:
        reference = _run_features(result, "train", "validation")
        per_encoder.append(selection.scoring_grid(reference, _run_features(result, "eval", "validation"),
                                                  _run_correct(result, "validation")))  # fmt: skip
    chosen, validation_table = selection.choose_scoring(per_encoder)
    q_settings = {f"q_score (paper: {selection.PAPER_SCORING.name})": selection.PAPER_SCORING,
                  f"q_score (chosen: {chosen.name})": chosen}  # fmt: skip
    if selection.PACKAGE_SCORING != chosen:
        q_settings[f"q_score (package default: {selection.PACKAGE_SCORING.name})"] = selection.PACKAGE_SCORING
    test_rows: dict[str, list[float]] = {}
    for result in baselines:
        reference, test, correct = _run_features(result, "train"), _run_features(result, "eval"), _run_correct(result)
        for name, setting in q_settings.items():
            scores, _, _ = selection.qscores(setting, reference, test)
            test_rows.setdefault(name, []).append(selection.auroc(scores, correct))
        for row in result["comparison"]:
            if row["score"] != "q_score":
                test_rows.setdefault(row["score"], []).append(row["auroc"])
    label_free = [name for name in test_rows if name in BASELINES]

    def wins(name: str) -> int:
        """Encoders on which ``name`` beats every label-free baseline other than itself."""
        others = [other for other in label_free if other != name]
        return int(sum(test_rows[name][k] > max(test_rows[o][k] for o in others) for k in range(len(baselines))))

    table = {name: {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                    "per_encoder": values, "wins_over_best_label_free": wins(name)}
             for name, values in test_rows.items()}  # fmt: skip
    first = baselines[0]
    scores, _, _ = selection.qscores(chosen, _run_features(first, "train"), _run_features(first, "eval"))
    columns = pq.read_table(Path(first["eval_dir"]) / "per_sample.parquet").to_pydict()
    curves = {"q_score": scores, **{name: np.asarray(columns[name]) for name in (*BASELINES, CEILING)}}
    plot_pr_curves(curves, _run_correct(first), plots_dir / "pr_curves_chosen_setting.png",
                   title=f"{first['method']} baseline seed {first['seed']}, test: Q-Score ({chosen.name}) and baselines")
    return {"chosen": chosen.name, "chosen_setting": asdict(chosen), "default": selection.PAPER_SCORING.name,
            "num_encoders": len(baselines), "encoders": [f"{r['method']} seed {r['seed']}" for r in baselines],
            "validation": validation_table, "test": table}  # fmt: skip


def regularizer_selection(runs: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]]) -> dict[str, Any]:
    chosen, rows = selection.choose_regularizer(runs)
    return {"methods": list(SELECTION_METHODS), "chosen": chosen, "package_default": DEFAULT.name, "rows": rows}


def over_seeds(by_seed: dict[int, dict[str, dict[str, Any]]], methods: list[str], variants: list[str]) -> dict[str, Any]:
    """Linear top-1 (%) of every method and variant over seeds, and each variant's relative change against the
    baseline of the same seed, per method and averaged over methods (mean and sample standard deviation), with the
    dead-feature fraction of each variant (mean over seeds)."""
    seeds = list(by_seed)
    top1 = {(m, v): np.array([100 * by_seed[s][f"{m}-{v}"]["top1"] for s in seeds]) for m in methods for v in variants}
    table: dict[str, Any] = {"seeds": seeds, "methods": {}, "mean_relative_change": {}}
    spread = (lambda values: float(values.std(ddof=1))) if len(seeds) > 1 else (lambda values: 0.0)
    for method in methods:
        base = top1[method, "baseline"]
        table["methods"][method] = {}
        for variant in variants:
            values = top1[method, variant]
            dead = [by_seed[s][f"{method}-{variant}"]["health"]["dead_fraction"] for s in seeds]
            row = {"top1": values.tolist(), "mean": float(values.mean()), "std": spread(values),
                   "dead_fraction": float(np.mean(dead))}  # fmt: skip
            if variant != "baseline":
                relative = 100 * (values - base) / base
                row.update(relative=relative.tolist(), relative_mean=float(relative.mean()),
                           relative_std=spread(relative))  # fmt: skip
            table["methods"][method][variant] = row
    for variant in variants[1:]:
        per_seed = np.mean([table["methods"][m][variant]["relative"] for m in methods], axis=0)
        table["mean_relative_change"][variant] = {"per_seed": per_seed.tolist(), "mean": float(per_seed.mean()),
                                                  "std": spread(per_seed)}  # fmt: skip
    return table


def _markdown(summary: dict[str, Any]) -> str:
    cfg = summary["settings"]
    data = f"the first {cfg['max_samples']} training and test images" if cfg["max_samples"] else "all images"
    setting = (f"{cfg['dataset']} ({data}; validation: {summary['validation_split']}) at {cfg['image_size']} px, "
               f"`{cfg['backbone']}`, {cfg['epochs']} epochs of batch {cfg['batch_size']}, same seed and recipe per "
               f"pair; {summary['notes']}.")  # fmt: skip
    lines = [f"# Q-Score reproduction, scale `{summary['scale']}`", "", setting, "",
             f"Command: `{summary['command']}`  ", f"Machine: {summary['machine']}, {summary['cpu_threads']} threads, "
             f"device {summary['device']}", "",
             "Test split. Best baseline: the label-free baseline with the highest AUROC against the probe's correctness "
             "on the same run (Q-Score's settings are compared in the next section, on the baseline encoders).", "",
             "| method | run | seed | linear top-1 | kNN top-1 | best label-free baseline (AUROC) "
             "| probe confidence AUROC | dead features | effective rank |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in summary["runs"]:
        rows = {row["score"]: row for row in r["comparison"]}
        best = max(BASELINES, key=lambda name: rows[name]["auroc"] if name in rows else -1.0)
        lines.append(
            f"| {r['method']} | {r['variant']} | {r['seed']} | {100 * r['top1']:.2f} | {100 * r['knn_top1']:.2f} | "
            f"{best} ({auroc_text(rows[best])}) | {auroc_text(rows[CEILING])} | "
            f"{100 * r['health']['dead_fraction']:.0f} % | {r['health']['effective_rank']:.1f} |"
        )
    lines += ["", "AUROCs of one run carry DeLong's 95 % interval in brackets. Dead features: the fraction of the "
              "encoder's features that never fire on the test split; effective rank: RankMe (exp of the entropy of the "
              "normalized singular values of the centred test features).", ""]
    if summary.get("scoring_selection"):
        lines += _scoring_lines(summary["scoring_selection"])
    if summary.get("regularizer_selection"):
        lines += _regularizer_lines(summary["regularizer_selection"])
    for key in ("over_seeds", "over_all_seeds"):
        if summary.get(key):
            lines += _over_seeds_lines(summary[key])
    lines += [f"Anchors (paper): {'; '.join(ANCHORS.values())}.", ""]
    return "\n".join(lines) + "\n"


def _scoring_lines(table: dict[str, Any]) -> list[str]:
    lines = [f"## Which score predicts the probe's mistakes? ({table['num_encoders']} baseline encoders)", "",
             f"Q-Score's settings chosen on the validation split (mean AUROC over the encoders, {len(table['validation'])} "
             f"settings: eps 1-4 or auto, normalize none/zscore/l1, band 50-95/0-100/25-95): **{table['chosen']}**. "
             "Five best and the paper's default on validation:", "",
             "| setting | mean AUROC (validation) | std | mean empty S_i |", "|---|---|---|---|"]  # fmt: skip
    shown = table["validation"][:5] + [row for row in table["validation"] if row["setting"] == table["default"]]
    for row in shown:
        lines.append(f"| {row['setting']} | {row['mean_auroc']:.3f} | {row['std_auroc']:.3f} | "
                     f"{100 * row['mean_empty_fraction']:.0f} % |")  # fmt: skip
    lines += ["", "Test split, only what was chosen (mean AUROC over encoders +- sample std; wins: encoders on which "
              "the score beats every other label-free baseline):", "",
              "| score | mean AUROC (test) | std | wins over the best (other) label-free baseline |", "|---|---|---|---|"]  # fmt: skip
    for name, row in sorted(table["test"].items(), key=lambda item: -item[1]["mean"]):
        lines.append(f"| {name} | {row['mean']:.3f} | {row['std']:.3f} | {row['wins_over_best_label_free']} of "
                     f"{table['num_encoders']} |")  # fmt: skip
    return lines + [""]


def _regularizer_lines(table: dict[str, Any]) -> list[str]:
    lines = [f"## Regularizer chosen on the validation split ({', '.join(table['methods'])}, seed 0)", "",
             f"Chosen: **{table['chosen']}**; the package default is {table['package_default']}. Eligible: no more "
             f"than {100 * selection.DEAD_MARGIN:.0f} points more dead features than the baseline.", "",
             "| regularizer | mean relative validation top-1 change | per method | max dead-feature gap | eligible "
             "| effective rank (baseline) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for row in table["rows"]:
        per = ", ".join(f"{v:+.2f} %" for v in row["relative_changes"])
        ranks = ", ".join(f"{r:.0f} ({b:.0f})" for r, b in zip(row["effective_rank"], row["baseline_effective_rank"]))
        lines.append(f"| {row['regularizer']} | {row['mean_relative_change']:+.2f} % | {per} | "
                     f"{100 * row['max_dead_gap']:+.0f} pts | {'yes' if row['eligible'] else 'no'} | {ranks} |")  # fmt: skip
    return lines + [""]


def _over_seeds_lines(table: dict[str, Any]) -> list[str]:
    variants = list(next(iter(table["methods"].values())))
    lines = [f"## Linear top-1 over seeds {', '.join(map(str, table['seeds']))} (test split)", "",
             "Mean +- sample std; in brackets the relative change against the same seed's baseline, then the mean "
             "dead-feature fraction.", "",
             "| method | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]  # fmt: skip
    for method, rows in table["methods"].items():
        cells = [f"{rows['baseline']['mean']:.2f} +- {rows['baseline']['std']:.2f}; "
                 f"{100 * rows['baseline']['dead_fraction']:.0f} % dead"]  # fmt: skip
        cells += [f"{r['mean']:.2f} +- {r['std']:.2f} ({r['relative_mean']:+.2f} +- {r['relative_std']:.2f} %); "
                  f"{100 * r['dead_fraction']:.0f} % dead" for v, r in rows.items() if v != "baseline"]  # fmt: skip
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    means = [f"{c['mean']:+.2f} +- {c['std']:.2f} %" for c in table["mean_relative_change"].values()]
    return lines + ["| mean relative change | | " + " | ".join(means) + " |", ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), required=True)
    parser.add_argument("--methods", default=None, help="comma-separated (default: the scale's methods)")
    parser.add_argument("--variants", default="baseline,qreg",
                        help=f"comma-separated, from {sorted(VARIANTS)} (default: baseline,qreg); 'baseline' is "
                             "always run")  # fmt: skip
    parser.add_argument("--seeds", type=_int_list, default=[0], metavar="S1,S2", help="seeds (default: 0)")
    parser.add_argument("--regularizer-selection", action="store_true",
                        help=f"also run {len(CANDIDATES)} candidate regularizers (and the literal and default ones) "
                             f"on {', '.join(SELECTION_METHODS)} seed 0, and choose one on the validation split")
    parser.add_argument("--backbone", default=None,
                        help="override the scale's backbone (any timm name, e.g. vit_tiny_patch16_224 for a ViT)")
    parser.add_argument("--dataset", default=None,
                        help="override the scale's data set: a built-in name (digits, fashion_mnist, cifar10), a local "
                             "folder or a Hub id; it needs labels and at least 2 x --max-samples training images")
    parser.add_argument("--epochs", type=int, default=None, help="override the scale's pre-training epochs")
    parser.add_argument("--max-samples", type=int, default=None, help="override the scale's images per split")
    parser.add_argument("--data-pipeline", choices=DATA_PIPELINES, default=None,
                        help="the scale's by default (cpu, cpu-long: pil, as their recorded runs; gpu: auto); auto: "
                             "tensor where it can serve the run, else pil; pil: per-image PIL augmentation; tensor: "
                             "images decoded once, views drawn per batch by kornia. One --out holds one pipeline's runs")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: studies/results/reproduce_<scale> (cpu_long for cpu-long)")
    parser.add_argument("--summary-only", action="store_true",
                        help="run nothing: tabulate the finished runs (e.g. while others still run in the background)")
    args = parser.parse_args()
    if SCALES[args.scale].mixed_precision != "no" and not torch.cuda.is_available():
        parser.error(f"--scale {args.scale} trains in {SCALES[args.scale].mixed_precision} on a CUDA GPU and none is "
                     "visible here (on a CPU it would take hours); use --scale cpu")  # fmt: skip
    scale = replace(SCALES[args.scale], epochs=args.epochs or SCALES[args.scale].epochs,
                    max_samples=args.max_samples or SCALES[args.scale].max_samples,
                    backbone=args.backbone or SCALES[args.scale].backbone,
                    dataset=args.dataset or SCALES[args.scale].dataset,
                    data_pipeline=args.data_pipeline or SCALES[args.scale].data_pipeline)  # fmt: skip
    root = args.out or Path(__file__).resolve().parent / "results" / f"reproduce_{args.scale.replace('-', '_')}"
    other = runs_with_another_pipeline(root, scale.data_pipeline)
    if other and not args.summary_only:
        listed = ", ".join(other[:3]) + (f" and {len(other) - 3} more" if len(other) > 3 else "")
        parser.error(f"{root} holds runs drawn with another data pipeline than {scale.data_pipeline}: {listed}; the "
                     "runs of one study compare like with like: give this pipeline its own --out, or leave "
                     "--data-pipeline at the scale's")  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    if len(set(args.seeds)) < len(args.seeds):
        parser.error(f"--seeds {args.seeds} must be distinct")
    methods = [m for m in (args.methods.split(",") if args.methods else scale.methods) if m]
    variants = ["baseline"] + [v for v in args.variants.split(",") if v and v != "baseline"]
    unknown = (set(methods) - set(METHODS)) | (set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown method(s) or variant(s) {sorted(unknown)}; choose from {sorted(METHODS)} and "
                     f"{sorted(VARIANTS)}")  # fmt: skip

    run = not args.summary_only
    by_seed: dict[int, dict[str, dict[str, Any]]] = {}
    for seed in args.seeds:
        by_seed[seed] = {}
        for method in methods:
            for variant in variants:
                print(f"== {method} {variant} seed {seed}", flush=True)
                regularizer, finetune = VARIANTS[variant]
                result = run_one(scale, method, variant, regularizer, root, seed, finetune, run)
                if result is not None:
                    by_seed[seed][f"{method}-{variant}"] = result
    # The tables cover every finished run under --out, not only this call's --methods and --seeds: runs done in
    # batches (--methods simclr, then --methods byol) add up to one summary instead of overwriting each other's.
    for done_file in sorted(root.glob("*/result.json")):
        result = json.loads(done_file.read_text())
        if result["variant"] in VARIANTS:
            by_seed.setdefault(result["seed"], {})[f"{result['method']}-{result['variant']}"] = result
    seeds = sorted(by_seed)
    methods = [m for m in METHOD_ORDER if any(f"{m}-baseline" in runs for runs in by_seed.values())]
    candidate_runs: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    if args.regularizer_selection:
        for regularizer in (*CANDIDATES, LITERAL):
            for method in SELECTION_METHODS:
                print(f"== {method} {regularizer.name} seed 0 (selection)", flush=True)
                base = run_one(scale, method, "baseline", None, root, 0, run=run)
                result = run_one(scale, method, regularizer.name, regularizer, root, 0, run=run)
                if base is not None and result is not None:
                    candidate_runs.setdefault(regularizer.name, []).append((result, base))
        # Only candidates finished on every selection method compete.
        candidate_runs = {name: pairs for name, pairs in candidate_runs.items() if len(pairs) == len(SELECTION_METHODS)}

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    runs = [run for seed in by_seed.values() for run in seed.values()]
    runs += [run for pairs in candidate_runs.values() for run, _ in pairs]
    baselines = [run for run in runs if run["variant"] == "baseline"]
    baselines = list({(r["method"], r["seed"]): r for r in baselines}.values())
    summary: dict[str, Any] = {
        **environment("reproduce", device), "scale": args.scale, "notes": scale.notes, "settings": asdict(scale),
        "validation_split": validation_split(scale), "runs": runs, "anchors": ANCHORS,
        "scoring_selection": scoring_selection(baselines, root) if baselines else None,
        "regularizer_selection": regularizer_selection(candidate_runs) if candidate_runs else None,
    }  # fmt: skip
    # Over seeds, with what finished: every method on the seeds all of them completed, and, when that leaves seeds
    # out, the methods that completed every seed.
    def done(method: str, seed: int) -> bool:
        return all(f"{method}-{v}" in by_seed[seed] for v in variants)

    common = [seed for seed in seeds if all(done(m, seed) for m in methods)]
    if len(variants) > 1 and common:
        summary["over_seeds"] = over_seeds({seed: by_seed[seed] for seed in common}, methods, variants)
    full = [m for m in methods if all(done(m, seed) for seed in seeds)]
    if len(variants) > 1 and full and len(common) < len(seeds):
        summary["over_all_seeds"] = over_seeds(by_seed, full, variants)
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    table = _markdown(summary)
    (root / "summary.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
