"""Self-supervised pre-training (and fine-tuning) with optional Q-Score regularization, on Accelerate.

``training/pretrain.py`` is the command line; ``pretrain(PretrainConfig(...))`` is the same run from Python.
One code path serves 1 CPU, 1 GPU, N GPUs and several nodes: accelerate's DDP, nothing home-made.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from lightly.utils.scheduler import CosineWarmupScheduler
from timm.optim import Lars
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from .backbones import timm_size_kwargs
from .cards import training_provenance
from .configuration_qscore import IMAGENET_MEAN, IMAGENET_STD, SMALL_SCALE_SCORING, QScoreConfig
from .batch_views import BatchViews, batch_views
from .data import ImageDataset, dataset_normalization, load_image_dataset
from .data_pipelines import DEFAULT_DATA_PIPELINE, tensor_or_none
from .decoded import DecodedImages, TooLargeToDecode, decode_images
from .io_utils import atomic_directory, atomic_write_text, check_model_source
from .knn import knn_accuracy
from .modeling_qscore import QScoreModel
from .publish import push_folder, save_model_folder
from .health import FeatureHealth, RunningFeatureHealth
from .regularizer import (
    DEFAULT_EPS,
    DEFAULT_L1_FORM,
    DEFAULT_LAMBDA1,
    DEFAULT_LAMBDA2,
    QScoreRegularizer,
    QScoreRegularizerOutput,
)
from .ssl import SSLMethod, TransformSettings, build_method
from .tracking import TrackerValue, tracker_config
from .worker_views import WorkerViews, seeded

__all__ = ["PretrainConfig", "StepOutput", "log_spaced_epochs", "pretrain", "snapshot_folder", "training_step"]

CHECKPOINT_DIR = "checkpoints"
PIPELINE_FILE = "data_pipeline.txt"  # in each checkpoint: the data pipeline its run took, which `auto` resumes on
MODEL_DIR = "model"
SNAPSHOT_DIR = "snapshots"  # snapshots/epoch_0008: the backbone as a QScoreModel folder after epoch 8
TRAIN_LOG = "train_log.jsonl"
_INERT_Q_TERM = (
    "Q-Score regularization, epoch {epoch}: the Q term pushed no sample. Every sample below the batch's mean Q had "
    "an empty S_i (no feature above mu + {eps:g} sigma), so Q_i = 0 there and has no gradient; only the L1 term "
    "acted. A young encoder rarely has features that far above its mean: try --qscore-eps auto or a lower eps (see the "
    "README's Results)."
)
_SILENCED_Q_TERM = (
    "Q-Score regularization, epoch {epoch}: the Q term pushed no sample, after it did in earlier epochs. eps='auto' "
    "has risen to {eps:g}: few features now stand that far above their sample's mean, so S_i is empty below the "
    "batch's mean Q. The Q term rewards such spiky features, and pushing them can collapse the representation (on "
    "CIFAR-10 it did: README 'Results'): compare health/effective_rank with a run without --qscore-reg, and try a "
    "lower --lambda1."
)
_KILLED_FEATURES = (
    "Q-Score regularization, epoch {epoch}: {dead:.0%} of the backbone's features never fired this epoch, against "
    "{reference:.0%} in the first epoch (effective rank {rank:.1f}, first epoch {reference_rank:.1f}). The L1 term "
    "may be killing features that an unregularized run keeps: lower --lambda2, or use --qscore-l1-form normalized "
    "(scale-free; the default), and compare with a run without --qscore-reg."
)
# An epoch's dead fraction this far above the first epoch's triggers the warning above.
KILLED_FEATURES_MARGIN = 0.05


def inert_q_term_message(epoch: int, eps: float, auto_eps: bool, was_active: bool) -> str:
    """What to tell a user when an epoch's Q term pushed no sample: a young encoder's features that never reach eps,
    or (eps calibrated, the term active before) features the term itself made spiky enough to raise eps."""
    template = _SILENCED_Q_TERM if auto_eps and was_active else _INERT_Q_TERM
    return template.format(epoch=epoch, eps=eps)


@dataclass
class PretrainConfig:
    """Every setting of a pre-training run; ``training/configs/<method>.yaml`` hold per-method defaults."""

    method: str
    output_dir: str
    backbone: str = "resnet18_cifar"
    stem_padding: int = 1
    dataset: str = "fashion_mnist"
    split: str = "train"
    eval_split: str | None = "test"
    image_column: str | None = None
    label_column: str | None = None
    max_samples: int | None = None
    image_size: int = 32
    epochs: int = 100
    max_steps: int | None = None
    batch_size: int = 256
    optimizer: str = "lars"
    lars_clip: bool = True  # solo-learn's clip_lr (LARC): a layer's step is at most lr times its gradient
    lr: float = 0.4
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_epochs: float = 10.0
    method_kwargs: dict[str, Any] = field(default_factory=dict)
    local_views: int = 0
    qscore_reg: bool = False
    lambda1: float = DEFAULT_LAMBDA1
    lambda2: float = DEFAULT_LAMBDA2
    qscore_l1_form: str = DEFAULT_L1_FORM
    qscore_eps: float | str = DEFAULT_EPS  # the regularizer's eps ("auto" or a number)
    qscore_normalize: str = "none"  # the regularizer's Q_i: "none" (SPEC §4, in feature units), "zscore" or "l1"
    # The exported model's Q-Score settings (its Q-Scores and saved statistics): chosen on a validation split.
    scoring_eps: float | str = SMALL_SCALE_SCORING["qscore_eps"]
    scoring_normalize: str = SMALL_SCALE_SCORING["qscore_normalize"]
    scoring_p_lo: float = SMALL_SCALE_SCORING["qscore_p_lo"]
    scoring_p_hi: float = SMALL_SCALE_SCORING["qscore_p_hi"]
    qscore_warmup_samples: int = 10_000
    init_from: str | None = None
    resume: str | None = None
    checkpoint_every: int = 500
    stop_after_steps: int | None = None
    keep_checkpoints: int = 2
    # Epoch counts (1-based) after which the backbone is also kept as a QScoreModel folder (a training trajectory).
    snapshot_epochs: tuple[int, ...] = ()
    push_to_hub: str | None = None
    private: bool = False
    seed: int = 0
    mixed_precision: str | None = None
    num_workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))  # loader workers: one per core, up to 4
    channels_last: bool = True
    compile: bool = False
    knn_k: int = 20
    knn_max_train: int = 10_000
    knn_max_eval: int = 2_000
    log_every: int = 10
    log_with: str = "tensorboard"
    progress: bool = True
    # "pil": per-image PIL/torchvision augmentation in the loader processes; "tensor": the images decoded once into
    # a memory-mapped uint8 array (qscore_hf.decoded) and each batch's views drawn on the device by kornia
    # (qscore_hf.batch_views), from the same recipe (images too many to decode once are decoded and cropped in the
    # loader workers instead, their colour work done per batch on the device: qscore_hf.worker_views); "auto": tensor
    # where it can serve the run, else pil with one line saying why (qscore_hf.data_pipelines). The model's config
    # records the pipeline taken.
    data_pipeline: str = DEFAULT_DATA_PIPELINE


@dataclass
class StepOutput:
    loss: Tensor
    ssl_loss: Tensor
    regularization: list[QScoreRegularizerOutput]
    features: list[Tensor]


def training_step(
    method: nn.Module, regularizer: QScoreRegularizer | None, views: list[Tensor], step: int, max_steps: int, epoch: int
) -> StepOutput:
    """The loss of one batch: the SSL loss plus, with a regularizer, ``L_Q`` of every view's backbone features."""
    out = method(views, step, max_steps, epoch)
    regularization = [regularizer(features) for features in out.features] if regularizer is not None else []
    loss = out.loss + sum((r.loss for r in regularization), torch.zeros((), device=out.loss.device))
    return StepOutput(loss, out.loss, regularization, out.features)


