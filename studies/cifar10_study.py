"""Does Q-Score work once an SSL encoder has really learned, on natural images? (issue 18)

    python studies/cifar10_study.py --method simclr --seed 0                 # a converged CPU run and its trajectory
    python studies/cifar10_study.py --method byol --seed 0 --variants qreg   # the same from scratch with the default Q-reg
    python studies/cifar10_study.py --method simclr --variants baseline,finetune-plain,finetune-qreg,qreg  # all, in order
    python studies/cifar10_study.py --method byol --variants baseline-sgd,finetune-plain-sgd,finetune-qreg-sgd,qreg-sgd
    python studies/cifar10_study.py --summary                                # tables and figures of what finished
    python studies/cifar10_study.py --smoke --out /tmp/smoke                 # the same code path in a minute

The CPU setting (``SETTINGS["cpu"]``): CIFAR-10's first 10,000 training images, timm ``resnet10t`` at 32 px, the
method's solo-learn CIFAR recipe (training/configs/<method>.yaml) with its warm-up cut to 3 epochs, 30 epochs of
batch 256 on one thread, with the backbone kept at 8 log-spaced epochs. At each of those snapshots a linear probe is trained on the 10,000 images'
features and ``trajectory.snapshot_report`` compares every score on the validation split (``train[45000:50000]``,
exact pixels, never trained on) and on the test split (10,000 JPEG re-encodings). The Q-reg comparisons: ``qreg``
pre-trains from scratch with the package's default Q-Score regularization, same recipe and length as the baseline;
``finetune-qreg`` fine-tunes the converged baseline with it for 5 epochs at lr 1e-5 (the published recipe's learning
rate; it runs 50 epochs), against ``finetune-plain``, the same continuation without it (same steps, seed, data order).
``qreg-zscore`` is ``qreg`` with a scale-free Q term (``--qscore-normalize zscore``): the default's unnormalized Q term
inflated a few features and collapsed the representation here (README "Results"). ``qreg-lambda1e-4`` is ``qreg``
with the preprint's Q-term weight (``--lambda1 1e-4``, the package default 1e-2), the rest (L1 term, eps) unchanged.
A suffix names another recipe (``RECIPES``): ``baseline-sgd`` is the baseline with SGD for the YAML's LARS, with which
BYOL does not learn here; ``qreg-sgd``, ``finetune-plain-sgd`` and ``finetune-qreg-sgd`` are the Q-reg comparisons on
it (the fine-tunes start from ``baseline-sgd``).

Resumable and incremental: weights and checkpoints live in ``--work`` (default ``~/.cache/qscore_hf/bench/<out
name>``, outside the repository), results in ``--out`` (``studies/results/cifar10_converged``): each evaluated snapshot
is written there as ``<run>/epoch_NNNN.json`` as soon as it exists, and the per-epoch kNN monitor as
``<run>/knn_monitor.json``, so a run cut short loses at most the evaluation in flight. Run it again to continue.

The data: ``cifar10`` as ``qscore_hf.data`` resolves it; when ``$QSCORE_CIFAR10_DIR`` is unset and the shared copy
``../shared/data/cifar10`` exists beside the checkout, that copy is used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from qscore_hf.data_pipelines import DATA_PIPELINES

import study_summary
import trajectory
from _record import environment
from study_variants import QREG_VARIANTS, RECIPES, VARIANTS, split_recipe, with_recipe

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR10 = REPO.parent / "shared" / "data" / "cifar10"
sys.path.insert(0, str(REPO / "training"))
METHODS = ("simclr", "byol", "moco", "simsiam", "swav", "dino")


@dataclass(frozen=True)
class Setting:
    """One protocol: the data, the encoder, the schedule and the evaluation."""

    train_split: str  # pre-training images, also the probe's training set and the reference set of D and kNN
    validation_split: str
    test_split: str
    backbone: str
    image_size: int
    epochs: int
    warmup_epochs: float
    batch_size: int
    snapshots: int  # about this many log-spaced epochs are kept and evaluated
    probe_epochs: int
    knn_monitor_train: int
    knn_monitor_eval: int
    finetune_epochs: int
    finetune_snapshots: int
    finetune_lr: float
    notes: str
    backbone_args: tuple[str, ...] = ()  # more training/pretrain.py flags for the backbone (e.g. its stem padding)
    recipe_args: tuple[str, ...] = ()  # more training/pretrain.py flags for the recipe
    mixed_precision: str = "no"
    num_workers: int = 0
    device: str = "cpu"  # where snapshots are evaluated
    data_pipeline: str = "auto"  # training/pretrain.py --data-pipeline

    @property
    def train_images(self) -> int:
        """N of ``train_split``, which is ``train[0:N]``: pre-training uses the first N training images."""
        from qscore_hf.data import _parse_split  # the data loader's own reading of NAME[START:STOP]

        split, start, stop = _parse_split(self.train_split)
        if split != "train" or start != 0 or stop is None:
            raise ValueError(f"train_split {self.train_split}: pre-training uses the first N images (train[0:N]).")
        return stop


SETTINGS = {
    "cpu": Setting(
        train_split="train[0:10000]", validation_split="train[45000:50000]", test_split="test", backbone="resnet10t",
        image_size=32, epochs=30, warmup_epochs=3, batch_size=256, snapshots=8, probe_epochs=100, knn_monitor_train=5000,
        knn_monitor_eval=2000, finetune_epochs=5, finetune_snapshots=2, finetune_lr=1e-5,
        notes="2-core CPU, one thread a run (two runs side by side), about an hour of training a run",
        # Its runs trained before pre-training's LARS clipped its layer-wise rate (solo-learn's clip_lr): they stay
        # reproducible without it.
        recipe_args=("--no-lars-clip",),
        # ... and with per-image PIL augmentation, the only pipeline then: a resumed or added run of the recorded
        # study draws its views as the others did (--data-pipeline overrides it for a new study)
        data_pipeline="pil",
    ),
    "smoke": Setting(
        train_split="train[0:512]", validation_split="train[45000:45256]", test_split="test[0:256]",
        backbone="resnet10t", image_size=32, epochs=3, warmup_epochs=1, batch_size=64, snapshots=3, probe_epochs=5,
        knn_monitor_train=256, knn_monitor_eval=128, finetune_epochs=1, finetune_snapshots=1, finetune_lr=1e-5,
        notes="the same code path on a few hundred images (a test, not a measurement)",
    ),
}


def use_shared_cifar10() -> None:
    """Point ``cifar10`` at the shared offline copy when no local copy is configured."""
    if not os.environ.get("QSCORE_CIFAR10_DIR") and SHARED_CIFAR10.is_dir():
        os.environ["QSCORE_CIFAR10_DIR"] = str(SHARED_CIFAR10)


def run_name(method: str, variant: str, seed: int) -> str:
    return f"{method}-{variant}-seed{seed}"


def pretrain_config(setting: Setting, method: str, variant: str, seed: int, work: Path):
    """The ``PretrainConfig`` of a run: the method's recipe at this setting; a ``finetune-*`` pair starts from the
    same seed's baseline and differs only in Q-Score regularization (same steps, seed and data order)."""
    from pretrain import parse_args  # training/pretrain.py: the recipes' YAML and their parsing

    kind, recipe = split_recipe(variant)
    finetune = kind.startswith("finetune")
    argv = ["--method", method, "--output-dir", str(work / run_name(method, variant, seed)), "--dataset", "cifar10",
            "--split", "train", "--max-samples", str(setting.train_images), "--backbone", setting.backbone,
            "--image-size", str(setting.image_size), "--batch-size", str(setting.batch_size), "--seed", str(seed),
            "--epochs", str(setting.finetune_epochs if finetune else setting.epochs),
            "--warmup-epochs", str(0 if finetune else setting.warmup_epochs),
            "--eval-split", setting.validation_split if setting.knn_monitor_eval else "none",
            "--knn-max-train", str(setting.knn_monitor_train), "--knn-max-eval", str(setting.knn_monitor_eval),
            "--num-workers", str(setting.num_workers), "--log-with", "none", "--resume", "auto",
            "--checkpoint-every", "0", "--mixed-precision", setting.mixed_precision, "--no-progress",
            "--data-pipeline", setting.data_pipeline,
            *setting.backbone_args, *setting.recipe_args,
            "--snapshot-epochs", f"log:{setting.finetune_snapshots if finetune else setting.snapshots}"]  # fmt: skip
    if kind in QREG_VARIANTS:
        argv += ["--qscore-reg", *QREG_VARIANTS[kind]]
    argv += RECIPES[recipe] if recipe else ()
    if finetune:
        base = work / run_name(method, with_recipe("baseline", recipe), seed) / "model"
        if not base.is_dir():
            raise FileNotFoundError(f"{variant} fine-tunes {base}, which does not exist yet: run the baseline first.")
        argv += ["--init-from", str(base), "--lr", str(setting.finetune_lr)]
    return parse_args(argv)


