"""Render every results table of README.md and docs/ from the recorded results, never by hand.

    python studies/render_results.py            # rewrite the tables in place
    python studies/render_results.py --check    # exit 1, naming the pages, when a committed page differs

A page asks for a table with a pair of markers; everything between them is replaced by the rendered table:

    <!-- results:verdict -->
    <!-- /results:verdict -->

The tables read ``studies/results/**`` (the studies' summaries) and ``bench/results/*.json`` (the speed benchmarks).
Each table states its regime (encoder, top-1, epochs, images, data set) in its rows or in the line rendered above it.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from functools import cache
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
STUDIES = REPO / "studies" / "results"
BENCH = REPO / "bench" / "results"
PAGES = ("README.md", "docs")
MARKER = re.compile(r"(<!-- results:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)

# Score names as the studies record them -> as the tables show them.
SCORES = {"l2_norm": "L2 norm", "hoyer_sparsity": "Hoyer sparsity", "max_zscore": "max z-score",
          "knn_density": "kNN density", "probe_confidence": "probe confidence (uses labels: the ceiling)"}  # fmt: skip
Q_KINDS = {"paper": "paper setting", "chosen": "chosen on validation", "package default": "package default"}
CIFAR_SCORES = {"q_score (paper)": "Q paper setting", "q_score (package default)": "Q package default",
                "q_score (chosen on validation)": "Q chosen on validation", "l2_norm": "L2 norm",
                "knn_density": "kNN density", "probe_confidence": "probe confidence (ceiling)"}  # fmt: skip
LABEL_FREE = ("l2_norm", "hoyer_sparsity", "max_zscore", "knn_density")
VERDICT_BASELINE_RUNS = ("simclr-baseline-seed0", "simclr-baseline-seed1", "byol-baseline-sgd-seed0",
                         "byol-baseline-sgd-seed1", "byol-baseline-sgd-seed2", "supervised-seed0")  # fmt: skip


@cache
def score_label(name: str) -> str:
    """``"q_score (chosen: eps=1, normalize=l1, band=0-100)"`` -> ``"Q-Score, chosen on validation (eps 1, l1, 0-100)"``."""
    q = re.fullmatch(r"q_score \((?P<kind>[\w ]+): eps=(?P<eps>\S+), normalize=(?P<norm>\w+), band=(?P<band>\S+)\)", name)
    if q:
        return f"Q-Score, {Q_KINDS[q['kind']]} (eps {q['eps']}, {q['norm']}, {q['band']})"
    return SCORES.get(name, name)


def load(path: Path) -> Any:
    return json.loads(path.read_text())


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)]) + "\n"


def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and its Student-t interval over encoders (each encoder one draw)."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * std / math.sqrt(n)
    return mean, mean - half, mean + half


def ci(value: float, low: float, high: float) -> str:
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def regime_of_reproduction(summary: dict) -> str:
    s = summary["settings"]
    return f"timm `{s['backbone']}`, {s['epochs']} epochs, {s['max_samples']:,} images, {s['image_size']} px"


def mean_top1(summary: dict) -> float:
    runs = [r for r in summary["runs"] if r["variant"] == "baseline"]
    return 100 * sum(r["top1"] for r in runs) / len(runs)


def reproduction_rows(summary: dict, label: str) -> list[str]:
    """One verdict row: each score's mean test AUROC over the baseline encoders, with its 95 % t-interval."""
    test = summary["scoring_selection"]["test"]
    paper, chosen = (next(v for k, v in test.items() if k.startswith(f"q_score ({which}")) for which in ("paper", "chosen"))
    cells = [ci(*t_interval(score["per_encoder"])) for score in (paper, chosen, test["l2_norm"], test["knn_density"],
                                                                 test["probe_confidence"])]  # fmt: skip
    best = max(LABEL_FREE, key=lambda name: test[name]["mean"])
    n = summary["scoring_selection"]["num_encoders"]
    return [f"{label}: {n} encoders, {regime_of_reproduction(summary)}, mean top-1 {mean_top1(summary):.1f} %",
            *cells, SCORES[best]]  # fmt: skip


