"""SPEC §5: how well Q-Score predicts which samples a linear probe classifies correctly.

Every AUROC comes with its 95 % interval (DeLong's, ``auroc_interval``), so that a reader sees when a difference
between two scores is within noise; ``FEW_SAMPLES`` is the smallest class (correct or misclassified samples) below
which reports add a note that the AUROC is too noisy to mean much.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, roc_auc_score

__all__ = ["CONFIDENCE", "FEW_SAMPLES", "auroc_interval", "auroc_text", "interval_text", "misclassification_metrics"]

CONFIDENCE = 0.95
# Below this many correct (or misclassified) samples an AUROC's interval is wide; reports say so.
FEW_SAMPLES = 30


def auroc_interval(
    scores: Sequence[float] | np.ndarray, positive: Sequence[int] | np.ndarray, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """DeLong's interval of the AUROC of ``scores`` for the 0/1 labels ``positive``, clipped to [0, 1].

    The AUROC's variance is estimated from each sample's placement value (the fraction of the other class it
    outranks, ties counting half: DeLong, DeLong and Clarke-Pearson 1988, computed from midranks as in Sun and Xu
    2014) and the interval is the normal one around the AUROC. It is deterministic (no resampling). With fewer than
    two samples in a class the variance cannot be estimated, and the interval is all of [0, 1].
    """
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(positive).reshape(-1).astype(bool)
    pos, neg = values[labels], values[~labels]
    m, n = pos.size, neg.size
    if min(m, n) < 2:
        return 0.0, 1.0
    ranks = rankdata(values)
    # placement of a positive: the share of negatives it outranks; of a negative: the share of positives above it
    placement_pos = (ranks[labels] - rankdata(pos)) / n
    placement_neg = 1.0 - (ranks[~labels] - rankdata(neg)) / m
    auroc = float(placement_pos.mean())
    variance = placement_pos.var(ddof=1) / m + placement_neg.var(ddof=1) / n
    half_width = NormalDist().inv_cdf(0.5 + confidence / 2) * math.sqrt(variance)
    return max(0.0, auroc - half_width), min(1.0, auroc + half_width)


def misclassification_metrics(
    q_scores: Sequence[float] | np.ndarray, correct: Sequence[int] | np.ndarray
) -> dict[str, float]:
    """AUPRC/AUROC of Q-Score as a predictor of correct classification.

    Args:
        q_scores: per-sample Q-Scores (higher = better representation).
        correct: per-sample 1 if the probe classified the sample correctly, else 0.

    Returns a dict with ``auprc_correct`` (average precision, correct samples positive, score ``Q``),
    ``auprc_misclassified`` (misclassified samples positive, score ``-Q``), ``auroc`` (correct vs
    misclassified), ``auroc_ci`` (its 95 % DeLong interval, ``[low, high]``), ``accuracy`` (the base rate of
    ``auprc_correct``), ``misclassified_rate`` (the base rate of ``auprc_misclassified``), ``num_samples`` and
    ``num_misclassified``.
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
        "auroc_ci": list(auroc_interval(scores, labels)),
        "accuracy": num_correct / labels.size,
        "misclassified_rate": 1.0 - num_correct / labels.size,
        "num_samples": int(labels.size),
        "num_misclassified": int(labels.size - num_correct),
    }


def interval_text(interval: Sequence[float] | None, digits: int = 4) -> str:
    """``[0.5980, 0.6260]``: an interval (e.g. ``auroc_ci``) as every report prints it; empty when there is none."""
    return f"[{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]" if interval else ""


def auroc_text(row: Mapping[str, Any], digits: int = 3) -> str:
    """``0.612 [0.598, 0.626]``: a report row's ``auroc`` followed by its ``auroc_ci`` when it has one (rows written
    before intervals existed have none)."""
    interval = interval_text(row.get("auroc_ci"), digits)
    return f"{row['auroc']:.{digits}f}" + (f" {interval}" if interval else "")
