"""Self-supervised pre-training / Q-Score fine-tuning of a ResNet with one of six SSL methods.

    accelerate launch training/pretrain.py --method byol --dataset fashion_mnist --qscore-reg --output-dir runs/byol

Settings come from, in increasing priority: qscore_hf.pretraining.PretrainConfig's defaults, the method's YAML
(training/configs/<method>.yaml, or --config FILE), and the flags given here. The run itself is
qscore_hf.pretraining.pretrain: the same on 1 CPU, 1 GPU, N GPUs or several nodes.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from qscore_hf.extras import require_extra

# On the base install: one line naming the `train` extra instead of a traceback from `import lightly` below.
require_extra("train", Path(sys.argv[0]).name)

import yaml  # noqa: E402
from accelerate import PartialState  # noqa: E402

from qscore_hf import arguments  # noqa: E402
from qscore_hf.calibration import eps_argument  # noqa: E402
from qscore_hf.data_pipelines import DATA_PIPELINES  # noqa: E402
from qscore_hf.io_utils import check_model_source  # noqa: E402
from qscore_hf.pretraining import PretrainConfig, log_spaced_epochs, pretrain  # noqa: E402
from qscore_hf.score import NORMALIZE_OPTIONS  # noqa: E402
from qscore_hf.ssl import METHODS  # noqa: E402

CONFIG_DIR = Path(__file__).parent / "configs"
# PretrainConfig's defaults, shown in --help (a method's YAML may change some: training/configs/<method>.yaml)
DEFAULTS = PretrainConfig(method="simclr", output_dir="")


def _epoch_list(text: str) -> tuple[int, ...] | str:
    """``"1,2,4"`` -> (1, 2, 4); ``"log:8"`` stays a string until --epochs is known."""
    if text.startswith("log:") and text[4:].isdigit() and int(text[4:]) > 0:
        return text
    try:
        epochs = tuple(sorted({int(part) for part in text.split(",") if part}))
    except ValueError:
        epochs = ()
    if not epochs or epochs[0] < 1:
        raise argparse.ArgumentTypeError(f"expected epoch counts like 1,2,4,8 or log:8; got {text!r}")
    return epochs


def build_parser() -> argparse.ArgumentParser:
    """The command line's flags; each one left out keeps the YAML's or PretrainConfig's value."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     argument_default=argparse.SUPPRESS)
    add = parser.add_argument
    add("--method", required=True, choices=sorted(METHODS))
    add("--config", type=Path, help="YAML of defaults (default: training/configs/<method>.yaml)")
    add("--output-dir", required=True)
    add("--backbone", help="resnet18, resnet18_cifar (CIFAR stem), resnet50, or any timm name")
    add("--stem-padding", type=arguments.count())
    add("--dataset", help="Hub id, local imagefolder/parquet/arrow, or fashion_mnist / digits / cifar10")
    add("--split"), add("--eval-split", help="labelled split for the per-epoch kNN monitor ('none' to skip)")
    add("--image-column"), add("--label-column")
    add("--max-samples", type=arguments.positive_int(), help="use only the first N training samples")
    add("--image-size", type=arguments.positive_int(16384))
    add("--epochs", type=arguments.positive_int()), add("--max-steps", type=arguments.positive_int())
    add("--batch-size", type=arguments.positive_int(), help="per device")
    add("--optimizer", choices=["lars", "sgd"])
    add("--lars-clip", action=argparse.BooleanOptionalAction,
        help="clip LARS's layer-wise rate at lr, as solo-learn's recipes do (clip_lr; default: on)")
    add("--lr", type=arguments.positive(), help="per 256 images (scaled by the total batch size)")
    add("--weight-decay", type=arguments.number(0.0)), add("--warmup-epochs", type=arguments.number(0.0))
    add("--local-views", type=arguments.count(), help="multi-crop small views for SwAV / DINO")
    add("--method-kwargs", type=json.loads,
        help='JSON overriding some of the method\'s hyper-parameters, e.g. \'{"temperature": 0.1}\'; the config\'s '
             'others stay')
    add("--qscore-reg", action="store_true", help="add Q-Score regularization (SPEC §6)")
    add("--lambda1", type=arguments.number(0.0)), add("--lambda2", type=arguments.number(0.0))
    add("--qscore-eps", type=eps_argument, help="eps of the regularizer, or 'auto' (the default: calibrated each epoch)")
    add("--qscore-normalize", choices=list(NORMALIZE_OPTIONS),
        help="the regularizer's Q_i: none (SPEC §4, the default; in the features' units, so the Q term can inflate "
             "them), zscore or l1 (scale-free)")
    add("--scoring-eps", type=eps_argument,
        help=f"eps of the exported model's Q-Scores, or 'auto' (default: {DEFAULTS.scoring_eps:g}, chosen on a "
             "validation split with the normalize and band below; README 'Results')")
    add("--scoring-normalize", choices=list(NORMALIZE_OPTIONS),
        help=f"normalize of the exported model's Q-Scores (default: {DEFAULTS.scoring_normalize})")
    add("--scoring-p-lo", type=arguments.percentile(), help=f"lower percentile of its band D (default: {DEFAULTS.scoring_p_lo:g})")
    add("--scoring-p-hi", type=arguments.percentile(), help=f"upper percentile of its band D (default: {DEFAULTS.scoring_p_hi:g})")
    add("--qscore-l1-form", choices=["normalized", "mean", "sum"],
        help="the regularizer's L1 term: normalized (scale-free, default), mean (per-sample mean), sum (SPEC §6 literal)")
    add("--qscore-warmup-samples", type=arguments.count())
    add("--init-from", help="fine-tune this QScoreModel (published recipe: --lr 1e-5 --epochs 50)")
    add("--resume", help="'auto' (latest checkpoint in --output-dir) or a checkpoint folder")
    add("--checkpoint-every", type=arguments.count(),
        help=f"also checkpoint every N steps, besides each epoch end; 0: only at epoch ends (default: {DEFAULTS.checkpoint_every})")
    add("--keep-checkpoints", type=arguments.count(),
        help=f"keep the newest N checkpoints; 0 keeps all (default: {DEFAULTS.keep_checkpoints})")
    add("--snapshot-epochs", type=_epoch_list,
        help="keep the backbone as a QScoreModel folder (snapshots/epoch_NNNN) after these epochs: '1,2,4,8' or "
             "'log:8' (8 log-spaced points up to --epochs)")
    add("--stop-after-steps", type=arguments.positive_int(), help="checkpoint and stop after N steps (e.g. a job's time limit); then --resume auto")
    add("--push-to-hub", metavar="ORG/NAME"), add("--private", action="store_true")
    add("--seed", type=arguments.seed())
    add("--mixed-precision", choices=["no", "fp16", "bf16"])
    add("--num-workers", type=arguments.count())
    add("--data-pipeline", choices=DATA_PIPELINES,
        help="auto (default): tensor where it can serve the run, else pil with one line saying why; pil: per-image PIL "
             "augmentation in --num-workers loader processes; tensor: images decoded once into a memory-mapped uint8 "
             "array ($QSCORE_HF_DECODED_CACHE), each batch's views drawn on the device by kornia from the same recipe")
    add("--no-channels-last", dest="channels_last", action="store_false")
    add("--compile", action="store_true", help="torch.compile the model")
    add("--knn-k", type=arguments.positive_int(), help=f"neighbours of the per-epoch kNN monitor (default: {DEFAULTS.knn_k})")
    add("--knn-max-train", type=arguments.count(), help=f"training images the kNN monitor compares with (default: {DEFAULTS.knn_max_train})")
    add("--knn-max-eval", type=arguments.count(), help=f"--eval-split images the kNN monitor classifies (default: {DEFAULTS.knn_max_eval})")
    add("--log-every", type=arguments.positive_int())
    add("--log-with", choices=["tensorboard", "wandb", "none"])
    add("--no-progress", dest="progress", action="store_false")
    return parser