def last_snapshot(run: str) -> dict:
    return load(STUDIES / "cifar10_converged" / "summary.json")["runs"][run]["snapshots"][-1]


def cifar_label(run: str) -> str:
    method, _, seed = run.rpartition("-seed")
    name = {"simclr-baseline": "SimCLR", "byol-baseline-sgd": "BYOL (SGD)", "byol-baseline": "BYOL (LARS)",
            "supervised": "supervised control"}[method]  # fmt: skip
    return f"{name}, seed {seed}"


def cifar_regime(run: str) -> str:
    config = load(STUDIES / "cifar10_converged" / "summary.json")["runs"][run]["config"]["setting"]
    snap = last_snapshot(run)
    return (f"timm `{config['backbone']}`, {snap['epoch']} epochs, {10000:,} images, top-1 "
            f"{100 * snap['top1']['test']:.1f} %")


def render_verdict() -> str:
    header = ["data set, encoders, regime", "Q-Score, paper setting", "Q-Score, chosen on validation", "L2 norm",
              "kNN density", "probe confidence (uses labels)", "best label-free"]  # fmt: skip
    rows = [reproduction_rows(load(STUDIES / "reproduce_cpu" / "summary.json"), "Fashion-MNIST, ResNet"),
            reproduction_rows(load(STUDIES / "reproduce_cpu_vit" / "summary.json"), "Fashion-MNIST, ViT")]
    for run in VERDICT_BASELINE_RUNS:
        auroc = last_snapshot(run)["test_auroc"]
        cells = [ci(auroc[k]["auroc"], *auroc[k]["auroc_ci"]) for k in
                 ("q_score (paper)", "q_score (chosen on validation)", "l2_norm", "knn_density", "probe_confidence")]
        best = max(LABEL_FREE, key=lambda name: auroc[name]["auroc"])
        rows.append([f"CIFAR-10, {cifar_label(run)}: {cifar_regime(run)}", *cells, SCORES[best]])
    note = ("Test AUROC of each score as a predictor of a linear probe's correct answers (0.5 is chance). "
            "Fashion-MNIST rows: mean over encoders with its 95 % t-interval; CIFAR-10 rows: one encoder at its last "
            "epoch, DeLong 95 % interval.\n\n")
    return note + table(header, rows)


def render_fashion_scores() -> str:
    summary = load(STUDIES / "reproduce_cpu" / "summary.json")
    test = summary["scoring_selection"]["test"]
    n = summary["scoring_selection"]["num_encoders"]
    rows = [[score_label(name), f"{v['mean']:.3f} ± {v['std']:.3f}", ci(*t_interval(v["per_encoder"])),
             f"{v['wins_over_best_label_free']} of {n}"] for name, v in test.items()]  # fmt: skip
    return (f"Fashion-MNIST, {regime_of_reproduction(summary)}, mean linear top-1 {mean_top1(summary):.1f} %; "
            f"chosen on validation: {summary['scoring_selection']['chosen']}.\n\n"
            + table(["score", f"test AUROC, mean ± std over {n} encoders", "95 % interval of the mean",
                     "encoders on which it beats every other label-free score"], rows))  # fmt: skip


def render_vit_scores() -> str:
    summary = load(STUDIES / "reproduce_cpu_vit" / "summary.json")
    test = summary["scoring_selection"]["test"]
    rows = [[score_label(name), f"{v['mean']:.3f} ± {v['std']:.3f}"] for name, v in test.items()]
    return (f"Fashion-MNIST, {regime_of_reproduction(summary)}, mean linear top-1 {mean_top1(summary):.1f} %; "
            f"chosen on validation: {summary['scoring_selection']['chosen']}.\n\n"
            + table(["score", f"test AUROC, mean ± std over {summary['scoring_selection']['num_encoders']} ViTs"], rows))


