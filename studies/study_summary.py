"""Tables and figures of ``studies/cifar10_study.py``'s results folder, from what finished (issue 18).

- ``summary.md`` / ``summary.json``: per run and snapshot, linear and kNN top-1, test AUROC of every score, Q-Score
  minus the label-free baseline chosen on validation with its paired bootstrap interval, empty S_i, |D| and the
  effective rank; the last snapshot of each run with both AUPRCs and their base rates; whether the run converged.
- ``auroc_vs_epoch_<method>.png``: test AUROC against epoch, a line per score (one figure per method and variant).
- ``knn_plateau.png``: the per-epoch kNN monitor of every run, with the plateau criterion.
- A table of each Q-regularized run against its control (``regularizer_comparisons``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from study_variants import split_recipe, with_recipe
from trajectory import (CONFIDENCE, EXTENSION_SCORES, Q_CHOSEN, Q_DEFAULT, Q_PAPER, paired_accuracy_difference,
                        unpack_correct)
from qscore_hf.baselines import BASELINES, CEILING
from qscore_hf.metrics import auroc_text
from qscore_hf.plots import _figure  # the package's Agg figure, no pyplot state

SCORES = (Q_PAPER, Q_DEFAULT, Q_CHOSEN, *EXTENSION_SCORES, *BASELINES, CEILING)
# Converged: the kNN top-1 of the last quarter of the epochs varies by at most this much (points).
PLATEAU_POINTS = 1.0


def load_runs(out: Path) -> dict[str, dict[str, Any]]:
    """``{run: {"snapshots": [report, ...] by epoch, "knn": [...], "config": {...}}}`` of every run folder with at
    least one evaluated snapshot."""
    runs = {}
    for folder in sorted(p for p in out.iterdir() if p.is_dir() and (p / "config.json").exists()):
        snapshots = [json.loads(p.read_text()) for p in sorted(folder.glob("epoch_*.json"))]
        if not snapshots:
            continue
        knn_file, activity_file = folder / "knn_monitor.json", folder / "qreg_activity.json"
        runs[folder.name] = {"snapshots": snapshots, "config": json.loads((folder / "config.json").read_text()),
                             "knn": json.loads(knn_file.read_text()) if knn_file.exists() else [],
                             "qreg_activity": json.loads(activity_file.read_text()) if activity_file.exists() else []}  # fmt: skip
    return runs


def plateau(knn: list[dict[str, Any]], epochs: int) -> dict[str, Any] | None:
    """The plateau criterion over the last quarter of ``epochs``: ``None`` until the run has reached its end."""
    if not knn or knn[-1]["epoch"] < epochs:
        return None
    rows = [row for row in knn if row["epoch"] > epochs - max(1, epochs // 4)]
    last = [row["knn_top1"] for row in rows]
    spread = 100 * (max(last) - min(last))
    return {"epochs": [epochs - len(last) + 1, epochs], "spread_points": spread, "converged": spread <= PLATEAU_POINTS,
            "trend": trend([row["epoch"] for row in rows], [100 * value for value in last])}


def trend(epochs: list[int], points: list[float]) -> dict[str, float] | None:
    """The least-squares slope of kNN top-1 (points per epoch) with its ``CONFIDENCE`` t interval: where the spread
    criterion is at the mercy of the monitor's noise (a 2,000-image kNN: about 1 point of standard error), an interval
    around 0 says that the run no longer moves. ``None`` under 3 epochs."""
    if len(epochs) < 3:
        return None
    fit = stats.linregress(epochs, points)
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, len(epochs) - 2) * fit.stderr
    return {"slope": fit.slope, "low": fit.slope - half, "high": fit.slope + half}


def trend_text(trend: dict[str, float] | None) -> str:
    if trend is None:
        return ""
    return (f"; trend over those epochs {trend['slope']:+.3f} points per epoch [{100 * CONFIDENCE:g} % CI {trend['low']:+.3f}, "
            f"{trend['high']:+.3f}]")


def plot_auroc_vs_epoch(run: str, snapshots: list[dict[str, Any]], path: Path) -> None:
    figure = _figure((7.2, 4.6))
    axes = figure.add_subplot()
    epochs = [s["epoch"] for s in snapshots]
    for name in SCORES:
        if any(name not in s["test"]["scores"] for s in snapshots):  # a report from before the extensions
            continue
        values = [s["test"]["scores"][name]["auroc"] for s in snapshots]
        style = {"linestyle": "--", "color": "gray"} if name == CEILING else {}
        if name.startswith("q_score"):
            style = {"linewidth": 2.2 if name == Q_CHOSEN else 1.4, "marker": "o"}
        elif name in EXTENSION_SCORES:
            style = {"linestyle": "-.", "marker": "x", "linewidth": 1.0}
        axes.plot(epochs, values, label=name + (" (uses labels)" if name == CEILING else ""), **style)
    low = [s["test"]["scores"][Q_CHOSEN]["auroc_ci"][0] for s in snapshots if "auroc_ci" in s["test"]["scores"][Q_CHOSEN]]
    high = [s["test"]["scores"][Q_CHOSEN]["auroc_ci"][1] for s in snapshots if "auroc_ci" in s["test"]["scores"][Q_CHOSEN]]
    if len(low) == len(epochs):
        axes.fill_between(epochs, low, high, alpha=0.15, label=f"{Q_CHOSEN}, 95 % interval")
    top1 = axes.twinx()
    top1.plot(epochs, [100 * s["test"]["top1"] for s in snapshots], color="black", linewidth=0.8, linestyle=":")
    top1.set_ylabel("linear top-1, % (dotted)")
    axes.axhline(0.5, color="lightgray", linewidth=0.8)
    axes.set_xscale("log")
    axes.set_xticks(epochs, [str(epoch) for epoch in epochs])
    axes.minorticks_off()
    axes.set_xlabel("training epoch (supervised or self-supervised)")
    axes.set_ylabel("test AUROC (correct vs misclassified)")
    axes.set_title(f"{run}: which score predicts the linear probe's mistakes?")
    axes.legend(fontsize=7, loc="upper left")
    figure.savefig(path)


def plot_knn(runs: dict[str, dict[str, Any]], path: Path) -> None:
    figure = _figure((6.4, 4.2))
    axes = figure.add_subplot()
    for name, run in runs.items():
        if run["knn"] and not run["config"]["pretrain"].get("init_from"):  # from scratch only: fine-tunes continue
            axes.plot([r["epoch"] for r in run["knn"]], [100 * r["knn_top1"] for r in run["knn"]], label=name)
    axes.set_xlabel("pre-training epoch")
    axes.set_ylabel("kNN top-1 on validation, %")
    axes.set_title(f"Plateau: last quarter of the epochs within {PLATEAU_POINTS:g} point")
    axes.legend(fontsize=8)
    figure.savefig(path)


def _run_table(name: str, run: dict[str, Any]) -> list[str]:
    lines = [f"### {name}", "",
             "| epoch | linear top-1 | kNN top-1 | Q paper | Q default | Q chosen (setting) | best label-free on val "
             "| Q chosen - it [95 % CI] | probe confidence | empty S_i paper / chosen | \\|D\\| chosen | eff. rank |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for s in run["snapshots"]:
        test, diff = s["test"], s["q_minus_rival"]
        auc = {k: v["auroc"] for k, v in test["scores"].items()}
        verdict = "" if not diff["significant"] else (" **Q better**" if diff["difference"] > 0 else " **Q worse**")
        lines.append(
            f"| {s['epoch']} | {100 * test['top1']:.2f} | {100 * s['knn_top1_test']:.2f} | {auc[Q_PAPER]:.3f} | "
            f"{auc[Q_DEFAULT]:.3f} | {auc[Q_CHOSEN]:.3f} ({s['chosen_setting']}) | {diff['rival']} "
            f"{auc[diff['rival']]:.3f} | {diff['difference']:+.3f} [{diff['low']:+.3f}, {diff['high']:+.3f}]{verdict} | "
            f"{auc[CEILING]:.3f} | {100 * test['qscore'][Q_PAPER]['empty_fraction']:.0f} / "
            f"{100 * test['qscore'][Q_CHOSEN]['empty_fraction']:.0f} % | {test['qscore'][Q_CHOSEN]['num_discriminative']} "
            f"| {test['effective_rank']:.0f} |"
        )
    return lines + [""]


def _last_table(run: dict[str, Any]) -> list[str]:
    last = run["snapshots"][-1]["test"]
    lines = [f"Last snapshot (epoch {run['snapshots'][-1]['epoch']}), test split, {last['num_samples']} images, "
             f"{last['num_misclassified']} misclassified:", "",
             "| score | AUROC [95 % CI] | AUPRC correct (base rate) | AUPRC misclassified (base rate) |",
             "|---|---|---|---|"]  # fmt: skip
    for name in (name for name in SCORES if name in last["scores"]):
        row = last["scores"][name]
        lines.append(f"| {name} | {auroc_text(row)} | {row['auprc_correct']:.3f} ({last['base_rate_correct']:.3f}) "
                     f"| {row['auprc_misclassified']:.3f} ({last['base_rate_misclassified']:.3f}) |")  # fmt: skip
    return lines + [""]


def _activity_lines(activity: list[dict[str, Any]]) -> list[str]:
    """What the Q-Score regularizer did, epoch by epoch (means over the logged steps and both views)."""
    lines = ["What the Q-Score regularizer did, per epoch (training log; means over logged steps and views): the "
             "fraction of samples its Q term pushed (Q_i below the batch mean with a non-empty S_i), |D|, and its two "
             "terms.", "", "| epoch | Q term pushed | \\|D\\| | Q term | L1 term |", "|---|---|---|---|---|"]  # fmt: skip
    for row in activity:
        lines.append(f"| {row['epoch']} | {100 * row['q_term_active_fraction']:.1f} % | {row['num_discriminative']:.0f} "
                     f"| {row['q_term']:+.3f} | {row['l1_term']:.4f} |")  # fmt: skip
    return lines + [""]


def ships(snapshot: dict[str, Any], name: str) -> bool:
    """An extension ships only if it beats every label-free baseline on validation and on test."""
    return all(snapshot[split]["scores"][name]["auroc"] > snapshot[split]["scores"][b]["auroc"]
               for split in ("validation", "test") for b in BASELINES)  # fmt: skip


def _extension_lines(snapshot: dict[str, Any]) -> list[str]:
    if "extensions" not in snapshot:
        return []
    lines = [f"Label-free extensions of Q-Score at the last snapshot (settings chosen on validation; shipped only if "
             f"better than every baseline on validation and on test):", "",
             "| extension | setting | AUROC validation | AUROC test | minus the val-best baseline on test [95 % CI] "
             "| beats every baseline on both |", "|---|---|---|---|---|---|"]  # fmt: skip
    for name, info in snapshot["extensions"].items():
        diff = info["minus_rival"]
        lines.append(f"| {name} | {info['setting']} | {snapshot['validation']['scores'][name]['auroc']:.3f} | "
                     f"{snapshot['test']['scores'][name]['auroc']:.3f} | {diff['rival']}: {diff['difference']:+.3f} "
                     f"[{diff['low']:+.3f}, {diff['high']:+.3f}] | {'yes' if ships(snapshot, name) else 'no'} |")  # fmt: skip
    return lines + [""]


def headline(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A snapshot's figures for ``summary.json``: top-1 and each score's test AUROC with its interval, Q chosen minus
    the baseline best on validation; the full report (both AUPRCs, the validation grid...) stays in its
    ``<run>/epoch_NNNN.json``, which summary.json would otherwise copy whole."""
    return {"epoch": snapshot["epoch"], "chosen_setting": snapshot["chosen_setting"],
            "top1": {split: snapshot[split]["top1"] for split in ("validation", "test")},
            "test_auroc": {name: {key: row[key] for key in ("auroc", "auroc_ci") if key in row}
                           for name, row in snapshot["test"]["scores"].items()},
            "q_minus_rival": snapshot["q_minus_rival"], "effective_rank": snapshot["test"]["effective_rank"]}  # fmt: skip


