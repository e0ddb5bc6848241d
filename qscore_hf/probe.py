"""A linear probe on frozen features (SPEC §5, §8): standardized features, one linear layer, cross-entropy.

Defaults follow the usual linear-evaluation recipe of self-supervised learning (solo-learn, the Q-Score paper):
100 epochs of SGD with momentum 0.9, batch 256, learning rate 0.1 decayed to 0 by a cosine schedule, no weight
decay, on features standardized with the training set's per-feature mean and standard deviation. The L-BFGS option
fits the same model full-batch (strong-Wolfe line search) with an L2 penalty ``weight_decay / 2 * ||W||^2``
(default ``1e-4``), which converges in far fewer passes on small data sets.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

__all__ = ["LinearProbe", "ProbeSettings", "feature_mean_std", "train_linear_probe"]

Optimizer = Literal["sgd", "lbfgs"]
OPTIMIZERS = ("sgd", "lbfgs")
_DEFAULT_LR = {"sgd": 0.1, "lbfgs": 1.0}
_DEFAULT_WEIGHT_DECAY = {"sgd": 0.0, "lbfgs": 1e-4}
_CHUNK_ROWS = 65536  # rows per chunk for statistics, full-batch L-BFGS passes and prediction


@dataclass
class ProbeSettings:
    """The settings a probe was trained with (recorded in evaluation reports)."""

    optimizer: str
    epochs: int
    lr: float
    weight_decay: float
    batch_size: int
    momentum: float
    standardize: bool
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


class LinearProbe(nn.Module):
    """``logits = W ((h - mean) / std) + b``; ``mean``/``std`` are buffers (0/1 when not standardizing)."""

    mean: Tensor
    std: Tensor

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))
        self.linear = nn.Linear(num_features, num_classes)
        nn.init.normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)
        self.settings: ProbeSettings | None = None

    def forward(self, features: Tensor) -> Tensor:
        """Logits of ``(N, d)`` features."""
        return self.linear((features - self.mean) / self.std)

    @torch.no_grad()
    def logits(self, features: np.ndarray | Tensor, batch_size: int = _CHUNK_ROWS) -> np.ndarray:
        """``(N, C)`` float32 logits, computed chunk by chunk (memory-mapped input stays on disk)."""
        device = self.mean.device
        parts = [
            self(_as_tensor(features[start : start + batch_size], device)).float().cpu()
            for start in range(0, len(features), batch_size)
        ]
        return torch.cat(parts).numpy()

    def predict(self, features: np.ndarray | Tensor, batch_size: int = _CHUNK_ROWS) -> np.ndarray:
        """Predicted class (int64) of each row."""
        return self.logits(features, batch_size).argmax(axis=1).astype(np.int64)


def _as_tensor(rows: np.ndarray | Tensor, device: torch.device) -> Tensor:
    if isinstance(rows, Tensor):
        return rows.to(device, torch.float32)
    return torch.from_numpy(np.array(rows, dtype=np.float32)).to(device)  # a copy: memory maps are read-only


def feature_mean_std(features: np.ndarray | Tensor, chunk_rows: int = _CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and population standard deviation (float64, two passes over chunks). Features with zero
    spread get ``std = 1`` so that standardizing leaves them at 0 instead of dividing by zero."""
    rows = len(features)

    def chunks() -> Iterator[np.ndarray]:
        for start in range(0, rows, chunk_rows):
            yield np.asarray(features[start : start + chunk_rows], dtype=np.float64)

    mean = sum(chunk.sum(axis=0) for chunk in chunks()) / rows
    std = np.sqrt(sum(((chunk - mean) ** 2).sum(axis=0) for chunk in chunks()) / rows)
    return mean, np.where(std > 0, std, 1.0)


def _check_inputs(features: np.ndarray | Tensor, labels: np.ndarray | Tensor) -> tuple[np.ndarray, int]:
    labels = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels).reshape(-1)
    if len(features) != len(labels):
        raise ValueError(f"got {len(features)} feature rows but {len(labels)} labels; pass one label per row.")
    if len(features.shape) != 2:
        raise ValueError(f"features must be a 2-D (samples, features) array; got shape {tuple(features.shape)}.")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise ValueError("labels must be non-negative integer class indices (0 .. num_classes - 1).")
    return labels.astype(np.int64), int(labels.max()) + 1


