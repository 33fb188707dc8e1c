"""Optimisers: LARS, SGD, AdamW; BN and bias parameters get no weight decay nor LARS adaptation."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from pixpro.config import OptimConfig


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratio (You et al. 2017).

    The trust ratio is PixPro's official one, eta * |w| / |g + wd * w| (decay added first), not
    the paper's and timm's eta * |w| / (|g| + wd * |w|); the two agree without weight decay
    (tests/test_optim.py checks both against timm.optim.Lars). Groups with `lars_exclude=True`
    (BN, bias) use plain SGD with momentum, no weight decay.
    """

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                        trust_coefficient=trust_coefficient, lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad
                if not group["lars_exclude"]:
                    update = update.add(param, alpha=group["weight_decay"])
                    param_norm, update_norm = torch.linalg.norm(param), torch.linalg.norm(update)
                    trust = torch.where((param_norm > 0) & (update_norm > 0),
                                        group["trust_coefficient"] * param_norm / update_norm,
                                        torch.ones_like(param_norm))
                    update = update.mul(trust)
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(update).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                param.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters: matrices/filters get decay; 1-D (BN weights, biases) do not."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "lars_exclude": False},
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
    ]


def build_optimizer(model: nn.Module | Sequence[tuple[nn.Module, float]], cfg: OptimConfig,
                    lr: float | None = None, fused: bool = False) -> torch.optim.Optimizer:
    """The optimiser `cfg.name` (lars | sgd | adamw) over `model`'s trainable parameters.

    `model` is one module trained at `lr` (pretraining), or (module, lr) parts, each at its own
    learning rate (fine-tuning: the classifier and the backbone); `lr` is then unused. Each part
    is split as `parameter_groups` splits it, in the parts' order; groups without a trainable
    parameter (a frozen part) are dropped, so `param_groups[i]["lr"]` is each group's base lr.
    `fused` selects torch's fused SGD / AdamW kernels (LARS has none).
    """
    if isinstance(model, nn.Module):
        if lr is None:
            raise ValueError("build_optimizer: give `lr` with a single module")
        parts = [(model, lr)]
    else:
        parts = list(model)
    groups = [{**group, "lr": part_lr} for module, part_lr in parts
              for group in parameter_groups(module, cfg.weight_decay) if group["params"]]
    if not groups:
        raise ValueError("build_optimizer: no trainable parameter")
    default_lr = groups[0]["lr"]  # every group sets its own; torch wants a default too
    if cfg.name == "lars":
        return LARS(groups, lr=default_lr, momentum=cfg.momentum, trust_coefficient=cfg.trust_coefficient)
    for group in groups:
        group.pop("lars_exclude")
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=default_lr, momentum=cfg.momentum, fused=fused or None)
    return torch.optim.AdamW(groups, lr=default_lr, fused=fused or None)
