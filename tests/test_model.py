"""Backbones, heads, PixPro's target network and the pair loss."""

import dataclasses

import pytest
import torch
from torch.nn import functional as F

from pixpro.config import BackboneConfig, PairsConfig, PPMConfig
from pixpro.geometry import PixelPairs, sample_positive_pairs
from pixpro.losses import pixpro_pair_loss
from pixpro.model.backbone import build_backbone
from pixpro.model.heads import global_propagation, local_propagation
from pixpro.model.pixpro import PixPro, gather_pixels
from tests.conftest import tiny_pretrain_config

TINY_UNET = BackboneConfig(arch="unet", widths=(8, 16), dim=8)


@pytest.mark.parametrize("arch", ["smp_unet", "unet"])
def test_backbone_keeps_input_resolution(arch):
    cfg = BackboneConfig(arch=arch, widths=(8, 16, 32), dim=5)
    features = build_backbone(cfg)(torch.randn(2, 3, 32, 64))
    assert features.shape == (2, 5, 32, 64)


def test_gather_pixels_picks_flat_positions():
    features = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    out = gather_pixels(features, torch.tensor([[0, 7], [19, 3]]))
    assert out.shape == (2, 2, 3)
    assert torch.equal(out[0, 1], features[0, :, 1, 2])
    assert torch.equal(out[1, 0], features[1, :, 3, 4])


def test_local_propagation_matches_the_formula():
    centre = torch.tensor([[1.0, 0.0]])
    window = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]]])
    transformed = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]])
    inside = torch.tensor([[True, True, False, True]])
    y = local_propagation(centre, window, transformed, inside, gamma=2.0)
    # s = max(cos, 0)^2 = 1, 0, (masked), 0 -> y = g(x_0)
    assert torch.allclose(y, torch.tensor([[1.0, 2.0]]))


def test_local_equals_global_when_the_window_covers_the_map():
    torch.manual_seed(0)
    cfg_local = tiny_pretrain_config(window=2 * 12 + 1)
    cfg_global = dataclasses.replace(cfg_local, ppm=PPMConfig(window=None))
    local_model, global_model = PixPro(cfg_local), PixPro(cfg_global)
    global_model.load_state_dict(local_model.state_dict())
    features = torch.randn(2, 8, 8, 12)
    index = torch.randint(0, 96, (2, 10))
    y_local = local_model.propagate(features, index)
    y_global = global_model.propagate(features, index)
    assert y_local.shape == (2, 10, 8)
    assert torch.allclose(y_local, y_global, atol=1e-5)


