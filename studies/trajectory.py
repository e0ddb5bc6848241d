"""One encoder snapshot's full misclassification report (issue 18, item 3): pure functions over features, so that
``studies/cifar10_study.py`` stays a driver and the numbers can be checked against hand-made inputs.

At one point of a training trajectory, with a linear probe trained on the pre-training images' features:
- Q-Score at the paper's setting, at the package default, and at the setting chosen on the validation split (the
  grid of ``selection.SCORING_GRID``) for this snapshot, each with its empty-S_i fraction and |D|;
- every label-free baseline (``qscore_hf.baselines``) and the probe-confidence ceiling;
- AUROC, both AUPRCs and their base rates on the validation and the test split;
- a paired bootstrap interval of the test AUROC of the chosen Q-Score minus that of the label-free baseline that was
  best on validation, so that a difference is only called one when the interval excludes 0.
The probe's per-image correctness is kept too (``pack_correct``), so that two encoders' top-1 on the same images can be
compared with a paired interval (``paired_accuracy_difference``).
"""

from __future__ import annotations

import base64
from typing import Any, Mapping

import numpy as np
import torch
from scipy.stats import norm, rankdata

import extensions
import selection
from qscore_hf.baselines import BASELINES, CEILING
from qscore_hf.comparison import compare_scores, scores_with_baselines
from qscore_hf.health import feature_health
from qscore_hf.knn import knn_accuracy

# Bumped when the report gains content: studies/cifar10_study.py re-evaluates the snapshots of older reports.
REPORT_VERSION = 2
BOOTSTRAP_SAMPLES = 1000
CONFIDENCE = 0.95
Q_PAPER, Q_DEFAULT, Q_CHOSEN = "q_score (paper)", "q_score (package default)", "q_score (chosen on validation)"
EXTENSION_SCORES = tuple(f"extension: {name}" for name in extensions.EXTENSIONS)


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """AUROC of ``scores`` for the 0/1 labels ``positive`` (Mann-Whitney, ties counting half)."""
    labels = np.asarray(positive).astype(bool)
    ranks = rankdata(scores)
    m, n = int(labels.sum()), int((~labels).sum())
    return float((ranks[labels].sum() - m * (m + 1) / 2) / (m * n))


