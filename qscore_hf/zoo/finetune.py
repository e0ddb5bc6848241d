"""``zoo build NAME --qreg-finetune DATASET``: fine-tune a built release with the default Q-Score regularizer by the
published recipe of ``training/pretrain.py --init-from`` (lr 1e-5, 50 epochs, ``--qscore-reg``), linear-probe the
base and the fine-tuned backbone with the same protocol (``qscore_hf.linear_eval``), and write ``NAME-qreg`` with both
numbers, measured, in its card."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .card import release_card
from .registry import Release

if TYPE_CHECKING:  # pretraining imports torch: only when a fine-tuning runs
    from ..pretraining import PretrainConfig

__all__ = ["RECIPE", "FinetuneSettings", "finetune_config", "qreg_finetune"]

# training/pretrain.py's --init-from help and the README's fine-tuning example: the published recipe.
RECIPE = {"lr": 1e-5, "epochs": 50, "qscore_reg": True}
# release method -> qscore_hf.ssl method (MoCo v2 and v3 are fine-tuned with the MoCo v2+ heads of qscore_hf.ssl).
_SSL_METHODS = {"mocov2": "moco", "mocov3": "moco", "simsiam": "simsiam", "swav": "swav", "dino": "dino",
                "byol": "byol", "simclr": "simclr"}  # fmt: skip


@dataclass(frozen=True)
class FinetuneSettings:
    """The fine-tuning data and the knobs a smaller run (a test, a first look) may turn; defaults: the recipe."""

    dataset: str
    train_split: str = "train"
    eval_split: str = "test"
    epochs: int = RECIPE["epochs"]
    lr: float = RECIPE["lr"]
    batch_size: int = 256
    image_size: int | None = None  # default: the release's evaluation crop
    max_samples: int | None = None
    probe_epochs: int = 100


def finetune_config(release: Release, settings: FinetuneSettings, output_dir: str | os.PathLike,
                    base: str | os.PathLike | None = None, progress: bool = True) -> PretrainConfig:
    """The ``training/pretrain.py`` configuration of the recipe for ``release``: its SSL method's heads, its crop,
    Q-reg on, starting from the built release in ``base`` (``None``: the backbone's fresh weights, e.g. to cost a
    step in ``bench/zoo_finetune_cost.py``)."""
    from ..pretraining import PretrainConfig

    if release.method not in _SSL_METHODS:
        raise ValueError(f"{release.name}: no fine-tuning recipe for method {release.method!r}.")
    return PretrainConfig(
        method=_SSL_METHODS[release.method], output_dir=str(output_dir), dataset=settings.dataset,
        split=settings.train_split, eval_split=settings.eval_split, init_from=None if base is None else str(base),
        lr=settings.lr, epochs=settings.epochs, batch_size=settings.batch_size,
        image_size=settings.image_size or release.crop, max_samples=settings.max_samples,
        qscore_reg=RECIPE["qscore_reg"], log_with="none", num_workers=0, progress=progress,
    )  # fmt: skip


def qreg_finetune(
    release: Release,
    base: str | os.PathLike,
    settings: FinetuneSettings,
    out: str | os.PathLike,
    work: str | os.PathLike,
    repo_id: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Fine-tune the built release in ``base`` with Q-reg, probe base and fine-tuned alike, and write the fine-tuned
    model to ``out`` (atomically) with a card holding both top-1s as measured; ``work`` keeps the run and the
    evaluations. Returns ``out``."""
    from ..io_utils import atomic_directory, check_output_folder
    from ..linear_eval import run_linear_eval
    from ..modeling_qscore import QScoreModel
    from ..pretraining import pretrain
    from .build import read_zoo_record

    # what the final save would refuse (a folder holding others' files, nothing writable) is refused before training
    check_output_folder(out, what=f"the folder of {release.name}-qreg")
    work = Path(work)
    cfg = finetune_config(release, settings, work / "run", base=base, progress=progress)
    start = time.perf_counter()
    tuned = pretrain(cfg)
    seconds = time.perf_counter() - start
    log(f"{release.name}: Q-reg fine-tuning on {settings.dataset} took {seconds:.0f} s")
    reports = {
        label: run_linear_eval(folder, settings.dataset, work / f"eval-{label}", train_split=settings.train_split,
                               eval_split=settings.eval_split, max_samples=settings.max_samples,
                               epochs=settings.probe_epochs, update_model_card=False, progress=progress)
        for label, folder in (("base", base), ("qreg", tuned))
    }  # fmt: skip
    model = QScoreModel.from_pretrained(tuned)
    training = model.config.training
    discriminative = model.discriminative_features()
    num_discriminative = model.config.hidden_size if discriminative is None else int(discriminative.numel())
    base_measured = (read_zoo_record(base) or {}).get("measured", {})
    measured = {
        **{key: base_measured[key] for key in ("sha256", "md5", "size") if key in base_measured},
        # pre-training's export counts the statistics on the fine-tuning data
        "stats": {"dataset": settings.dataset, "split": settings.train_split,
                  "samples": int(model.activation_stats.num_samples), "num_discriminative": num_discriminative},
        "finetune": {
            "settings": asdict(settings), "ssl_method": cfg.method, "seconds": round(seconds, 1),
            "steps": training["steps"], "device": "cuda" if _cuda() else "cpu",
            "top1": {label: report["top1"] for label, report in reports.items()},
            "auroc": {label: report.get("auroc") for label, report in reports.items()},
        }
    }  # fmt: skip
    name = repo_id or f"{release.name}-qreg"
    card = release_card(release, model.config, measured, repo_id=name)
    text = str(card).rstrip("\n") + "\n\n" + _finetune_section(release, measured["finetune"]) + "\n"
    with atomic_directory(out, keep_other_files=False) as tmp:
        model.save_pretrained(tmp)
        (tmp / "README.md").write_text(text)
        (tmp / "zoo.json").write_text(json.dumps({"release": release.to_dict(), "measured": measured}, indent=2) + "\n")
    for label, report in reports.items():
        log(f"{release.name}: linear-probe top-1 on {settings.dataset} ({settings.eval_split}), {label}: "
            f"{report['top1']:.4f}")  # fmt: skip
    return Path(out)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _finetune_section(release: Release, finetune: dict[str, Any]) -> str:
    settings = finetune["settings"]
    per_step = finetune["seconds"] / max(finetune["steps"], 1)
    return "\n".join([
        "## Q-reg fine-tuning (measured here)",
        "",
        f"`{release.name}` fine-tuned with the default Q-Score regularizer by the published recipe of "
        f"`training/pretrain.py --init-from` (lr {settings['lr']:g}, {settings['epochs']} epochs; "
        f"`{finetune['ssl_method']}` heads, new) on `{settings['dataset']}` ({settings['train_split']}"
        + (f", first {settings['max_samples']} images" if settings["max_samples"] else "") + "), then both backbones "
        f"linear-probed with the same protocol ({settings['probe_epochs']} probe epochs, evaluated on "
        f"{settings['eval_split']}).",
        "",
        "| backbone | linear-probe top-1 (measured) | Q-Score AUROC (measured) |",
        "|---|---|---|",
        *(f"| {label} | {finetune['top1'][label]:.4f} | {_number(finetune['auroc'][label])} |"
          for label in ("base", "qreg")),
        "",
        f"Cost of this run: {finetune['steps']} steps in {finetune['seconds']:.0f} s on {finetune['device']} "
        f"({per_step:.2f} s per step); a full run's hours are that step time times its steps, an estimate.",
    ])  # fmt: skip


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"
