"""LARS against timm's implementation and against the trust ratio of PixPro's official code.

Two trust ratios are in use. The LARS paper (You et al. 2017) and timm (`timm.optim.Lars`, after
NVIDIA apex's LARC) scale by eta * |w| / (|g| + wd * |w|). PixPro's official code
(zdaxie/PixPro, contrast/lars.py) first adds the decay to the gradient and scales by
eta * |w| / |g + wd * w|. pixpro follows PixPro's code. With wd = 0 the two coincide.
"""

from __future__ import annotations

import pytest
import torch
from timm.optim import Lars
from torch import nn

from pixpro.optim import LARS, parameter_groups


def fixed_problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2))
    inputs, targets = torch.randn(16, 6), torch.randn(16, 2)
    return model, inputs, targets


def train(model: nn.Module, optimizer: torch.optim.Optimizer, inputs, targets, steps: int = 5) -> list[torch.Tensor]:
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(inputs), targets).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def ours(model: nn.Module, weight_decay: float) -> LARS:
    return LARS(parameter_groups(model, weight_decay), lr=0.5, momentum=0.9, trust_coefficient=0.02)


def timms(model: nn.Module, weight_decay: float) -> Lars:
    groups = parameter_groups(model, weight_decay)
    for group in groups:
        # timm adapts a group only with weight decay or always_adapt; BN and biases are never adapted
        group["always_adapt"] = not group.pop("lars_exclude")
    return Lars(groups, lr=0.5, momentum=0.9, trust_coeff=0.02)


def test_lars_equals_timm_without_weight_decay():
    model, inputs, targets = fixed_problem()
    reference = [p.detach().clone() for p in model.parameters()]
    mine = train(model, ours(model, 0.0), inputs, targets)
    model, inputs, targets = fixed_problem()
    theirs = train(model, timms(model, 0.0), inputs, targets)
    for a, b, start in zip(mine, theirs, reference):
        assert not torch.equal(a, start)  # every parameter moved
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_lars_with_weight_decay_uses_pixpro_codes_trust_ratio_not_timms():
    model, inputs, targets = fixed_problem()
    weight = model[0].weight
    nn.functional.mse_loss(model(inputs), targets).backward()
    grad, start = weight.grad.clone(), weight.detach().clone()
    wd, eta, lr = 0.1, 0.02, 0.5
    ours(model, wd).step()
    update = grad + wd * start
    expected = start - lr * eta * start.norm() / update.norm() * update  # first step: buffer = update
    assert torch.allclose(weight.detach(), expected, atol=1e-7)
    paper = start - lr * eta * start.norm() / (grad.norm() + wd * start.norm()) * update
    assert not torch.allclose(expected, paper, atol=1e-6)  # the two ratios really differ here


@pytest.mark.parametrize("name", ["bias", "bn"])
def test_lars_leaves_biases_and_batchnorm_unadapted_and_undecayed(name):
    model, inputs, targets = fixed_problem()
    param = model[0].bias if name == "bias" else model[1].weight
    nn.functional.mse_loss(model(inputs), targets).backward()
    grad, start = param.grad.clone(), param.detach().clone()
    ours(model, 0.1).step()
    assert torch.allclose(param.detach(), start - 0.5 * grad, atol=1e-7)  # plain SGD step


# ------------------------------------------------------------------ build_optimizer, every name

def _one_step(name: str, weight_decay: float, lr: float = 0.1):
    """One build_optimizer step on the fixed problem: (weight, bias) before, their grads, after."""
    from pixpro.config import OptimConfig
    from pixpro.optim import build_optimizer

    model, inputs, targets = fixed_problem()
    cfg = OptimConfig(name=name, weight_decay=weight_decay, momentum=0.9, trust_coefficient=0.02)
    optimizer = build_optimizer(model, cfg, lr)
    nn.functional.mse_loss(model(inputs), targets).backward()
    weight, bias = model[0].weight, model[0].bias
    before = (weight.detach().clone(), bias.detach().clone())
    grads = (weight.grad.clone(), bias.grad.clone())
    optimizer.step()
    return before, grads, (weight.detach(), bias.detach())


@pytest.mark.parametrize("name", ["sgd", "adamw", "lars"])
def test_each_optimiser_takes_its_hand_computed_first_step(name):
    wd, lr, eta = 0.1, 0.1, 0.02
    (w, b), (gw, gb), (w1, b1) = _one_step(name, wd, lr)
    if name == "sgd":  # decay added to the gradient; the momentum buffer starts as the gradient
        expected_w, expected_b = w - lr * (gw + wd * w), b - lr * gb
    elif name == "adamw":  # decoupled decay; bias-corrected moments make the first step lr * sign(g)
        eps = 1e-8
        expected_w = w * (1 - lr * wd) - lr * gw / (gw.abs() + eps)
        expected_b = b - lr * gb / (gb.abs() + eps)
    else:
        update = gw + wd * w
        expected_w, expected_b = w - lr * eta * w.norm() / update.norm() * update, b - lr * gb
    assert torch.allclose(w1, expected_w, atol=1e-6)
    assert torch.allclose(b1, expected_b, atol=1e-6)  # 1-D: no decay (and no LARS adaptation)
    assert not torch.allclose(w1, w)


def test_parts_get_their_own_learning_rates_and_a_frozen_part_is_dropped():
    from pixpro.config import OptimConfig
    from pixpro.optim import build_optimizer

    head, body = nn.Linear(4, 2), nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    optimizer = build_optimizer([(head, 0.3), (body, 0.01)], OptimConfig(name="adamw", weight_decay=0.05))
    assert [g["lr"] for g in optimizer.param_groups] == [0.3, 0.3, 0.01, 0.01]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0, 0.05, 0.0]
    assert optimizer.param_groups[0]["params"] == [head.weight]
    assert optimizer.param_groups[3]["params"] == [body[0].bias, body[1].weight, body[1].bias]
    body.requires_grad_(False)
    frozen = build_optimizer([(head, 0.3), (body, 0.01)], OptimConfig(name="adamw", weight_decay=0.05))
    assert [g["lr"] for g in frozen.param_groups] == [0.3, 0.3]


def test_a_single_module_needs_a_learning_rate():
    from pixpro.config import OptimConfig
    from pixpro.optim import build_optimizer

    with pytest.raises(ValueError, match="give `lr` with a single module"):
        build_optimizer(nn.Linear(2, 2), OptimConfig())
