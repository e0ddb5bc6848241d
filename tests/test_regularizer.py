"""Tests of the Q-Score regularizer (SPEC §6).

Expectations come from a hand-computed batch, an independent NumPy reference of L_Q, closed-form gradients
derived below with every threshold and mask held constant, finite differences (gradcheck), and the
global-batch rule checked with a real two-process gloo group against the one-process result.
"""

from __future__ import annotations

import datetime
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from qscore_hf.regularizer import L1_FORMS, QScoreRegularizer, QScoreRegularizerOutput
from qscore_hf.score import ActivationStats

from local_ports import free_port

NORMALIZE = ("none", "zscore", "l1")


# ---------------------------------------------------------------------------------------------------------
# Independent NumPy reference (SPEC §2-4 and §6)
# ---------------------------------------------------------------------------------------------------------


def ref_L(h: np.ndarray, eps: float) -> np.ndarray:
    if h.max() == h.min():  # sigma = 0
        return np.zeros(h.shape, dtype=bool)
    return h > h.mean() + eps * h.std()


def ref_selection(H: np.ndarray, D: np.ndarray | None, eps: float) -> np.ndarray:
    """S_i = L_i ∩ D as an N x d bool matrix."""
    D = np.ones(H.shape[1], dtype=bool) if D is None else D
    return np.array([ref_L(h, eps) for h in H]) & D


def ref_q(H: np.ndarray, S: np.ndarray, normalize: str) -> np.ndarray:
    q = np.zeros(H.shape[0])
    for i, h in enumerate(H):
        if not S[i].any():
            continue
        q[i] = np.mean(h[S[i]] - h.mean())
        if normalize == "zscore":
            q[i] /= h.std()
        elif normalize == "l1":
            q[i] /= np.abs(h).sum()
    return q


def ref_discriminative(counts: np.ndarray, n: int, p_lo=50.0, p_hi=95.0) -> np.ndarray:
    A = counts / n
    lo, hi = np.percentile(A, [p_lo, p_hi])
    return (A >= lo) & (A <= hi) & (A > 0)


def ref_regularizer(H, D=None, eps=4.0, normalize="none", lambda1=1.0, lambda2=1.0, form="sum"):
    """Value and gradient of L_Q = -l1 * sum_{Q_i < alpha} Q_i + l2 * sum_{c_j > beta} c_j, masks constant.

    c_j by form: "sum" c_j = sum_i |h_ij|; "mean" c_j = (1/n) sum_i |h_ij|; "normalized"
    c_j = (1/n) sum_i |h_ij| / ||h_i||_2, whose gradient, with G the generic columns and r_i = ||h_i||_2, is
    d/dh_ik sum_{j in G} c_j = ([k in G] sign(h_ik) / r_i - (sum_{j in G} |h_ij|) h_ik / r_i^3) / n.

    Gradient, per row i with S = S_i non-empty, m = mean_{j in S} h_ij, mu = mean_j h_ij, d features:
      "none":   dQ_i/dh_ik = [k in S]/|S| - 1/d
      "zscore": Q_i = (m - mu)/sigma, dsigma/dh_ik = (h_ik - mu)/(d sigma)
                dQ_i/dh_ik = ([k in S]/|S| - 1/d)/sigma - (m - mu) (h_ik - mu) / (d sigma^3)
      "l1":     Q_i = (m - mu)/n1, n1 = sum_j |h_ij|
                dQ_i/dh_ik = ([k in S]/|S| - 1/d)/n1 - (m - mu) sign(h_ik)/n1^2
    and dc_j/dh_ij = sign(h_ij).
    """
    H = np.asarray(H, dtype=np.float64)
    n, d = H.shape
    S = ref_selection(H, D, eps)
    q = ref_q(H, S, normalize)
    alpha = q.mean()
    low = q < alpha
    norms = np.sqrt((H**2).sum(axis=1, keepdims=True))
    c = {"sum": np.abs(H).sum(axis=0), "mean": np.abs(H).mean(axis=0), "normalized": (np.abs(H) / norms).mean(axis=0)}[form]
    beta = c.mean()
    generic = c > beta
    q_term = -lambda1 * q[low].sum()
    l1_term = lambda2 * c[generic].sum()
    grad = np.zeros_like(H)
    for i in range(n):
        size = S[i].sum()
        if not low[i] or size == 0:
            continue
        h = H[i]
        mu, sigma, n1 = h.mean(), h.std(), np.abs(h).sum()
        m = h[S[i]].mean()
        base = S[i] / size - 1.0 / d
        if normalize == "none":
            dq = base
        elif normalize == "zscore":
            dq = base / sigma - (m - mu) * (h - mu) / (d * sigma**3)
        else:
            dq = base / n1 - (m - mu) * np.sign(h) / n1**2
        grad[i] -= lambda1 * dq
    if form == "normalized":
        mass = (np.abs(H) * generic).sum(axis=1, keepdims=True)
        grad += lambda2 * (generic[None, :] * np.sign(H) / norms - mass * H / norms**3) / n
    else:
        grad += lambda2 * generic[None, :] * np.sign(H) / (n if form == "mean" else 1)
    counts = np.array([ref_L(h, eps) for h in H]).sum(axis=0)
    return dict(
        loss=q_term + l1_term, q_term=q_term, l1_term=l1_term, alpha=alpha, beta=beta, grad=grad, q=q,
        low=low, generic=generic, counts=counts, num_active=int((low & S.any(axis=1)).sum()),
    )


