"""The ``qscore-hf`` command line. Argument parsing only: every subcommand calls library functions."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

__all__ = ["main"]


def _info(args: argparse.Namespace) -> int:
    """Print a model's config summary and its discriminative features."""
    from .modeling_qscore import QScoreModel

    model = QScoreModel.from_pretrained(args.model, revision=args.revision)
    config = model.config
    stats = model.activation_stats
    discriminative = model.discriminative_features()
    summary = {
        "model": args.model,
        "backbone": config.backbone,
        "hidden_size": config.hidden_size,
        "ssl_method": config.ssl_method,
        "pretraining_data": config.pretraining_data,
        "image_size": config.image_size,
        "image_mean": config.image_mean,
        "image_std": config.image_std,
        "qscore": {
            "eps": config.qscore_eps,
            "normalize": config.qscore_normalize,
            "p_lo": config.qscore_p_lo,
            "p_hi": config.qscore_p_hi,
            "regularized": config.qscore_regularized,
        },
        "activation_stats_samples": int(stats.num_samples),
        "num_discriminative": config.hidden_size if discriminative is None else int(discriminative.numel()),
    }
    print(json.dumps(summary, indent=2))
    return 0


def _convert(args: argparse.Namespace) -> int:
    """Convert a released SSL checkpoint into a QScoreModel folder (optionally with statistics, pushed)."""
    from .convert import ConversionReport, compute_stats, convert_checkpoint
    from .publish import push_folder, save_model_folder

    model = convert_checkpoint(
        args.checkpoint, method=args.method, format=args.format, arch=args.arch, trust_checkpoint=args.trust_checkpoint
    )
    print(ConversionReport.from_config(model.config).summary())
    if args.compute_stats:
        stats = compute_stats(model, args.compute_stats, split=args.stats_split, max_samples=args.stats_max_samples)
        print(f"activation statistics: {int(stats.num_samples)} images of {args.compute_stats}/{args.stats_split}")
    save_model_folder(model, args.out, repo_id=args.push_to_hub)
    print(f"wrote {args.out}")
    if args.push_to_hub:
        print(f"pushed to {args.push_to_hub}: {push_folder(args.out, args.push_to_hub)}")
    return 0


def _build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .convert.layouts import FORMAT_ALIASES, FORMATS

    parser = argparse.ArgumentParser(prog="qscore-hf", description="Q-Score for self-supervised representations.")
    parser.add_argument("--version", action="version", version=f"qscore-hf {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = commands.add_parser("info", help="summarise a QScoreModel (Hub id or local folder)")
    info.add_argument("model", help="Hub id (org/name) or local folder of a QScoreModel")
    info.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    info.set_defaults(handler=_info)
    convert = commands.add_parser("convert", help="convert a released SSL checkpoint into a QScoreModel folder")
    convert.add_argument("--checkpoint", required=True, help=".pth/.pth.tar/.ckpt/.safetensors file of the release")
    convert.add_argument("--out", required=True, help="output folder (written atomically)")
    convert.add_argument("--method", default=None, help="SSL method, when the checkpoint does not say (e.g. simclr)")
    convert.add_argument("--format", default="auto", choices=["auto", *FORMATS, *FORMAT_ALIASES],
                         help="checkpoint layout (default: auto, detected from the keys)")  # fmt: skip
    convert.add_argument("--arch", default=None, help="backbone (resnet50, resnet18_cifar, ...); default: inferred")
    convert.add_argument("--trust-checkpoint", action="store_true",
                         help="unpickle without weights_only (runs the file's code): trusted files only")  # fmt: skip
    convert.add_argument("--compute-stats", metavar="DATASET", default=None,
                         help="store activation statistics of this data set (folder, digits, Hub id)")  # fmt: skip
    convert.add_argument("--stats-split", default="train", help="split of --compute-stats (default: train)")
    convert.add_argument("--stats-max-samples", type=int, default=None, help="use at most this many images")
    convert.add_argument("--push-to-hub", metavar="ORG/NAME", default=None,
                         help="upload the folder to this Hub repository (token: HF_TOKEN or the login)")  # fmt: skip
    convert.set_defaults(handler=_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except (ValueError, OSError) as error:
        print(f"qscore-hf {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
