"""The supervised control of the CIFAR-10 study (issue 18): the same backbone trained with labels (cross-entropy,
random crop with 4 px padding and horizontal flips, SGD with a cosine schedule), kept at the same snapshot epochs
as the SSL runs, so that ``studies/cifar10_study.py`` asks of it the same question: does Q-Score predict a
supervised network's mistakes?

Benchmark code, not the package's: the package pre-trains without labels. Resumable like ``pretrain``: a
checkpoint (our own state dicts, loaded with ``weights_only=True``) is written atomically at each epoch end, and
every epoch's augmentations are seeded by (seed, epoch, index), so a resumed run sees the views of an uninterrupted one.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from qscore_hf import QScoreConfig, QScoreModel
from qscore_hf.configuration_qscore import SMALL_SCALE_SCORING
from qscore_hf.data import ImageDataset, dataset_normalization, load_image_dataset
from qscore_hf.io_utils import atomic_directory
from qscore_hf.pretraining import EpochSampler, augmentation_seed, snapshot_folder

CHECKPOINT = "supervised_checkpoint.pt"


@dataclass(frozen=True)
class SupervisedConfig:
    output_dir: str
    dataset: str
    split: str
    backbone: str
    image_size: int
    epochs: int
    batch_size: int
    snapshot_epochs: tuple[int, ...]
    lr: float = 0.1  # per 256 images
    weight_decay: float = 5e-4
    momentum: float = 0.9
    seed: int = 0


class _Augmented(Dataset):
    def __init__(self, data: ImageDataset, transform: Any, seed: int) -> None:
        self.data, self.transform, self.seed = data, transform, seed

    def __len__(self) -> int:
        return len(self.data.dataset)

    def __getitem__(self, global_index: int) -> tuple[torch.Tensor, int]:
        epoch, index = divmod(int(global_index), len(self))
        row = self.data.dataset[index]
        seed = augmentation_seed(self.seed, epoch, index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # torchvision's random transforms draw from torch's generator
            image = self.transform(row[self.data.image_column].convert("RGB"))
        return image, int(row[self.data.label_column])


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train_supervised(cfg: SupervisedConfig, stop_after_epoch: int | None = None) -> Path:
    """Train (resuming from ``output_dir``'s checkpoint) until ``stop_after_epoch`` or ``cfg.epochs``; keeps
    ``snapshots/epoch_NNNN`` QScoreModel folders at ``cfg.snapshot_epochs``; returns ``output_dir``."""
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    data = load_image_dataset(cfg.dataset, cfg.split)
    mean, std = dataset_normalization(data) or ((0.5,) * 3, (0.25,) * 3)
    torch.manual_seed(cfg.seed)
    model = QScoreModel(QScoreConfig(backbone=cfg.backbone, image_size=cfg.image_size, crop_pct=1.0, image_mean=mean,
                                     image_std=std, ssl_method=None, pretraining_data=cfg.dataset,
                                     **SMALL_SCALE_SCORING))  # fmt: skip
    head = nn.Linear(int(model.config.hidden_size), data.num_classes)
    parameters = [*model.backbone.parameters(), *head.parameters()]
    optimizer = torch.optim.SGD(parameters, lr=cfg.lr * cfg.batch_size / 256, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)  # fmt: skip
    transform = transforms.Compose([
        transforms.RandomCrop(cfg.image_size, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])  # fmt: skip
    sampler = EpochSampler(len(data.dataset), cfg.seed)
    loader = DataLoader(_Augmented(data, transform, cfg.seed), batch_size=cfg.batch_size, sampler=sampler,
                        drop_last=True, num_workers=0)  # fmt: skip
    total_steps = cfg.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total_steps)))
    epoch = 0
    checkpoint = output_dir / CHECKPOINT
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True)
        model.backbone.load_state_dict(state["backbone"]), head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"]), scheduler.load_state_dict(state["scheduler"])
        epoch = int(state["epoch"])
    last = min(cfg.epochs, stop_after_epoch or cfg.epochs)
    model.backbone.train()
    while epoch < last:
        sampler.set_epoch(epoch)
        for images, labels in loader:
            loss = nn.functional.cross_entropy(head(model.backbone(images)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        epoch += 1
        _save_checkpoint(checkpoint, {"backbone": model.backbone.state_dict(), "head": head.state_dict(),
                                      "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                      "epoch": epoch})  # fmt: skip
        if epoch in cfg.snapshot_epochs and not snapshot_folder(output_dir, epoch).exists():
            model.config.training = {"supervised": True, "epochs_completed": epoch, "lr": cfg.lr, "seed": cfg.seed}
            with atomic_directory(snapshot_folder(output_dir, epoch)) as tmp:
                model.save_pretrained(tmp)
        print(f"supervised epoch {epoch}: last batch loss {float(loss.detach()):.4f}", flush=True)
    return output_dir
