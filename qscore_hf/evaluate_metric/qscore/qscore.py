"""Q-Score as a Hugging Face `evaluate` metric: a thin wrapper over `qscore_hf`'s score and SPEC §5 metrics."""

from __future__ import annotations

import os
import warnings
from typing import Any, Mapping

import datasets
import evaluate
import numpy as np
import torch

from qscore_hf.calibration import calibrate_eps, is_auto
from qscore_hf.comparison import compare_scores, scores_with_baselines
from qscore_hf.degeneracy import degeneracy_report
from qscore_hf.metrics import misclassification_metrics
from qscore_hf.score import ActivationStats, qscore_details, validate_eps

_NO_REFERENCE = -1

_CITATION = """\
@inproceedings{kalibhat2024measuring,
  title     = {Measuring Self-Supervised Representation Quality for Downstream Classification using Discriminative Features},
  author    = {Kalibhat, Neha and Narang, Kanika and Firooz, Hamed and Sanjabi, Maziar and Feizi, Soheil},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
  year      = {2024},
  note      = {arXiv:2203.01881}
}
"""

_DESCRIPTION = """\
Q-Score is a label-free, per-sample score of how good a self-supervised representation is. For each
representation it selects the highly activating features (value above mean + eps * std of that sample) among the
dataset's discriminative features and averages how far they stand above the sample's mean. Low Q-Scores flag
samples a linear probe is likely to misclassify; with correctness references the metric reports how well Q-Score
predicts them (AUPRC, AUROC).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): one representation (pooled encoder features) per sample.
    references (`list` of `int`, *optional*): 1 if a linear probe classified the sample correctly, else 0 (any
        other value is an error).
    eps (`float` or "auto", defaults to 4.0): highly activating means > mean + eps * std of the sample. "auto"
        calibrates it on `reference_features` (or on the predictions without them): the largest eps for which 90% of
        those samples keep a highly activating feature. Saved `activation_stats` were counted with an eps of their own:
        unset or "auto", that one is used; another explicit eps is an error.
    normalize (`str`, defaults to "none"): "none", "zscore" or "l1".
    p_lo, p_hi (`float`, defaults to 50 and 95): percentile band of activation frequencies that makes a feature
        discriminative.
    activation_stats (*optional*): saved statistics: an `ActivationStats`, its `state_dict()`, or the path or Hub
        id of a `QScoreModel` whose statistics to use.
    reference_features (*optional*): a reference set (N x d array) to compute the statistics from.
        Without either, every feature counts as discriminative.
    baselines (`bool`, defaults to False): with references, also score the samples with the label-free baselines
        (L2 norm, Hoyer sparsity, max z-score, and kNN density against `reference_features`, k = 10) and return the
        same metrics for each in `comparison`, with a one-sentence `verdict`.
Returns:
    q_scores (`list` of `float`), mean, median, empty_fraction (samples whose selected set is empty, scored 0),
    num_discriminative, never_active_fraction, eps (the resolved value), degenerate and `warning` (a sentence saying
    why Q-Score is degenerate and what to do, or None); with references also auprc_correct, auprc_misclassified,
    auroc, auroc_ci (its 95 % DeLong interval, [low, high]), accuracy, and with `baselines=True` `comparison` and
    `verdict`.
Examples:
    >>> import qscore_hf, evaluate
    >>> metric = evaluate.load("qscore")
    >>> out = metric.compute(predictions=[[0.0, 0.0, 0.0, 4.0], [1.0, 1.0, 1.0, 1.0]], eps=1.0)
    >>> [round(q, 2) for q in out["q_scores"]], out["empty_fraction"]
    ([3.0, 0.0], 0.5)
"""


