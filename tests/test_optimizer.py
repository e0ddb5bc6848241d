"""The pre-training optimizer is solo-learn's LARS: eta 0.02, biases and norm layers without weight decay or layer-wise
rate, and clip_lr (the layer-wise rate at most lr). Expectations are solo-learn's update rule written out by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qscore_hf.pretraining import PretrainConfig, build_optimizer


def one_step(lr: float, clip: bool, grad_scale: float) -> tuple[nn.Linear, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    before = {name: param.detach().clone() for name, param in layer.named_parameters()}
    cfg = PretrainConfig(method="simclr", output_dir="unused", optimizer="lars", weight_decay=1e-4, momentum=0.9, lars_clip=clip)
    optimizer = build_optimizer(cfg, layer, lr)
    for param in layer.parameters():
        param.grad = torch.full_like(param, grad_scale)
    optimizer.step()
    return layer, before


@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("lr, grad_scale", [(1.0, 1e-4), (1.0, 10.0), (0.05, 1e-2)])
def test_lars_step_is_solo_learns(lr, grad_scale, clip):
    layer, before = one_step(lr, clip, grad_scale)
    w, wd, eta = before["weight"], 1e-4, 0.02
    g = torch.full_like(w, grad_scale)
    rate = eta * w.norm() / (g.norm() + wd * w.norm())  # solo-learn's lars_lr
    if clip:
        rate = min(rate / lr, 1.0)
    # the first step: the momentum buffer is the scaled gradient itself
    torch.testing.assert_close(layer.weight.detach(), w - lr * rate * (g + wd * w))
    # the bias: no weight decay and no layer-wise rate, plain SGD
    torch.testing.assert_close(layer.bias.detach(), before["bias"] - lr * grad_scale)


def test_clipping_matters_only_for_small_gradients():
    """With a tiny gradient the unclipped step is 2 % of the weight norm at lr 1 whatever the gradient; the clipped
    one is lr times the gradient."""
    clipped, before = one_step(1.0, True, 1e-3)
    unclipped, _ = one_step(1.0, False, 1e-3)
    move = lambda layer: (layer.weight.detach() - before["weight"]).norm() / before["weight"].norm()  # noqa: E731
    assert move(unclipped) == pytest.approx(0.02, rel=0.05)  # not quite 2 %: the weight decay term
    assert move(clipped) < 0.005