class TrainState:
    """The step counter and the first epoch's feature health (the reference of the killed-features warning),
    checkpointed with accelerate's state."""

    def __init__(self) -> None:
        self.step = 0
        self.first_health: FeatureHealth | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "first_health": None if self.first_health is None else self.first_health.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        first = state.get("first_health")  # absent in checkpoints written before it existed
        self.first_health = None if first is None else FeatureHealth(**first)


def _check_output_dir(path: Path, needed_bytes: int) -> None:
    """Fail before training, not after hours of it, when checkpoints cannot be written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"output directory {path} is not writable ({error}); choose another --output-dir.") from error
    free = shutil.disk_usage(path).free
    if free < needed_bytes:
        raise ValueError(
            f"only {free / 2**20:.0f} MiB free under {path}, but checkpoints need about {needed_bytes / 2**20:.0f} MiB; "
            "free some space or choose another --output-dir."
        )


def _collate_views(samples: list[dict[str, Any]]) -> list[Tensor]:
    return [torch.stack(view) for view in zip(*(sample["views"] for sample in samples))]


def _collate_eval(samples: list[dict[str, Any]]) -> dict[str, Tensor]:
    batch = {"pixel_values": torch.stack([sample["pixel_values"] for sample in samples])}
    if "label" in samples[0]:
        batch["label"] = torch.tensor([sample["label"] for sample in samples])
    return batch


def augmentation_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of sample ``index``'s augmentations in ``epoch`` of a run seeded ``seed`` (see ``EpochSampler``)."""
    return (seed * 1_000_003 + epoch) * 1_000_000_007 + index


class EpochSampler(Sampler[int]):
    """A seeded shuffle per epoch that yields ``epoch * N + index``, so that each sample's augmentation can be
    seeded by (seed, epoch, index): the views do not depend on the RNG stream, the number of workers or
    processes, and a resumed run sees exactly the views of an uninterrupted one."""

    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples, self.seed, self.epoch = num_samples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        offset = self.epoch * self.num_samples
        return iter((torch.randperm(self.num_samples, generator=generator) + offset).tolist())


class AugmentedViews(Dataset):
    """Multi-view augmentations of an image data set, seeded per (seed, epoch, index); see ``EpochSampler``."""

    def __init__(self, data: ImageDataset, transform: Callable[[Any], list[Tensor]], seed: int) -> None:
        self.data, self.transform, self.seed = data, transform, seed

    def __len__(self) -> int:
        return len(self.data.dataset)

    def __getitem__(self, global_index: int) -> dict[str, list[Tensor]]:
        epoch, index = divmod(int(global_index), len(self))
        image = self.data.dataset[index][self.data.image_column].convert("RGB")
        with seeded(augmentation_seed(self.seed, epoch, index)):
            views = self.transform(image)
        return {"views": views}