def render_regularizer_selection() -> str:
    selection = load(STUDIES / "reproduce_cpu" / "summary.json")["regularizer_selection"]
    rows = [[f"`{r['regularizer']}`", f"{r['mean_relative_change']:+.2f} %",
             ", ".join(f"{c:+.2f} %" for c in r["relative_changes"]), f"{100 * r['max_dead_gap']:+.0f} pts",
             "yes" if r["eligible"] else "no"] for r in selection["rows"]]  # fmt: skip
    return (f"Chosen: `{selection['chosen']}` (methods {', '.join(selection['methods'])}, seed 0).\n\n"
            + table(["regularizer (form, lambda1, lambda2, eps)", "mean relative validation top-1 change",
                     ", ".join(selection["methods"]), "dead-feature gap", "eligible"], rows))  # fmt: skip


def render_qreg_fashion() -> str:
    summary = load(STUDIES / "reproduce_cpu" / "summary.json")
    over = summary["over_seeds"]
    rows = []
    for method, v in over["methods"].items():
        b, q = v["baseline"], v["qreg"]
        rows.append([method, f"{b['mean']:.2f} ± {b['std']:.2f}", f"{q['mean']:.2f} ± {q['std']:.2f}",
                     f"{q['relative_mean']:+.2f} ± {q['relative_std']:.2f} %",
                     f"{100 * b['dead_fraction']:.1f} % / {100 * q['dead_fraction']:.1f} %"])  # fmt: skip
    m = over["mean_relative_change"]["qreg"]
    mean = f"{m['mean']:+.2f} ± {m['std']:.2f} % (std over the seeds' means)"
    return (f"Fashion-MNIST, {regime_of_reproduction(summary)}; test split, seeds "
            f"{', '.join(map(str, over['seeds']))}; mean relative change over methods: {mean}.\n\n"
            + table(["method", "baseline top-1 (%)", "default Q-reg top-1 (%)", "relative change",
                     "dead features, baseline / Q-reg"], rows))  # fmt: skip


def render_cpu_long() -> str:
    summary = load(STUDIES / "reproduce_cpu_long" / "summary.json")
    test = summary["scoring_selection"]["test"]
    encoders = summary["scoring_selection"]["encoders"]
    rows = [[score_label(name), *(f"{a:.3f}" for a in v["per_encoder"])] for name, v in test.items()]
    top1 = {(r["method"], r["variant"]): 100 * r["top1"] for r in summary["runs"]}
    rows.append(["linear top-1, baseline / default Q-reg (%)",
                 *(f"{top1[(e.split()[0], 'baseline')]:.2f} / "
                   f"{next(v for (m, var), v in top1.items() if m == e.split()[0] and var != 'baseline'):.2f}"
                   for e in encoders)])  # fmt: skip
    return (f"Fashion-MNIST, {regime_of_reproduction(summary)}; test AUROC, one seed.\n\n"
            + table(["score", *encoders], rows))


def render_term_ablation() -> str:
    ablation = load(STUDIES / "reproduce_cpu_long" / "term_ablation.json")
    rows = [[name, f"{100 * v['validation_top1']:.2f} / {100 * v['top1']:.2f}", f"{v['effective_rank']:.0f}"]
            for name, v in ablation["final"]["byol"].items()]
    return (f"BYOL, Fashion-MNIST, {ablation['epochs']} epochs, seed 0.\n\n"
            + table(["regularizer terms", "linear top-1, validation / test (%)", "effective rank (test features)"], rows))


def plateau_text(plateau: dict | None) -> str:
    if plateau is None:
        return "not monitored"
    return ("yes" if plateau["converged"] else "no") + f": {plateau['spread_points']:.2f} points"


