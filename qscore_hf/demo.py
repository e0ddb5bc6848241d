"""``qscore-hf demo``: pre-train a small SSL encoder on bundled data, linear-probe it and score it with Q-Score.

Everything runs offline on the CPU in about 10 minutes on 2 cores (8 on digits, 11-12 on Fashion-MNIST,
measured on a busy 2-core VM), through the library's own calls:
``qscore_hf.pretraining.pretrain`` trains the encoder and exports it as a ``QScoreModel`` folder,
``qscore_hf.linear_eval.run_linear_eval`` trains the probe, scores the evaluation images and writes the report.

The output folder holds ``model/`` (the encoder, with its model card), ``report/`` (``report.json``,
``per_sample.parquet`` and the plots), ``feature_cache/`` and ``train_log.jsonl``.

Importing this module is light (no torch, no lightly): ``qscore-hf demo --help`` and its argument errors work on the
base install; ``run_demo`` imports the training stack once its arguments are checked.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from .dataset_names import BUILTIN_DATASETS

__all__ = [
    "DATASET_CHOICES",
    "DEFAULT_METHOD",
    "METHOD_NAMES",
    "DemoSetting",
    "TimeEstimate",
    "dataset_notice",
    "demo_setting",
    "estimate_time",
    "format_summary",
    "resolve_dataset",
    "run_demo",
]

DATASET_CHOICES = ("auto", *BUILTIN_DATASETS)
DEFAULT_METHOD = "simclr"
# qscore_hf.ssl.METHODS' names (that module needs lightly; tests/test_newcomer_cli.py checks that they agree)
METHOD_NAMES = ("byol", "dino", "moco", "simclr", "simsiam", "swav")
INSTALL_FASHION_MNIST = "sudo apt-get install dataset-fashion-mnist"
BACKBONE = "resnet10t"  # a small timm ResNet: about 150 images/s through the pre-training loop at 32 px on 2 cores
REPORT_DIR = "report"
FEATURE_CACHE_DIR = "feature_cache"
TRAIN_LOG = "train_log.jsonl"


@dataclass(frozen=True)
class DemoSetting:
    """The sizes of a demo run.

    Attributes:
        max_samples: rows of each split used (pre-training and probe training use the first ones of the training
            split, the probe is evaluated on the first ones of the test split); ``None`` for all.
        epochs: pre-training epochs.
        batch_size: pre-training batch size.
        image_size: input resolution of the encoder.
        probe_epochs: SGD epochs of the linear probe.
        qscore_eps: the ``eps`` of highly activating features (SPEC §2) saved with the model: 1, chosen on a
            validation split with normalize ``l1`` and band 0-100 (``SMALL_SCALE_SCORING``, README "Results"); at the
            paper's 4, a few minutes of CPU training leave most samples with no highly activating feature.
    """

    max_samples: int | None
    epochs: int
    batch_size: int
    image_size: int
    probe_epochs: int
    qscore_eps: float | str = 1.0


# Defaults sized for about 10 minutes on 2 CPU cores (measured: see the README), and the few-second --quick one.
_SETTINGS = {
    "fashion_mnist": DemoSetting(max_samples=5000, epochs=3, batch_size=128, image_size=32, probe_epochs=100),
    "cifar10": DemoSetting(max_samples=5000, epochs=3, batch_size=128, image_size=32, probe_epochs=100),
    "digits": DemoSetting(max_samples=None, epochs=10, batch_size=128, image_size=32, probe_epochs=100),
}
# A barely trained encoder has few features 4 sigma above its mean: eps=2 keeps the quick run's D non-empty.
_QUICK = DemoSetting(max_samples=128, epochs=1, batch_size=32, image_size=16, probe_epochs=20, qscore_eps=2.0)


def resolve_dataset(dataset: str = "auto") -> str:
    """``fashion_mnist`` when ``dataset`` is ``auto`` and Debian's Fashion-MNIST files are installed, ``digits``
    (bundled with scikit-learn) otherwise; other names are checked and returned."""
    if dataset not in DATASET_CHOICES:
        raise ValueError(f"unknown demo data set {dataset!r}; choose one of {DATASET_CHOICES}.")
    if dataset != "auto":
        return dataset
    from . import data  # datasets: imported once the arguments are checked

    files = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz")  # fmt: skip
    return "fashion_mnist" if all((data.FASHION_MNIST_DIR / name).is_file() for name in files) else "digits"


def dataset_notice(requested: str, name: str) -> str:
    """What the demo says before it starts: the data set it uses, why, and (on digits) how to get a harder one.

    Args:
        requested: the ``--dataset`` given (``auto`` or a built-in name).
        name: the data set ``resolve_dataset(requested)`` chose.
    """
    from . import data

    if name == "fashion_mnist":
        return f"Data set: Fashion-MNIST, read from {data.FASHION_MNIST_DIR}."
    if name == "cifar10":
        return (f"Data set: CIFAR-10, read from {data.cifar10_source()} (set ${data.CIFAR10_ENV} to a local copy to "
                "run offline).")  # fmt: skip
    why = (
        f"Fashion-MNIST is not installed (no IDX files in {data.FASHION_MNIST_DIR})" if requested == "auto"
        else "as asked (--dataset digits)"
    )  # fmt: skip
    return (
        f"Data set: scikit-learn's digits (1,797 bundled 8x8 images), {why}. A linear probe gets nearly every digit "
        "right, so the few mistakes it makes are too few for the AUROCs below to mean much: this run shows what the "
        f"demo does, not how well Q-Score works. For a meaningful run install Fashion-MNIST ({INSTALL_FASHION_MNIST}, "
        "or set QSCORE_FASHION_MNIST_DIR to a folder of its IDX .gz files) and run `qscore-hf demo` again; "
        "`--dataset cifar10` reads CIFAR-10 from the Hub (uoft-cs/cifar10) when online."
    )


def demo_setting(dataset: str, quick: bool = False, epochs: int | None = None) -> DemoSetting:
    """The run's sizes: the data set's default (or the ``quick`` one), with ``epochs`` pre-training epochs if given."""
    setting = _QUICK if quick else _SETTINGS[dataset]
    if epochs is not None:
        if epochs < 1:
            raise ValueError(f"--epochs must be at least 1, not {epochs}.")
        setting = replace(setting, epochs=epochs)
    return setting


@dataclass(frozen=True)
class TimeEstimate:
    """How long a demo run should take on this machine, from timing a few of its pre-training steps.

    Attributes:
        seconds_per_step: mean time of a pre-training step (augmentation, forward and backward) in the probe.
        probe_steps: steps timed (after one untimed warm-up step).
        pretraining_steps: the run's pre-training steps (``epochs`` times the full batches of its training images).
        evaluation_images: images encoded after pre-training (activation statistics and probe features of the
            training images, features of the test images).
        views: augmented views per image in a pre-training step.
        batch_size: images per pre-training step.
    """

    seconds_per_step: float
    probe_steps: int
    pretraining_steps: int
    evaluation_images: int
    views: int
    batch_size: int

    @property
    def pretraining_seconds(self) -> float:
        return self.pretraining_steps * self.seconds_per_step

    @property
    def evaluation_seconds(self) -> float:
        """Forward passes only: about a third of a training step's cost per view and image."""
        return self.evaluation_images * self.seconds_per_step / (3 * self.views * self.batch_size)

    def text(self) -> str:
        """The sentence the demo prints before it starts."""
        total = self.pretraining_seconds + self.evaluation_seconds
        return (
            f"Estimated time: about {_minutes(total)} ({self.seconds_per_step:.2f} s per pre-training step here, timed "
            f"over {self.probe_steps} steps: {self.pretraining_steps} steps of pre-training, "
            f"{_minutes(self.pretraining_seconds)}; "
            f"features, probe and report for {self.evaluation_images} images, {_minutes(self.evaluation_seconds)}; "
            "plus start-up). The progress bar below counts down from this estimate and corrects it when pre-training "
            "ends."
        )


