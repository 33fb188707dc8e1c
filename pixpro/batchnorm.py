"""BatchNorm running statistics re-estimated from chosen batches, weights untouched: what the
diagnostics under experiments/ use to ask whether a score depends on the statistics a file holds.
No stage uses it."""

from __future__ import annotations

import contextlib
from typing import Iterable

import torch
from torch import Tensor, nn


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[Tensor], cumulative: bool = True,
                          autocast: contextlib.AbstractContextManager | None = None) -> nn.Module:
    """Sets, in place, the running statistics of every BatchNorm of `model` from forward passes
    over `batches` ((B, 3, H, W) each): an equal-weight average of the batches from scratch
    (cumulative, momentum None), or an exponential average with momentum 0.1 over the values
    already there. Returns `model`, in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        if cumulative:
            norm.reset_running_stats()
        norm.momentum = None if cumulative else 0.1
    model.eval()
    for norm in norms:
        norm.train()
    for images in batches:
        with autocast or contextlib.nullcontext():
            model(images)
    return model.eval()