def render_cifar10_scores() -> str:
    runs = load(STUDIES / "cifar10_converged" / "summary.json")["runs"]
    names = [r for r in ("simclr-baseline-seed0", "simclr-baseline-seed1", "byol-baseline-seed0", "byol-baseline-seed1",
                         *VERDICT_BASELINE_RUNS[2:]) if r in runs]  # fmt: skip
    rows = [["linear top-1, test (validation)", *(f"{100 * last_snapshot(r)['top1']['test']:.2f} % "
                                                   f"({100 * last_snapshot(r)['top1']['validation']:.2f} %)" for r in names)],
            ["converged (kNN top-1 of the last quarter within 1 point)",
             *(plateau_text(runs[r]["plateau"]) for r in names)]]  # fmt: skip
    for key, label in CIFAR_SCORES.items():
        rows.append([label, *(ci(last_snapshot(r)["test_auroc"][key]["auroc"], *last_snapshot(r)["test_auroc"][key]["auroc_ci"])
                              for r in names)])  # fmt: skip
    diff = []
    for r in names:
        d = last_snapshot(r)["q_minus_rival"]
        diff.append(f"{SCORES[d['rival']]}: {d['difference']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]")
    rows.append(["Q chosen minus the label-free score best on validation (paired bootstrap)", *diff])
    return ("CIFAR-10, timm `resnet10t` at 32 px, the first 10,000 training images, 30 epochs; last snapshot, test "
            "split, AUROC with its DeLong 95 % interval.\n\n" + table(["", *map(cifar_label, names)], rows))


def render_cifar10_qreg() -> str:
    comparisons = load(STUDIES / "cifar10_converged" / "summary.json")["regularizer_comparisons"]
    rows = []
    for c in comparisons:
        cells = []
        for split in ("validation", "test"):
            s, p = c[split], c[split]["paired"]
            cells.append(f"{100 * s['top1']:.2f} vs {100 * s['control_top1']:.2f} %: "
                         f"{100 * p['difference']:+.2f} [{100 * p['low']:+.2f}, {100 * p['high']:+.2f}]")
        rows.append([f"`{c['run']}` vs `{c['control']}`", str(c["epoch"]), *cells,
                     f"{c['effective_rank']:.0f} / {c['control_effective_rank']:.0f}"])
    return ("CIFAR-10, timm `resnet10t`, 10,000 images; top-1 with and without Q-reg, difference in points with its "
            "paired 95 % interval.\n\n" + table(["run vs control", "epoch", "validation", "test",
                                                  "effective rank, run / control"], rows))  # fmt: skip


def machine(result: dict) -> str:
    return f"{result.get('device', 'cpu')}, {result.get('cpu_threads', '?')} threads"