def _current_step(output_dir: Path) -> int:
    from qscore_hf.pretraining import CHECKPOINT_DIR

    steps = [int(p.name.split("_")[1]) for p in (output_dir / CHECKPOINT_DIR).glob("step_*")]
    return max(steps, default=0)


def _write_json(path: Path, data: Any) -> None:
    from qscore_hf.io_utils import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2))


def snapshot_probe(model_dir: Path, setting: Setting, cache: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], Any]:
    """Features and labels of the three splits, and the linear probe trained on the training split's (seed 0: the
    same features give the same probe)."""
    from qscore_hf import QScoreModel
    from qscore_hf.data import load_image_dataset
    from qscore_hf.features import extract_features
    from qscore_hf.probe import train_linear_probe

    model = QScoreModel.from_pretrained(model_dir)
    feats = {}
    for name, split in (("train", setting.train_split), ("validation", setting.validation_split),
                        ("test", setting.test_split)):  # fmt: skip
        data = load_image_dataset("cifar10", split)
        extracted = extract_features(model, data, batch_size=512, device=setting.device, cache_dir=cache,
                                     num_workers=setting.num_workers, progress=False,
                                     data_pipeline=setting.data_pipeline)  # fmt: skip
        feats[name] = (np.asarray(extracted.features, dtype=np.float32), np.asarray(extracted.labels))
    probe = train_linear_probe(*feats["train"], epochs=setting.probe_epochs, num_classes=10, device=setting.device, seed=0,
                               progress=False)  # fmt: skip
    return feats, probe


