"""Which term of the default Q-Score regularizer does what? A single-term ablation at the cpu-long scale.

    python studies/qreg_ablation.py --methods byol [--variants q,l1]    # about 75 minutes a run on one core
    python studies/qreg_ablation.py --methods byol --summary-only         # rebuild the table

At the cpu-long scale (studies/reproduce.py: 10k Fashion-MNIST images, ResNet-10t, 20 epochs) the default Q-reg loses
top-1 against the baseline and ends with a far lower effective rank. This runs the default setting with one term
switched off: ``q`` keeps only the Q term (lambda2 = 0), ``l1`` only the L1 term (lambda1 = 0), with the same seed,
data and schedule as studies/reproduce.py's runs, through its ``run_one`` (resumable; evaluated on the validation and
test splits like every other run). The table puts each run's per-epoch effective rank (the training log's
``health/effective_rank``, over the epoch's first views) and linear top-1 beside the baseline's and the default's.
Writes ``term_ablation.md`` and ``term_ablation.json`` into the cpu-long results folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import reproduce
from _record import environment

SCALE = reproduce.SCALES["cpu-long"]
ROOT = Path(__file__).parent / "results" / "reproduce_cpu_long"
VARIANTS = {
    "q": replace(reproduce.DEFAULT, lambda2=0.0),  # the Q term alone
    "l1": replace(reproduce.DEFAULT, lambda1=0.0),  # the L1 term alone
}


def run_folder(method: str, name: str) -> Path:
    """Where studies/reproduce.py keeps a seed-0 run at this scale: ``name`` is "baseline" or a setting's name."""
    return reproduce.run_folder(ROOT, method, name, seed=0)


def ranks(folder: Path) -> dict[int, float]:
    """Effective rank of the backbone's features per epoch, from the run's training log."""
    out = {}
    for line in (folder / "train_log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "health/effective_rank" in record:
            out[int(record["epoch"])] = float(record["health/effective_rank"])
    return out


def final(folder: Path) -> dict | None:
    """Linear top-1 (validation and test splits) and the effective rank of the test features, for a whole, evaluated
    run."""
    done = folder / "result.json"
    if not done.exists():
        return None
    result = json.loads(done.read_text())
    return {"validation_top1": result["validation"]["top1"], "top1": result["top1"],
            "effective_rank": result["health"]["effective_rank"]}  # fmt: skip


def summarize(methods: list[str], epochs: int) -> dict:
    runs = {"baseline": "baseline", "default (Q + L1)": reproduce.DEFAULT.name}
    runs |= {f"{key} only": setting.name for key, setting in VARIANTS.items()}
    folders = {method: {label: run_folder(method, name) for label, name in runs.items()} for method in methods}
    folders = {method: {label: folder for label, folder in by_label.items() if (folder / "train_log.jsonl").exists()}
               for method, by_label in folders.items()}  # fmt: skip
    table = {method: {label: ranks(folder) for label, folder in of.items()} for method, of in folders.items()}
    finals = {method: {label: final(folder) for label, folder in of.items()} for method, of in folders.items()}
    lines = [
        "# Which term of the default Q-reg does what (cpu-long scale, seed 0)",
        "",
        f"Command: `python studies/qreg_ablation.py --methods {','.join(methods)}` (single-term runs; "
        "baseline and default from `studies/reproduce.py --scale cpu-long`). Effective rank of the backbone's features "
        "over each epoch's first views (training log). Same seed, data and 20-epoch schedule in every run.",
        "",
    ]
    shown = [e for e in (0, 1, 2, 3, 5, 9, 14, 19) if e < epochs]
    for method, by_run in table.items():
        lines += [f"## {method}", "", "| run | " + " | ".join(f"epoch {e}" for e in shown)
                  + " | linear top-1 (validation) | linear top-1 (test) | effective rank (test features) |",
                  "|---|" + "---|" * (len(shown) + 3)]
        for label, by_epoch in by_run.items():
            cells = [f"{by_epoch[e]:.1f}" if e in by_epoch else "-" for e in shown]
            end = finals[method][label]
            figures = (100 * end["validation_top1"], 100 * end["top1"], end["effective_rank"]) if end else ()
            cells += [f"{figures[0]:.2f}", f"{figures[1]:.2f}", f"{figures[2]:.1f}"] if end else ["-"] * 3
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    (ROOT / "term_ablation.md").write_text("\n".join(lines))
    settings = {key: setting.to_dict() for key, setting in VARIANTS.items()}
    result = {**environment("qreg_ablation"), "epochs": epochs, "settings": settings, "effective_rank": table,
              "final": finals}
    (ROOT / "term_ablation.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(lines))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="byol")
    parser.add_argument("--variants", default="q,l1", help="which single-term runs: q, l1 (default both)")
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args()
    methods = args.methods.split(",")
    if not args.summary_only:
        for method in methods:
            for key in args.variants.split(","):
                reproduce.run_one(SCALE, method, f"qreg-{key}-only", VARIANTS[key], ROOT, seed=0)
    summarize(methods, SCALE.epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