def train_linear_probe(
    train_features: np.ndarray | Tensor,
    train_labels: np.ndarray | Tensor,
    epochs: int = 100,
    optimizer: Optimizer = "sgd",
    lr: float | None = None,
    weight_decay: float | None = None,
    batch_size: int = 256,
    momentum: float = 0.9,
    standardize: bool = True,
    num_classes: int | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: bool = True,
) -> LinearProbe:
    """Train a linear classifier on frozen ``(N, d)`` features (see the module docstring for the defaults).

    Args:
        train_features: training features (a NumPy array, memory map or tensor); loaded onto ``device`` for training.
        train_labels: ``(N,)`` integer class labels.
        epochs: SGD epochs, or L-BFGS iterations (each a full pass with line search).
        optimizer: ``"sgd"`` (mini-batch, momentum, cosine learning rate) or ``"lbfgs"`` (full batch).
        lr: learning rate; 0.1 for SGD and 1.0 (the step scale before line search) for L-BFGS by default.
        weight_decay: SGD weight decay (0 by default) or the L-BFGS L2 penalty on the weights (1e-4 by default).
        batch_size: SGD mini-batch size.
        momentum: SGD momentum.
        standardize: standardize features with the training mean and standard deviation (saved in the probe).
        num_classes: number of outputs; ``max(label) + 1`` by default.
        device: where to train; the GPU when available by default.
        seed: seeds the initialisation and the SGD shuffling.
        progress: show a tqdm progress bar over epochs.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}; got {optimizer!r}.")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be positive; got epochs={epochs}, batch_size={batch_size}.")
    labels, seen_classes = _check_inputs(train_features, train_labels)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    probe = LinearProbe(train_features.shape[1], max(num_classes or 0, seen_classes))
    if standardize:
        mean, std = feature_mean_std(train_features)
        probe.mean.copy_(torch.from_numpy(mean))
        probe.std.copy_(torch.from_numpy(std))
    probe.settings = ProbeSettings(
        optimizer=optimizer,
        epochs=epochs,
        lr=_DEFAULT_LR[optimizer] if lr is None else float(lr),
        weight_decay=_DEFAULT_WEIGHT_DECAY[optimizer] if weight_decay is None else float(weight_decay),
        batch_size=batch_size,
        momentum=momentum,
        standardize=standardize,
        seed=seed,
    )
    probe.to(device)
    x = _as_tensor(train_features, device)
    y = torch.from_numpy(labels).to(device)
    fit = _fit_sgd if optimizer == "sgd" else _fit_lbfgs
    fit(probe, x, y, probe.settings, progress)
    return probe.eval()


def _fit_sgd(probe: LinearProbe, x: Tensor, y: Tensor, settings: ProbeSettings, progress: bool) -> None:
    """Mini-batch SGD with momentum and a per-step cosine learning rate from ``lr`` to 0."""
    opt = torch.optim.SGD(
        probe.linear.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    steps_per_epoch = math.ceil(len(x) / settings.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=settings.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(settings.seed)
    probe.train()
    for _ in tqdm(range(settings.epochs), desc="linear probe (SGD)", unit="epoch", disable=not progress):
        order = torch.randperm(len(x), generator=generator).to(x.device)
        for start in range(0, len(x), settings.batch_size):
            index = order[start : start + settings.batch_size]
            loss = F.cross_entropy(probe(x[index]), y[index])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()


def _fit_lbfgs(probe: LinearProbe, x: Tensor, y: Tensor, settings: ProbeSettings, progress: bool) -> None:
    """Full-batch L-BFGS (``epochs`` iterations) on mean cross-entropy plus ``weight_decay / 2 * ||W||^2`` (bias
    not penalised)."""
    opt = torch.optim.LBFGS(
        probe.linear.parameters(), lr=settings.lr, max_iter=settings.epochs, history_size=20,
        line_search_fn="strong_wolfe",
    )  # fmt: skip
    bar = tqdm(desc="linear probe (L-BFGS)", unit="pass", disable=not progress)

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=x.device)
        for start in range(0, len(x), _CHUNK_ROWS):  # gradients accumulate chunk by chunk: bounded memory
            rows = slice(start, start + _CHUNK_ROWS)
            chunk = F.cross_entropy(probe(x[rows]), y[rows], reduction="sum")
            (chunk / len(x)).backward()
            total += chunk.detach() / len(x)
        penalty = 0.5 * settings.weight_decay * probe.linear.weight.pow(2).sum()
        penalty.backward()
        bar.update()
        return total + penalty.detach()

    probe.train()
    with bar:
        opt.step(closure)