def evaluate_snapshot(model_dir: Path, setting: Setting, cache: Path) -> dict[str, Any]:
    """``trajectory.snapshot_report`` of a snapshot, with the probe's settings and training top-1."""
    feats, probe = snapshot_probe(model_dir, setting, cache)
    report = trajectory.snapshot_report(feats["train"], feats["validation"], feats["test"],
                                        probe.logits(feats["validation"][0]), probe.logits(feats["test"][0]))  # fmt: skip
    report["probe"] = probe.settings.to_dict()
    report["train_top1"] = float(np.mean(probe.predict(feats["train"][0]) == feats["train"][1]))
    return report


def add_probe_correctness(setting: Setting, work: Path, out: Path) -> None:
    """Per-image correctness at both ends of every Q-reg comparison whose reports predate it: the probe is trained
    again on the snapshot's cached features; refused where its top-1 differs from the report's."""
    from qscore_hf.pretraining import snapshot_folder

    for row in study_summary.regularizer_comparisons(study_summary.load_runs(out)):
        for name in (row["run"], row["control"]):
            path = out / name / f"epoch_{row['epoch']:04d}.json"
            report = json.loads(path.read_text())
            if "correct" in report:
                continue
            print(f"== {name}: the probe of epoch {row['epoch']} again, for its per-image correctness", flush=True)
            feats, probe = snapshot_probe(snapshot_folder(work / name, row["epoch"]), setting, work / "feature_cache")
            correct = {split: trajectory.pack_correct(trajectory.correct_of(probe.logits(feats[split][0]), feats[split][1]))
                       for split in ("validation", "test")}  # fmt: skip
            for split, packed in correct.items():
                top1 = float(trajectory.unpack_correct(packed).mean())
                if abs(top1 - report[split]["top1"]) > 1e-9:
                    raise RuntimeError(f"{path}: the probe trained again gets {split} top-1 {top1:.4f}, the report "
                                       f"{report[split]['top1']:.4f}; evaluate that snapshot anew (delete the file).")  # fmt: skip
            report["correct"] = correct
            _write_json(path, report)