def _feature_matrix(predictions: Any) -> np.ndarray:
    """``predictions`` as an ``N x d`` matrix, or ``ValueError`` in one line: float32 when that holds every value
    exactly (as scored before), float64 otherwise (integers above 2**24)."""
    if len(predictions) == 0:
        raise ValueError("predictions is empty: pass at least one representation (one list of floats per sample).")
    widths = [len(row) for row in predictions]
    ragged = next((row for row, width in enumerate(widths) if width != widths[0]), None)
    if ragged is not None:
        raise ValueError(
            f"predictions must all have the same length (one value per feature): row 0 has {widths[0]} values, row "
            f"{ragged} has {widths[ragged]}."
        )
    features = np.asarray(predictions, dtype=np.float64)
    narrow = features.astype(np.float32)
    return narrow if np.array_equal(narrow, features, equal_nan=True) else features


def _reference_matrix(reference_features: Any, width: int) -> np.ndarray:
    """``reference_features`` as a float32 ``N x width`` array, or ``ValueError`` naming it."""
    reference = np.asarray(reference_features, dtype=np.float32)
    if reference.ndim != 2 or reference.shape[0] == 0 or reference.shape[1] != width:
        raise ValueError(
            f"reference_features must be a (num_samples, {width}) matrix (one row per reference sample, as wide as "
            f"the predictions); got shape {reference.shape}."
        )
    return reference


def _statistics(activation_stats: Any, reference: np.ndarray | None, eps: float | str | None,
                width: int) -> ActivationStats | None:  # fmt: skip
    """The activation statistics to score with: counted on ``reference`` at ``eps``, or the saved ones (whose own eps
    must agree with an explicit ``eps``)."""
    if activation_stats is not None and reference is not None:
        raise ValueError("pass activation_stats or reference_features, not both.")
    if reference is not None:
        return ActivationStats(width, 4.0 if eps is None else eps).update(reference)
    if activation_stats is None:
        return None
    if isinstance(activation_stats, ActivationStats):
        stats = activation_stats
    elif isinstance(activation_stats, Mapping):
        missing = [key for key in ("counts", "num_samples") if key not in activation_stats]
        if missing:
            raise ValueError(
                f"activation_stats (a state_dict) lacks {' and '.join(missing)}; pass ActivationStats.state_dict() "
                "whole (keys counts, num_samples, counted_eps)."
            )
        state = {key: torch.as_tensor(value) for key, value in activation_stats.items()}
        if state["counts"].dim() != 1:
            raise ValueError(f"activation_stats: counts must be 1-D; got shape {tuple(state['counts'].shape)}.")
        _check_width(state["counts"].numel(), width)
        counted = ActivationStats.counted_eps_in(state)
        # statistics saved before the eps was recorded: assume the one asked for
        stats = ActivationStats(width, counted if counted is not None else _explicit(eps, 4.0))
        stats.load_state_dict(state)
    elif isinstance(activation_stats, (str, os.PathLike)):
        from qscore_hf.io_utils import check_model_source
        from qscore_hf.modeling_qscore import QScoreModel

        check_model_source(activation_stats)
        stats = QScoreModel.from_pretrained(activation_stats).activation_stats
        if int(stats.num_samples) == 0:
            raise ValueError(
                f"{activation_stats} has no activation statistics (e.g. a transformers or timm repo): pass "
                "reference_features, or save the model after QScoreModel.compute_activation_stats and pass that folder."
            )
    else:
        raise ValueError(
            "activation_stats must be an ActivationStats, its state_dict(), or a QScoreModel folder / Hub id; "
            f"got {type(activation_stats).__name__}."
        )
    _check_width(stats.num_features, width)
    if _explicit(eps, stats.eps) != stats.eps:
        raise ValueError(
            f"eps={eps:g} but the activation_stats were counted with eps={stats.eps:g}: leave eps unset (or pass "
            f"eps={stats.eps:g}), or count statistics at eps={eps:g} (reference_features)."
        )
    return stats


def _explicit(eps: float | str | None, default: float) -> float:
    """``eps`` as a number, ``default`` when unset or "auto"."""
    return default if eps is None or is_auto(eps) else float(eps)


def _check_references(references: Any) -> None:
    """``ValueError`` in one line unless every reference is 1 (correct) or 0 (misclassified): evaluate's int
    feature would otherwise truncate 1.5 or 0.7 silently."""
    for index, value in enumerate(references):
        if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, float, np.integer, np.floating))
                                                   and value in (0, 1)):  # fmt: skip
            continue
        raise ValueError(
            f"references must be 1 (the probe classified the sample correctly) or 0 (misclassified); got {value!r} "
            f"at position {index}."
        )