@pytest.mark.parametrize("layers", [0, 1, 2])
@pytest.mark.parametrize("window", [3, None])
def test_propagate_is_the_ppm_with_g_applied_to_every_pixel(layers, window):
    # propagate() applies a linear g() after the weighted sum; it must equal the PPM as defined:
    # y_i = sum_j max(cos(x_i, x_j), 0)^gamma g(x_j) over j in i's window (or the whole map).
    torch.manual_seed(0)
    cfg = tiny_pretrain_config(window=window or 3)
    cfg = dataclasses.replace(cfg, ppm=dataclasses.replace(cfg.ppm, window=window, transform_layers=layers))
    model = PixPro(cfg).eval()  # eval: BN uses running statistics, so every pixel is projected alike
    features = torch.randn(1, 8, 5, 6)
    index = torch.tensor([[0, 7, 29]])
    y = model.propagate(features, index)
    with torch.no_grad():
        x = model.projector(features.flatten(2).transpose(1, 2)[0])  # (30, D), every pixel
        g = model.transform(x)
        for n, i in enumerate(index[0].tolist()):
            r, c = divmod(i, 6)
            neighbours = [rr * 6 + cc for rr in range(5) for cc in range(6)
                          if window is None or (abs(rr - r) <= window // 2 and abs(cc - c) <= window // 2)]
            s = F.cosine_similarity(x[i][None], x[neighbours], dim=-1).clamp(min=0) ** cfg.ppm.gamma
            assert torch.allclose(y[0, n], (s[:, None] * g[neighbours]).sum(0), atol=1e-4), (layers, window, n)


@pytest.mark.parametrize("window", [3, None])
def test_grouped_propagate_equals_each_view_propagated_alone(window):
    # forward() propagates both views in one call (one dense map gradient) with groups=2; the
    # projector's BatchNorm must still see each view's pixels alone, as two calls would.
    torch.manual_seed(0)
    cfg = tiny_pretrain_config(window=3)
    cfg = dataclasses.replace(cfg, ppm=dataclasses.replace(cfg.ppm, window=window, transform_layers=2))
    model = PixPro(cfg).train()
    features = torch.randn(4, 8, 6, 7)  # views 1 of two images, then their views 2
    index = torch.randint(0, 42, (4, 5))
    joint = model.propagate(features, index, groups=2)
    alone = torch.cat([model.propagate(features[:2], index[:2]), model.propagate(features[2:], index[2:])])
    assert torch.allclose(joint, alone, atol=1e-5)
    assert not torch.allclose(model.propagate(features, index), alone, atol=1e-3)  # BN over both differs


def test_global_propagation_matches_a_loop():
    torch.manual_seed(0)
    centre, pixels, transformed = torch.randn(1, 3, 4), torch.randn(1, 6, 4), torch.randn(1, 6, 4)
    y = global_propagation(F.normalize(centre, dim=-1), F.normalize(pixels, dim=-1), transformed, gamma=2.0)
    for i in range(3):
        s = F.cosine_similarity(centre[0, i][None], pixels[0], dim=-1).clamp(min=0) ** 2
        assert torch.allclose(y[0, i], (s[:, None] * transformed[0]).sum(0), atol=1e-6)


def test_pair_loss_by_hand():
    a = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    b = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    valid = torch.tensor([[True, False]])
    assert pixpro_pair_loss(a, b, a, b, valid).item() == pytest.approx(-2.0)
    assert pixpro_pair_loss(a, b, a, b, torch.tensor([[False, True]])).item() == pytest.approx(0.0)
    assert pixpro_pair_loss(a, b, a, b, torch.zeros(1, 2, dtype=torch.bool)).item() == 0.0


def identity_pairs(batch: int, pixels: int, num: int) -> PixelPairs:
    index = torch.stack([torch.randperm(pixels)[:num] for _ in range(batch)])
    valid = torch.ones(batch, num, dtype=torch.bool)
    return PixelPairs(index, index, valid, valid.sum(1))


@pytest.mark.parametrize("per_view", [True, False])
def test_bn_per_view_keeps_each_views_statistics_apart(per_view):
    # With bn_per_view, what either backbone or the target projector computes for view 1 must not
    # depend on view 2's images (BatchNorm in train mode otherwise pools the two views' statistics).
    torch.manual_seed(0)
    model = PixPro(tiny_pretrain_config(bn_per_view=per_view)).train()
    captured = {}
    for name in ("backbone", "target_backbone"):
        getattr(model, name).register_forward_hook(
            lambda module, inputs, out, name=name: captured.setdefault(name, []).append(out.detach()))
    views1, pairs = torch.randn(2, 3, 8, 12), identity_pairs(2, 96, 20)
    for views2 in (torch.randn(2, 3, 8, 12), 5 * torch.randn(2, 3, 8, 12) + 3):
        model(views1, views2, pairs)
    for name, outputs in captured.items():  # each forward's first call is the one that saw view 1
        first, second = outputs[0], outputs[len(outputs) // 2]
        same = torch.allclose(first[:2], second[:2], atol=1e-5)
        assert same == per_view, name

    target_maps = torch.randn(4, 8, 8, 12), torch.randn(4, 8, 8, 12)
    target_maps[1][:2] = target_maps[0][:2]  # same view 1, different view 2
    index = torch.cat([pairs.index1, pairs.index2])
    with torch.no_grad():
        first, second = (model.project_target(m, index) for m in target_maps)
    assert torch.allclose(first[:2], second[:2], atol=1e-5) == per_view


def test_target_gets_no_gradient_and_follows_the_momentum_rule():
    torch.manual_seed(0)
    model = PixPro(tiny_pretrain_config())
    views = torch.randn(2, 3, 8, 12), torch.randn(2, 3, 8, 12)
    loss = model(*views, identity_pairs(2, 96, 20)).total
    loss.backward()
    assert all(p.grad is None for p in model.target_backbone.parameters())
    assert all(p.grad is None for p in model.target_projector.parameters())
    assert all(not p.requires_grad for p in model.target_backbone.parameters())
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(torch.randn_like(p))
    online = [p.clone() for p in model.backbone.parameters()]
    before = [p.clone() for p in model.target_backbone.parameters()]
    model.momentum_update(0.9)
    for o, t0, t1 in zip(online, before, model.target_backbone.parameters()):
        assert torch.allclose(t1, 0.9 * t0 + 0.1 * o, atol=1e-6)


def test_loss_decreases_on_a_tiny_batch():
    torch.manual_seed(0)
    cfg = tiny_pretrain_config()
    model = PixPro(cfg)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    image = torch.rand(4, 3, 16, 24)
    box1 = torch.tensor([[0.0, 0.0, 0.75, 0.75]]).repeat(4, 1)
    box2 = torch.tensor([[0.25, 0.75, 1.0, 0.25]]).repeat(4, 1)  # overlapping and flipped
    view1 = F.interpolate(image[:, :, :12, :18], size=(8, 12), mode="bilinear", align_corners=False)
    view2 = F.interpolate(image[:, :, 4:, 6:], size=(8, 12), mode="bilinear", align_corners=False).flip(-1)
    view2 = view2 + 0.1 * torch.randn_like(view2)
    losses = []
    for step in range(40):
        pairs = sample_positive_pairs(box1, box2, (8, 12), (8, 12), (16, 24),
                                      PairsConfig(candidates=32, neighbours=2, num=24),
                                      generator=torch.Generator().manual_seed(step))
        loss = model(view1, view2, pairs).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.momentum_update(0.9)
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2, losses
