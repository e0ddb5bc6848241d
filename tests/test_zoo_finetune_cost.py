"""bench/zoo_finetune_cost.py: its FLOP counting and its scaling, checked against hand-computed values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn


@pytest.fixture(scope="module")
def cost(import_bench):
    return import_bench("zoo_finetune_cost")


def test_linear_training_step_counts_three_matmuls(cost):
    # Forward x @ W^T, backward dL/dx = g @ W and dL/dW = g^T @ x: three (batch x in x out) products, 2 FLOPs each.
    batch, fan_in, fan_out = 4, 5, 3
    layer = nn.Linear(fan_in, fan_out)
    x = torch.randn(batch, fan_in, requires_grad=True)
    assert cost.count_flops(lambda: layer(x).sum().backward()) == 3 * 2 * batch * fan_in * fan_out


def test_cpu_attention_is_counted(cost):
    # Forward: Q K^T and A V, 2 * n^2 * d FLOPs each per head; backward (the GPU kernels' formula): the scores
    # recomputed and four more products of that size. Unmapped, the CPU kernel would count 0.
    batch, heads, tokens, dim = 2, 3, 5, 4
    q, k, v = (torch.randn(batch, heads, tokens, dim, requires_grad=True) for _ in range(3))
    unit = 2 * batch * heads * tokens * tokens * dim
    assert cost.count_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == 2 * unit
    assert cost.count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward()) == (2 + 5) * unit


def test_per_step_constant_is_split_from_per_image_flops(cost):
    # A step with a batch-independent matmul (a SwAV-like queue) beside a per-image one.
    fan_in, fan_out, queue = 6, 4, torch.randn(7, 8)
    layer = nn.Linear(fan_in, fan_out, bias=False)

    def flops(batch: int) -> int:
        return cost.count_flops(lambda: (layer(torch.randn(batch, fan_in)).sum(), queue @ queue.T))

    per_image, per_step = cost.split_per_image(flops(2), flops(3), 2, 3)
    assert per_image == 2 * fan_in * fan_out
    assert per_step == 2 * 7 * 8 * 7


def test_estimate_scales_with_epochs_times_images(cost):
    one = cost.estimate(5e10, 0.5, images=1000, epochs=1)
    many = cost.estimate(5e10, 0.5, images=1000, epochs=50)
    assert one["flops"] == 5e10 * 1000
    assert many["flops"] == pytest.approx(50 * one["flops"], rel=1e-12)
    assert many["cpu_hours"] == pytest.approx(50 * 1000 * 0.5 / 3600)
    # GPU-hours at 400 TFLOP/s: 50 * 1000 * 5e10 FLOPs / 4e14 FLOP/s / 3600 s/h.
    assert many["gpu_hours"]["400"] == pytest.approx(50 * 1000 * 5e10 / 4e14 / 3600)
    assert many["gpu_hours"]["200"] == pytest.approx(2 * many["gpu_hours"]["400"])
