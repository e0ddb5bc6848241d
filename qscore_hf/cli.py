"""The ``qscore-hf`` command line. Argument parsing only: every subcommand calls library functions."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from . import arguments
from .data_pipelines import DATA_PIPELINES, DEFAULT_DATA_PIPELINE
from .eps import eps_argument
from .extras import extra_of, install_command, missing_extra_message, missing_module
from .io_utils import check_model_source, check_output_folder, check_writable

__all__ = ["main"]


def _info(args: argparse.Namespace) -> int:
    """Print a model's config summary and its discriminative features."""
    check_model_source(args.model)
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
    check_writable(args.out)
    from .convert import ConversionReport, compute_stats, convert_checkpoint
    from .publish import push_folder, save_model_folder

    if _is_model_repo(args.checkpoint):  # a transformers or timm repo: import its backbone, weights and preprocessing
        from .modeling_qscore import QScoreModel

        model = QScoreModel.from_backbone_repo(args.checkpoint, pooling=args.pooling)
        print(f"source: {json.dumps(model.config.backbone_source)}; pooling: {model.config.backbone_pooling}")
    else:
        model = convert_checkpoint(
            args.checkpoint, method=args.method, format=args.format, arch=args.arch,
            trust_checkpoint=args.trust_checkpoint, pretraining_data=args.pretraining_data, license=args.license,
        )  # fmt: skip
        print(ConversionReport.from_config(model.config).summary())
    if args.compute_stats:
        stats = compute_stats(model, args.compute_stats, split=args.stats_split, max_samples=args.stats_max_samples)
        print(f"activation statistics: {int(stats.num_samples)} images of {args.compute_stats}/{args.stats_split}")
    save_model_folder(model, args.out, repo_id=args.push_to_hub)
    print(f"wrote {args.out}")
    if args.push_to_hub:
        print(f"pushed to {args.push_to_hub}: {push_folder(args.out, args.push_to_hub)}")
    return 0


def _is_model_repo(name: str) -> bool:
    """A model folder or Hub id (``org/name``, ``hf-hub:org/name``) rather than a checkpoint file."""
    from pathlib import Path

    path = Path(name)
    if path.is_file() or path.suffix in (".pth", ".tar", ".ckpt", ".safetensors", ".bin", ".pt", ".pkl"):
        return False
    return path.is_dir() or (name.removeprefix("hf-hub:").count("/") == 1 and not name.startswith((".", "/", "~")))


def _explain(args: argparse.Namespace) -> int:
    """Heatmaps of each sample's top Q-Score features and their IoU with core/spurious masks (SPEC §7)."""
    from .dataset_names import check_dataset_name

    check_dataset_name(args.dataset)
    check_model_source(args.model)
    check_output_folder(args.out)
    from .data import load_image_dataset
    from .explain import explain_dataset, save_explanation
    from .modeling_qscore import QScoreModel

    model = QScoreModel.from_pretrained(args.model)
    image_dataset = load_image_dataset(args.dataset, args.split, args.image_column, args.label_column,
                                       max_samples=args.max_samples, allow_downloads=args.allow_downloads,
                                       encode_labels=args.encode_labels)  # fmt: skip
    mask_columns = [name.strip() for name in args.mask_columns.split(",")] if args.mask_columns else []
    explanation = explain_dataset(
        model, image_dataset, mask_columns=mask_columns, correct_column=args.correct_column, top_k=args.top_k,
        top_fraction=args.top_fraction, method=args.method, combine=args.combine, batch_size=args.batch_size,
        max_images=args.max_images, device=args.device, progress=not args.no_progress,
    )  # fmt: skip
    save_explanation(explanation, args.out, extra={"model": args.model, "dataset": args.dataset, "split": args.split})
    print(json.dumps(explanation.summary["means"], indent=2))
    print(f"wrote {args.out}")
    return 0


