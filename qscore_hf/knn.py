"""Weighted k-nearest-neighbour accuracy on frozen features (the online monitor of SSL training)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["knn_accuracy"]


@torch.no_grad()
def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> float:
    """Top-1 accuracy of cosine-similarity kNN with ``exp(sim / temperature)`` weighted votes
    (Wu et al. 2018, as in solo-learn and DINO's evaluation)."""
    if train_features.shape[0] < 1 or test_features.shape[0] < 1:
        raise ValueError("kNN accuracy needs at least one train and one test sample.")
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    k = min(k, train.shape[0])
    correct = 0
    for start in range(0, test.shape[0], chunk_size):
        similarity = test[start : start + chunk_size] @ train.T
        weights, index = similarity.topk(k, dim=1)
        votes = torch.zeros(weights.shape[0], num_classes, device=weights.device)
        votes.scatter_add_(1, train_labels[index].long(), (weights / temperature).exp())
        correct += int((votes.argmax(dim=1) == test_labels[start : start + chunk_size]).sum())
    return correct / test.shape[0]
