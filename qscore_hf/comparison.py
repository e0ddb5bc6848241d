"""Q-Score beside its baselines as predictors of a linear probe's mistakes (SPEC §5): one table, one sentence.

Every misclassification report (``linear_eval``, ``qscore-hf score --probe``, ``qscore-hf demo``,
``studies/reproduce.py``, the ``evaluate`` metric with ``baselines=True``) builds its table here, so that a reader always
sees whether Q-Score adds anything over a plain label-free score on their model and data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .baselines import BASELINES, CEILING, baseline_scores, probe_confidence
from .metrics import FEW_SAMPLES, auroc_text, interval_text, misclassification_metrics

__all__ = ["SCORE_DESCRIPTIONS", "ScoreComparison", "compare_scores", "few_samples_note", "report_text",
           "scores_with_baselines"]

QSCORE = "q_score"
SCORE_DESCRIPTIONS = {
    QSCORE: "Q-Score (as configured)",
    "l2_norm": "L2 norm (label-free)",
    "hoyer_sparsity": "Hoyer sparsity (label-free)",
    "max_zscore": "max z-score (label-free)",
    "knn_density": "kNN density (label-free)",
    CEILING: "probe max softmax (uses labels: ceiling)",
}


@dataclass
class ScoreComparison:
    """AUROC (with its 95 % interval) and AUPRC (correct / misclassified as positive) of each score, with the base
    rates."""

    rows: list[dict[str, Any]]
    """One dict per score: ``score``, ``auroc``, ``auroc_ci`` (``[low, high]``), ``auprc_correct``,
    ``auprc_misclassified``, in input order."""
    base_rate_correct: float
    base_rate_misclassified: float
    num_samples: int
    notes: list[str] = field(default_factory=list)

    def row(self, name: str) -> dict[str, Any] | None:
        return next((row for row in self.rows if row["score"] == name), None)

    def best_label_free(self) -> dict[str, Any] | None:
        """The label-free baseline with the highest AUROC (``None`` when none was computed)."""
        candidates = [row for row in self.rows if row["score"] in BASELINES]
        return max(candidates, key=lambda row: row["auroc"]) if candidates else None

    def verdict(self) -> str:
        """One plain sentence: how Q-Score compares with the best label-free baseline (and the ceiling)."""
        q, best, ceiling = self.row(QSCORE), self.best_label_free(), self.row(CEILING)
        if q is None or best is None:
            return "No comparison: Q-Score and at least one label-free baseline are needed."
        gap = q["auroc"] - best["auroc"]
        if abs(gap) < 0.005:
            standing = f"ranks the probe's mistakes about as well as the best label-free baseline, {best['score']}"
        elif gap > 0:
            standing = f"ranks the probe's mistakes better than the best label-free baseline, {best['score']}"
        else:
            standing = f"ranks the probe's mistakes worse than the best label-free baseline, {best['score']}"
        sentence = f"Q-Score (AUROC {auroc_text(q)}) {standing} (AUROC {auroc_text(best)})"
        if q["auroc"] <= 0.5:
            sentence += ", and no better than chance (0.5)"
        if abs(gap) >= 0.005 and _overlap(q, best):
            sentence += "; their 95 % intervals overlap, so the difference may be noise"
        if ceiling is not None:
            sentence += f"; the label-using ceiling, {CEILING}, reaches {ceiling['auroc']:.3f}"
        return sentence + "."

    def table(self, markdown: bool = False) -> str:
        """The table as aligned text (the CLI) or markdown (reports), with the base rates as the last row."""
        header = ("score", "AUROC", "AUROC 95 % CI", "AUPRC correct", "AUPRC misclassified")
        body = [(row["score"], f"{row['auroc']:.4f}", interval_text(row.get("auroc_ci")) or "n/a",
                 f"{row['auprc_correct']:.4f}", f"{row['auprc_misclassified']:.4f}") for row in self.rows]  # fmt: skip
        body.append(("base rate (chance)", "0.5000", "", f"{self.base_rate_correct:.4f}",
                     f"{self.base_rate_misclassified:.4f}"))  # fmt: skip
        if markdown:
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])
        widths = [max(len(cells[k]) for cells in [header, *body]) for k in range(len(header))]
        lines = [" | ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip() for cells in [header, *body]]
        lines.insert(1, "-+-".join("-" * width for width in widths))
        return "\n".join(lines)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ScoreComparison":
        """The inverse of ``to_dict`` (e.g. from a ``report.json``)."""
        return cls(list(data["scores"]), data["base_rate_correct"], data["base_rate_misclassified"],
                   data["num_samples"], list(data.get("notes", [])))  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        best = self.best_label_free()
        return {"scores": self.rows, "base_rate_correct": self.base_rate_correct,
                "base_rate_misclassified": self.base_rate_misclassified, "num_samples": self.num_samples,
                "best_label_free": None if best is None else best["score"], "verdict": self.verdict(),
                "notes": self.notes}  # fmt: skip


_ROW_KEYS = ("auroc", "auroc_ci", "auprc_correct", "auprc_misclassified")


def _overlap(first: Mapping[str, Any], second: Mapping[str, Any]) -> bool:
    """Whether two rows' AUROC intervals overlap (``False`` when either has none)."""
    a, b = first.get("auroc_ci"), second.get("auroc_ci")
    return bool(a and b) and a[0] <= b[1] and b[0] <= a[1]