def render_speed() -> str:
    speed, one = load(BENCH / "qscore_speed_cpu.json"), load(BENCH / "qscore_speed_cpu_1thread.json")
    fused, relu = load(BENCH / "qscore_fused_cpu.json"), one["relu_squared"]
    knn, memory = load(BENCH / "knn_density_cpu.json"), load(BENCH / "memory_cpu.json")
    sharded = load(BENCH / "sharded_scoring_cpu.json")
    merge_share = max(run["merge_share"] for run in sharded["runs"])
    step = load(BENCH / "train_step_cpu.json")
    simclr = load(BENCH / "train_step_tensor_pipeline_cifar10_cpu.json")["loop"]
    byol = load(BENCH / "train_step_tensor_pipeline_byol_cifar10_cpu.json")["loop"]
    simclr_r18 = load(BENCH / "train_step_tensor_pipeline_simclr_resnet18_cifar10_cpu.json")["loop"]
    byol_r18 = load(BENCH / "train_step_tensor_pipeline_byol_resnet18_cifar10_cpu.json")["loop"]
    scoring = load(BENCH / "train_step_memory_score_cifar10_cpu.json")["score"]
    rows = [["Q-Score vs a per-row NumPy loop, 50,000 x 2048", "`bench/qscore_speed.py`",
             f"{speed['speedup']:.1f}x ({one['speedup']:.1f}x on one thread)", ">= 50x"],
            ["Q-Score time in read passes over the features", "`bench/qscore_speed.py`",
             f"{speed['passes']:.1f} (one thread: {one['passes']:.1f})", "<= 3"],
            ["Q-Score of `relu(randn)**2`, all features, eps 4, one thread: kernel / eager, in read passes",
             "`bench/qscore_speed.py`", f"{relu['eps_4']['passes']:.2f} / {relu['eps_4']['eager_passes']:.1f}",
             "<= 2 / <= 4"],
            ["one eager tensor operation over a cache-sized chunk (sum / compare / float64 copy), in read passes",
             "`bench/qscore_speed.py`", " / ".join(f"{relu['eager_operation_passes'][name]:.2f}" for name in
                                                    ("row_sum", "compare_with_row_threshold", "copy_to_float64")),
             "the eager path's floor"],
            ["numba kernel / torch.compile / eager, in read passes", "`bench/qscore_fused.py`",
             f"{fused['numba_passes']:.1f} / {fused['fused_passes']:.1f} / {fused['eager_passes']:.1f}", "lowest"]]
    for name in ("score_throughput_cpu", "score_throughput_vit_timm_cpu", "score_throughput_vit_transformers_cpu"):
        r = load(BENCH / f"{name}.json")
        rows.append([f"`QScoreModel` vs bare forward, {r.get('library', 'timm')} `{r['backbone']}`, batch "
                     f"{r['batch_size']}", "`bench/score_throughput.py`", f"{r['ratio']:.3f}", ">= 0.95"])
    overhead = ", ".join(f"{m} {v['ratio']:.3f}" for m, v in step["qscore_reg_overhead"].items())
    rows += [["training step with / without Q-reg, ResNet-18 CIFAR stem", "`bench/train_step.py`", overhead, "<= 1.03"],
             ["pre-training loop vs a minimal lightly-style loop (CIFAR-10, `resnet10t`, SimCLR): `pil` / `tensor`",
              "`bench/train_step.py`",
              f"{simclr['ratio_pil_vs_minimal_loop']:.3f} / {simclr['ratio_tensor_vs_minimal_loop']:.3f}", ">= 1.0"],
             ["pre-training loop vs bare forward+backward, CIFAR-10 at 32 px, `resnet10t`, batch 256, SimCLR: "
              "`--data-pipeline pil` / `tensor`", "`bench/train_step.py`",
              f"{simclr['ratio_pil_vs_bare_forward_backward']:.3f} / {simclr['ratio_tensor_vs_bare_forward_backward']:.3f}",
              ">= 0.8"],
             ["the same for BYOL, against the bare step plus its target network's forward: `pil` / `tensor` (and "
              "`tensor` vs BYOL's own step on ready-made views)", "`bench/train_step.py`",
              f"{byol['ratio_pil_vs_bare_forward_backward_with_target']:.3f} / "
              f"{byol['ratio_tensor_vs_bare_forward_backward_with_target']:.3f} "
              f"({byol['ratio_tensor_vs_method_step']:.3f})", ">= 0.8"],
             ["the same on the pre-training default backbone (`resnet18_cifar`), batch 256, `tensor`: SimCLR vs the "
              "bare step / BYOL vs the bare step plus its target's forward (BYOL vs the bare step alone; vs its own "
              "step)", "`bench/train_step.py`",
              f"{simclr_r18['ratio_tensor_vs_bare_forward_backward']:.3f} / "
              f"{byol_r18['ratio_tensor_vs_bare_forward_backward_with_target']:.3f} "
              f"({byol_r18['ratio_tensor_vs_bare_forward_backward']:.3f}; {byol_r18['ratio_tensor_vs_method_step']:.3f})",
              ">= 0.8"],
             ["`qscore-hf score` extraction vs bare forward, CIFAR-10: `pil` / `tensor`", "`bench/train_step.py`",
              f"{scoring['ratio_score_pil_vs_bare_forward']:.3f} / {scoring['ratio_score_tensor_vs_bare_forward']:.3f}",
              ">= 0.95"],
             ["kNN density vs one brute-force pass: time; extra memory", "`bench/knn_density.py`",
              f"{knn['time_ratio_knn_over_brute_force']:.2f}x; {knn['knn_density_extra_mib']:.0f} vs "
              f"{knn['brute_force_extra_mib']:.0f} MiB", "bounded memory"],
             ["peak memory of `qscore-hf score`, 100k vs 10k images", "`bench/memory.py`",
              f"{memory['peak_ratio']:.3f}x", "flat"],
             ["`qscore-hf score` images/s, 2 processes vs 1 (one thread each); the merge's share of the run",
              "`bench/sharded_scoring.py`", f"{sharded['speedup_2_vs_1']:.2f}x (the encoder alone: "
              f"{sharded['encoder_alone_ceiling']['ratio_2_vs_1']:.2f}x); {merge_share:.2%}", ">= 1.7x"]]  # fmt: skip
    return (f"Each figure is a ratio of runs measured together on one machine; CPU ({machine(speed)}), x86_64, no GPU.\n\n"
            + table(["benchmark", "script", "result", "target"], rows))