def paired_bootstrap_difference(a: np.ndarray, b: np.ndarray, positive: np.ndarray,
                                samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> dict[str, float]:  # fmt: skip
    """AUROC(a) - AUROC(b) on the same samples, with its percentile interval over ``samples`` paired resamplings
    (each resample draws rows with replacement and scores both on the same rows); ``significant`` when the
    ``CONFIDENCE`` interval excludes 0."""
    positive = np.asarray(positive).astype(bool)
    rng = np.random.default_rng(seed)
    differences = []
    while len(differences) < samples:
        rows = rng.integers(0, len(positive), len(positive))
        if positive[rows].all() or not positive[rows].any():  # one class only: no AUROC
            continue
        differences.append(auroc(a[rows], positive[rows]) - auroc(b[rows], positive[rows]))
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(differences, [tail, 100 - tail])
    return {"difference": auroc(a, positive) - auroc(b, positive), "low": float(low), "high": float(high),
            "significant": bool(low > 0 or high < 0), "samples": samples, "confidence": CONFIDENCE}  # fmt: skip


def paired_accuracy_difference(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Top-1 of classifier ``a`` minus that of ``b`` from their per-image correctness on the same images, with the
    Wald interval of a paired difference, ``mean(a_i - b_i) -/+ z sd(a_i - b_i) / sqrt(n)``: only the images on which
    they disagree move it. ``significant`` when the ``CONFIDENCE`` interval excludes 0."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or len(a) < 2:
        raise ValueError(f"need the correctness of both classifiers on the same >= 2 images; got shapes {a.shape} "
                         f"and {b.shape}.")  # fmt: skip
    d = a - b
    half = norm.ppf(0.5 + CONFIDENCE / 2) * d.std(ddof=1) / np.sqrt(len(d))
    low, high = float(d.mean() - half), float(d.mean() + half)
    return {"difference": float(d.mean()), "low": low, "high": high, "significant": bool(low > 0 or high < 0),
            "confidence": CONFIDENCE}  # fmt: skip


def correct_of(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The probe's per-image correctness (1 or 0, int64) from its ``N x C`` logits."""
    return (np.asarray(logits).argmax(axis=1) == labels).astype(np.int64)


def pack_correct(correct: np.ndarray) -> dict[str, Any]:
    """A boolean vector as JSON: its length and its bits in base64 (10,000 images: 1.7 kB)."""
    correct = np.asarray(correct, dtype=bool)
    return {"n": int(len(correct)), "bits": base64.b64encode(np.packbits(correct).tobytes()).decode("ascii")}


def unpack_correct(packed: Mapping[str, Any]) -> np.ndarray:
    """The inverse of ``pack_correct``."""
    bits = np.frombuffer(base64.b64decode(packed["bits"]), dtype=np.uint8)
    return np.unpackbits(bits, count=packed["n"]).astype(bool)


def _q_columns(settings: Mapping[str, selection.ScoringSetting], reference: np.ndarray,
               features: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, dict[str, float]]]:  # fmt: skip
    columns, details = {}, {}
    for name, setting in settings.items():
        scores, eps, empty = selection.qscores(setting, reference, features)
        columns[name] = scores
        details[name] = {"setting": setting.name, "eps": eps, "empty_fraction": empty,
                         "num_discriminative": selection.num_discriminative(setting, reference, eps)}  # fmt: skip
    return columns, details


def split_report(q_settings: Mapping[str, selection.ScoringSetting], train: tuple[np.ndarray, np.ndarray],
                 evaluation: tuple[np.ndarray, np.ndarray], logits: np.ndarray, knn_k: int = 10,
                 extra: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:  # fmt: skip
    """Every score's AUROC and AUPRCs against the probe's correctness on one split (``extra``: more score columns
    of the same rows); ``columns`` holds the scores."""
    features, labels = evaluation
    correct = correct_of(logits, labels)
    columns, details = _q_columns(q_settings, train[0], features)
    columns.update(extra or {})
    baselines = scores_with_baselines(np.zeros(len(features)), features, train[0], logits, k=knn_k)
    baselines.pop("q_score")
    columns.update(baselines)
    comparison = compare_scores(columns, correct)
    health = feature_health(features)
    return {"top1": float(correct.mean()), "num_samples": len(correct), "num_misclassified": int((1 - correct).sum()),
            "base_rate_correct": comparison.base_rate_correct,
            "base_rate_misclassified": comparison.base_rate_misclassified,
            "scores": {row["score"]: {k: v for k, v in row.items() if k != "score"} for row in comparison.rows},
            "qscore": details, "effective_rank": health.effective_rank, "dead_fraction": health.dead_fraction,
            "correct": correct, "columns": columns}  # fmt: skip


def snapshot_report(train: tuple[np.ndarray, np.ndarray], validation: tuple[np.ndarray, np.ndarray],
                    test: tuple[np.ndarray, np.ndarray], validation_logits: np.ndarray, test_logits: np.ndarray,
                    knn_k: int = 10) -> dict[str, Any]:  # fmt: skip
    """The report of one snapshot (module docstring) from its features ``(features, labels)`` and the probe's
    logits; JSON-ready."""
    val_correct = correct_of(validation_logits, validation[1])
    grid = selection.scoring_grid(train[0], validation[0], val_correct)
    chosen = selection.SCORING_GRID[max(range(len(grid)), key=lambda i: (grid[i]["auroc"], -i))]
    settings = {Q_PAPER: selection.PAPER_SCORING, Q_DEFAULT: selection.PACKAGE_SCORING, Q_CHOSEN: chosen}
    chosen_extensions, extension_columns = extension_scores(train[0], validation[0], test[0], val_correct)
    reports = {"validation": split_report(settings, train, validation, validation_logits, knn_k,
                                          extension_columns["validation"]),
               "test": split_report(settings, train, test, test_logits, knn_k, extension_columns["test"])}  # fmt: skip
    # The label-free baseline to beat is the one that was best on validation (chosen like Q-Score's setting).
    val_scores = reports["validation"]["scores"]
    rival = max(BASELINES, key=lambda name: val_scores[name]["auroc"])
    on_test = reports["test"]
    paired = paired_bootstrap_difference(on_test["columns"][Q_CHOSEN], on_test["columns"][rival], on_test["correct"])
    best_test = max(BASELINES, key=lambda name: on_test["scores"][name]["auroc"])
    paired_best = paired_bootstrap_difference(on_test["columns"][Q_CHOSEN], on_test["columns"][best_test],
                                              on_test["correct"])
    extension_differences = {
        name: paired_bootstrap_difference(on_test["columns"][name], on_test["columns"][rival], on_test["correct"])
        for name in EXTENSION_SCORES
    }
    correct = {split: pack_correct(report.pop("correct")) for split, report in reports.items()}
    for report in reports.values():
        report.pop("columns")
    knn = knn_accuracy(*(torch.from_numpy(np.asarray(a)) for a in (train[0], train[1], test[0], test[1])), k=20)
    return {**reports, "chosen_setting": chosen.name, "validation_grid": grid, "knn_top1_test": knn,
            "q_minus_rival": {"rival": rival, **paired}, "q_minus_best_on_test": {"rival": best_test, **paired_best},
            "extensions": {name: {"setting": chosen_extensions[name], "minus_rival": {"rival": rival, **difference}}
                           for name, difference in extension_differences.items()},
            "correct": correct, "ceiling": CEILING, "report_version": REPORT_VERSION}  # fmt: skip


def extension_scores(reference: np.ndarray, validation: np.ndarray, test: np.ndarray,
                     validation_correct: np.ndarray) -> tuple[dict[str, str], dict[str, dict[str, np.ndarray]]]:  # fmt: skip
    """Each extension of ``extensions`` at its setting chosen on validation (best AUROC, ties: the earlier one);
    returns the chosen settings' names and the score columns of both splits."""
    neighbours = {"validation": extensions.nearest_reference(reference, validation),
                  "test": extensions.nearest_reference(reference, test)}  # fmt: skip
    chosen, columns = {}, {"validation": {}, "test": {}}
    for name, column in zip(extensions.EXTENSIONS, EXTENSION_SCORES):
        score = extensions.scorer(name, reference)
        candidates = [(setting, score(validation, setting, neighbours["validation"]))
                      for setting in extensions.settings_of(name)]  # fmt: skip
        best, best_scores = max(candidates, key=lambda c: auroc(c[1], validation_correct))
        chosen[column] = best.name
        columns["validation"][column] = best_scores
        columns["test"][column] = score(test, best, neighbours["test"])
    return chosen, columns
