"""SPEC §5: how well Q-Score predicts which samples a linear probe classifies correctly."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

__all__ = ["misclassification_metrics"]


def misclassification_metrics(
    q_scores: Sequence[float] | np.ndarray, correct: Sequence[int] | np.ndarray
) -> dict[str, float]:
    """AUPRC/AUROC of Q-Score as a predictor of correct classification.

    Args:
        q_scores: per-sample Q-Scores (higher = better representation).
        correct: per-sample 1 if the probe classified the sample correctly, else 0.

    Returns a dict with ``auprc_correct`` (average precision, correct samples positive, score ``Q``),
    ``auprc_misclassified`` (misclassified samples positive, score ``-Q``), ``auroc`` (correct vs
    misclassified), ``accuracy`` (the base rate of ``auprc_correct``), ``misclassified_rate`` (the base rate
    of ``auprc_misclassified``) and ``num_samples``.
    """
    scores = np.asarray(q_scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(correct)
    if labels.shape != scores.shape and labels.reshape(-1).shape != scores.shape:
        raise ValueError(f"got {scores.size} Q-Scores but {labels.size} correctness values; pass one of each per sample.")
    labels = labels.reshape(-1)
    if not np.all(np.isin(labels, (0, 1))):
        raise ValueError("correctness values must be 0 (misclassified) or 1 (correct), e.g. (pred == label).astype(int).")
    if not np.all(np.isfinite(scores)):
        raise ValueError("Q-Scores contain NaN or Inf.")
    labels = labels.astype(np.int64)
    num_correct = int(labels.sum())
    if num_correct in (0, labels.size):
        kind = "correct" if num_correct else "misclassified"
        raise ValueError(
            f"all {labels.size} samples are {kind}: AUPRC and AUROC need both correct and misclassified samples. "
            "Evaluate on more samples or a harder split."
        )
    return {
        "auprc_correct": float(average_precision_score(labels, scores)),
        "auprc_misclassified": float(average_precision_score(1 - labels, -scores)),
        "auroc": float(roc_auc_score(labels, scores)),
        "accuracy": num_correct / labels.size,
        "misclassified_rate": 1.0 - num_correct / labels.size,
        "num_samples": int(labels.size),
    }
