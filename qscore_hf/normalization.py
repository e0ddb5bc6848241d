"""Per-channel image statistics of the data sets this package knows by name (a leaf module: imports nothing)."""

from __future__ import annotations

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "DATASET_NORMALIZATION"]

# solo-learn's CIFAR-10 statistics (solo/data/pretrain_dataloader.py, MEANS_N_STD; shared CHECKPOINTS.md).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# Built-in data set name -> (mean, std) its encoders are trained with; grayscale replicated to 3 channels.
DATASET_NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion_mnist": ((0.2860,) * 3, (0.3530,) * 3),
    "digits": ((0.3070,) * 3, (0.3760,) * 3),
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
}
