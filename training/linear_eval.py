"""Linear evaluation of a frozen QScoreModel with Q-Score misclassification metrics (SPEC §5).

    python training/linear_eval.py --model path/or/hub-id --dataset digits
    accelerate launch training/linear_eval.py --model ... --dataset ...

Features are computed once (batched, on the GPU when there is one) and cached on disk; a linear probe is trained on
the train split (100 epochs of SGD by default, or L-BFGS) and evaluated on the eval split; the report, per-sample
parquet and plots go to ``--out``, and a local model folder's README.md ``model-index`` gets the results. Under a
multi-process launcher (accelerate, torchrun) the processes split the feature extraction (shards of the cache, see
``qscore_hf.sharded_scoring``); the main process trains the probe on all rows, scores and writes the report.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from qscore_hf import arguments
from qscore_hf.calibration import eps_argument
from qscore_hf.data_pipelines import DATA_PIPELINES, DEFAULT_DATA_PIPELINE

SUMMARY_COLUMNS = (
    ("model", "model", "{}"),
    ("dataset", "dataset", "{}"),
    ("n_train", "num_train", "{}"),
    ("n_eval", "num_eval", "{}"),
    ("top1", "top1", "{:.4f}"),
    ("auprc_correct", "auprc_correct", "{:.4f}"),
    ("auprc_miscls", "auprc_misclassified", "{:.4f}"),
    ("auroc [95 % CI]", "auroc", "{:.4f}"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True,
                        help="local folder or Hub id of a QScoreModel, a transformers vision model (ViT, DINOv2, "
                             "ResNet, ConvNeXt) or a timm repo (timm/..., hf-hub:timm/...)")  # fmt: skip
    parser.add_argument("--dataset", required=True, help="digits, fashion_mnist, cifar10, a local folder/file or a Hub id")
    parser.add_argument("--train-split", default="train", help="split the probe is trained on (default: train)")
    parser.add_argument("--eval-split", default="test", help="split the probe is evaluated on (default: test)")
    parser.add_argument("--image-column", default=None, help="image column (default: found automatically)")
    parser.add_argument("--label-column", default=None, help="label column (default: found automatically)")
    parser.add_argument("--allow-downloads", action="store_true", help="fetch an image column of http(s) URLs")
    parser.add_argument("--encode-labels", action="store_true",
                        help="map string labels to class indices by the train split's sorted names (in report.json)")
    parser.add_argument("--epochs", type=arguments.positive_int(), default=100, help="probe epochs, or L-BFGS iterations (default: 100)")
    parser.add_argument("--optimizer", choices=("sgd", "lbfgs"), default="sgd", help="probe optimizer (default: sgd)")
    parser.add_argument("--lr", type=arguments.positive(), default=None, help="probe learning rate (default: 0.1 SGD, 1.0 L-BFGS)")
    parser.add_argument("--weight-decay", type=arguments.number(0.0), default=None, help="default: 0 for SGD, 1e-4 L2 for L-BFGS")
    parser.add_argument("--batch-size", type=arguments.positive_int(), default=256, help="images per encoder forward pass (default: 256)")
    parser.add_argument("--probe-batch-size", type=arguments.positive_int(), default=256, help="SGD mini-batch size (default: 256)")
    parser.add_argument("--max-samples", type=arguments.positive_int(), default=None, help="use at most this many rows of each split")
    parser.add_argument("--bf16", action="store_true", help="run the encoder under bfloat16 autocast")
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda:1 (default: cuda when available)")
    parser.add_argument("--num-workers", type=arguments.count(), default=0, help="DataLoader workers decoding images (default: 0)")
    parser.add_argument("--data-pipeline", choices=DATA_PIPELINES, default=DEFAULT_DATA_PIPELINE,
                        help="auto (default): tensor where it can serve the split, else pil with one line saying why; "
                             "pil: images decoded and preprocessed in --num-workers loader processes; tensor: decoded "
                             "once into a memory-mapped uint8 array ($QSCORE_HF_DECODED_CACHE), each batch resized, "
                             "cropped and normalized on --device (same features; not with --shard-rows)")  # fmt: skip
    parser.add_argument(
        "--cache-dir", default=None, help="feature cache (default: $QSCORE_HF_CACHE or $HF_HOME/qscore_hf/features)"
    )
    parser.add_argument("--revision", default=None, help="Hub revision of the model")
    parser.add_argument("--seed", type=arguments.seed(), default=0, help="probe seed (default: 0)")
    parser.add_argument("--eps", type=eps_argument, default=None,
                        help="score with this eps, or 'auto' (calibrated on the training features), instead of the "
                             "model's; statistics are then counted on the training features")
    parser.add_argument("--knn-k", type=arguments.positive_int(), default=10, help="neighbours of the kNN-density baseline (default: 10)")
    parser.add_argument("--shard-rows", type=arguments.positive_int(), default=None, metavar="N",
                        help="cache features in resumable shards of N rows (a multiple of --batch-size); under "
                             "accelerate launch / torchrun the processes split them (default there: 32 batches)")
    parser.add_argument("--no-model-card", action="store_true", help="leave a local model folder's README.md alone")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument(
        "--out", default=None, help="output folder (default: outputs/linear_eval/<model>_<dataset>_<eval split>)"
    )
    return parser


def summary_table(report: dict[str, Any]) -> str:
    """A header line and one row of the report's headline numbers, each AUROC followed by DeLong's 95 % interval (a
    reader sees when it is noise)."""
    from qscore_hf.metrics import interval_text

    cells = [(name, " ".join(filter(None, [fmt.format(report[key]), interval_text(report.get(f"{key}_ci"))])))
             for name, key, fmt in SUMMARY_COLUMNS]  # fmt: skip
    widths = [max(len(name), len(value)) for name, value in cells]
    header = " | ".join(name.ljust(width) for (name, _), width in zip(cells, widths))
    row = " | ".join(value.ljust(width) for (_, value), width in zip(cells, widths))
    return f"{header}\n{row}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from qscore_hf.distributed import end_process_group

    try:
        return _evaluate(args, argv)
    finally:
        end_process_group()  # the process group of a launched run, before the interpreter's exit tears it down


def _evaluate(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    import torch

    from qscore_hf.comparison import report_text
    from qscore_hf.linear_eval import run_linear_eval

    run_name = f"{Path(args.model).name}_{Path(args.dataset).name}_{args.eval_split}"
    out = args.out or Path("outputs", "linear_eval", run_name)
    report = run_linear_eval(
        args.model, args.dataset, out,
        train_split=args.train_split, eval_split=args.eval_split,
        image_column=args.image_column, label_column=args.label_column, max_samples=args.max_samples,
        epochs=args.epochs, optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
        probe_batch_size=args.probe_batch_size, batch_size=args.batch_size,
        dtype=torch.bfloat16 if args.bf16 else None, device=args.device, num_workers=args.num_workers,
        cache_dir=args.cache_dir, revision=args.revision, seed=args.seed,
        update_model_card=not args.no_model_card, progress=not args.no_progress,
        command=shlex.join([sys.executable, *sys.argv] if argv is None else ["linear_eval.py", *argv]),
        eps=args.eps, knn_k=args.knn_k, shard_rows=args.shard_rows, data_pipeline=args.data_pipeline,
        allow_downloads=args.allow_downloads,
        encode_labels=args.encode_labels,
    )  # fmt: skip
    if int(os.environ.get("RANK", "0")) != 0:  # a multi-process launch: the main process reports
        return 0
    print(summary_table(report))
    print()
    print(report_text(report["comparison"], report["degeneracy"]))
    card = report["model_card_results"]  # the model's own card, or a file beside the report
    written = Path(report["model"]) / card if card == "README.md" else Path(out) / card
    print(f"report: {Path(out) / 'report.json'}; model-index results: {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