def _check_width(stats_width: int, width: int) -> None:
    if stats_width != width:
        raise ValueError(
            f"activation_stats track {stats_width} features but the predictions have {width} per sample; "
            "pass the statistics of the encoder that produced these representations."
        )


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class QScore(evaluate.Metric):
    """Q-Score of representations and, with correctness references, how well it predicts misclassification."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # evaluate needs every declared input on every row, so absent references are stored as -1.
            features=datasets.Features(
                # float64: integer features above 2**24 are kept exactly (float32 would round them); see _feature_matrix
                {"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int32")}
            ),
            reference_urls=["https://arxiv.org/abs/2203.01881"],
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs) -> None:
        """Add a batch of representations (and, optionally, correctness references: 1 or 0)."""
        if references is None and predictions is not None:
            references = [_NO_REFERENCE] * len(predictions)
        else:
            _check_references(references)
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs) -> None:
        """Add one representation (and, optionally, its correctness reference: 1 or 0)."""
        if reference is None and prediction is not None:
            reference = _NO_REFERENCE
        else:
            _check_references([reference])
        super().add(prediction=prediction, reference=reference, **kwargs)

    def _compute(
        self,
        predictions,
        references=None,
        eps: float | str | None = None,
        normalize: str = "none",
        p_lo: float = 50.0,
        p_hi: float = 95.0,
        activation_stats: Any = None,
        reference_features: Any = None,
        baselines: bool = False,
    ) -> dict[str, Any]:
        features = _feature_matrix(predictions)
        if not 0.0 <= p_lo <= p_hi <= 100.0:
            raise ValueError(f"need 0 <= p_lo <= p_hi <= 100 (percentiles); got p_lo={p_lo}, p_hi={p_hi}.")
        if eps is not None and not is_auto(eps):
            eps = validate_eps(eps)
        reference = None if reference_features is None else _reference_matrix(reference_features, features.shape[1])
        calibrated = is_auto(eps) and activation_stats is None
        if calibrated:
            eps = calibrate_eps(reference if reference is not None else features)
        stats = _statistics(activation_stats, reference, eps, features.shape[1])
        eps = stats.eps if stats is not None else _explicit(eps, 4.0)
        discriminative = stats.discriminative(p_lo, p_hi) if stats is not None else None
        details = qscore_details(features, discriminative, eps, normalize)
        q = details.q_scores.numpy()
        num_discriminative = int(features.shape[1] if discriminative is None else discriminative.numel())
        health = degeneracy_report(details.num_selected.numpy(), num_discriminative, stats, eps, calibrated)
        result: dict[str, Any] = {
            "q_scores": q.tolist(),
            "mean": float(q.mean()),
            "median": float(np.median(q)),
            "empty_fraction": health["empty_fraction"],
            "num_discriminative": num_discriminative,
            "never_active_fraction": health["never_active_fraction"],
            "eps": float(eps),
            "degenerate": health["degenerate"],
            "warning": health["warning"],
        }
        if health["warning"]:
            warnings.warn(health["warning"], UserWarning, stacklevel=2)
        references = np.asarray(references)
        given = references != _NO_REFERENCE
        if given.any() and not given.all():
            raise ValueError("references were given for some batches but not others; pass them for all or none.")
        if given.all():
            metrics = misclassification_metrics(q, references)
            keys = ("auprc_correct", "auprc_misclassified", "auroc", "auroc_ci", "accuracy")
            result.update({key: metrics[key] for key in keys})
            if baselines:
                comparison = compare_scores(scores_with_baselines(q, features, reference), references)
                result["comparison"] = comparison.rows
                result["verdict"] = comparison.verdict()
        elif baselines:
            raise ValueError("baselines=True compares predictors of misclassification: pass references (1 correct, 0 "
                             "misclassified) too.")  # fmt: skip
        return result