def lognormal_batch(seed: int, n: int, d: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.lognormal(mean=0.0, sigma=1.0, size=(n, d)))  # float64, strictly positive


# ---------------------------------------------------------------------------------------------------------
# Hand-computed loss
# ---------------------------------------------------------------------------------------------------------

# eps = 0.5, threshold mu + sigma/2:
#   r0 = [8,0,0,8]: mu 4, h-mu = [4,-4,-4,4], sigma 4, threshold 6 -> L = {0,3}, Q = (4+4)/2 = 4
#   r1 = [0,4,4,0]: mu 2, sigma 2, threshold 3 -> L = {1,2}, Q = 2
#   r2 = [0,0,2,2]: mu 1, sigma 1, threshold 1.5 -> L = {2,3}, Q = 1
#   r3 = [2,0,2,0]: mu 1, sigma 1 -> L = {0,2}, Q = 1
# alpha = (4+2+1+1)/4 = 2; Q_i < 2 (strict; r1 with Q = 2 is out): r2, r3 -> sum 2 -> q_term = -lambda1 * 2
# c = column sums = [8+0+0+2, 0+4+0+0, 0+4+2+2, 8+0+2+0] = [10, 4, 8, 10]; beta = 32/4 = 8;
# c_j > 8 (strict; c_2 = 8 is out): c_0 + c_3 = 20 -> l1_term = lambda2 * 20
HAND = [[8.0, 0.0, 0.0, 8.0], [0.0, 4.0, 4.0, 0.0], [0.0, 0.0, 2.0, 2.0], [2.0, 0.0, 2.0, 0.0]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("train", [True, False])
def test_hand_computed_loss(dtype, train):
    reg = QScoreRegularizer(4, l1_form="sum", lambda1=1.0, lambda2=1.0, eps=0.5)
    reg.train(train)
    x = torch.tensor(HAND, dtype=dtype, requires_grad=True)
    out = reg(x)
    assert isinstance(out, QScoreRegularizerOutput)
    assert float(out.q_term) == -2.0
    assert float(out.l1_term) == 20.0
    assert float(out.loss.detach()) == 18.0
    assert float(out.alpha) == 2.0
    assert float(out.beta) == 8.0
    assert out.num_discriminative == 4
    assert out.batch_size == 4
    assert out.loss.requires_grad
    assert int(out.num_active) == 2  # r2 and r3: below alpha, each with a non-empty S_i
    logged = out.log_dict()
    assert logged["qscore/loss"] == 18.0 and logged["qscore/q_term"] == -2.0 and logged["qscore/beta"] == 8.0
    assert logged["qscore/q_term_active_fraction"] == 0.5


def test_q_term_is_inert_when_every_low_sample_has_an_empty_selection():
    # eps = 0.5: r0 = [8,0,0,8] has Q = 4 (see HAND); the constant rows have sigma = 0, so S_i is empty and Q_i = 0.
    # alpha = 4/3: the two constant rows are the low-quality ones, and Q_i = 0 there has no gradient, so the first
    # term is exactly 0 with a zero gradient, however large lambda1 is. This is what eps = 4 does to a young
    # encoder, whose rows rarely have a feature 4 sigma above their mean.
    reg = QScoreRegularizer(4, l1_form="sum", lambda1=1e6, lambda2=0.0, eps=0.5)
    x = torch.tensor([[8.0, 0.0, 0.0, 8.0], [1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]], requires_grad=True)
    out = reg(x)
    assert float(out.alpha) == pytest.approx(4.0 / 3.0)
    assert float(out.q_term) == 0.0 and int(out.num_active) == 0
    assert out.log_dict()["qscore/q_term_active_fraction"] == 0.0
    out.loss.backward()
    assert torch.count_nonzero(x.grad) == 0


def test_hand_computed_loss_lambdas():
    # same batch, lambda1 = 2, lambda2 = 0.5: -2*2 + 0.5*20 = 6
    reg = QScoreRegularizer(4, l1_form="sum", lambda1=2.0, lambda2=0.5, eps=0.5)
    out = reg(torch.tensor(HAND))
    assert float(out.q_term) == -4.0
    assert float(out.l1_term) == 10.0
    assert float(out.loss.detach()) == 6.0
    # the default lambda1 with SPEC §6's lambda2: (-2 * 1e-2) + 20 * 1e-4
    out = QScoreRegularizer(4, l1_form="sum", lambda2=1e-4, eps=0.5)(torch.tensor(HAND, dtype=torch.float64))
    assert float(out.loss.detach()) == pytest.approx(-2e-2 + 20e-4, rel=1e-12)


# The scale-safe forms on HAND (4 rows, eps 0.5; Q as above):
#   "mean": c = [10, 4, 8, 10] / 4 = [2.5, 1, 2, 2.5]; beta = 2; c_j > 2: 2.5 + 2.5 -> l1_term = 5
#   "normalized": every row has two equal non-zero entries, so h_i / ||h_i|| holds 1/sqrt2 there:
#   r0 -> columns {0, 3}, r1 -> {1, 2}, r2 -> {2, 3}, r3 -> {0, 2}; column sums [2, 1, 3, 2] / sqrt2, batch means
#   c = [2, 1, 3, 2] / (4 sqrt2); beta = 8 / (16 sqrt2) = 2 / (4 sqrt2); c_j > beta (strict): only c_2
#   -> l1_term = 3 / (4 sqrt2)
@pytest.mark.parametrize("form, l1_term", [("mean", 5.0), ("normalized", 3 / (4 * np.sqrt(2)))])
def test_hand_computed_scale_safe_forms(form, l1_term):
    out = QScoreRegularizer(4, l1_form=form, lambda1=1.0, lambda2=1.0, eps=0.5)(torch.tensor(HAND, dtype=torch.float64))
    assert float(out.q_term) == -2.0
    assert float(out.l1_term) == pytest.approx(l1_term, rel=1e-12)


def test_normalized_form_is_scale_free():
    # Multiplying every feature by 1000 leaves the normalized L1 term unchanged, and its gradient has no radial
    # component (<grad_i, h_i> = 0): it cannot shrink a representation towards zero. The literal sum can.
    x0 = lognormal_batch(7, 32, 16)
    parts = {}
    for form in ("normalized", "sum"):
        reg = QScoreRegularizer(16, l1_form=form, lambda1=0.0, lambda2=1.0, eps=1.0).eval()
        values = []
        for scale in (1.0, 1000.0):
            x = (x0 * scale).requires_grad_(True)
            out = reg(x)
            out.loss.backward()
            values.append((float(out.l1_term), (x.grad * x.detach()).sum(dim=1)))
        parts[form] = values
    (small, radial_small), (large, radial_large) = parts["normalized"]
    assert large == pytest.approx(small, rel=1e-12)
    assert float(radial_small.abs().max()) < 1e-12 and float(radial_large.abs().max()) < 1e-9
    (small, radial), (large, _) = parts["sum"]
    assert large == pytest.approx(1000 * small, rel=1e-12) and bool((radial > 0).all())


def test_defaults_are_the_validated_scale_safe_form():
    # The setting chosen on the validation split (README "Results"), not SPEC §6's literal sum.
    reg = QScoreRegularizer(4)
    assert (reg.l1_form, reg.lambda1, reg.lambda2, reg.auto_eps) == ("normalized", 1e-2, 1e-2, True)


def test_literal_form_finite_near_float32_max():
    # float32 features of 3e37: the column sums (1.2e38 x 4 rows) overflow float32; they are accumulated in float64.
    x = torch.full((4, 8), 3e37, dtype=torch.float32)
    x[:, 0] = 0.0
    for form in L1_FORMS:
        out = QScoreRegularizer(8, l1_form=form, lambda1=0.0, lambda2=1.0, eps=1.0)(x)
        assert torch.isfinite(out.loss) and torch.isfinite(out.beta), form
    out = QScoreRegularizer(8, l1_form="sum", lambda1=0.0, lambda2=1.0, eps=1.0)(x)
    assert float(out.beta) == pytest.approx(4 * 3e37 * 7 / 8, rel=1e-6)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="l1_form"):
        QScoreRegularizer(4, l1_form="l2")
    with pytest.raises(ValueError):
        QScoreRegularizer(4, normalize="L2")
    with pytest.raises(ValueError):
        QScoreRegularizer(4, p_lo=90, p_hi=50)


