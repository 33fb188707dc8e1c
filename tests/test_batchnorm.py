"""pixpro.batchnorm: BatchNorm statistics recomputed from given batches, weights untouched."""

from __future__ import annotations

import torch
from torch import nn

from pixpro.batchnorm import recalibrate_batchnorm


def test_running_statistics_follow_the_batches_and_nothing_else_moves():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    batches = [torch.randn(2, 3, 5, 6) + shift for shift in (0.0, 2.0)]
    with torch.no_grad():
        outputs = [model[0](b) for b in batches]  # (2, 4, 5, 6) each

    # Cumulative: the equal-weight average of the two batches.
    assert recalibrate_batchnorm(model, iter(batches), cumulative=True) is model
    expected = torch.stack([o.mean((0, 2, 3)) for o in outputs]).mean(0)
    assert torch.allclose(model[1].running_mean, expected, atol=1e-5)
    assert not model.training and not model[1].training

    recalibrate_batchnorm(model, iter(batches[:1]), cumulative=False)  # momentum 0.1 over what was there
    assert torch.allclose(model[1].running_mean, 0.9 * expected + 0.1 * outputs[0].mean((0, 2, 3)), atol=1e-5)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