def _score(args: argparse.Namespace) -> int:
    """Score every image of a data set: per-sample parquet, summary, plots and report."""
    from .dataset_names import check_dataset_name

    check_dataset_name(args.dataset)  # a typo of a built-in name fails here, not after the model and a Hub retry
    if not args.backbone_only:
        check_model_source(args.model)
    check_output_folder(args.out)
    import torch

    from .data import load_image_dataset
    from .scoring import load_model, score_dataset

    model, identity = load_model(args.model, args.revision, args.backbone_only, args.image_size, args.pooling)
    columns = (args.image_column, args.label_column, args.streaming, args.max_samples)
    options = {"allow_downloads": args.allow_downloads}
    # with --encode-labels, one mapping for both splits: built from the probe's training split, the scored split's
    # labels must be among it
    probe_dataset = load_image_dataset(args.dataset, args.probe_split, *columns, **options,
                                       encode_labels=args.encode_labels) if args.probe else None  # fmt: skip
    names = probe_dataset.class_names if probe_dataset is not None and args.encode_labels else None
    image_dataset = load_image_dataset(args.dataset, args.split, *columns, **options,
                                       encode_labels=names if names is not None else args.encode_labels)  # fmt: skip
    summary = score_dataset(
        model, image_dataset, args.out, stats=args.stats, probe_dataset=probe_dataset, probe_epochs=args.probe_epochs,
        probe_optimizer=args.probe_optimizer, flag_lowest=args.flag_lowest, batch_size=args.batch_size,
        device=args.device, dtype=torch.bfloat16 if args.bf16 else None, num_workers=args.num_workers,
        cache_dir=args.cache_dir, strict_images=args.strict_images, progress=not args.no_progress,
        model_info=identity, eps=args.eps, shard_rows=args.shard_rows, data_pipeline=args.data_pipeline,
    )  # fmt: skip
    if int(os.environ.get("RANK", "0")) != 0:  # launched on several processes: the main one reports
        return 0
    from .comparison import report_text

    if summary["activation_stats"].get("note"):
        print(f"note: {summary['activation_stats']['note']}")
    calibrated = " (calibrated: eps='auto')" if summary["qscore"]["eps_calibration"] else ""
    print(f"scored {summary['num_samples']} images (skipped {summary['skipped_images']['count']} unreadable): "
          f"mean Q {summary['mean_q']:.4f}, median Q {summary['median_q']:.4f}, |D| {summary['num_discriminative']}, "
          f"eps {summary['qscore']['eps']:g}{calibrated}, empty S_i {100 * summary['empty_fraction']:.1f} %")
    if summary.get("comparison"):
        print(f"probe accuracy {summary['accuracy']:.4f}")
        print(report_text(summary["comparison"], summary["degeneracy"]))
    elif summary["degeneracy"]["warning"]:
        print(f"WARNING: {summary['degeneracy']['warning']}")
    print(f"wrote {args.out}")
    return 0