class WholeRunBar:
    """One progress bar over the whole demo, counted in seconds of the time estimate, so that its ETA is the time
    left: a thread moves it with the clock, it never passes the end of a stage before the stage is over, and when
    pre-training ends the evaluation's share is rescaled by how far the pre-training estimate was off.

    Args:
        estimate: the run's ``TimeEstimate``.
        enabled: draw the bar (tqdm's ``disable`` otherwise).
        clock: seconds, monotonic (tests pass a fake one).
        tick: seconds between the thread's updates; ``None`` starts no thread (call ``update``).
        file: where the bar is drawn (tqdm's default, stderr, when ``None``).

    While the bar stands at a stage's end waiting for the stage, it says it is past the estimate instead of showing
    a time left that would grow as the clock runs.
    """

    LEFT = "{desc} {percentage:3.0f}%|{bar}| {elapsed} elapsed, about {remaining} left"
    LATE = "{desc} {percentage:3.0f}%|{bar}| {elapsed} elapsed, taking longer than estimated"

    def __init__(self, estimate: TimeEstimate, enabled: bool = True, clock: Callable[[], float] = time.monotonic,
                 tick: float | None = 1.0, file: Any = None) -> None:  # fmt: skip
        from tqdm.auto import tqdm

        self.clock, self.started, self.file = clock, clock(), file
        self.evaluation = estimate.evaluation_seconds
        self.stage_end = estimate.pretraining_seconds  # on the bar's scale: where the current stage ends
        self.bar = tqdm(total=round(estimate.pretraining_seconds + estimate.evaluation_seconds, 1), unit="s",
                        desc="qscore-hf demo: pre-training", disable=not enabled, file=file, bar_format=self.LEFT)
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._thread = None
        if tick is not None and enabled:
            self._thread = threading.Thread(target=self._run, args=(tick,), daemon=True)
            self._thread.start()

    def _run(self, tick: float) -> None:
        while not self._stop.wait(tick):
            self.update()

    def update(self) -> None:
        """Move the bar to the time spent, held just short of the current stage's end."""
        with self._lock:
            spent, held_at = self.clock() - self.started, 0.99 * self.stage_end
            self.bar.n = round(min(spent, held_at), 1)
            self.bar.bar_format = self.LATE if spent >= held_at else self.LEFT
            self.bar.refresh()

    def write(self, text: str) -> None:
        """Print ``text`` on its own line above the bar (a plain ``print`` would continue the bar's line)."""
        with self._lock:
            self.bar.write(text, file=self.file)  # stdout, as print, by default: tqdm clears the bar first

    def pretraining_done(self) -> None:
        """Pre-training is over: the rest is the evaluation's estimate times the pre-training's actual/estimated."""
        with self._lock:
            spent = self.clock() - self.started
            ratio = spent / self.stage_end if self.stage_end > 0 else 1.0
            self.stage_end = spent + ratio * self.evaluation
            self.bar.total, self.bar.n = round(self.stage_end, 1), round(spent, 1)
            self.bar.bar_format = self.LEFT  # a new estimate for the rest
            self.bar.set_description_str("qscore-hf demo: features, probe and report", refresh=True)

    def close(self) -> None:
        """Stop the thread and fill the bar."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self.bar.total = self.bar.n = round(self.clock() - self.started, 1)
            self.bar.close()


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def estimate_time(name: str, setting: DemoSetting, method: str = DEFAULT_METHOD, probe_steps: int = 2) -> TimeEstimate:
    """Time ``probe_steps`` pre-training steps of ``method`` on a batch of the data set's images (augmented as the run
    augments them), after one warm-up step, and scale to the run's ``setting``."""
    import torch

    from .configuration_qscore import IMAGENET_MEAN, IMAGENET_STD, QScoreConfig
    from .data import dataset_normalization, load_image_dataset
    from .modeling_qscore import QScoreModel
    from .ssl import TransformSettings, build_method

    train = load_image_dataset(name, "train", max_samples=setting.max_samples)
    num_test = len(load_image_dataset(name, "test", max_samples=setting.max_samples).dataset)
    batch = train.dataset.select(range(min(setting.batch_size, len(train.dataset))))
    mean, std = dataset_normalization(train) or (IMAGENET_MEAN, IMAGENET_STD)
    model = QScoreModel(QScoreConfig(backbone=BACKBONE, image_size=setting.image_size, crop_pct=1.0))
    ssl = build_method(method, model.backbone, int(model.config.hidden_size))
    transform = ssl.build_transform(TransformSettings(setting.image_size, tuple(mean), tuple(std)))
    timings = []
    for step in range(probe_steps + 1):
        started = time.perf_counter()
        samples = [transform(image.convert("RGB")) for image in batch[train.image_column]]
        views = [torch.stack(view) for view in zip(*samples)]
        ssl(views, step, probe_steps + 1, 0).loss.backward()
        timings.append(time.perf_counter() - started)
    num_train = len(train.dataset)
    return TimeEstimate(
        seconds_per_step=sum(timings[1:]) / probe_steps, probe_steps=probe_steps,
        pretraining_steps=setting.epochs * (num_train // setting.batch_size),
        evaluation_images=2 * num_train + num_test, views=len(views), batch_size=len(batch),
    )  # fmt: skip


def _prepare_output(out: Path) -> None:
    """Clear what an earlier demo left in ``out``; refuse a folder holding anything else."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; choose a folder name.")
    entries = list(out.iterdir()) if out.exists() else []
    owned = [entry for entry in entries if _is_demo_file(entry.name)]
    foreign = sorted(entry.name for entry in entries if entry not in owned and not entry.name.startswith("."))
    if foreign:
        raise ValueError(
            f"--out {out} already holds files that are not a demo's ({', '.join(foreign[:5])}); "
            "choose another --out or empty that folder."
        )
    for entry in owned:
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _is_demo_file(name: str) -> bool:
    """A file the demo writes, or a temporary folder of an interrupted atomic write (``.report.tmp-...``)."""
    from .pretraining import CHECKPOINT_DIR, MODEL_DIR

    owned = {MODEL_DIR, REPORT_DIR, FEATURE_CACHE_DIR, TRAIN_LOG, CHECKPOINT_DIR}
    return name in owned or (name.startswith(".") and name[1:].split(".")[0] in owned)


def run_demo(
    dataset: str = "auto",
    out: str | os.PathLike = "qscore-demo",
    method: str = DEFAULT_METHOD,
    epochs: int | None = None,
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Pre-train, linear-probe and Q-Score a small encoder; returns the run's settings, paths and linear-eval report.

    Args:
        dataset: ``auto`` (Fashion-MNIST when installed, else digits), ``digits``, ``fashion_mnist`` or ``cifar10``.
        out: output folder (see the module docstring); an earlier demo's folder is replaced.
        method: SSL method (``qscore_hf.ssl.METHODS``).
        epochs: pre-training epochs (default: the data set's setting).
        quick: a few-second run on a few images (for tests), not a meaningful result.
        seed: seeds the pre-training and the probe.
        progress: show progress bars.
        log: called with what a person should read as the run goes (the data set notice and, unless ``quick``, the
            time estimate before it starts; a line when pre-training ends); ``print`` on the command line.
    """
    started = time.time()
    if method not in METHOD_NAMES:
        raise ValueError(f"unknown SSL method {method!r}; choose one of {list(METHOD_NAMES)}.")
    name = resolve_dataset(dataset)
    setting = demo_setting(name, quick, epochs)
    out = Path(out)
    _prepare_output(out)
    estimate = whole = None
    if log is not None:
        log(dataset_notice(dataset, name))
        if not quick:
            estimate = estimate_time(name, setting, method)
            log(estimate.text())
            whole = WholeRunBar(estimate, enabled=progress)
    try:
        # one bar for the whole run: the libraries' own bars and the log lines would break into its line
        with _library_bars_off(whole is not None):
            return _run(name, dataset, setting, out, method, quick, seed, progress and whole is None,
                        log if whole is None else whole.write, estimate, whole, started)  # fmt: skip
    finally:
        if whole is not None:
            whole.close()


@contextlib.contextmanager
def _library_bars_off(off: bool) -> Iterator[None]:
    """Hide the progress bars of transformers, huggingface_hub and datasets inside the block (when ``off``), and
    restore each library's setting after it."""
    if not off:
        yield
        return
    import datasets
    import huggingface_hub.utils as hub_utils
    import transformers.utils.logging as transformers_logging

    toggles = [(transformers_logging.is_progress_bar_enabled(), transformers_logging.disable_progress_bar,
                transformers_logging.enable_progress_bar),
               (not hub_utils.are_progress_bars_disabled(), hub_utils.disable_progress_bars, hub_utils.enable_progress_bars),
               (datasets.is_progress_bar_enabled(), datasets.disable_progress_bars, datasets.enable_progress_bars)]  # fmt: skip
    for enabled, disable, _ in toggles:
        if enabled:
            disable()
    try:
        yield
    finally:
        for enabled, _, enable in toggles:
            if enabled:
                enable()


def _run(name: str, dataset: str, setting: DemoSetting, out: Path, method: str, quick: bool, seed: int,
         progress: bool, log: Callable[[str], None] | None, estimate: TimeEstimate | None, whole: WholeRunBar | None,
         started: float) -> dict[str, Any]:  # fmt: skip
    """``run_demo`` after its checks: pre-training, linear evaluation, card (``progress``: the stages' own bars)."""
    from .linear_eval import run_linear_eval  # the training stack: after the arguments are checked
    from .pretraining import CHECKPOINT_DIR, PretrainConfig, pretrain

    pretraining_started = time.time()
    model_dir = pretrain(
        PretrainConfig(
            method=method, output_dir=str(out), backbone=BACKBONE, dataset=name, eval_split=None,
            max_samples=setting.max_samples, image_size=setting.image_size, epochs=setting.epochs,
            batch_size=setting.batch_size, warmup_epochs=setting.epochs / 10, checkpoint_every=0, keep_checkpoints=1,
            scoring_eps=setting.qscore_eps, seed=seed, num_workers=0, log_with="none", progress=progress,
        )  # fmt: skip
    )
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)  # only a resumable run needs them
    pretraining_seconds = time.time() - pretraining_started
    if whole is not None:
        whole.pretraining_done()
    if log is not None:
        left = f" (about {_minutes(estimate.evaluation_seconds)})" if estimate is not None else ""
        log(f"Pre-trained in {_minutes(pretraining_seconds)}; next: features, linear probe and report{left}.")
    report = run_linear_eval(
        model_dir, name, out / REPORT_DIR, max_samples=setting.max_samples, epochs=setting.probe_epochs,
        cache_dir=out / FEATURE_CACHE_DIR, seed=seed, progress=progress,
        command=shlex.join(["qscore-hf", "demo", "--dataset", name, "--method", method, "--epochs", str(setting.epochs),
                            "--seed", str(seed), "--out", str(out)] + (["--quick"] if quick else [])),
    )  # fmt: skip
    from .cards import card_from_report, check_card

    # the card with the measurement: baselines, base rates and the verdict (pre-training wrote it without them)
    check_card(card_from_report(report, model=model_dir)).save(Path(model_dir) / "README.md")
    return {
        "dataset": name,
        "dataset_notice": dataset_notice(dataset, name),
        "method": method,
        "backbone": BACKBONE,
        "setting": asdict(setting),
        "quick": quick,
        "seed": seed,
        "model_dir": str(model_dir),
        "report_dir": str(out / REPORT_DIR),
        "report": report,
        "pretraining_seconds": round(pretraining_seconds, 1),
        "seconds": round(time.time() - started, 1),
    }


