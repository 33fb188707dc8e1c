"""The stage and image terms of the objective: hand-computed losses, wiring, logging by name."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pixpro.config import LossConfig
from pixpro.errors import ConfigError
from pixpro.geometry import PixelPairs
from pixpro.losses import image_contrast_loss, image_partner_gap, pixel_contrast_loss
from pixpro.model.pixpro import LossTerms, PixPro, StagePairs, between_group_share
from tests.conftest import make_params, run_pretrain, tiny_pretrain_config

E1, E2, E3 = torch.eye(3)


def test_image_loss_matches_a_hand_computed_softmax():
    # Two images on orthogonal directions: each query sees its partner (cos 1) and the other
    # image's two keys (cos 0). Its own image's same-view key is not a negative: making it
    # orthogonal to the query must not change the loss.
    temperature = 0.5
    queries = torch.stack([E1, E2])  # (B=2, D=3)
    expected = math.log(1 + 2 * math.exp(-1 / temperature))
    loss = image_contrast_loss(queries, queries, queries, queries, temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # Image 0's view-1 key moves to E3. View-1 queries never see it (it is their own image's
    # same-view key); view-2 query 0 now has a partner at cos 0.
    view1_keys = torch.stack([E3, E2])
    loss = image_contrast_loss(queries, queries, queries, view1_keys, temperature)
    view1 = expected  # both view-1 queries as before
    view2_image0 = math.log(3)  # partner E3 and negatives E2, E2: all at cos 0
    view2_image1 = expected  # partner E2; negatives E3 and E1
    assert loss.item() == pytest.approx((2 * view1 + view2_image0 + view2_image1) / 4, rel=1e-6)


def test_image_partner_gap_tells_a_real_embedding_from_a_collapsed_one():
    queries = torch.stack([E1, E2, E3])
    assert image_partner_gap(queries, queries, queries, queries).item() == pytest.approx(1.0)
    collapsed = E1.expand(3, 3)
    assert image_partner_gap(collapsed, collapsed, collapsed, collapsed).item() == pytest.approx(0.0)


def stage_pairs_for(model_cfg, batch: int, generator: torch.Generator) -> tuple[StagePairs, ...]:
    """Pairs that match each pixel to the same pixel of the other view (identical crops)."""
    h, w = model_cfg.views.size
    found = []
    for layer in model_cfg.loss.stage_layers:
        stride = model_cfg.backbone.stage_strides[layer]
        bins = (h // stride) * (w // stride)
        index = torch.randperm(bins, generator=generator)[:6].expand(batch, 6).clone()
        valid = torch.ones(batch, 6, dtype=torch.bool)
        found.append(StagePairs(layer, PixelPairs(index, index, valid, valid.sum(1))))
    return tuple(found)


def fine_pairs(batch: int, generator: torch.Generator, bins: int) -> PixelPairs:
    index = torch.randperm(bins, generator=generator)[:8].expand(batch, 8).clone()
    valid = torch.ones(batch, 8, dtype=torch.bool)
    return PixelPairs(index, index, valid, valid.sum(1))


def test_stage_and_image_terms_add_to_the_total_and_train_the_encoder():
    cfg = tiny_pretrain_config(loss=LossConfig(stages=0.5, stage_layers=(-2,), image=0.25))
    torch.manual_seed(0)
    model = PixPro(cfg).train()
    generator = torch.Generator().manual_seed(1)
    views = torch.randn(4, 3, *cfg.views.size, generator=generator)
    terms = model(views, views.flip(0), fine_pairs(4, generator, 8 * 12), diagnose=True,
                  stage_pairs=stage_pairs_for(cfg, 4, generator))
    assert terms.stages > 0 and terms.image > 0
    assert terms.total.item() == pytest.approx((terms.contrast + 0.5 * terms.stages + 0.25 * terms.image).item(),
                                               rel=1e-5)
    assert terms.diagnostics.stage_partner_gap is not None and terms.diagnostics.image_partner_gap is not None
    terms.total.backward()
    encoder_top = model.backbone.down[-1][0].weight.grad
    assert encoder_top is not None and encoder_top.abs().sum() > 0
    for head in (model.stage_projectors["-2"], model.image_projector):
        assert all(p.grad is not None for p in head.parameters())
    assert all(p.grad is None for p in model.target_image_projector.parameters())


def test_stage_term_is_the_mean_of_the_pixel_infonce_over_stages():
    cfg = tiny_pretrain_config(loss=LossConfig(stages=1.0, stage_layers=(-2,)))
    model = PixPro(cfg).eval()  # eval: BatchNorm is a fixed map, so the term can be recomputed by hand
    generator = torch.Generator().manual_seed(2)
    views = torch.randn(2, 3, *cfg.views.size, generator=generator)
    pairs = stage_pairs_for(cfg, 2, generator)
    terms = model(torch.cat([views[:1]] * 2), torch.cat([views[1:]] * 2), fine_pairs(2, generator, 96),
                  stage_pairs=pairs)
    both = torch.cat([views[:1]] * 2 + [views[1:]] * 2)  # (2B, 3, h, w): view 1 then view 2
    with torch.no_grad():
        from pixpro.model.backbone import forward_tapped
        online = forward_tapped(model.backbone, both, (-2,)).stages[-2]
        index = torch.cat([pairs[0].pairs.index1, pairs[0].pairs.index2])
        rows = online.flatten(2).transpose(1, 2)[torch.arange(4)[:, None], index]  # (2B, P, C)
        query = model.stage_projectors["-2"](rows.flatten(0, 1)).view(4, 6, -1)
        key = model.target_stage_projectors["-2"](rows.flatten(0, 1)).view(4, 6, -1)
    same = (pairs[0].pairs.index1[:, :, None] == pairs[0].pairs.index1[:, None, :])
    expected = pixel_contrast_loss(query[:2], key[2:], query[2:], key[:2], pairs[0].pairs.valid, same,
                                   cfg.loss.temperature)
    assert terms.stages.item() == pytest.approx(expected.item(), rel=1e-5)


def test_terms_that_are_off_add_no_parameters():
    plain = PixPro(tiny_pretrain_config())
    assert not any(key.startswith(("stage_projectors", "image_projector", "target_stage", "target_image"))
                   for key in plain.state_dict())


def test_loss_terms_are_logged_by_name_and_throughput_stays_out_of_the_metrics(prepared, tmp_path):
    params = make_params(**{"pretrain.loss.stages": 1.0, "pretrain.loss.stage_layers": [-2],
                            "pretrain.loss.image": 0.5, "pretrain.log_every": 1})
    result, _ = run_pretrain(params, prepared, tmp_path)
    assert result.completed
    summary = json.loads((tmp_path / "live" / "metrics.json").read_text())["train"]
    for name in LossTerms.term_names():
        assert f"loss_{name}" in summary
    assert summary["loss_stages"] > 0 and summary["loss_image"] > 0
    assert "stage_partner_gap" in summary and "image_partner_gap" in summary
    assert 0.0 <= summary["coarse_image_share"] <= 1.0
    assert "images_per_s" not in summary
    curve = (tmp_path / "live" / "plots" / "metrics" / "train" / "images_per_s.tsv").read_text().splitlines()
    assert curve[0] == "step\timages_per_s" and len(curve) == 1 + result.steps


@pytest.mark.parametrize("override, match", [
    ({"pretrain.loss.stages": 1.0, "pretrain.loss.stage_layers": [-1]}, "stage_layers"),
    ({"pretrain.loss.stages": 1.0, "pretrain.loss.stage_layers": [-2, -2]}, "stage_layers"),
    ({"pretrain.loss.image": -1.0}, "loss.image"),
    ({"pretrain.loss.stage_pairs": 0}, "stage_pairs"),
])
def test_bad_stage_and_image_settings_are_refused(override, match):
    with pytest.raises(ConfigError, match=match):
        make_params(**override)


def test_between_group_share_is_zero_for_alike_groups_and_one_for_constant_groups():
    alike = torch.stack([E1, E2, E1, E2])  # (4, 3): groups 0 and 1 hold the same two directions
    assert between_group_share(alike, torch.tensor([0, 0, 1, 1])).item() == pytest.approx(0.0, abs=1e-6)
    constant = torch.stack([E1, E1, E2, E2])  # each group one point
    assert between_group_share(constant, torch.tensor([0, 0, 1, 1])).item() == pytest.approx(1.0, abs=1e-6)
    # By hand: overall mean (0.75, 0.25, 0); squared distances 0.125, 1.125, 0.125, 0.125 (total 1.5);
    # group means (0.5, 0.5, 0) and E1, each 0.125 from it, twice each (between 0.5): share 1/3.
    mixed = torch.stack([E1, E2, E1, E1])
    assert between_group_share(mixed, torch.tensor([0, 0, 1, 1])).item() == pytest.approx(1 / 3, rel=1e-6)


def test_diagnosing_steps_report_the_coarse_stage_image_share_without_changing_the_loss():
    cfg = tiny_pretrain_config()
    torch.manual_seed(0)
    model = PixPro(cfg).train()
    generator = torch.Generator().manual_seed(1)
    views = torch.randn(4, 3, *cfg.views.size, generator=generator)
    pairs = fine_pairs(4, generator, 8 * 12)
    plain = model(views, views.flip(0), pairs)
    diagnosed = model(views, views.flip(0), pairs, diagnose=True)
    assert diagnosed.total.item() == plain.total.item()
    assert 0.0 <= diagnosed.diagnostics.coarse_image_share.item() <= 1.0
