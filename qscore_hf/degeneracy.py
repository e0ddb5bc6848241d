"""Is Q-Score degenerate on this model and data? (Never silent: every report, the CLI and the metric say so.)

Q-Score is degenerate when most samples have an empty selected set ``S_i`` (they all score 0, so the ranking is
mostly ties) or when there is no discriminative feature at all (``|D| = 0``: every score is 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .score import ActivationStats

__all__ = ["DEGENERATE_EMPTY_FRACTION", "degeneracy_report"]

DEGENERATE_EMPTY_FRACTION = 0.5
"""Above this fraction of samples with an empty ``S_i`` the score is flagged as degenerate."""


def degeneracy_report(num_selected: np.ndarray, num_discriminative: int, stats: ActivationStats | None,
                      eps: float, eps_calibrated: bool = False) -> dict[str, Any]:  # fmt: skip
    """The empty-``S_i`` fraction, ``|D|`` and the fraction of never-active features (``A_j = 0`` in the reference
    statistics), whether that is degenerate, and if so a warning that says why and what to do (``eps_calibrated``:
    eps already came from ``eps="auto"``, so lowering it is not the advice)."""
    sizes = np.asarray(num_selected).reshape(-1)
    empty = float(np.mean(sizes == 0)) if sizes.size else 0.0
    never_active = None
    if stats is not None and int(stats.num_samples) > 0:
        never_active = float((stats.counts == 0).double().mean())
    report: dict[str, Any] = {"empty_fraction": empty, "num_discriminative": int(num_discriminative),
                              "never_active_fraction": never_active, "degenerate": False, "warning": None}  # fmt: skip
    reasons = []
    if num_discriminative == 0:
        inactive = "" if never_active is None else f" ({_percent(never_active)} of features were never highly active)"
        reasons.append(f"no feature is discriminative (|D| = 0){inactive}, so every Q-Score is 0")
    if empty > DEGENERATE_EMPTY_FRACTION:
        reasons.append(f"{_percent(empty)} of the samples have an empty S_i (no discriminative feature above "
                       f"mu + {eps:g} sigma) and score 0, so the ranking is mostly ties")  # fmt: skip
    if reasons:
        report["degenerate"] = True
        if eps_calibrated:
            advice = (
                f"Why: even at the calibrated eps={eps:g} (eps='auto'), the same few features stand out for every "
                "sample, so the activation-frequency band that defines D holds few or none (typical of random or barely "
                "trained encoders). What to do: Q-Score cannot rank these samples; train the encoder longer, and use "
                "the baselines beside Q-Score in this report."
            )
        else:
            advice = (
                f"Why: this encoder's features rarely stand {eps:g} standard deviations above their mean, or the same "
                "few do for every sample (typical of young or small encoders). What to do: score with eps='auto' "
                "(calibrated on the reference set; --eps auto), use more reference samples, and read the baselines "
                "beside Q-Score in this report."
            )
        report["warning"] = "Q-Score is degenerate here: " + "; ".join(reasons) + ". " + advice
    return report


def _percent(fraction: float) -> str:
    """``fraction`` as a percentage that reads 0 % or 100 % only when it is exactly that (511 of 512: 99.8 %)."""
    digits = 0
    while 0 < fraction < 1 and round(100 * fraction, digits) in (0, 100):
        digits += 1
    return f"{100 * fraction:.{digits}f} %"