def _add_score_parser(commands: argparse._SubParsersAction) -> None:
    score = commands.add_parser("score", help=_COMMANDS["score"][1])
    score.add_argument("--model", required=True,
                       help="Hub id or local folder of a QScoreModel, a transformers vision model (ViT, DINOv2, "
                            "ResNet, ConvNeXt) or a timm repo (timm name with --backbone-only)")  # fmt: skip
    score.add_argument("--pooling", choices=("cls", "cls_mean", "pooler"), default=None,
                       help="features of a transformers model: cls (ViT default), cls_mean (CLS + mean patch token), "
                            "pooler (CNN default)")  # fmt: skip
    score.add_argument("--revision", default=None, help="Hub revision of the model (branch, tag or commit)")
    score.add_argument("--backbone-only", action="store_true",
                       help="--model is a timm name: timm's weights if in the local cache, else random")  # fmt: skip
    score.add_argument("--image-size", type=arguments.positive_int(16384), default=None,
                       help="input size with --backbone-only (a ViT is built for it where timm allows)")  # fmt: skip
    score.add_argument("--dataset", required=True, help="local folder/parquet/arrow, digits, fashion_mnist, cifar10 or Hub id")
    score.add_argument("--split", default="train", help="split to score (default: train)")
    score.add_argument("--image-column", default=None, help="image column (default: the first Image feature)")
    score.add_argument("--label-column", default=None, help="label column (default: the first ClassLabel, if any)")
    score.add_argument("--streaming", action="store_true", help="stream the data set instead of loading it")
    score.add_argument("--allow-downloads", action="store_true",
                       help="fetch an image column of http(s) URLs (30 s timeout, 64 MiB cap per image; not offline)")
    score.add_argument("--encode-labels", action="store_true",
                       help="map string labels to class indices by their sorted names (listed in summary.json)")
    score.add_argument("--max-samples", type=arguments.positive_int(), default=None, help="use at most this many images per split")
    score.add_argument("--stats", choices=_STATS_SOURCES, default="auto",
                       help="activation statistics: the model's (saved), counted on the data (data), or saved when "
                            "the model has them (auto, default)")  # fmt: skip
    score.add_argument("--eps", type=eps_argument, default=None,
                       help="score with this eps instead of the model's, or 'auto' (calibrated on the scored data: "
                            "the largest eps leaving 90%% of samples a highly activating feature); statistics are "
                            "then counted on the data")  # fmt: skip
    score.add_argument("--probe", action="store_true",
                       help="train a linear probe; report how well Q-Score predicts its mistakes")  # fmt: skip
    score.add_argument("--probe-split", default="train", help="split the probe is trained on (default: train)")
    score.add_argument("--probe-epochs", type=arguments.positive_int(), default=100, help="probe epochs (default: 100)")
    score.add_argument("--probe-optimizer", choices=_PROBE_OPTIMIZERS, default="sgd",
                       help="probe optimizer (default: sgd)")  # fmt: skip
    score.add_argument("--flag-lowest", type=arguments.count(), default=0, metavar="K",
                       help="draw the K lowest-Q images into lowest_qscore.png")  # fmt: skip
    score.add_argument("--batch-size", type=arguments.positive_int(), default=256, help="images per forward pass (default: 256)")
    score.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    score.add_argument("--bf16", action="store_true", help="run the encoder under bfloat16 autocast")
    score.add_argument("--num-workers", type=arguments.count(), default=0, help="DataLoader workers decoding images (default: 0)")
    score.add_argument("--data-pipeline", choices=DATA_PIPELINES, default=DEFAULT_DATA_PIPELINE,
                       help="auto (default): tensor where it can serve the data set, else pil with one line saying "
                            "why; pil: images decoded and preprocessed in --num-workers loader processes; tensor: "
                            "decoded once into a memory-mapped uint8 array ($QSCORE_HF_DECODED_CACHE), each batch "
                            "resized, cropped and normalized on --device (same features; not with "
                            "--shard-rows)")  # fmt: skip
    score.add_argument("--cache-dir", default=None, help="feature cache (default: $QSCORE_HF_CACHE or $HF_HOME/...)")
    score.add_argument("--strict-images", action="store_true",
                       help="fail on an unreadable image instead of skipping and counting it")  # fmt: skip
    score.add_argument("--no-progress", action="store_true", help="hide progress bars")
    score.add_argument("--shard-rows", type=arguments.positive_int(), default=None, metavar="N",
                       help="cache features in resumable shards of N rows (a multiple of --batch-size) and write "
                            "per_sample-*-of-*.parquet; under accelerate launch / torchrun the processes split the "
                            "shards (default there: 32 batches)")  # fmt: skip
    score.add_argument("--out", required=True, help="output folder (written atomically)")
    score.set_defaults(handler=_score)


_DEMO_HELP = "start here: pre-train, linear-probe and Q-Score a small encoder (~10 min on 2 CPU cores, offline)"


def _demo(args: argparse.Namespace) -> int:
    """Pre-train a small SSL encoder on bundled data, linear-probe it and print the Q-Score metrics."""
    check_writable(args.out)
    from .demo import format_summary, run_demo

    result = run_demo(dataset=args.dataset, out=args.out, method=args.method, epochs=args.epochs, quick=args.quick,
                      seed=args.seed, progress=not args.no_progress, log=print)  # fmt: skip
    print(format_summary(result))
    return 0


