"""Choosing defaults honestly (issue 10): scoring settings and the regularizer are chosen on a validation split,
and only what was chosen is reported on the test split.

Pure functions over features and run results, so that ``studies/reproduce.py`` stays a driver and the choices can be
checked against hand-made inputs (``tests/test_bench_selection.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from qscore_hf import ActivationStats, qscore
from qscore_hf.calibration import calibrate_eps, is_auto
from qscore_hf.configuration_qscore import SMALL_SCALE_SCORING
from qscore_hf.metrics import misclassification_metrics

EPS_GRID: tuple[float | str, ...] = (1.0, 2.0, 3.0, 4.0, "auto")
NORMALIZE_GRID = ("none", "zscore", "l1")
BAND_GRID = ((50.0, 95.0), (0.0, 100.0), (25.0, 95.0))
# A regularizer whose dead-feature fraction exceeds the baseline's by more than this is not eligible.
DEAD_MARGIN = 0.05


@dataclass(frozen=True)
class ScoringSetting:
    """The settings of a Q-Score: ``eps`` (a number or ``"auto"``), ``normalize`` and the percentile band of D."""

    eps: float | str
    normalize: str
    p_lo: float
    p_hi: float

    @property
    def name(self) -> str:
        eps = self.eps if is_auto(self.eps) else f"{self.eps:g}"
        return f"eps={eps}, normalize={self.normalize}, band={self.p_lo:g}-{self.p_hi:g}"


PAPER_SCORING = ScoringSetting(4.0, "none", 50.0, 95.0)
# What the package's own training exports (PretrainConfig's scoring_* defaults).
PACKAGE_SCORING = ScoringSetting(**{key.removeprefix("qscore_"): value for key, value in SMALL_SCALE_SCORING.items()})
SCORING_GRID = tuple(ScoringSetting(eps, normalize, lo, hi) for eps in EPS_GRID for normalize in NORMALIZE_GRID
                     for lo, hi in BAND_GRID)  # fmt: skip


def qscores(setting: ScoringSetting, reference: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Q-Scores of ``features`` with ``D`` counted on ``reference`` (the probe's training features); returns the
    scores, the resolved eps and the fraction of empty ``S_i``."""
    eps = calibrate_eps(reference) if is_auto(setting.eps) else float(setting.eps)
    discriminative = ActivationStats(reference.shape[1], eps).update(reference).discriminative(setting.p_lo, setting.p_hi)
    scores = qscore(torch.from_numpy(np.asarray(features, dtype=np.float32)), discriminative, eps, setting.normalize)
    scores = scores.double().numpy()
    return scores, eps, float(np.mean(scores == 0))


def num_discriminative(setting: ScoringSetting, reference: np.ndarray, eps: float) -> int:
    """|D| of ``setting`` with the statistics counted on ``reference`` at the resolved ``eps``."""
    stats = ActivationStats(reference.shape[1], eps).update(reference)
    return int(stats.discriminative(setting.p_lo, setting.p_hi).numel())


def auroc(scores: np.ndarray, correct: np.ndarray) -> float:
    return misclassification_metrics(scores, np.asarray(correct).astype(np.int64))["auroc"]


def scoring_grid(reference: np.ndarray, features: np.ndarray, correct: np.ndarray,
                 grid: Sequence[ScoringSetting] = SCORING_GRID) -> list[dict[str, Any]]:  # fmt: skip
    """AUROC (correct vs misclassified) of every setting of ``grid`` on one encoder's evaluation split."""
    rows = []
    for setting in grid:
        scores, eps, empty = qscores(setting, reference, features)
        rows.append({"setting": setting.name, "eps": eps, "empty_fraction": empty, "auroc": auroc(scores, correct)})
    return rows


def choose_scoring(per_encoder: Sequence[Sequence[dict[str, Any]]],
                   grid: Sequence[ScoringSetting] = SCORING_GRID) -> tuple[ScoringSetting, list[dict[str, Any]]]:  # fmt: skip
    """The setting with the highest validation AUROC averaged over encoders (ties: the earlier in ``grid``), and
    every setting's mean and standard deviation over encoders, best first."""
    table = []
    for index, setting in enumerate(grid):
        values = np.array([rows[index]["auroc"] for rows in per_encoder])
        empty = np.array([rows[index]["empty_fraction"] for rows in per_encoder])
        table.append({"setting": setting.name, "mean_auroc": float(values.mean()), "std_auroc": float(values.std()),
                      "mean_empty_fraction": float(empty.mean()), "index": index})  # fmt: skip
    best = max(table, key=lambda row: (row["mean_auroc"], -row["index"]))
    return grid[best["index"]], sorted(table, key=lambda row: -row["mean_auroc"])


def relative_change(value: float, baseline: float) -> float:
    """``100 * (value - baseline) / baseline`` (percent)."""
    return 100.0 * (value - baseline) / baseline


def choose_regularizer(candidates: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]]) -> tuple[str | None, list[dict[str, Any]]]:
    """The regularizer with the best mean validation top-1 change against its baseline runs, among those that keep
    their features alive (dead fraction at most ``DEAD_MARGIN`` above the baseline's on every paired run).

    ``candidates`` maps a regularizer's name to ``(run, baseline run)`` pairs, each run holding ``validation``
    (``top1``) and ``validation_health`` (``dead_fraction``, ``effective_rank``). Returns the chosen name (``None``
    when none is eligible) and a row per candidate, best first.
    """
    rows = []
    for name, pairs in candidates.items():
        changes = [relative_change(run["validation"]["top1"], base["validation"]["top1"]) for run, base in pairs]
        dead_gap = max(run["validation_health"]["dead_fraction"] - base["validation_health"]["dead_fraction"]
                       for run, base in pairs)  # fmt: skip
        rows.append({"regularizer": name, "mean_relative_change": float(np.mean(changes)), "relative_changes": changes,
                     "max_dead_gap": float(dead_gap), "eligible": dead_gap <= DEAD_MARGIN,
                     "effective_rank": [run["validation_health"]["effective_rank"] for run, _ in pairs],
                     "baseline_effective_rank": [base["validation_health"]["effective_rank"] for _, base in pairs]})  # fmt: skip
    rows.sort(key=lambda row: (not row["eligible"], -row["mean_relative_change"]))
    chosen = rows[0]["regularizer"] if rows and rows[0]["eligible"] else None
    return chosen, rows
