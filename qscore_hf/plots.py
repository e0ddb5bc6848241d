"""PNG plots of Q-Scores: histograms (all samples, or correct vs misclassified), precision-recall curves of Q-Score
and its baselines, and image grids.

Figures are drawn with matplotlib's object API on the Agg canvas: no display is needed and pyplot's global state
(and backend) is left alone.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve

from .metrics import FEW_SAMPLES, misclassification_metrics

__all__ = ["plot_image_grid", "plot_pr_curves", "plot_qscore_histogram", "plot_qscore_histograms"]

_BINS = 50
_DPI = 120
_CORRECT_COLOR = "tab:green"
_MISCLASSIFIED_COLOR = "tab:red"


def _figure(figsize: tuple[float, float] = (6.4, 4.4)) -> Figure:
    figure = Figure(figsize=figsize, dpi=_DPI, layout="tight")
    FigureCanvasAgg(figure)
    return figure


ArrayLike = Sequence[float] | np.ndarray


def _as_arrays(q_scores: ArrayLike, correct: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    q = np.asarray(q_scores, dtype=np.float64).reshape(-1)
    ok = np.asarray(correct).reshape(-1).astype(bool)
    if q.shape != ok.shape:
        raise ValueError(f"got {q.size} Q-Scores but {ok.size} correctness values; pass one of each per sample.")
    return q, ok


def plot_qscore_histogram(
    q_scores: ArrayLike, path: str | os.PathLike, title: str = "Q-Score distribution"
) -> None:
    """Histogram of Q-Scores (count per bin), with the mean marked, saved as a PNG at ``path``."""
    q = np.asarray(q_scores, dtype=np.float64).reshape(-1)
    if q.size == 0:
        raise ValueError("no Q-Scores to plot.")
    figure = _figure()
    axes = figure.add_subplot()
    axes.hist(q, bins=_BINS, color="tab:blue", alpha=0.8)
    axes.axvline(q.mean(), color="black", linestyle="--", label=f"mean {q.mean():.3g} (n = {q.size})")
    axes.set(xlabel="Q-Score", ylabel="samples", title=title)
    axes.legend()
    figure.savefig(path)


def plot_qscore_histograms(
    q_scores: ArrayLike,
    correct: ArrayLike,
    path: str | os.PathLike,
    title: str = "Q-Score of correctly classified vs misclassified samples",
) -> None:
    """Density histograms of the Q-Scores of correct and of misclassified samples on the same bins, as a PNG; counts
    instead when either group has fewer than ``FEW_SAMPLES`` samples (a density of a handful looks like a signal)."""
    q, ok = _as_arrays(q_scores, correct)
    density = min(int(ok.sum()), int((~ok).sum())) >= FEW_SAMPLES
    bins = np.histogram_bin_edges(q, bins=_BINS)
    figure = _figure()
    axes = figure.add_subplot()
    for mask, name, color in ((ok, "correct", _CORRECT_COLOR), (~ok, "misclassified", _MISCLASSIFIED_COLOR)):
        if mask.any():
            axes.hist(q[mask], bins=bins, density=density, alpha=0.5, color=color,
                      label=f"{name} (n = {int(mask.sum())})")  # fmt: skip
    axes.set(xlabel="Q-Score", ylabel="density" if density else "samples", title=title)
    axes.legend()
    figure.savefig(path)


def plot_pr_curves(
    scores: Mapping[str, ArrayLike],
    correct: ArrayLike,
    path: str | os.PathLike,
    title: str = "Q-Score and baselines as predictors of the probe's mistakes",
) -> None:
    """Precision-recall curves of every score in one PNG, two panels: correct samples as positives (score ``s``)
    and misclassified samples as positives (score ``-s``); each curve's AUPRC is in the legend and the base rate is a
    dashed line. Q-Score (``q_score``) is drawn thick, the label-using ceiling dotted."""
    if not scores:
        raise ValueError("no scores to plot.")
    figure = _figure(figsize=(11.0, 4.6))
    panels = figure.subplots(1, 2)
    for index, (name, values) in enumerate(scores.items()):
        q, ok = _as_arrays(values, correct)
        metrics = misclassification_metrics(q, ok.astype(np.int64))
        style = {"linewidth": 2.4 if name == "q_score" else 1.2, "linestyle": ":" if name == "probe_confidence" else "-",
                 "color": "black" if name == "q_score" else f"C{index}"}  # fmt: skip
        for axes, positives, signed, key in ((panels[0], ok, q, "auprc_correct"),
                                             (panels[1], ~ok, -q, "auprc_misclassified")):  # fmt: skip
            precision, recall, _ = precision_recall_curve(positives, signed)
            axes.step(recall, precision, where="post", label=f"{name}: {metrics[key]:.3f}", **style)
    for axes, rate, positive in ((panels[0], metrics["accuracy"], "correct"),
                                 (panels[1], metrics["misclassified_rate"], "misclassified")):  # fmt: skip
        axes.axhline(rate, color="grey", linestyle="--", linewidth=1, label=f"base rate: {rate:.3f}")
        axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
                 title=f"{positive} as positive (legend: AUPRC)")  # fmt: skip
        axes.legend(loc="lower left" if positive == "misclassified" else "lower right", fontsize="x-small")
    figure.suptitle(title)
    figure.savefig(path)


def plot_image_grid(
    images: Sequence[Any], titles: Sequence[str], path: str | os.PathLike, columns: int = 8, title: str | None = None
) -> None:
    """Images (PIL images or ``H x W (x C)`` arrays) in a grid, one title each, saved as a PNG at ``path``."""
    if len(images) == 0 or len(images) != len(titles):
        raise ValueError(
            f"need one title per image and at least one image; got {len(images)} images, {len(titles)} titles."
        )
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    figure = _figure(figsize=(1.8 * columns, 1.9 * rows + (0.4 if title else 0.0)))
    for index, (image, caption) in enumerate(zip(images, titles)):
        axes = figure.add_subplot(rows, columns, index + 1)
        array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
        axes.imshow(array, cmap="gray" if array.ndim == 2 else None)
        axes.set_title(caption, fontsize="small")
        axes.axis("off")
    if title:
        figure.suptitle(title)
    figure.savefig(path)
