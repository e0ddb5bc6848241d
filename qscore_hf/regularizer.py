"""Q-Score regularization (SPEC §6) as an ``nn.Module`` for pre-training and fine-tuning loops."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from .calibration import DEFAULT_COVERAGE, EpsCalibrator, is_auto
from .distributed import all_reduce_sum, world_size
from .score import NORMALIZE_OPTIONS, ActivationStats, Normalize, as_feature_matrix, qscore_details

__all__ = [
    "DEFAULT_EPS", "DEFAULT_L1_FORM", "DEFAULT_LAMBDA1", "DEFAULT_LAMBDA2", "L1_FORMS", "L1Form", "QScoreRegularizer",
    "QScoreRegularizerOutput", "column_l1",
]  # fmt: skip

L1Form = Literal["sum", "mean", "normalized"]
L1_FORMS = ("sum", "mean", "normalized")


def column_l1(features: Tensor, form: L1Form) -> Tensor:
    """Per-column sums of the L1 term's entries for this batch, in float64 (column sums of float32 features near
    float32's maximum would overflow): ``sum_i |h_ij|`` for ``"sum"`` and ``"mean"`` (the caller divides by the
    global batch size for ``"mean"``), ``sum_i |h_ij| / ||h_i||_2`` for ``"normalized"``.

    ``"normalized"`` is scale-free: its gradient is orthogonal to each ``h_i``, so it cannot lower the norm of a
    representation, only how its mass spreads over features (SPEC §6: SSL losses behind a normalizing projector
    ignore the backbone's scale, so the literal sum is minimised by shrinking every feature towards zero).
    """
    if form not in L1_FORMS:
        raise ValueError(f"l1_form must be one of {L1_FORMS}; got {form!r}.")
    magnitude = features.abs()
    if form == "normalized":
        # Divide by the row's max first: exact at any finite magnitude (no overflow or underflow when squaring).
        scale = magnitude.detach().amax(dim=1, keepdim=True).clamp(min=torch.finfo(features.dtype).tiny)
        scaled = magnitude / scale
        norm = torch.linalg.vector_norm(scaled, dim=1, keepdim=True).clamp(min=1.0)  # >= 1 unless the row is 0
        magnitude = scaled / norm
    return magnitude.sum(dim=0, dtype=torch.float64)


@dataclass
class QScoreRegularizerOutput:
    """The regularizer's loss and its parts. Every part is a global-batch value, detached, for logging."""

    loss: Tensor
    """``L_Q = q_term + l1_term``, differentiable with respect to this process's features."""
    q_term: Tensor
    """``-lambda1 * sum_{i: Q_i < alpha} Q_i``."""
    l1_term: Tensor
    """``lambda2 * sum_{j: c_j > beta} c_j`` (``c_j`` as the ``l1_form`` defines it)."""
    alpha: Tensor
    """The batch mean of Q (the threshold of the first term)."""
    beta: Tensor
    """``mean_j c_j`` (the threshold of the second term)."""
    num_discriminative: int
    """``|D|`` used for this batch (``d`` while every feature counts as discriminative)."""
    batch_size: int
    """Samples in the global batch."""
    num_active: Tensor
    """Samples of the global batch that the first term pushes: ``Q_i < alpha`` with a non-empty ``S_i`` (a 0-d
    tensor, so that only logging synchronizes a GPU). A low-quality sample with an empty ``S_i`` has ``Q_i = 0`` and
    no gradient: when every sample below the mean has an empty ``S_i`` (``eps`` too high for a young encoder), the
    first term is inert and this is 0."""

    def log_dict(self, prefix: str = "qscore/") -> dict[str, float]:
        """Plain floats for ``accelerator.log`` / TensorBoard."""
        return {
            f"{prefix}loss": float(self.loss.detach()),
            f"{prefix}q_term": float(self.q_term),
            f"{prefix}l1_term": float(self.l1_term),
            f"{prefix}alpha_mean_q": float(self.alpha),
            f"{prefix}beta": float(self.beta),
            f"{prefix}num_discriminative": float(self.num_discriminative),
            f"{prefix}q_term_active_fraction": float(self.num_active) / max(1, self.batch_size),
        }


# Chosen on a validation split (studies/reproduce.py --regularizer-selection; README "Results"): the scale-free L1
# form, lambda1 = lambda2 = 1e-2, and eps calibrated on the training batches.
DEFAULT_L1_FORM: L1Form = "normalized"
DEFAULT_LAMBDA1 = 1e-2
DEFAULT_LAMBDA2 = 1e-2
DEFAULT_EPS = "auto"


class QScoreRegularizer(nn.Module):
    """``L_Q = -lambda1 * sum_{i: Q_i < alpha} Q_i + lambda2 * sum_{j: c_j > beta} c_j`` (SPEC §6).

    Call it on the backbone's pooled features (before any projector) and add ``out.loss`` to the SSL loss.
    ``alpha`` (batch mean of Q), ``beta`` (mean of the ``c_j``) and every mask are constants in the backward pass.

    ``l1_form`` chooses ``c_j``: ``"sum"`` is SPEC §6's literal column L1 norm ``sum_i |h_ij|`` (with the
    preprint's lambdas it collapses features in short runs: SPEC §6, README Results); ``"mean"`` divides it by
    the global batch size; ``"normalized"`` (the default) is the batch mean of ``|h_ij| / ||h_i||_2``, which is
    scale-free and so cannot shrink features towards zero. The defaults (``l1_form="normalized"``,
    ``lambda1 = lambda2 = 1e-2``, ``eps="auto"``) were chosen on a validation split (``studies/reproduce.py``, README
    "Results"); SPEC §6 as published is ``l1_form="sum", lambda1=1e-4, lambda2=1e-4, eps=4``.

    Under torch.distributed (e.g. ``accelerate launch``) the batch is the global batch: Q sums, ``c_j``, batch
    sizes and activation counts are summed over processes, so the loss value is the same on every process and
    equals the single-process loss on the concatenated batch. Its gradient with respect to the local features
    is the global loss's gradient times the world size when ``ddp_averages_gradients`` (the default), because
    DDP averages gradients over processes; set it to ``False`` when gradients are summed instead.

    The discriminative set ``D`` comes from a running ``ActivationStats`` that every training-mode call updates
    with the global batch. Until ``warmup_samples`` samples were seen all features count; then ``D`` is computed
    once automatically and again at every ``refresh()`` (call it at each epoch end).

    ``eps="auto"`` (``qscore_hf.calibration``) calibrates eps on the first training batch, then again at every
    ``refresh()`` on the batches seen since the last one (the running statistics restart with each new eps).
    """

    discriminative_mask: Tensor
    has_discriminative: Tensor
    resolved_eps: Tensor
    eps_histogram: Tensor

    def __init__(
        self,
        num_features: int,
        lambda1: float = DEFAULT_LAMBDA1,
        lambda2: float = DEFAULT_LAMBDA2,
        eps: float | str = DEFAULT_EPS,
        normalize: Normalize = "none",
        l1_form: L1Form = DEFAULT_L1_FORM,
        coverage: float = DEFAULT_COVERAGE,
        p_lo: float = 50.0,
        p_hi: float = 95.0,
        warmup_samples: int = 10_000,
        ddp_averages_gradients: bool = True,
    ) -> None:
        super().__init__()
        if normalize not in NORMALIZE_OPTIONS:
            raise ValueError(f"normalize must be one of {NORMALIZE_OPTIONS}; got {normalize!r}.")
        if not 0.0 <= p_lo <= p_hi <= 100.0:
            raise ValueError(f"need 0 <= p_lo <= p_hi <= 100; got p_lo={p_lo}, p_hi={p_hi}.")
        if l1_form not in L1_FORMS:
            raise ValueError(f"l1_form must be one of {L1_FORMS}; got {l1_form!r}.")
        self.l1_form = l1_form
        self.lambda1 = float(lambda1)
        self.lambda2 = float(lambda2)
        self.normalize = normalize
        self.p_lo = float(p_lo)
        self.p_hi = float(p_hi)
        self.warmup_samples = int(warmup_samples)
        self.ddp_averages_gradients = ddp_averages_gradients
        self.auto_eps = is_auto(eps)
        self.coverage = float(coverage)
        self.stats = ActivationStats(num_features, 4.0 if self.auto_eps else eps)
        self.register_buffer("discriminative_mask", torch.ones(num_features, dtype=torch.bool))
        self.register_buffer("has_discriminative", torch.zeros((), dtype=torch.bool))
        # eps="auto": the current eps (NaN until the first batch) and the histogram of the batches since the last
        # calibration, both buffers so that a resumed run continues with them.
        self.register_buffer("resolved_eps", torch.tensor(math.nan if self.auto_eps else float(eps), dtype=torch.float64))
        self.register_buffer("eps_histogram", EpsCalibrator.empty_bins(num_features) if self.auto_eps
                             else torch.zeros(0, dtype=torch.int64))  # fmt: skip

    @property
    def eps(self) -> float:
        return float(self.resolved_eps) if self.auto_eps else self.stats.eps

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        # A checkpoint of eps="auto" holds statistics counted at its calibrated eps: take that eps first, so that the
        # statistics (loaded right after, as a child module) are checked against the eps they were counted with.
        saved = state_dict.get(prefix + "resolved_eps")
        if self.auto_eps and saved is not None and not math.isnan(float(saved)):
            self.stats.eps = float(saved)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _calibrate(self, calibrator: EpsCalibrator) -> None:
        """Set eps from ``calibrator`` (summed over processes) and restart the statistics counted with the old one.

        A representation with no spread (e.g. collapsed to zero) cannot be calibrated: training goes on with the
        previous eps (the paper's 4 before any), with a warning, rather than failing."""
        calibrator.all_reduce()
        try:
            eps = calibrator.resolve(self.coverage)
        except ValueError as error:
            eps = 4.0 if math.isnan(float(self.resolved_eps)) else float(self.resolved_eps)
            warnings.warn(f"QScoreRegularizer eps='auto' keeps eps={eps:g}: {error}", RuntimeWarning, stacklevel=3)
        self.resolved_eps.fill_(eps)
        self.stats.eps = eps
        self.stats.reset()
        calibrator.reset()

    def extra_repr(self) -> str:
        return (
            f"lambda1={self.lambda1}, lambda2={self.lambda2}, l1_form={self.l1_form!r}, normalize={self.normalize!r}, "
            f"p_lo={self.p_lo}, "
            f"p_hi={self.p_hi}, warmup_samples={self.warmup_samples}"
        )

    @torch.no_grad()
    def refresh(self, reset: bool = False) -> int:
        """Recompute ``D`` from the running statistics (once ``warmup_samples`` were seen); returns ``|D|``.

        With ``reset=True`` the statistics then start afresh, so the next ``D`` reflects only what the
        encoder produced since this call.
        """
        if int(self.stats.num_samples) >= max(1, self.warmup_samples):
            self.discriminative_mask.copy_(self.stats.discriminative_mask(self.p_lo, self.p_hi))
            self.has_discriminative.fill_(True)
            if reset:
                self.stats.reset()
        calibrator = EpsCalibrator(self.stats.num_features, bins=self.eps_histogram)
        if self.auto_eps and calibrator.num_samples > 0:
            self._calibrate(calibrator)
        return self.num_discriminative

    @property
    def num_discriminative(self) -> int:
        return int(self.discriminative_mask.sum()) if bool(self.has_discriminative) else self.stats.num_features

    def forward(self, features: Tensor) -> QScoreRegularizerOutput:
        features = as_feature_matrix(features)
        if self.auto_eps and self.training:
            calibrator = EpsCalibrator(self.stats.num_features, bins=self.eps_histogram)
            if math.isnan(float(self.resolved_eps)):  # the first batch calibrates eps (on every process alike)
                self._calibrate(calibrator.update(features.detach()))
            calibrator.update(features.detach())
        elif self.auto_eps and math.isnan(float(self.resolved_eps)):
            raise ValueError("eps='auto' is calibrated on training batches: call the regularizer in training mode first.")
        discriminative = self.discriminative_mask if bool(self.has_discriminative) else None
        num_discriminative = self.num_discriminative
        details = qscore_details(
            features, discriminative, self.eps, self.normalize, count_highly_activating=self.training
        )
        q, counts = details.q_scores, details.highly_activating_counts
        columns = column_l1(features, self.l1_form)  # float64: no overflow for any finite float32 features

        # Global-batch statistics: one reduction of [sum Q, batch size] and one of [c_1..c_d, active count].
        totals = all_reduce_sum(torch.stack([q.detach().sum(dtype=torch.float64), columns.new_tensor(features.shape[0])]))
        batch_size = int(totals[1])
        alpha = (totals[0] / totals[1]).to(q.dtype)
        low_quality = q.detach() < alpha
        active = (low_quality & (details.num_selected > 0)).sum().to(columns.dtype)
        reduced = all_reduce_sum(torch.cat([columns.detach(), active.reshape(1)]))  # c and the active count
        divisor = 1.0 if self.l1_form == "sum" else float(batch_size)  # "mean" / "normalized": a global batch mean
        column_global, num_active = reduced[:-1] / divisor, reduced[-1]
        beta = column_global.mean()
        generic = column_global > beta
        local_q_term = -self.lambda1 * (q * low_quality).sum(dtype=torch.float64)
        local_l1_term = self.lambda2 * (columns * generic).sum() / divisor
        q_term = all_reduce_sum(local_q_term)
        l1_term = self.lambda2 * (column_global * generic).sum()
        local = local_q_term + local_l1_term
        if world_size() > 1:
            # Value: the global loss. Gradient: this process's share, scaled to undo DDP's averaging.
            scale = world_size() if self.ddp_averages_gradients else 1
            loss = (q_term + l1_term) + scale * (local - local.detach())
        else:
            loss = local

        if self.training and counts is not None:
            self.stats.add_counts(all_reduce_sum(counts), batch_size)
            if not bool(self.has_discriminative) and int(self.stats.num_samples) >= max(1, self.warmup_samples):
                self.refresh()
        return QScoreRegularizerOutput(
            loss=loss,
            q_term=q_term.detach(),
            l1_term=l1_term.detach(),
            alpha=alpha,
            beta=beta,
            num_discriminative=num_discriminative,
            batch_size=batch_size,
            num_active=num_active,
        )