def _add_demo_parser(commands: argparse._SubParsersAction) -> None:
    from .demo import DATASET_CHOICES, DEFAULT_METHOD, INSTALL_FASHION_MNIST, METHOD_NAMES  # light: no torch

    missing = missing_module("train")
    epilog = [f"Fashion-MNIST, for the meaningful run: {INSTALL_FASHION_MNIST}"]
    if missing:
        epilog.append(f"This command needs the `train` extra ({missing} is not installed): {install_command('train')}")
    demo = commands.add_parser(
        "demo", help=_DEMO_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,  # commands stay on one line
        description=_fill("Pre-train a small SSL encoder on bundled images, train a linear probe on its frozen "
                          "features, and report how well Q-Score predicts the probe's mistakes. Offline; about 10 "
                          "minutes on 2 CPU cores (measured on a busy 2-core VM: 8 min on digits, 11-12 min on "
                          "Fashion-MNIST); --quick takes seconds."),
        epilog="\n".join(_fill(line) for line in epilog),
    )  # fmt: skip
    demo.add_argument("--dataset", choices=DATASET_CHOICES, default="auto",
                      help="auto (default): fashion_mnist when Debian's dataset-fashion-mnist is installed, else "
                           "digits (bundled with scikit-learn; too easy for a meaningful AUROC); cifar10 reads "
                           "$QSCORE_CIFAR10_DIR or the Hub")  # fmt: skip
    demo.add_argument("--method", choices=METHOD_NAMES, default=DEFAULT_METHOD,
                      help=f"SSL method (default: {DEFAULT_METHOD})")  # fmt: skip
    demo.add_argument("--epochs", type=arguments.positive_int(), default=None, help="pre-training epochs (default: set per data set)")
    demo.add_argument("--seed", type=arguments.seed(), default=0, help="seed of pre-training and probe (default: 0)")
    demo.add_argument("--quick", action="store_true", help="a few-second run on a few images (a smoke test)")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.add_argument("--out", default="qscore-demo", help="output folder (default: qscore-demo)")
    demo.set_defaults(handler=_demo)


def _card(args: argparse.Namespace) -> int:
    """Render a model card (README.md) from a linear-evaluation report and the model's config."""
    check_writable(Path(args.out).parent)
    from .cards import card_from_report, check_card, load_report

    card = card_from_report(load_report(args.results), model=args.model, repo_id=args.repo_id, license=args.license)
    check_card(card)  # huggingface_hub's parsing and model-index checks, offline
    card.save(args.out)
    print(f"wrote {args.out}")
    return 0


def _add_card_parser(commands: argparse._SubParsersAction) -> None:
    card = commands.add_parser("card", help=_COMMANDS["card"][1])
    card.add_argument("--results", required=True,
                      help="report.json of a linear evaluation (training/linear_eval.py, qscore-hf demo)")  # fmt: skip
    card.add_argument("--out", required=True, help="card file to write, e.g. model_cards/<name>/README.md")
    card.add_argument("--model", default=None,
                      help="local folder or Hub id whose config describes the model (default: the report's model)")
    card.add_argument("--repo-id", default=None, help="name in the card's usage code (default: the model)")
    card.add_argument("--license", default=None,
                      help="license id of the weights, e.g. mit (default: a converted model's release's, else "
                           "qscore-hf's apache-2.0, said so in the card)")  # fmt: skip
    card.set_defaults(handler=_card)


def _publish_metric(args: argparse.Namespace) -> int:
    """Publish the evaluate metric (module, card, requirements.txt) as the Hub Space <org>/qscore."""
    from .evaluate_metric.space import publish_metric_space

    url = publish_metric_space(args.repo_id, private=args.private or None, requirement=args.requirement)
    print(f"published {args.repo_id}: {url}\nload it with evaluate.load({args.repo_id!r})")
    return 0


def _add_publish_metric_parser(commands: argparse._SubParsersAction) -> None:
    publish = commands.add_parser("publish-metric", help=_COMMANDS["publish-metric"][1])
    publish.add_argument("--repo-id", required=True, metavar="ORG/qscore", help="the Space (token: HF_TOKEN or login)")
    publish.add_argument("--private", action="store_true", help="create the Space private")
    publish.add_argument("--requirement", default=None,
                         help="pip requirement for qscore-hf in the Space's requirements.txt (e.g. a git URL)")  # fmt: skip
    publish.set_defaults(handler=_publish_metric)