def supervised_config(setting: Setting, seed: int, work: Path):
    """The supervised control: the same backbone, images and snapshot epochs, trained with labels."""
    from supervised import SupervisedConfig
    from qscore_hf.pretraining import log_spaced_epochs

    return SupervisedConfig(output_dir=str(work / f"supervised-seed{seed}"), dataset="cifar10",
                            split=setting.train_split, backbone=setting.backbone, image_size=setting.image_size,
                            epochs=setting.epochs, batch_size=setting.batch_size, seed=seed,
                            snapshot_epochs=log_spaced_epochs(setting.epochs, setting.snapshots))  # fmt: skip


def run(setting: Setting, method: str, variant: str, seed: int, work: Path, out: Path) -> None:
    """Train (resuming) up to each snapshot epoch and evaluate it; skip what ``out`` already holds. The
    ``supervised`` variant trains the control (``studies/supervised.py``) whatever ``method`` is."""
    from qscore_hf.pretraining import pretrain, snapshot_folder

    steps_per_epoch = setting.train_images // setting.batch_size
    if variant == "supervised":
        from supervised import train_supervised

        cfg = supervised_config(setting, seed, work)
        name = f"supervised-seed{seed}"

        def train_to(epoch: int) -> None:
            train_supervised(cfg, stop_after_epoch=epoch)
    else:
        cfg = pretrain_config(setting, method, variant, seed, work)
        name = run_name(method, variant, seed)

        def train_to(epoch: int) -> None:
            step, target = _current_step(Path(cfg.output_dir)), epoch * steps_per_epoch
            if step >= target:
                raise RuntimeError(f"{cfg.output_dir} is at step {step} but has no snapshot of epoch {epoch}: remove "
                                   "it and run again.")  # fmt: skip
            pretrain(replace(cfg, stop_after_steps=target - step))

    output_dir, results = Path(cfg.output_dir), out / name
    _write_json(results / "config.json", {"setting": asdict(setting), "pretrain": {
        k: v for k, v in asdict(cfg).items() if k not in ("output_dir", "resume", "progress")}})
    # Snapshots that exist already (a report to redo) come first, the latest first: the converged encoder's report
    # is the one a cut-short sitting should not lose; then training continues in order.
    kept = sorted((e for e in cfg.snapshot_epochs if snapshot_folder(output_dir, e).exists()), reverse=True)
    for epoch in kept + [e for e in cfg.snapshot_epochs if e not in kept]:
        result_file = results / f"epoch_{epoch:04d}.json"
        if result_file.exists() and _report_version(result_file) == trajectory.REPORT_VERSION:
            continue
        snapshot = snapshot_folder(output_dir, epoch)
        # A report of an older version is evaluated again; the training time it recorded stays.
        train_seconds = json.loads(result_file.read_text()).get("train_seconds") if result_file.exists() else None
        if not snapshot.exists():
            print(f"== {name}: training to epoch {epoch}", flush=True)
            started = time.time()
            train_to(epoch)
            train_seconds = time.time() - started
        started = time.time()
        report = evaluate_snapshot(snapshot, setting, work / "feature_cache")
        report.update(epoch=epoch, step=epoch * steps_per_epoch, train_seconds=train_seconds,
                      eval_seconds=round(time.time() - started, 1))  # fmt: skip
        _write_json(result_file, report)
        write_monitors(output_dir, results)
        test = report["test"]
        print(f"   epoch {epoch}: linear top-1 {100 * test['top1']:.2f} %, test AUROC Q chosen "
              f"{test['scores'][trajectory.Q_CHOSEN]['auroc']:.3f} vs {report['q_minus_rival']['rival']} "
              f"{test['scores'][report['q_minus_rival']['rival']]['auroc']:.3f}", flush=True)