def render_finetune_cost() -> str:
    cost = load(BENCH / "zoo_finetune_cost_cpu.json")
    rows = []
    for name, r in cost["releases"].items():
        hours = r["recipe"]["gpu_hours"]
        rows.append([name, f"{r['flops_per_image'] / 1e9:.1f}", " / ".join(f"{hours[t]:.1f}" for t in ("400", "600", "200"))])
    recipe = cost["settings"]["recipe"]
    return (f"{recipe['epochs']} epochs of ImageNet-1k ({cost['settings']['images']:,} images) at lr {recipe['lr']:g}, "
            "estimated from counted FLOPs over an assumed sustained bf16 throughput, not measured on a GPU.\n\n"
            + table(["release", "GFLOP per image per step", "GPU-hours at 400 / 600 / 200 TFLOP/s"], rows))


TABLES: dict[str, Callable[[], str]] = {
    "verdict": render_verdict, "fashion-mnist-scores": render_fashion_scores, "vit-scores": render_vit_scores,
    "regularizer-selection": render_regularizer_selection, "qreg-fashion-mnist": render_qreg_fashion,
    "cpu-long": render_cpu_long, "term-ablation": render_term_ablation, "cifar10-scores": render_cifar10_scores,
    "cifar10-qreg": render_cifar10_qreg, "speed": render_speed, "finetune-cost": render_finetune_cost,
}  # fmt: skip


def render_page(text: str) -> str:
    """``text`` with every marked table rendered; an unknown table name is an error naming it."""

    def replace(match: re.Match) -> str:
        name = match["name"]
        if name not in TABLES:
            raise ValueError(f"unknown results table {name!r}: one of {', '.join(TABLES)}")
        return f"{match.group(1)}{TABLES[name]()}{match.group(4)}"

    return MARKER.sub(replace, text)


def pages(root: Path = REPO) -> list[Path]:
    found = []
    for entry in PAGES:
        path = root / entry
        found += sorted(path.rglob("*.md")) if path.is_dir() else [path]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a page is stale")
    args = parser.parse_args(argv)
    stale = []
    for page in pages():
        text = page.read_text()
        rendered = render_page(text)
        if rendered != text:
            stale.append(page.relative_to(REPO))
            if not args.check:
                page.write_text(rendered)
    if args.check and stale:
        print(f"stale results in {', '.join(map(str, stale))}: run python studies/render_results.py", file=sys.stderr)
        return 1
    print(("rendered: " if stale else "up to date: ") + ", ".join(map(str, stale or [p.relative_to(REPO) for p in pages()])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