def _add_info_parser(commands: argparse._SubParsersAction) -> None:
    info = commands.add_parser("info", help=_COMMANDS["info"][1])
    info.add_argument("model", help="Hub id (org/name) or local folder of a QScoreModel")
    info.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    info.set_defaults(handler=_info)


def _add_convert_parser(commands: argparse._SubParsersAction) -> None:
    convert = commands.add_parser("convert", help=_COMMANDS["convert"][1])
    convert.add_argument("--checkpoint", required=True,
                         help=".pth/.pth.tar/.ckpt/.safetensors file of the release, or a transformers/timm model "
                              "(Hub id or folder) to import with its preprocessing")  # fmt: skip
    convert.add_argument("--pooling", choices=("cls", "cls_mean", "pooler"), default=None,
                         help="features of an imported transformers model (default: cls for ViTs, pooler for CNNs)")
    convert.add_argument("--out", required=True, help="output folder (written atomically)")
    convert.add_argument("--method", default=None, help="SSL method, when the checkpoint does not say (e.g. simclr)")
    convert.add_argument("--pretraining-data", default=None,
                         help="data set the weights were pre-trained on, when you know it (default: what the file or "
                              "solo-learn's args.json records, else the release's, marked as inferred in the card)")
    convert.add_argument("--license", default=None,
                         help="license id of the weights, e.g. mit, when you know it (default: the release's, marked "
                              "as inferred in the card)")  # fmt: skip
    convert.add_argument("--format", default="auto", choices=["auto", *_CONVERT_FORMATS],
                         help="checkpoint layout (default: auto, detected from the keys)")  # fmt: skip
    convert.add_argument("--arch", default=None, help="backbone (resnet50, resnet18_cifar, ...); default: inferred")
    convert.add_argument("--trust-checkpoint", action="store_true",
                         help="unpickle without weights_only (runs the file's code): trusted files only")  # fmt: skip
    convert.add_argument("--compute-stats", metavar="DATASET", default=None,
                         help="store activation statistics of this data set (folder, digits, Hub id)")  # fmt: skip
    convert.add_argument("--stats-split", default="train", help="split of --compute-stats (default: train)")
    convert.add_argument("--stats-max-samples", type=arguments.positive_int(), default=None, help="use at most this many images")
    convert.add_argument("--push-to-hub", metavar="ORG/NAME", default=None,
                         help="upload the folder to this Hub repository (token: HF_TOKEN or the login)")  # fmt: skip
    convert.set_defaults(handler=_convert)


def _add_explain_parser(commands: argparse._SubParsersAction) -> None:
    explain = commands.add_parser("explain", help=_COMMANDS["explain"][1])
    explain.add_argument("--model", required=True, help="Hub id (org/name) or local folder of a QScoreModel")
    explain.add_argument("--dataset", required=True, help="data set: local folder/parquet, digits, fashion_mnist, cifar10, or Hub id")
    explain.add_argument("--split", default="train", help="split (default: train)")
    explain.add_argument("--image-column", default=None, help="image column (default: the first Image feature)")
    explain.add_argument("--label-column", default=None, help="label column, copied to per_sample (default: detected)")
    explain.add_argument("--allow-downloads", action="store_true",
                         help="fetch an image column of http(s) URLs (30 s timeout, 64 MiB cap per image; not offline)")
    explain.add_argument("--encode-labels", action="store_true",
                         help="map string labels to class indices by their sorted names (listed in explain.json)")
    explain.add_argument("--mask-columns", metavar="CORE,SPURIOUS", default=None,
                         help="two columns of binary masks (images or 2-D arrays) for IoU(heatmap, mask)")  # fmt: skip
    explain.add_argument("--correct-column", default=None,
                         help="0/1 column of classifier correctness (default: 'correct' when present)")  # fmt: skip
    explain.add_argument("--top-k", type=arguments.positive_int(), default=5, help="features explained per sample (default: 5)")
    explain.add_argument("--top-fraction", type=arguments.fraction(), default=0.1,
                         help="fraction of pixels kept when binarizing a heatmap (default: 0.1)")  # fmt: skip
    explain.add_argument("--method", choices=["gradient", "gradcam"], default="gradient",
                         help="input gradient or Grad-CAM on the last conv stage (default: gradient)")  # fmt: skip
    explain.add_argument("--combine", choices=["mean", "max"], default="mean",
                         help="how a sample's k feature heatmaps are combined (default: mean)")  # fmt: skip
    explain.add_argument("--max-samples", type=arguments.positive_int(), default=None, help="explain at most this many images")
    explain.add_argument("--max-images", type=arguments.count(), default=32, help="overlay PNGs written (default: 32)")
    explain.add_argument("--batch-size", type=arguments.positive_int(), default=32, help="images per forward pass (default: 32)")
    explain.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    explain.add_argument("--no-progress", action="store_true", help="hide progress bars")
    explain.add_argument("--out", required=True, help="output folder (written atomically)")
    explain.set_defaults(handler=_explain)