def format_summary(result: dict[str, Any]) -> str:
    """The demo's results table and where its files are."""
    from .comparison import report_text
    from .linear_eval import PER_SAMPLE_FILE, PLOT_FILES, REPORT_FILE
    from .metrics import interval_text

    report, setting = result["report"], result["setting"]
    rows = [
        ("linear-probe top-1 accuracy", f"{report['top1']:.4f}", f"{1 / report['num_classes']:.4f} (chance)"),
        ("AUPRC, correct as positive", f"{report['auprc_correct']:.4f}",
         f"{report['base_rate_correct']:.4f} (base rate: accuracy)"),
        ("AUPRC, misclassified as positive", f"{report['auprc_misclassified']:.4f}",
         f"{report['base_rate_misclassified']:.4f} (base rate: error rate)"),
        ("AUROC", f"{report['auroc']:.4f}", "0.5000 (chance)"),
        ("95 % interval of the AUROC", interval_text(report["auroc_ci"]), "DeLong"),
        ("|D| discriminative features", str(report["qscore"]["num_discriminative"]),
         f"of {report['num_features']}"),
    ]  # fmt: skip
    header = ("metric", "value", "reference")
    widths = [max(len(row[k]) for row in [header, *rows]) for k in range(3)]
    lines = [" | ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    qscore = report["qscore"]
    lines += ["", f"Q-Score (eps {qscore['eps']:g}, normalize {qscore['normalize']}) beside label-free baselines, as "
              "predictors of the probe's mistakes:", "", report_text(report["comparison"], report["degeneracy"])]
    report_dir = Path(result["report_dir"])
    title = (
        f"Q-Score demo: {result['method']} pre-training of {result['backbone']} ({setting['image_size']} px, "
        f"{setting['epochs']} epoch{'s' if setting['epochs'] != 1 else ''}) on {result['dataset']}; linear probe on "
        f"{report['num_train']} training images, evaluated on {report['num_eval']} test images; "
        f"{result['seconds']:.0f} s"
    )
    reading = (
        "AUPRC above its base rate and AUROC above 0.5 mean that low scores flag the probe's mistakes without labels; "
        "a label-free baseline that does as well makes Q-Score redundant on this model. The paper's encoders trained "
        "for hundreds of epochs, this one for minutes."
    ) + (f" On digits the probe makes few mistakes; for a harder data set: {INSTALL_FASHION_MNIST}, then run "
         "`qscore-hf demo` again." if result["dataset"] == "digits" else "")  # fmt: skip
    files = ", ".join([REPORT_FILE, PER_SAMPLE_FILE, *PLOT_FILES.values()])
    return "\n".join([title, "", *lines, "", reading, "", f"model (with its model card): {result['model_dir']}",
                      f"report and plots: {report_dir}/ ({files})"])  # fmt: skip