class DecodedImageBatches(Dataset):
    """Decoded uint8 images (N x 3 x H x W, see ``qscore_hf.decoded``) by ``EpochSampler``'s ``epoch * N + index``;
    a batch is gathered in one indexing of the array."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, global_index: int) -> Tensor:
        return torch.from_numpy(np.array(self.images[int(global_index) % len(self)]))

    def __getitems__(self, global_indices: list[int]) -> Tensor:
        return torch.from_numpy(self.images[np.asarray(global_indices) % len(self)])


def _collate_decoded(batch: Tensor) -> Tensor:
    return batch


def _eval_dataset(data: ImageDataset, model: QScoreModel):
    processor = model.image_processor()
    image_column, label_column = data.image_column, data.label_column

    def apply(batch: dict[str, list]) -> dict[str, Any]:
        pixels = processor([image.convert("RGB") for image in batch[image_column]], return_tensors="pt")["pixel_values"]
        out: dict[str, Any] = {"pixel_values": list(pixels)}
        if label_column is not None:
            out["label"] = batch[label_column]
        return out

    return data.dataset.with_transform(apply)


def build_regularizer(cfg: PretrainConfig, width: int) -> QScoreRegularizer | None:
    """The run's Q-Score regularizer for ``width`` backbone features (``None`` without ``qscore_reg``)."""
    if not cfg.qscore_reg:
        return None
    return QScoreRegularizer(width, cfg.lambda1, cfg.lambda2, cfg.qscore_eps, normalize=cfg.qscore_normalize,
                             l1_form=cfg.qscore_l1_form, warmup_samples=cfg.qscore_warmup_samples)  # fmt: skip


def build_optimizer(cfg: PretrainConfig, method: nn.Module, lr: float) -> torch.optim.Optimizer:
    """The run's optimizer over ``method``'s trainable parameters at learning rate ``lr`` (already scaled to the
    batch): LARS or SGD with momentum, no weight decay on biases and norm layers."""
    groups = _param_groups(method, cfg.weight_decay)
    if cfg.optimizer == "lars":
        # solo-learn's LARS (eta 0.02, biases and norm layers left out, clip_lr): timm's, whose trust_clip is
        # solo-learn's clip_lr; lightly's LARS does not clip, so its step stays 2 % of a layer's norm times lr however
        # small the gradient
        return Lars(groups, lr=lr, momentum=cfg.momentum, trust_coeff=0.02, trust_clip=cfg.lars_clip)
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)