def control_of(run: str) -> str | None:
    """The run a Q-regularized run is compared with: ``M-finetune-qreg-seedS`` against ``M-finetune-plain-seedS``,
    and every other ``M-qreg*-seedS`` against ``M-baseline-seedS`` (same recipe, length, seed and data order), each
    with the run's recipe suffix (``M-qreg-sgd-seedS`` against ``M-baseline-sgd-seedS``);
    ``None`` for a run without Q-reg."""
    base, _, seed = run.rpartition("-seed")
    method, _, variant = base.partition("-")
    kind, recipe = split_recipe(variant)
    if kind == "finetune-qreg":
        return f"{method}-{with_recipe('finetune-plain', recipe)}-seed{seed}"
    return f"{method}-{with_recipe('baseline', recipe)}-seed{seed}" if kind.startswith("qreg") else None


def regularizer_comparisons(runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per Q-regularized run whose control has the same epoch evaluated: linear top-1 of both on validation and on
    test at their last common snapshot, the relative change, and both effective ranks (test features)."""
    rows = []
    for name, run in runs.items():
        control = control_of(name)
        if control not in runs:
            continue
        mine, theirs = ({s["epoch"]: s for s in r["snapshots"]} for r in (run, runs[control]))
        common = sorted(set(mine) & set(theirs))
        if not common:
            continue
        epoch = common[-1]
        row = {"run": name, "control": control, "epoch": epoch, "final": epoch == run["config"]["pretrain"]["epochs"]}
        for split in ("validation", "test"):
            a, b = mine[epoch][split]["top1"], theirs[epoch][split]["top1"]
            row[split] = {"top1": a, "control_top1": b, "relative_change": a / b - 1}
            if "correct" in mine[epoch] and "correct" in theirs[epoch]:  # kept since reports carry it
                row[split]["paired"] = paired_accuracy_difference(
                    *(unpack_correct(s["correct"][split]) for s in (mine[epoch], theirs[epoch])))
        row["effective_rank"] = mine[epoch]["test"]["effective_rank"]
        row["control_effective_rank"] = theirs[epoch]["test"]["effective_rank"]
        rows.append(row)
    return rows


def _comparison_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["## Q-Score regularization against its control", "",
             "Each Q-regularized run against the run without it (from scratch: the baseline; a fine-tune: the same "
             "continuation without Q-reg), at their last common snapshot. Relative change: top-1 / control's - 1; "
             "in brackets, the difference in points with the 95 % interval of a paired difference on the same images "
             "(where both reports keep per-image correctness; `--paired` adds it to older ones).", "",
             "| run | control | epoch | top-1 validation: run / control (change) [points, 95 % CI] | top-1 test: run / "
             "control (change) [points, 95 % CI] | effective rank: run / control |", "|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        val, test = row["validation"], row["test"]
        lines.append(
            f"| {row['run']} | {row['control']} | {row['epoch']}{'' if row['final'] else ' (run not finished)'} | "
            f"{100 * val['top1']:.2f} / {100 * val['control_top1']:.2f} % ({100 * val['relative_change']:+.1f} %)"
            f"{_paired_text(val)} | {100 * test['top1']:.2f} / {100 * test['control_top1']:.2f} % "
            f"({100 * test['relative_change']:+.1f} %){_paired_text(test)} | "
            f"{row['effective_rank']:.0f} / {row['control_effective_rank']:.0f} |"
        )
    return lines + [""]


def _paired_text(split: dict[str, Any]) -> str:
    if "paired" not in split:
        return ""
    paired = split["paired"]
    return (f" [{100 * paired['difference']:+.2f}, {100 * paired['low']:+.2f} to {100 * paired['high']:+.2f}"
            f"{': a difference' if paired['significant'] else ''}]")


def write_summary(out: Path, command: str, machine: dict[str, Any]) -> dict[str, Any]:
    """Write ``summary.md``, ``summary.json`` and the figures into ``out``; returns the summary."""
    runs = load_runs(out)
    summary: dict[str, Any] = {"command": command, "machine": machine, "runs": {}}
    lines = ["# Q-Score on CIFAR-10 along the training trajectory (issue 18)", "",
             f"Command: `{command}` (per run: `python studies/cifar10_study.py --method M --seed S [--variants V]`)  ",
             f"Machine: {machine.get('machine')}, torch {machine.get('torch')}, CPU", "",
             "Test AUROC of each score against the linear probe's correctness (higher: the score ranks correct images "
             "above misclassified ones). Q chosen: the Q-Score setting best on the validation split at that snapshot; "
             "best label-free on val: the baseline best on validation; its difference to Q chosen on test with a "
             "paired bootstrap 95 % interval (1,000 resamples), called a difference only when the interval excludes 0.",
             ""]  # fmt: skip
    for name, run in runs.items():
        epochs = run["config"]["pretrain"]["epochs"]
        # a fine-tuning continues a converged run: its few epochs say nothing about convergence
        converged = None if run["config"]["pretrain"].get("init_from") else plateau(run["knn"], epochs)
        summary["runs"][name] = {"plateau": converged, "snapshots": [headline(s) for s in run["snapshots"]],
                                 "knn_monitor": run["knn"], "config": run["config"]}  # fmt: skip
        lines += _run_table(name, run)
        if converged is not None:
            lines += [f"Plateau: kNN top-1 of epochs {converged['epochs'][0]}-{converged['epochs'][1]} varies by "
                      f"{converged['spread_points']:.2f} points: {'converged' if converged['converged'] else 'NOT converged'} "
                      f"(criterion: at most {PLATEAU_POINTS:g}){trend_text(converged['trend'])}.", ""]  # fmt: skip
        elif len(run["snapshots"]) < len(run["config"]["pretrain"]["snapshot_epochs"]):
            lines += [f"Still training: {len(run['snapshots'])} of {len(run['config']['pretrain']['snapshot_epochs'])} "
                      f"snapshots ({epochs} epochs) evaluated so far.", ""]
        lines += _last_table(run) + _extension_lines(run["snapshots"][-1])
        if run["qreg_activity"]:
            summary["runs"][name]["qreg_activity"] = run["qreg_activity"]
            lines += _activity_lines(run["qreg_activity"])
        plot_auroc_vs_epoch(name, run["snapshots"], out / f"auroc_vs_epoch_{name}.png")
    summary["regularizer_comparisons"] = regularizer_comparisons(runs)
    if summary["regularizer_comparisons"]:
        lines += _comparison_lines(summary["regularizer_comparisons"])
    if runs:
        plot_knn(runs, out / "knn_plateau.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return summary