def few_samples_note(num_samples: int, num_misclassified: int, auroc_ci: Sequence[float]) -> str | None:
    """A sentence saying that the AUROC is noise when fewer than ``FEW_SAMPLES`` samples are misclassified (or
    correct), with the count and the interval; ``None`` otherwise."""
    num_correct = num_samples - num_misclassified
    count, kind = min((num_misclassified, "misclassified"), (num_correct, "correctly classified"))
    if count >= FEW_SAMPLES:
        return None
    return (
        f"only {count} of {num_samples} samples are {kind} (fewer than {FEW_SAMPLES}): too few for an AUROC to mean "
        f"much; Q-Score's 95 % interval is {interval_text(auroc_ci, 3)}. Evaluate on more samples or on "
        "harder data."
    )


def compare_scores(scores: Mapping[str, np.ndarray], correct: np.ndarray) -> ScoreComparison:
    """AUROC (with its 95 % interval) / AUPRC of every score in ``scores`` (higher = more likely correct) against
    ``correct`` (0/1); ``notes`` says when too few samples are misclassified (or correct) for the AUROC to mean much
    (``few_samples_note``, for the first score: Q-Score)."""
    if not scores:
        raise ValueError("no scores to compare; pass at least Q-Score.")
    rows = []
    notes: list[str] = []
    metrics: dict[str, Any] = {}
    for name, values in scores.items():
        metrics = misclassification_metrics(values, np.asarray(correct).astype(np.int64))
        rows.append({"score": name, **{key: metrics[key] for key in _ROW_KEYS}})
        if len(rows) == 1:
            note = few_samples_note(metrics["num_samples"], metrics["num_misclassified"], metrics["auroc_ci"])
            notes += [note] if note else []
    return ScoreComparison(rows, metrics["accuracy"], metrics["misclassified_rate"], int(metrics["num_samples"]), notes)


def scores_with_baselines(q_scores: np.ndarray, features: np.ndarray, reference: np.ndarray | None,
                          probe_logits: np.ndarray | None = None, k: int = 10) -> dict[str, np.ndarray]:  # fmt: skip
    """Per-sample columns for a report: ``q_score``, every label-free baseline of ``features`` (``knn_density``
    against ``reference``, the probe's training features, when given) and ``probe_confidence`` from the probe's
    logits when given; all float64."""
    columns = {QSCORE: np.asarray(q_scores, dtype=np.float64)}
    columns.update(baseline_scores(features, reference, k=k))
    if probe_logits is not None:
        columns[CEILING] = probe_confidence(probe_logits)
    return columns


def report_text(comparison: Mapping[str, Any], degeneracy: Mapping[str, Any] | None = None) -> str:
    """What a command prints after a misclassification report: the table, the verdict, the notes (too few mistakes)
    and, when Q-Score is degenerate, the warning (``comparison`` and ``degeneracy`` as stored in the report's JSON)."""
    table = ScoreComparison.from_dict(comparison)
    lines = [table.table(), "", table.verdict()]
    for note in table.notes:
        lines += ["", f"WARNING: {note}"]
    if degeneracy and degeneracy.get("warning"):
        lines += ["", f"WARNING: {degeneracy['warning']}"]
    return "\n".join(lines)