def _param_groups(method: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay (hence no LARS adaptation in timm's Lars) on biases and norm layers."""
    decay, no_decay = [], []
    for param in method.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _latest_checkpoint(output_dir: Path) -> Path | None:
    checkpoints = sorted((output_dir / CHECKPOINT_DIR).glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    return checkpoints[-1] if checkpoints else None


def _checkpoint_to_resume(cfg: PretrainConfig) -> Path | None:
    """The checkpoint ``cfg.resume`` names (``"auto"``: the latest in ``cfg.output_dir``, ``None`` if there is none)."""
    return _latest_checkpoint(Path(cfg.output_dir)) if cfg.resume == "auto" else Path(cfg.resume)


def _resumed_pipeline(cfg: PretrainConfig, say: Callable[[str], object]) -> str:
    """``cfg.data_pipeline``, but for ``auto`` resuming a checkpoint the pipeline that checkpoint's run took (a
    checkpoint without the record was written when ``pil`` was the default), so that the resumed run draws the views
    an uninterrupted one would. A pipeline named explicitly is taken; where it is not the checkpoint's, one line says
    that the views from there on differ from an uninterrupted run's."""
    checkpoint = _checkpoint_to_resume(cfg) if cfg.resume else None
    if checkpoint is None or not checkpoint.is_dir():
        return cfg.data_pipeline
    recorded = checkpoint / PIPELINE_FILE
    taken = recorded.read_text().strip() if recorded.is_file() else "pil"
    if cfg.data_pipeline == "auto":
        return taken if taken in ("pil", "tensor") else cfg.data_pipeline
    if taken != cfg.data_pipeline:
        say(f"data pipeline: {cfg.data_pipeline}, as --data-pipeline names it, though {checkpoint.name} was written by "
            f"a run on {taken}: from here on the views differ from an uninterrupted run's (--data-pipeline auto "
            f"resumes on {taken})")  # fmt: skip
    return cfg.data_pipeline


def _save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, keep: int, data_pipeline: str) -> None:
    """``accelerator.save_state`` into a temporary folder with the data pipeline taken (``PIPELINE_FILE``), then a
    rename: a killed run never leaves half a checkpoint that ``--resume auto`` would pick."""
    root = output_dir / CHECKPOINT_DIR
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
        (tmp / PIPELINE_FILE).write_text(data_pipeline)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        for old in sorted(root.glob("step_*"))[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


@torch.no_grad()
def _features(backbone: nn.Module, loader: DataLoader, device: torch.device, limit: int | None = None):
    feats, labels, seen = [], [], 0
    for batch in loader:
        feats.append(backbone(batch["pixel_values"].to(device)).float().cpu())
        labels.append(batch["label"])
        seen += len(batch["label"])
        if limit is not None and seen >= limit:
            break
    return torch.cat(feats)[:limit], torch.cat(labels)[:limit]


def _knn_monitor(
    cfg: PretrainConfig, backbone: nn.Module, train_eval, test_eval, device: torch.device
) -> tuple[float, int, int]:
    """kNN top-1 of the first ``knn_max_eval`` evaluation images against the first ``knn_max_train`` training
    images; returns it with the two image counts."""
    was_training = backbone.training
    backbone.eval()
    make = lambda ds: DataLoader(ds, batch_size=256, num_workers=0, collate_fn=_collate_eval)  # noqa: E731
    train_x, train_y = _features(backbone, make(train_eval), device, cfg.knn_max_train)
    test_x, test_y = _features(backbone, make(test_eval), device, cfg.knn_max_eval)
    backbone.train(was_training)
    return knn_accuracy(train_x, train_y, test_x, test_y, k=cfg.knn_k), len(train_y), len(test_y)


def _base_model(cfg: PretrainConfig, train_data: ImageDataset) -> QScoreModel:
    """The model to train: ``init_from``'s, or a new one normalizing with ``train_data``'s statistics (ImageNet's
    for a data set it does not know)."""
    if cfg.init_from:
        check_model_source(cfg.init_from)
        return QScoreModel.from_pretrained(cfg.init_from)
    mean, std = dataset_normalization(train_data) or (IMAGENET_MEAN, IMAGENET_STD)
    return QScoreModel(
        QScoreConfig(
            backbone=cfg.backbone, stem_padding=cfg.stem_padding, image_size=cfg.image_size,
            # a ViT is built for image_size (its position embedding has one entry per patch), or refused in one line
            backbone_config=timm_size_kwargs(cfg.backbone, cfg.image_size) or None,
            crop_pct=1.0 if cfg.image_size <= 64 else 0.875, image_mean=mean, image_std=std, qscore_eps=cfg.scoring_eps,
            qscore_normalize=cfg.scoring_normalize, qscore_p_lo=cfg.scoring_p_lo, qscore_p_hi=cfg.scoring_p_hi,
        )
    )


def pretrain(cfg: PretrainConfig) -> Path | None:
    """Run pre-training (or fine-tuning with ``init_from``); returns the exported ``QScoreModel`` folder, or
    ``None`` when ``stop_after_steps`` ended this invocation early (continue it with ``resume="auto"``).

    The stages, in order: ``_build_accelerator``, ``_build_model`` (with the training data it normalizes for),
    ``_choose_data_pipeline`` and ``_build_train_loader`` (data), ``_build_optimization`` (regularizer, optimizer,
    schedule, accelerate's preparation), ``_resume``, ``_train_loop`` and ``_export``.
    """
    accelerator = _build_accelerator(cfg)
    set_seed(cfg.seed)
    train_data = load_image_dataset(cfg.dataset, cfg.split, cfg.image_column, cfg.label_column, max_samples=cfg.max_samples)
    model, method = _build_model(cfg, accelerator, train_data)
    transform = method.build_transform(_transform_settings(cfg, model))
    tensor = _choose_data_pipeline(replace(cfg, data_pipeline=_resumed_pipeline(cfg, accelerator.print)), accelerator,
                                   train_data, transform)  # fmt: skip
    cfg = replace(cfg, data_pipeline="pil" if tensor is None else "tensor")  # the pipeline taken, as recorded
    loader = _build_train_loader(cfg, train_data, transform, None if tensor is None else tensor[1])
    augment = None if tensor is None else tensor[0]
    run = _build_optimization(cfg, accelerator, model, method, loader, augment)
    _resume(run)
    monitor = _monitor_data(cfg, train_data, model)
    if cfg.log_with != "none":
        accelerator.init_trackers(f"qscore-{cfg.method}", config=_flat_config(cfg))
    if not _train_loop(run, monitor):
        accelerator.end_training()
        return None
    model_dir = _export(cfg, accelerator, model, run.unwrapped, train_data, run.max_steps, run.steps_per_epoch)
    accelerator.end_training()
    return model_dir


def _build_accelerator(cfg: PretrainConfig) -> Accelerator:
    """Accelerate's handle on the run's devices and processes, precision (bf16 where the GPU has it) and trackers."""
    mixed = cfg.mixed_precision or ("bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no")
    return Accelerator(
        # Without a GPU, accelerate forms a gloo process group under `accelerate launch --multi_gpu`/torchrun only
        # when told cpu=True; otherwise every process would train alone as rank 0.
        cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()),
        mixed_precision=mixed,
        log_with=None if cfg.log_with == "none" else cfg.log_with,
        project_dir=str(Path(cfg.output_dir)),
    )


def _build_model(cfg: PretrainConfig, accelerator: Accelerator, train_data: ImageDataset) -> tuple[QScoreModel, SSLMethod]:
    """The model to export and the SSL method training its backbone; fails early when the output folder cannot hold
    the checkpoints."""
    model = _base_model(cfg, train_data)
    method = build_method(cfg.method, model.backbone, int(model.config.hidden_size), **cfg.method_kwargs)
    parameter_bytes = sum(p.numel() * p.element_size() for p in method.parameters())
    if accelerator.is_main_process:
        _check_output_dir(Path(cfg.output_dir), needed_bytes=(cfg.keep_checkpoints + 1) * 3 * parameter_bytes + 2**26)
    accelerator.wait_for_everyone()
    return model, method


def _transform_settings(cfg: PretrainConfig, model: QScoreModel) -> TransformSettings:
    mean, std = tuple(model.config.image_mean), tuple(model.config.image_std)
    return TransformSettings(cfg.image_size, mean, std, cfg.local_views)


def _choose_data_pipeline(cfg: PretrainConfig, accelerator: Accelerator, train_data: ImageDataset,
                          transform: Any) -> tuple[BatchViews, DecodedImages | WorkerViews] | None:
    """The tensor pipeline's batch views of the recipe (on the device) and where its uint8 images come from, when
    ``cfg.data_pipeline`` takes it; ``None`` for the pil pipeline: ``"pil"``, or ``"auto"`` when the recipe has no
    kornia translation or the images cannot be decoded once for another reason than their number (said in one line).
    The images come decoded once (``DecodedImages``), or, too many for that array, decoded and cropped in the loader
    workers (``WorkerViews``), the batch views then doing each view's colour work only."""
    requested, say = cfg.data_pipeline, accelerator.print
    augment = tensor_or_none(requested, lambda: batch_views(transform), say)
    if augment is None:
        return None
    progress = cfg.progress and accelerator.is_main_process

    def images() -> DecodedImages | WorkerViews:
        try:
            return decode_images(train_data, progress=progress, same_size=requested == "auto")
        except TooLargeToDecode as too_large:
            views = WorkerViews(train_data, transform, partial(augmentation_seed, cfg.seed))
            say(f"data pipeline: tensor, images decoded in the loader workers ({too_large.reason})")
            return views

    source = tensor_or_none(requested, images, say)
    if source is None:
        return None
    if isinstance(source, WorkerViews):
        augment = batch_views(transform, geometric=False)
    return augment.to(accelerator.device), source


def _build_train_loader(cfg: PretrainConfig, train_data: ImageDataset, transform: Any,
                        source: DecodedImages | WorkerViews | None) -> DataLoader:
    """Batches reshuffled each epoch (``EpochSampler``), full batches only: of the method's augmented views
    (``pil``, ``source`` is ``None``), of ``DecodedImages``' uint8 images (``tensor``: the run's ``BatchViews`` turn a
    batch into its views) or of ``WorkerViews``' uint8 crops, one batch per view (the ``BatchViews`` do their colour
    work)."""
    if isinstance(source, DecodedImages):
        dataset: Dataset = DecodedImageBatches(source.images)
        num_workers, collate = 0, _collate_decoded  # a batch is one slice of the memory map: nothing to parallelize
    elif isinstance(source, WorkerViews):
        dataset, num_workers, collate = source, cfg.num_workers, _collate_views
    else:
        dataset, num_workers, collate = AugmentedViews(train_data, transform, cfg.seed), cfg.num_workers, _collate_views
    loader = DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=EpochSampler(len(dataset), cfg.seed),
        drop_last=True, num_workers=num_workers, pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0, collate_fn=collate,
    )
    if len(loader) == 0:
        raise ValueError(
            f"{cfg.dataset} ({len(dataset)} samples) has fewer samples than one batch of {cfg.batch_size}; "
            "lower --batch-size."
        )
    return loader


@dataclass
class _Run:
    """What the training loop works with: the prepared method, optimizer, schedule and loader, and its counters."""

    cfg: PretrainConfig
    accelerator: Accelerator
    model: QScoreModel
    method: nn.Module  # as prepared by accelerate (wrapped for DDP, maybe compiled)
    unwrapped: SSLMethod
    regularizer: QScoreRegularizer | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: DataLoader
    augment: BatchViews | None  # the tensor pipeline's views of a batch of uint8 images
    state: TrainState
    width: int
    steps_per_epoch: int
    max_steps: int

    @property
    def output_dir(self) -> Path:
        return Path(self.cfg.output_dir)


def _build_optimization(cfg: PretrainConfig, accelerator: Accelerator, model: QScoreModel, method: SSLMethod,
                        loader: DataLoader, augment: BatchViews | None) -> _Run:
    """The regularizer, the optimizer (learning rate scaled to the total batch) and its warm-up + cosine schedule,
    everything prepared by accelerate and registered for checkpointing."""
    width = int(model.config.hidden_size)
    regularizer = build_regularizer(cfg, width)
    total_batch = cfg.batch_size * accelerator.num_processes
    optimizer = build_optimizer(cfg, method, lr=cfg.lr * total_batch / 256)  # solo-learn's linear scaling rule
    if cfg.channels_last:
        method = method.to(memory_format=torch.channels_last)
    method, optimizer, loader = accelerator.prepare(method, optimizer, loader)
    steps_per_epoch = len(loader)
    max_steps = cfg.epochs * steps_per_epoch if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
    warmup_steps = min(int(cfg.warmup_epochs * steps_per_epoch), max_steps)
    scheduler = CosineWarmupScheduler(optimizer, warmup_epochs=warmup_steps, max_epochs=max_steps)
    scheduler = accelerator.prepare(scheduler)
    if cfg.compile:
        method = torch.compile(method)
    state = TrainState()
    accelerator.register_for_checkpointing(state)
    if regularizer is not None:
        regularizer.to(accelerator.device)
        accelerator.register_for_checkpointing(regularizer)
    return _Run(cfg, accelerator, model, method, accelerator.unwrap_model(method), regularizer, optimizer, scheduler,
                loader, augment, state, width, steps_per_epoch, max_steps)  # fmt: skip


def _resume(run: _Run) -> None:
    """Load ``cfg.resume``'s checkpoint (``"auto"``: the latest, if any) and drop the log's later steps."""
    cfg, accelerator = run.cfg, run.accelerator
    if cfg.resume:
        checkpoint = _checkpoint_to_resume(cfg)
        if checkpoint is not None:
            accelerator.load_state(str(checkpoint))
            accelerator.print(f"resumed from {checkpoint} at step {run.state.step}")
        elif cfg.resume != "auto":
            raise ValueError(f"--resume {cfg.resume}: no such checkpoint.")
    if accelerator.is_main_process:  # the log holds this run's steps: none after the step it starts from
        _truncate_log(run.output_dir / TRAIN_LOG, run.state.step)


def _monitor_data(cfg: PretrainConfig, train_data: ImageDataset, model: QScoreModel) -> tuple[Any, Any] | None:
    """The kNN monitor's (training, evaluation) images, preprocessed as the model scores; ``None`` without labels or
    an evaluation split."""
    if train_data.label_column is None or cfg.eval_split is None:
        return None
    eval_data = load_image_dataset(cfg.dataset, cfg.eval_split, cfg.image_column, cfg.label_column,
                                   max_samples=cfg.knn_max_eval)  # fmt: skip
    return _eval_dataset(train_data, model), _eval_dataset(eval_data, model)


class _EpochTracker:
    """Within one process: this epoch's feature health and samples the Q term pushed, and whether it ever did."""

    def __init__(self, width: int, device: torch.device) -> None:
        self.active_q_samples = torch.zeros((), device=device)
        self.q_term_was_active = False
        self.health = RunningFeatureHealth(width, device)


def _train_loop(run: _Run, monitor: tuple[Any, Any] | None) -> bool:
    """Train from ``run.state.step`` to ``max_steps``; ``False`` when ``stop_after_steps`` ended it first (after a
    checkpoint)."""
    cfg, accelerator, state = run.cfg, run.accelerator, run.state
    stop_at = state.step + cfg.stop_after_steps if cfg.stop_after_steps else None
    progress = tqdm(total=run.max_steps, initial=state.step, disable=not (cfg.progress and accelerator.is_main_process),
                    desc=f"{cfg.method} pre-training", unit="step")
    window_start, window_images = time.perf_counter(), 0
    tracker = _EpochTracker(run.width, accelerator.device)
    while state.step < run.max_steps:
        epoch = state.step // run.steps_per_epoch
        run.loader.set_epoch(epoch)
        skip = state.step % run.steps_per_epoch
        for batch in accelerator.skip_first_batches(run.loader, skip) if skip else run.loader:
            views = batch if run.augment is None else run.augment(batch, _batch_seed(run, epoch))
            if cfg.channels_last:
                views = [view.contiguous(memory_format=torch.channels_last) for view in views]
            out = training_step(run.method, run.regularizer, views, state.step, run.max_steps, epoch)
            for reg in out.regularization:
                tracker.active_q_samples += reg.num_active
            tracker.health.update(out.features[0])
            accelerator.backward(out.loss)
            run.unwrapped.after_backward(epoch)
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
            state.step += 1
            window_images += views[0].shape[0] * accelerator.num_processes
            progress.update(1)
            if state.step % cfg.log_every == 0 or state.step == run.max_steps:
                _log_step(run, out, epoch, window_images / max(time.perf_counter() - window_start, 1e-9), progress)
                window_start, window_images = time.perf_counter(), 0
            if cfg.checkpoint_every > 0 and state.step % cfg.checkpoint_every == 0:
                _save_checkpoint(accelerator, run.output_dir, state.step, cfg.keep_checkpoints, cfg.data_pipeline)
            if state.step >= run.max_steps or state.step == stop_at:
                break
        epoch_ended = state.step % run.steps_per_epoch == 0 or state.step >= run.max_steps
        if epoch_ended:
            _end_epoch(run, tracker, monitor, epoch, progress)
        if state.step == stop_at and state.step < run.max_steps:
            if not epoch_ended:
                _save_checkpoint(accelerator, run.output_dir, state.step, cfg.keep_checkpoints, cfg.data_pipeline)
            accelerator.print(f"stopped after step {state.step} of {run.max_steps}; continue with --resume auto")
            return False
    progress.close()
    return True


def _batch_seed(run: _Run, epoch: int) -> int:
    """The seed of the tensor pipeline's augmentations of this process's next batch: from (seed, epoch, step), so a
    resumed run draws the views of an uninterrupted one."""
    accelerator = run.accelerator
    return augmentation_seed(run.cfg.seed, epoch, run.state.step * accelerator.num_processes + accelerator.process_index)


def _log_step(run: _Run, out: StepOutput, epoch: int, images_per_s: float, progress: tqdm) -> None:
    """One line of ``train_log.jsonl`` (and the trackers): losses, learning rate, speed, the regularizer's figures."""
    logs = {"step": run.state.step, "loss": float(out.loss.detach()), "ssl_loss": float(out.ssl_loss.detach()),
            "lr": run.scheduler.get_last_lr()[0], "images_per_s": images_per_s, "epoch": epoch}  # fmt: skip
    for k, reg in enumerate(out.regularization):
        logs.update(reg.log_dict(prefix=f"qscore/view{k}/"))
    if out.regularization:
        logs["qscore/mean_q"] = sum(float(r.alpha) for r in out.regularization) / len(out.regularization)
    run.accelerator.log(logs, step=run.state.step)
    _append_log(run.accelerator, run.output_dir, logs)
    progress.set_postfix(loss=f"{logs['loss']:.4f}")


def _end_epoch(run: _Run, tracker: _EpochTracker, monitor: tuple[Any, Any] | None, epoch: int, progress: tqdm) -> None:
    """An epoch's end: feature health, the regularizer's refresh and warnings, a checkpoint, a snapshot when asked
    for, and the kNN monitor."""
    cfg, accelerator, state = run.cfg, run.accelerator, run.state
    state.first_health = _log_health(cfg, accelerator, run.output_dir, tracker.health, epoch, state.step,
                                     state.first_health, progress)  # fmt: skip
    if run.regularizer is not None:
        run.regularizer.refresh()
        if float(tracker.active_q_samples) == 0 and cfg.lambda1 > 0 and accelerator.is_main_process:
            progress.write(inert_q_term_message(epoch, run.regularizer.eps, run.regularizer.auto_eps,
                                                tracker.q_term_was_active))  # fmt: skip
        tracker.q_term_was_active = tracker.q_term_was_active or float(tracker.active_q_samples) > 0
        tracker.active_q_samples.zero_()
    if not (cfg.checkpoint_every > 0 and state.step % cfg.checkpoint_every == 0):  # not saved just now
        _save_checkpoint(accelerator, run.output_dir, state.step, cfg.keep_checkpoints, cfg.data_pipeline)
    if state.step % run.steps_per_epoch == 0 and state.step // run.steps_per_epoch in cfg.snapshot_epochs:
        _save_snapshot(cfg, accelerator, run.model, run.unwrapped, state.step // run.steps_per_epoch, state.step)
    if monitor is not None and accelerator.is_main_process:
        train_eval, test_eval = monitor
        accuracy, n_train, n_eval = _knn_monitor(cfg, run.unwrapped.backbone, train_eval, test_eval, accelerator.device)
        accelerator.log({f"knn_top1_k{cfg.knn_k}": accuracy}, step=state.step)
        _append_log(accelerator, run.output_dir, {"step": state.step, "epoch": epoch, f"knn_top1_k{cfg.knn_k}": accuracy,
                                                  "knn_train_images": n_train, "knn_eval_images": n_eval})  # fmt: skip
        progress.write(f"epoch {epoch}: kNN top-1 (k={cfg.knn_k}) {accuracy:.4f} on {n_eval} {cfg.eval_split} "
                       f"images against {n_train} training images")  # fmt: skip
    accelerator.wait_for_everyone()


def _log_health(cfg: PretrainConfig, accelerator: Accelerator, output_dir: Path, health: RunningFeatureHealth,
                epoch: int, step: int, first: FeatureHealth | None, progress: tqdm) -> FeatureHealth | None:
    """Log this epoch's dead-feature fraction and effective rank of the backbone's features (first view), warn when
    Q-Score regularization raised the dead fraction above the first epoch's; returns the first epoch's health."""
    if health.count == 0:  # a resumed run that starts exactly at an epoch boundary saw no batch of this epoch
        return first
    health.all_reduce()
    current = health.compute()
    health.reset()
    logs = {"health/dead_fraction": current.dead_fraction, "health/effective_rank": current.effective_rank,
            "health/mean_activation": current.mean_activation}  # fmt: skip
    accelerator.log(logs, step=step)
    _append_log(accelerator, output_dir, {"step": step, "epoch": epoch, **logs})
    if first is None:
        return current
    if cfg.qscore_reg and current.dead_fraction > first.dead_fraction + KILLED_FEATURES_MARGIN and accelerator.is_main_process:
        progress.write(_KILLED_FEATURES.format(epoch=epoch, dead=current.dead_fraction, reference=first.dead_fraction,
                                               rank=current.effective_rank, reference_rank=first.effective_rank))
    return first


def snapshot_folder(output_dir: str | os.PathLike, epoch: int) -> Path:
    """Where ``pretrain`` keeps the backbone after ``epoch`` epochs (``PretrainConfig.snapshot_epochs``)."""
    return Path(output_dir) / SNAPSHOT_DIR / f"epoch_{epoch:04d}"


def log_spaced_epochs(epochs: int, count: int = 8) -> tuple[int, ...]:
    """About ``count`` distinct epoch counts from 1 to ``epochs``, spaced evenly in log scale (``epochs`` included)."""
    points = np.unique(np.round(np.geomspace(1, epochs, num=min(count, epochs))).astype(int))
    return tuple(int(point) for point in points)


def _save_snapshot(cfg: PretrainConfig, accelerator: Accelerator, model: QScoreModel, method: SSLMethod, epoch: int,
                   step: int) -> None:
    """The backbone after ``epoch`` epochs as a QScoreModel folder (weights and config, no activation statistics:
    count them on the data you score), written atomically; an existing snapshot (a resumed run) is kept."""
    folder = snapshot_folder(cfg.output_dir, epoch)
    if accelerator.is_main_process and not folder.exists():
        snapshot = copy.deepcopy(model).cpu()
        snapshot.backbone.load_state_dict({k: v.detach().cpu() for k, v in method.backbone.state_dict().items()})
        snapshot.config.ssl_method = cfg.method
        snapshot.config.pretraining_data = cfg.dataset
        snapshot.config.training = {"snapshot_of": str(Path(cfg.output_dir).resolve()), "epochs_completed": epoch,
                                    "steps": step}  # fmt: skip
        with atomic_directory(folder) as tmp:
            snapshot.save_pretrained(tmp)
    accelerator.wait_for_everyone()


def _export(cfg: PretrainConfig, accelerator: Accelerator, model: QScoreModel, method: SSLMethod,
            train_data: ImageDataset, steps: int, steps_per_epoch: int) -> Path:
    """The backbone as a QScoreModel folder, with activation statistics from a final pass over the training data."""
    model.backbone = method.backbone
    model.to(accelerator.device)
    # Each process counts its own contiguous shard and compute_activation_stats sums them: every image exactly
    # once (accelerate's prepared loaders would pad the last batches with repeated images).
    shard = train_data.dataset.shard(accelerator.num_processes, accelerator.process_index, contiguous=True)
    eval_loader = DataLoader(_eval_dataset(replace(train_data, dataset=shard), model), batch_size=256, num_workers=0,
                             collate_fn=_collate_eval)
    model.compute_activation_stats(eval_loader, progress=cfg.progress and accelerator.is_main_process)
    calibration = model.config.qscore_eps_calibration
    if calibration:
        accelerator.print(f"eps='auto' resolved to {model.config.qscore_eps:g} on {calibration['num_samples']} training "
                          f"images (coverage {calibration['coverage']:g}); saved in the model's config")  # fmt: skip
    model.config.ssl_method = cfg.method
    model.config.pretraining_data = cfg.dataset
    model.config.qscore_regularized = cfg.qscore_reg or bool(getattr(model.config, "qscore_regularized", False))
    if cfg.qscore_reg:
        model.config.qscore_regularization = {
            "lambda1": cfg.lambda1, "lambda2": cfg.lambda2, "l1_form": cfg.qscore_l1_form, "eps": cfg.qscore_eps,
            "normalize": cfg.qscore_normalize,
            "warmup_samples": cfg.qscore_warmup_samples, "mode": "fine-tuning" if cfg.init_from else "pre-training",
        }
    model.config.training = {
        **{key: value for key, value in asdict(cfg).items() if key not in ("output_dir", "resume", "push_to_hub", "progress")},
        "steps": steps, "epochs_completed": steps / steps_per_epoch, "num_processes": accelerator.num_processes,
    }
    model_dir = Path(cfg.output_dir) / MODEL_DIR
    if accelerator.is_main_process:
        provenance = training_provenance(model.config.training)
        save_model_folder(model.cpu(), model_dir, repo_id=cfg.push_to_hub, provenance=provenance)
        if cfg.push_to_hub:
            mode = "fine-tuning" if cfg.init_from else "pre-training"
            url = push_folder(model_dir, cfg.push_to_hub, private=cfg.private, commit_message=f"{cfg.method} {mode}")
            accelerator.print(f"pushed {model_dir} to {url}")
    accelerator.wait_for_everyone()
    return model_dir


def _append_log(accelerator: Accelerator, output_dir: Path, logs: dict[str, Any]) -> None:
    """A plain JSON-lines log beside the trackers' (``train_log.jsonl``), readable without TensorBoard."""
    if accelerator.is_main_process:
        with open(output_dir / TRAIN_LOG, "a") as handle:
            handle.write(json.dumps(logs) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """Drop the entries of ``train_log.jsonl`` after ``step`` (a resumed run logs those steps again; a fresh run,
    ``step`` 0, starts an empty log), atomically."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines(keepends=True) if _logged_step(line) <= step]
    atomic_write_text(path, "".join(kept))


def _logged_step(line: str) -> float:
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):  # a line cut by a kill: drop it
        return float("inf")


def _flat_config(cfg: PretrainConfig) -> dict[str, TrackerValue]:
    """The run's settings for the trackers (TensorBoard, W&B): the method's hyper-parameters as ``method.<key>``."""
    flat = {key: value for key, value in asdict(cfg).items() if key != "method_kwargs"}
    flat.update({f"method.{key}": value for key, value in cfg.method_kwargs.items()})
    return tracker_config(flat)