def _report_version(path: Path) -> int:
    return int(json.loads(path.read_text()).get("report_version", 1))


def write_monitors(output_dir: Path, results: Path) -> None:
    """The per-epoch kNN monitor and, for a Q-regularized run, the regularizer's activity, from the run's log."""
    from qscore_hf.pretraining import TRAIN_LOG

    rows = _log_rows(output_dir / TRAIN_LOG)
    _write_json(results / "knn_monitor.json", _knn_monitor(rows))
    activity = qreg_activity(rows)
    if activity:
        _write_json(results / "qreg_activity.json", activity)


def _log_rows(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []


def _knn_monitor(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"epoch": r["epoch"] + 1, "step": r["step"], "knn_top1": v} for r in rows
            for k, v in r.items() if k.startswith("knn_top1")]  # fmt: skip


def qreg_activity(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per epoch (1-based), the means over its logged steps and views of what the Q-Score regularizer did: the
    fraction of samples its Q term pushed, ``|D|``, the Q term and the L1 term. Empty for a run without it."""
    per_epoch: dict[int, dict[str, list[float]]] = {}
    for row in rows:
        views = sorted({key.split("/")[1] for key in row if key.startswith("qscore/view")})
        for view in views:
            figures = per_epoch.setdefault(row["epoch"] + 1, {})
            for name in ("q_term_active_fraction", "num_discriminative", "q_term", "l1_term"):
                figures.setdefault(name, []).append(row[f"qscore/{view}/{name}"])
    return [{"epoch": epoch, **{name: sum(values) / len(values) for name, values in figures.items()}}
            for epoch, figures in sorted(per_epoch.items())]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=METHODS, default="simclr")
    parser.add_argument("--variants", default="baseline",
                        help=f"comma-separated, run in this order, from {', '.join(VARIANTS)} (default: baseline); the "
                             "finetune-* variants start from the same seed's finished baseline of their recipe suffix")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="the smoke setting (a few hundred images, 3 epochs)")
    parser.add_argument("--out", type=Path, default=None, help="results (default: studies/results/cifar10_converged)")
    parser.add_argument("--work", type=Path, default=None,
                        help="weights, checkpoints and feature caches (default: ~/.cache/qscore_hf/bench/<out name>)")
    parser.add_argument("--summary", action="store_true", help="only tabulate and plot what finished")
    parser.add_argument("--data-pipeline", choices=DATA_PIPELINES, default=None,
                        help="the setting's by default (cpu: pil, as its recorded runs; smoke: auto); auto: "
                             "tensor where it can serve the run, else pil; pil: per-image PIL augmentation; "
                             "tensor: images decoded once, views drawn per batch by kornia")
    parser.add_argument("--paired", action="store_true",
                        help="first train again the probes of each Q-reg comparison's two snapshots whose reports "
                             "predate per-image correctness, for the paired interval of their top-1 difference")
    args = parser.parse_args(argv)
    setting = SETTINGS["smoke" if args.smoke else "cpu"]
    if args.data_pipeline:
        setting = replace(setting, data_pipeline=args.data_pipeline)
    out = args.out or REPO / "studies" / "results" / "cifar10_converged"
    work = args.work or Path.home() / ".cache" / "qscore_hf" / "bench" / out.name
    use_shared_cifar10()
    variants = [v for v in args.variants.split(",") if v]
    if set(variants) - set(VARIANTS):
        parser.error(f"unknown variant(s) {sorted(set(variants) - set(VARIANTS))}; choose from {', '.join(VARIANTS)}")
    for variant in [] if args.summary or args.paired else variants:
        run(setting, args.method, variant, args.seed, work, out)
    if args.paired:
        add_probe_correctness(setting, work, out)
    # the monitors of every run whose training log is here: also runs in flight elsewhere or of older versions
    for results in [folder for folder in out.iterdir() if (work / folder.name).is_dir()] if out.exists() else []:
        write_monitors(work / results.name, results)
    study_summary.write_summary(out, command=" ".join(["python", "studies/cifar10_study.py", *(argv or sys.argv[1:])]),
                                machine=environment("cifar10_study"))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