# ---------------------------------------------------------------------------------------------------------
# Against the NumPy reference; gradients
# ---------------------------------------------------------------------------------------------------------


def _reg_with_D(d: int, eps: float, normalize: str, warm: torch.Tensor, form: str = "sum") -> tuple[QScoreRegularizer, np.ndarray]:
    """A regularizer whose D was computed (in training mode) from ``warm``; returns it in eval mode with the
    reference D."""
    reg = QScoreRegularizer(d, lambda1=1.0, lambda2=1.0, eps=eps, normalize=normalize, warmup_samples=1, l1_form=form)
    reg.train()
    reg(warm)
    reg.eval()
    counts = np.array([ref_L(h, eps) for h in warm.numpy()]).sum(axis=0)
    D = ref_discriminative(counts, warm.shape[0])
    assert np.array_equal(reg.discriminative_mask.numpy(), D)
    return reg, D


@pytest.mark.parametrize("form", L1_FORMS)
@pytest.mark.parametrize("normalize", NORMALIZE)
@pytest.mark.parametrize("with_D", [False, True])
def test_value_and_gradient_match_reference(normalize, with_D, form):
    d, eps = 24, 1.0
    x0 = lognormal_batch(1, 40, d)
    if with_D:
        reg, D = _reg_with_D(d, eps, normalize, lognormal_batch(2, 200, d), form)
        assert 0 < D.sum() < d
    else:
        reg = QScoreRegularizer(d, lambda1=1.0, lambda2=1.0, eps=eps, normalize=normalize, l1_form=form).eval()
        D = None
    ref = ref_regularizer(x0.numpy(), D, eps, normalize, form=form)
    # the selection is non-trivial
    assert 0 < ref["low"].sum() < 40 and 0 < ref["generic"].sum() < d and (ref["q"] != 0).sum() > 10
    x = x0.clone().requires_grad_(True)
    out = reg(x)
    assert out.num_discriminative == (d if D is None else int(D.sum()))
    for key in ("loss", "q_term", "l1_term", "alpha", "beta"):
        np.testing.assert_allclose(float(getattr(out, key).detach()), ref[key], rtol=1e-10, atol=1e-12, err_msg=key)
    assert int(out.num_active) == ref["num_active"]
    out.loss.backward()
    # No gradient through alpha, beta, L, S or the Q/c masks: the autograd gradient equals the closed form
    # with all of them held constant.
    np.testing.assert_allclose(x.grad.numpy(), ref["grad"], rtol=1e-10, atol=1e-10)
    # thresholds and logged parts carry no graph
    for part in (out.alpha, out.beta, out.q_term, out.l1_term):
        assert part.grad_fn is None and not part.requires_grad


