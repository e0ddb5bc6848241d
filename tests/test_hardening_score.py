"""Hardening (issue 21, items 4-5): exact ties and large common offsets, on both CPU paths and at every batch size.

Expectations are independent of the code under test. Ties are hand-computed: a one-hot row of length ``eps**2 + 1``
has z exactly ``eps`` (``(1 - 1/d) / sqrt((d - 1) / d**2) = sqrt(d - 1)``), and a row of 2 entries has z exactly 1,
so the strict rule (SPEC §2) selects nothing there; an offset and a power-of-two scale change no z. Offsets and wide
rows are checked against NumPy in float64 on the same float32 inputs (random data: no entry is within float64
rounding of its threshold).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qscore_hf.score import ActivationStats, highly_activating, qscore_details

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::qscore_hf.NegativeFeaturesWarning"),
]


def _float64_reference(x: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q-Scores, |S_i| (D = all features) and L of the float32 rows ``x``, in float64."""
    values = x.astype(np.float64)
    mu, sigma = values.mean(axis=1, keepdims=True), values.std(axis=1, keepdims=True)
    selected = values > mu + eps * sigma
    num = selected.sum(axis=1)
    q = np.where(selected, values - mu, 0.0).sum(axis=1) / np.maximum(num, 1)
    return np.where(num > 0, q, 0.0), num, selected


@pytest.mark.parametrize("eps", [1.0, 2.0, 3.0, 4.0])
@pytest.mark.parametrize(("offset", "scale"), [(0.0, 1.0), (1e5, 1.0), (0.0, 2.0**-70), (3.0, 2.0**60)])
@pytest.mark.parametrize("elements", [1, 3000])
def test_exact_ties_select_nothing(score_path, eps, offset, scale, elements):
    d = int(eps * eps) + 1
    x = torch.full((max(1, elements // d), d), offset, dtype=torch.float32)
    x[:, d // 2] += scale
    details = qscore_details(x, eps=eps, count_highly_activating=True)
    assert int(details.num_selected.max()) == 0 and float(details.q_scores.abs().max()) == 0.0
    assert int(details.highly_activating_counts.max()) == 0
    # just below the tie the peak is selected: Q = its deviation from the mean, (1 - 1/d) * scale
    below = qscore_details(x[:1], eps=eps * (1 - 1e-6))
    assert int(below.num_selected) == 1
    torch.testing.assert_close(below.q_scores, torch.tensor([(1 - 1 / d) * scale]), rtol=1e-6, atol=0)


@pytest.mark.parametrize("offset", [0.0, 1e5])
def test_exact_ties_in_a_batch_of_2_to_the_20_elements(score_path, offset):
    """The issue's case: alone a one-hot row of 10 at eps 3 scored 0.9 (eager), in 2**20 elements 0 (fused)."""
    x = torch.full((2**20 // 10 + 1, 10), offset)
    x[:, 7] += 1.0
    details = qscore_details(x, eps=3.0)
    assert int(details.num_selected.max()) == 0 and float(details.q_scores.abs().max()) == 0.0


def test_exact_tie_mask_and_statistics(score_path):
    x = torch.zeros(1, 10)
    x[0, 4] = 1.0
    assert not highly_activating(x, eps=3.0).any()
    assert int(ActivationStats(10, eps=3.0).update(x).counts.sum()) == 0


@pytest.mark.parametrize("rows", [1000, 2**17 + 1])
def test_two_features_at_eps_1_never_select(score_path, rows):
    x = torch.from_numpy(np.random.default_rng(0).random((rows, 2), dtype=np.float32))
    details = qscore_details(x, eps=1.0, count_highly_activating=True)
    assert int(details.num_selected.sum()) == 0 and int(details.highly_activating_counts.sum()) == 0


@pytest.mark.parametrize("ratio", [3e2, 1e4, 1e5])
@pytest.mark.parametrize("rows", [64, 600])
def test_large_common_offsets_match_float64(score_path, ratio, rows):
    """Rows with mean/std ``ratio`` (a large constant component): |S_i|, Q and the counts as in float64."""
    rng = np.random.default_rng(int(ratio))
    spread = rng.exponential(size=(rows, 2048))
    x = (spread / spread.std(axis=1, keepdims=True) + ratio).astype(np.float32)
    q, num, selected = _float64_reference(x, 4.0)
    details = qscore_details(x, eps=4.0, count_highly_activating=True)
    np.testing.assert_array_equal(details.num_selected.numpy(), num)
    np.testing.assert_array_equal(details.highly_activating_counts.numpy(), selected.sum(axis=0))
    np.testing.assert_allclose(details.q_scores.numpy(), q, rtol=2e-7)


@pytest.mark.parametrize("width", [2**20, 3 * 10**6])
def test_very_wide_rows_match_float64(score_path, width):
    rng = np.random.default_rng(width)
    x = (rng.exponential(size=(1, width)) + 50.0).astype(np.float32)
    q, num, _ = _float64_reference(x, 4.0)
    details = qscore_details(x, eps=4.0)
    assert int(details.num_selected[0]) == int(num[0]) > 1000
    np.testing.assert_allclose(details.q_scores.numpy(), q, rtol=2e-7)