def parse_args(argv: list[str] | None = None) -> PretrainConfig:
    parser = build_parser()
    args = vars(parser.parse_args(argv))

    config_path = args.pop("config", CONFIG_DIR / f"{args['method']}.yaml")
    settings = yaml.safe_load(Path(config_path).read_text()) if Path(config_path).exists() else {}
    if settings.get("method", args["method"]) != args["method"]:
        parser.error(f"{config_path} is a config for {settings['method']!r}, not {args['method']!r}.")
    # --method-kwargs overrides single keys: the recipe's other method settings stay
    args["method_kwargs"] = {**settings.get("method_kwargs", {}), **args.get("method_kwargs", {})}
    unknown_kwargs = set(args["method_kwargs"]) - set(METHODS[args["method"]].defaults)
    if unknown_kwargs:  # here, not after the data set has loaded
        parser.error(f"{args['method']} has no hyper-parameter(s) {sorted(unknown_kwargs)} (--method-kwargs or "
                     f"{config_path}); it takes {sorted(METHODS[args['method']].defaults)}.")
    settings.update(args)
    if isinstance(settings.get("eval_split"), str) and settings["eval_split"].lower() == "none":
        settings["eval_split"] = None
    if settings.get("init_from"):
        try:
            check_model_source(settings["init_from"])
        except OSError as error:
            parser.exit(2, f"{parser.prog}: error: --init-from {error}\n")
    if isinstance(settings.get("snapshot_epochs"), str):  # "log:N", resolved once --epochs is known
        settings["snapshot_epochs"] = log_spaced_epochs(settings.get("epochs", DEFAULTS.epochs),
                                                        int(settings["snapshot_epochs"].split(":")[1]))
    known = {f.name for f in fields(PretrainConfig)}
    unknown = set(settings) - known
    if unknown:
        parser.error(f"{config_path}: unknown setting(s) {sorted(unknown)}")
    return PretrainConfig(**settings)


def main(argv: list[str] | None = None) -> int:
    model_dir = pretrain(parse_args(argv))
    if model_dir is not None and PartialState().is_main_process:
        print(f"saved the pre-trained QScoreModel to {model_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
