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


def _build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="qscore-hf", description="Q-Score for self-supervised representations.")
    parser.add_argument("--version", action="version", version=f"qscore-hf {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = commands.add_parser("info", help="summarise a QScoreModel (Hub id or local folder)")
    info.add_argument("model", help="Hub id (org/name) or local folder of a QScoreModel")
    info.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    info.set_defaults(handler=_info)
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