def _add_zoo_parser(commands: argparse._SubParsersAction) -> None:
    from .zoo.cli import add_zoo_parser

    add_zoo_parser(commands)


# name -> (adds the command's arguments, one-line help). Only the command being run has its arguments built, so that
# `qscore-hf --help` imports nothing heavy and a command's optional dependencies are imported only when it runs.
_COMMANDS: dict[str, tuple[Callable[[argparse._SubParsersAction], None], str]] = {
    "demo": (_add_demo_parser, _DEMO_HELP),
    "info": (_add_info_parser, "summarise a QScoreModel (Hub id or local folder)"),
    "convert": (_add_convert_parser, "convert a released SSL checkpoint into a QScoreModel folder"),
    "explain": (_add_explain_parser, "heatmaps of the features behind Q-Score; IoU with masks"),
    "score": (_add_score_parser, "per-sample Q-Scores of a data set, with summary, plots and report"),
    "card": (_add_card_parser, "render a model card from a linear-evaluation report.json"),
    "publish-metric": (_add_publish_metric_parser, "publish the evaluate metric as a Hub Space <org>/qscore"),
    "zoo": (_add_zoo_parser, "pretrained SSL backbones: list, build (download, verify, convert) and publish releases"),
}
# Choices that live in modules importing torch, copied so that parsing (--help, argument errors) imports none of
# them: scoring.STATS_SOURCES, probe.OPTIMIZERS, convert.layouts' FORMATS and FORMAT_ALIASES. tests/test_newcomer_cli.py
# checks that the copies agree.
_STATS_SOURCES = ("auto", "saved", "data")
_PROBE_OPTIMIZERS = ("sgd", "lbfgs")
_CONVERT_FORMATS = ("moco", "mocov3", "mocov3_vit", "simsiam", "swav", "swav_train", "dino_full", "dino_backbone",
                    "dino_vit_full", "dino_vit_backbone", "byol_converted", "simclr_v1_converted", "solo_learn",
                    "lightly", "torchvision", "timm")  # fmt: skip


def _fill(text: str) -> str:
    """``text`` wrapped for a help screen without breaking a word or a command at its hyphens."""
    import textwrap

    return textwrap.fill(text, width=100, break_on_hyphens=False, break_long_words=False)


def _build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; ``command``'s arguments are built in full, the other commands only named with their help."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="qscore-hf", description="Q-Score for self-supervised representations.")
    parser.add_argument("--version", action="version", version=f"qscore-hf {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (add_parser, help_text) in _COMMANDS.items():
        if name == command:
            add_parser(commands)
        else:
            commands.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    try:
        parser = _build_parser(command if command in _COMMANDS else None)
        args = parser.parse_args(argv)
        handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
        if handler is None:
            parser.print_help()
            return 2
        return handler(args)
    except ModuleNotFoundError as error:
        extra = extra_of(error.name or "")
        if extra is None:
            raise
        print(missing_extra_message(f"qscore-hf {command}", extra, (error.name or "").split(".")[0]), file=sys.stderr)
        return 1
    except (ValueError, OSError) as error:
        print(f"qscore-hf {command}: error: {str(error) or type(error).__name__ + ' (no message)'}", file=sys.stderr)
        return 1
    finally:
        if "torch.distributed" in sys.modules:  # a command run under `accelerate launch` made a process group
            from .distributed import end_process_group

            end_process_group()


if __name__ == "__main__":
    sys.exit(main())
