"""``qscore-hf zoo list | build | cards``: argument parsing only, each subcommand calls the zoo's functions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Mapping

from .. import arguments
from .registry import Release, get_release, load_registry

__all__ = ["ZOO_HELP", "add_zoo_parser", "format_table"]

ZOO_HELP = "pretrained SSL backbones: list, build (download, verify, convert) and publish releases"
_COLUMNS = ("name", "method", "architecture", "data", "license", "published top-1", "built")


def format_table(registry: Mapping[str, Release], cache: str | Path | None = None) -> str:
    """The registry as a text table; ``built`` says whether the release's folder is in the zoo's cache (``stale``:
    built from another record of the release; ``zoo build NAME`` rebuilds it)."""
    from .build import build_state, built_folder

    rows = [
        (
            release.name, release.method, release.arch, release.data, release.license,
            "-" if release.top1 is None else f"{release.top1:.1f}",
            build_state(release, built_folder(release.name, cache)),
        )  # fmt: skip
        for release in registry.values()
    ]
    widths = [max(len(row[i]) for row in [_COLUMNS, *rows]) for i in range(len(_COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [_COLUMNS, *rows]]
    return "\n".join(lines)


def _list(args: argparse.Namespace) -> int:
    print(format_table(load_registry()))
    return 0


def _build(args: argparse.Namespace) -> int:
    from ..io_utils import check_writable, contained_path
    from .build import build_release, built_folder
    from .download import cache_root
    from .finetune import FinetuneSettings, qreg_finetune
    from .hub import push_releases

    registry = load_registry()
    if bool(args.names) == args.all:
        raise ValueError("name the releases to build, or pass --all (qscore-hf zoo list shows them).")
    releases = list(registry.values()) if args.all else [get_release(name, registry) for name in args.names]
    if args.out:
        check_writable(args.out)
    folders, failed = {}, []
    for release in releases:
        out = contained_path(args.out, release.name, what="a zoo release name") if args.out else None
        try:
            folders[release.name] = build_release(
                release, out, mirror=args.mirror, max_bytes=int(args.max_size * 2**20), stats=args.stats,
                stats_max_samples=args.stats_max_samples, progress=not args.no_progress,
                repo_id=f"{args.push_to_hub}/{release.name}" if args.push_to_hub else None,
                linear_eval=args.linear_eval, linear_eval_max_samples=args.linear_eval_max_samples,
            )  # fmt: skip
            if args.qreg_finetune:
                name = f"{release.name}-qreg"
                settings = FinetuneSettings(
                    args.qreg_finetune, epochs=args.finetune_epochs, batch_size=args.finetune_batch_size,
                    image_size=args.finetune_image_size, max_samples=args.finetune_max_samples,
                    probe_epochs=args.probe_epochs,
                )  # fmt: skip
                folders[name] = qreg_finetune(
                    release, folders[release.name], settings, contained_path(args.out, name, what="a zoo release name") if args.out else built_folder(name),
                    cache_root() / "finetune" / name, progress=not args.no_progress,
                    repo_id=f"{args.push_to_hub}/{name}" if args.push_to_hub else None,
                )  # fmt: skip
        except (ValueError, OSError) as error:
            if len(releases) == 1:
                raise
            print(f"qscore-hf zoo: error: {error}", file=sys.stderr)  # one line per release; the others go on
            failed.append(release.name)
    if failed:
        raise ValueError(f"{len(failed)} of {len(releases)} releases failed ({', '.join(failed)}); the others were "
                         f"built{' and nothing was pushed' if args.push_to_hub else ''}.")  # fmt: skip
    if args.push_to_hub:
        slug = push_releases(folders, args.push_to_hub, private=args.private or None)
        print(f"pushed {', '.join(f'{args.push_to_hub}/{name}' for name in folders)}; collection {slug}")
    return 0


def _cards(args: argparse.Namespace) -> int:
    from .card import CARDS_DIR, check_cards, write_cards

    registry = load_registry()
    folder = Path(args.out) if args.out else CARDS_DIR
    if args.check:
        stale = check_cards(registry, folder)
        if stale:
            print(f"out of date in {folder}: {', '.join(stale)}; run `qscore-hf zoo cards`", file=sys.stderr)
            return 1
        print(f"{len(registry)} cards in {folder} match the registry")
        return 0
    for path in write_cards(registry, folder):
        print(f"wrote {path}")
    return 0


def add_zoo_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``zoo`` and its subcommands to the ``qscore-hf`` parser."""
    from .download import MIRROR_ENV

    zoo = commands.add_parser("zoo", help=ZOO_HELP, description=ZOO_HELP)
    actions = zoo.add_subparsers(dest="zoo_command", metavar="ACTION", required=True)
    actions.add_parser("list", help="the releases: name, method, architecture, data, license, published top-1, "
                                    "built locally").set_defaults(handler=_list)  # fmt: skip

    build = actions.add_parser("build", help="download, verify, convert (and publish) releases")
    build.add_argument("names", nargs="*", metavar="NAME", help="zoo names (qscore-hf zoo list)")
    build.add_argument("--all", action="store_true", help="build every release of the registry")
    build.add_argument("--out", default=None,
                       help="write each release to OUT/NAME (default: the zoo cache, where from_pretrained(NAME) "
                            "finds it)")  # fmt: skip
    build.add_argument("--mirror", default=None,
                       help=f"base URL of a mirror holding the files under their URL paths, host included "
                            f"(MIRROR/dl.fbaipublicfiles.com/moco/...); default ${MIRROR_ENV}")  # fmt: skip
    build.add_argument("--max-size", type=arguments.positive(), default=2048, metavar="MIB",
                       help="refuse files larger than this many MiB (default: 2048)")  # fmt: skip
    build.add_argument("--stats", default=None, metavar="DATASET[:SPLIT]",
                       help="count activation statistics on this data set (image folder, Hub id, ...; split default "
                            "validation)")  # fmt: skip
    build.add_argument("--stats-max-samples", type=arguments.positive_int(), default=None, help="use at most this many images")
    build.add_argument("--linear-eval", default=None, metavar="DATASET[:SPLIT]",
                       help="then linear-probe the built model: trained on DATASET's train split, evaluated on SPLIT "
                            "(default validation); measured results go into the card")
    build.add_argument("--linear-eval-max-samples", type=arguments.positive_int(), default=None, help="use at most this many images a split")
    build.add_argument("--qreg-finetune", default=None, metavar="DATASET",
                       help="also fine-tune with the default Q-reg by the published recipe (lr 1e-5, 50 epochs) on "
                            "DATASET, linear-probe base and fine-tuned alike, and write NAME-qreg")  # fmt: skip
    build.add_argument("--finetune-epochs", type=arguments.positive_int(), default=50, help="fine-tuning epochs (default: 50, the recipe)")
    build.add_argument("--finetune-batch-size", type=arguments.positive_int(), default=256, help="fine-tuning batch size (default: 256)")
    build.add_argument("--finetune-image-size", type=arguments.positive_int(16384), default=None,
                       help="fine-tuning input size (default: the release's evaluation crop)")  # fmt: skip
    build.add_argument("--finetune-max-samples", type=arguments.positive_int(), default=None,
                       help="use at most this many images of each split to fine-tune and probe")  # fmt: skip
    build.add_argument("--probe-epochs", type=arguments.positive_int(), default=100, help="linear-probe epochs (default: 100)")
    build.add_argument("--push-to-hub", default=None, metavar="ORG",
                       help="upload each release as ORG/NAME and gather them in a Hub collection")  # fmt: skip
    build.add_argument("--private", action="store_true", help="create the Hub repositories private")
    build.add_argument("--no-progress", action="store_true", help="hide progress bars")
    build.set_defaults(handler=_build)

    cards = actions.add_parser("cards", help="render model_cards/<name>/README.md from the registry")
    cards.add_argument("--out", default=None, help="folder of the cards (default: model_cards/ of the checkout)")
    cards.add_argument("--check", action="store_true", help="only check that the cards match the registry")
    cards.set_defaults(handler=_cards)