def _autograd_fixed_masks(x: torch.Tensor, reg_eps: float, D, normalize: str) -> torch.Tensor:
    """A re-implementation with autograd where alpha, beta, L/S and both masks are detached constants while
    mu, sigma and ||h||_1 are computed from x with gradient."""
    xd = x.detach().numpy()
    S = torch.from_numpy(ref_selection(xd, D, reg_eps))
    mu = x.mean(dim=1, keepdim=True)
    sigma = ((x - mu) ** 2).mean(dim=1, keepdim=True).sqrt()
    size = S.sum(dim=1)
    q = ((x - mu) * S).sum(dim=1) / size.clamp(min=1)
    if normalize == "zscore":
        q = q / sigma.squeeze(1)
    elif normalize == "l1":
        q = q / x.abs().sum(dim=1)
    q = torch.where(size > 0, q, torch.zeros_like(q))
    alpha = q.detach().mean()
    c = x.abs().sum(dim=0)
    beta = c.detach().mean()
    return -(q * (q.detach() < alpha)).sum() + (c * (c.detach() > beta)).sum()


@pytest.mark.parametrize("normalize", NORMALIZE)
def test_gradient_equals_fixed_mask_autograd(normalize):
    d, eps = 16, 1.0
    reg, D = _reg_with_D(d, eps, normalize, lognormal_batch(3, 100, d))
    x0 = lognormal_batch(4, 30, d)
    x = x0.clone().requires_grad_(True)
    reg(x).loss.backward()
    y = x0.clone().requires_grad_(True)
    _autograd_fixed_masks(y, eps, D, normalize).backward()
    np.testing.assert_allclose(x.grad.numpy(), y.grad.numpy(), rtol=1e-10, atol=1e-10)
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("form", L1_FORMS)
@pytest.mark.parametrize("normalize", NORMALIZE)
def test_gradcheck(normalize, form):
    d, eps = 8, 1.0
    reg, D = _reg_with_D(d, eps, normalize, lognormal_batch(5, 60, d), form)
    x = lognormal_batch(6, 10, d).requires_grad_(True)
    ref = ref_regularizer(x.detach().numpy(), D, eps, normalize, form=form)
    assert 0 < ref["low"].sum() < 10 and 0 < ref["generic"].sum() < d and (ref["q"] != 0).any()
    assert torch.autograd.gradcheck(lambda t: reg(t).loss, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)
    # and with D = all features
    reg_all = QScoreRegularizer(d, lambda1=1.0, lambda2=1.0, eps=eps, normalize=normalize, l1_form=form).eval()
    assert torch.autograd.gradcheck(lambda t: reg_all(t).loss, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_precision_features_no_overflow(half):
    # 8192 rows of values up to 20: the column L1 norms (~82,000) exceed float16's maximum (65,504), so they
    # must be accumulated in float32 (SPEC: half input is computed in float32), not in the input dtype.
    x = (torch.rand(8192, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 20).to(half)
    reg = QScoreRegularizer(16, l1_form="sum", lambda1=1.0, lambda2=1.0, eps=1.0).eval()
    out = reg(x)
    assert torch.isfinite(out.loss) and torch.isfinite(out.beta)
    ref = ref_regularizer(x.double().numpy(), None, 1.0)
    assert ref["beta"] > 65504
    for key in ("loss", "q_term", "l1_term", "alpha", "beta"):
        np.testing.assert_allclose(float(getattr(out, key).detach()), ref[key], rtol=1e-4, err_msg=key)


def test_nan_features_rejected():
    x = lognormal_batch(0, 10, 6)
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"\[3\]"):
        QScoreRegularizer(6, eps=1.0)(x)
    with pytest.raises(ValueError):
        QScoreRegularizer(6, eps=1.0)(torch.rand(4, 7))


# ---------------------------------------------------------------------------------------------------------
# Running statistics in training mode
# ---------------------------------------------------------------------------------------------------------


def test_training_mode_updates_statistics_and_D():
    d, eps = 16, 1.0
    batches = [lognormal_batch(10 + k, 64, d) for k in range(4)]
    ref_counts = [np.array([ref_L(h, eps) for h in b.numpy()]).sum(axis=0) for b in batches]
    reg = QScoreRegularizer(d, l1_form="sum", lambda1=1.0, lambda2=1.0, eps=eps, warmup_samples=100)
    reg.train()

    out = reg(batches[0])
    assert int(reg.stats.num_samples) == 64
    assert reg.stats.counts.tolist() == ref_counts[0].tolist()
    assert out.num_discriminative == d and reg.num_discriminative == d  # warm-up: all features
    assert not bool(reg.has_discriminative)

    out = reg(batches[1])  # 128 >= 100 samples: D computed now, used from the next batch on
    assert int(reg.stats.num_samples) == 128
    assert out.num_discriminative == d
    assert bool(reg.has_discriminative)
    D128 = ref_discriminative(ref_counts[0] + ref_counts[1], 128)
    assert 0 < D128.sum() < d
    assert reg.discriminative_mask.tolist() == D128.tolist()
    assert reg.num_discriminative == int(D128.sum())

    out = reg(batches[2])  # D is not recomputed automatically any more
    assert int(reg.stats.num_samples) == 192
    assert out.num_discriminative == int(D128.sum())
    # the loss of this batch used D128
    np.testing.assert_allclose(float(out.loss.detach()), ref_regularizer(batches[2].numpy(), D128, eps)["loss"], rtol=1e-10)
    assert reg.discriminative_mask.tolist() == D128.tolist()

    # eval mode: no update
    reg.eval()
    before = reg.stats.counts.clone()
    reg(batches[3])
    assert int(reg.stats.num_samples) == 192
    assert torch.equal(reg.stats.counts, before)
    reg.train()

    # refresh() recomputes D from all 192 samples
    D192 = ref_discriminative(ref_counts[0] + ref_counts[1] + ref_counts[2], 192)
    assert reg.refresh() == int(D192.sum())
    assert reg.discriminative_mask.tolist() == D192.tolist()

    # refresh(reset=True): recompute, then start the statistics afresh
    reg(batches[3])
    D256 = ref_discriminative(sum(ref_counts), 256)
    assert reg.refresh(reset=True) == int(D256.sum())
    assert reg.discriminative_mask.tolist() == D256.tolist()
    assert int(reg.stats.num_samples) == 0 and int(reg.stats.counts.sum()) == 0

    # the buffers travel in the state dict
    state = reg.state_dict()
    fresh = QScoreRegularizer(d, l1_form="sum", lambda1=1.0, lambda2=1.0, eps=eps, warmup_samples=100)
    fresh.load_state_dict(state)
    assert fresh.discriminative_mask.tolist() == D256.tolist() and fresh.num_discriminative == int(D256.sum())


def test_refresh_before_warmup_keeps_all_features():
    reg = QScoreRegularizer(8, eps=1.0, warmup_samples=1000).train()
    reg(lognormal_batch(0, 50, 8))
    assert reg.refresh() == 8
    assert not bool(reg.has_discriminative)


# ---------------------------------------------------------------------------------------------------------
# Two processes (gloo) == one process on the concatenated batch
# ---------------------------------------------------------------------------------------------------------

DIST_N, DIST_D, DIST_EPS = 128, 32, 1.0


def _dist_kwargs(**extra):
    # The default, scale-safe form: its c_j is a mean over the global batch, the part most easily got wrong.
    return dict(lambda1=1.0, lambda2=1.0, eps=DIST_EPS, warmup_samples=DIST_N, l1_form="normalized", **extra)


def _dist_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        half = slice(rank * DIST_N // world, (rank + 1) * DIST_N // world)
        results = {}
        for name, kwargs in (("avg", {}), ("sum", {"ddp_averages_gradients": False})):
            reg = QScoreRegularizer(DIST_D, **_dist_kwargs(**kwargs)).train()
            steps = []
            # step 0: warm-up (D = all); its global 128 samples reach warmup_samples, so step 1 uses D
            for seed in (0, 1):
                x = lognormal_batch(seed, DIST_N, DIST_D)[half].clone().requires_grad_(True)
                out = reg(x)
                out.loss.backward()
                steps.append(
                    dict(
                        loss=float(out.loss.detach()),
                        q_term=float(out.q_term),
                        l1_term=float(out.l1_term),
                        alpha=float(out.alpha),
                        beta=float(out.beta),
                        num_discriminative=out.num_discriminative,
                        batch_size=out.batch_size,
                        num_active=int(out.num_active),
                        grad=x.grad.clone(),
                    )
                )
            results[name] = dict(
                steps=steps,
                counts=reg.stats.counts.clone(),
                num_samples=int(reg.stats.num_samples),
                mask=reg.discriminative_mask.clone(),
            )
        stats = ActivationStats(DIST_D, eps=DIST_EPS).update(lognormal_batch(0, DIST_N, DIST_D)[half])
        results["local_counts"] = stats.counts.clone()
        stats.all_reduce()
        results["reduced_counts"] = stats.counts.clone()
        results["reduced_num_samples"] = int(stats.num_samples)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_process(tmp_path):
    world = 2
    mp.spawn(_dist_worker, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]

    # one process, 1 x 128
    single = {}
    for name, kwargs in (("avg", {}), ("sum", {"ddp_averages_gradients": False})):
        reg = QScoreRegularizer(DIST_D, **_dist_kwargs(**kwargs)).train()
        steps = []
        for seed in (0, 1):
            x = lognormal_batch(seed, DIST_N, DIST_D).requires_grad_(True)
            out = reg(x)
            out.loss.backward()
            steps.append(dict(out=out, grad=x.grad.clone()))
        single[name] = dict(steps=steps, counts=reg.stats.counts.clone(), mask=reg.discriminative_mask.clone())

    # the single-process values themselves follow the reference (step 1 uses D from step 0's statistics)
    counts0 = np.array([ref_L(h, DIST_EPS) for h in lognormal_batch(0, DIST_N, DIST_D).numpy()]).sum(axis=0)
    D = ref_discriminative(counts0, DIST_N)
    assert 0 < D.sum() < DIST_D
    for seed, D_used in ((0, None), (1, D)):
        ref = ref_regularizer(lognormal_batch(seed, DIST_N, DIST_D).numpy(), D_used, DIST_EPS, form="normalized")
        step = single["avg"]["steps"][seed]
        np.testing.assert_allclose(float(step["out"].loss.detach()), ref["loss"], rtol=1e-10)
        np.testing.assert_allclose(step["grad"].numpy(), ref["grad"], rtol=1e-10, atol=1e-12)

    half_rows = DIST_N // world
    for name, grad_scale in (("avg", world), ("sum", 1)):
        for rank, result in enumerate(ranks):
            rows = slice(rank * half_rows, (rank + 1) * half_rows)
            for k, step in enumerate(result[name]["steps"]):
                expected = single[name]["steps"][k]["out"]
                for key in ("loss", "q_term", "l1_term", "alpha", "beta"):
                    np.testing.assert_allclose(
                        step[key], float(getattr(expected, key).detach()), rtol=1e-10, atol=1e-10,
                        err_msg=f"{name} rank {rank} step {k} {key}",
                    )
                assert step["batch_size"] == DIST_N
                assert step["num_discriminative"] == expected.num_discriminative
                assert step["num_active"] == int(expected.num_active) > 0
                torch.testing.assert_close(
                    step["grad"] / grad_scale, single[name]["steps"][k]["grad"][rows], rtol=1e-10, atol=1e-10
                )
            assert torch.equal(result[name]["counts"], single[name]["counts"])
            assert result[name]["num_samples"] == 2 * DIST_N
            assert torch.equal(result[name]["mask"], single[name]["mask"])
            assert result[name]["mask"].tolist() == D.tolist()

    # ActivationStats.all_reduce: each rank's half-batch counts sum to the full batch's counts
    assert not torch.equal(ranks[0]["local_counts"], ranks[1]["local_counts"])
    for result in ranks:
        assert result["reduced_counts"].tolist() == counts0.tolist()
        assert result["reduced_num_samples"] == DIST_N


def test_all_reduce_is_noop_in_one_process():
    stats = ActivationStats(8, eps=1.0).update(lognormal_batch(0, 20, 8))
    before = stats.counts.clone()
    stats.all_reduce()
    assert torch.equal(stats.counts, before) and int(stats.num_samples) == 20


def test_auto_eps_survives_a_collapsed_batch():
    # All-zero rows (a collapsed representation) cannot be calibrated: training keeps the previous eps and warns.
    reg = QScoreRegularizer(8, eps="auto", warmup_samples=1).train()
    reg(lognormal_batch(8, 16, 8))
    calibrated = reg.eps
    reg(torch.zeros(16, 8, dtype=torch.float64))
    with pytest.warns(RuntimeWarning, match="keeps eps"):
        reg.refresh()
    assert reg.eps == calibrated


def test_auto_eps_checkpoint_round_trip():
    # A resumed run loads statistics counted at the calibrated eps: the fresh regularizer takes that eps first.
    reg = QScoreRegularizer(8, eps="auto", warmup_samples=1).train()
    reg(lognormal_batch(9, 32, 8))
    fresh = QScoreRegularizer(8, eps="auto", warmup_samples=1)
    fresh.load_state_dict(reg.state_dict())
    assert fresh.eps == reg.eps and fresh.stats.eps == reg.eps
    assert torch.equal(fresh.stats.counts, reg.stats.counts)
