"""Loss terms and training diagnostics, against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from pixpro.config import LossConfig, params_from_dict
from pixpro.errors import ConfigError
from pixpro.geometry import PixelPairs
from pixpro.losses import pixel_contrast_loss, pixpro_pair_loss
from pixpro.model.pixpro import PixPro
from tests.conftest import tiny_params, tiny_pretrain_config

E1, E2, E3 = torch.eye(3)


def diagonal_same_place(batch: int, num: int) -> torch.Tensor:
    return torch.eye(num, dtype=torch.bool).expand(batch, num, num)


def test_contrast_loss_matches_a_hand_computed_softmax():
    # One image, two pairs on orthogonal directions: each query sees its positive (cos 1) and
    # two negatives (cos 0); its own pixel's key in its own view shows the same place and is left out.
    queries = torch.stack([E1, E2])[None]  # (1, 2, 3)
    valid = torch.ones(1, 2, dtype=torch.bool)
    temperature = 0.5
    loss = pixel_contrast_loss(queries, queries, queries, queries, valid, diagonal_same_place(1, 2), temperature)
    expected = math.log(1 + 2 * math.exp(-1 / temperature))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_contrast_loss_ignores_invalid_pairs_as_queries_and_as_negatives():
    queries = torch.stack([E1, E2, E3])[None]  # (1, 3, 3)
    valid = torch.tensor([[True, True, False]])
    masked = pixel_contrast_loss(queries, queries, queries, queries, valid, diagonal_same_place(1, 3), 0.5)
    two = queries[:, :2]
    alone = pixel_contrast_loss(two, two, two, two, valid[:, :2], diagonal_same_place(1, 2), 0.5)
    assert masked.item() == pytest.approx(alone.item(), rel=1e-6)


def test_contrast_loss_uses_negatives_from_other_images_and_excludes_same_place():
    # Image 0 and image 1 each hold one pair on the same direction E1: across images that key is a
    # negative as close as the positive, so the loss is log 2 (+ the orthogonal ones' share).
    queries = torch.stack([E1[None], E1[None]])  # (2, 1, 3)
    valid = torch.ones(2, 1, dtype=torch.bool)
    loss = pixel_contrast_loss(queries, queries, queries, queries, valid, diagonal_same_place(2, 1), 1.0)
    # Candidates per query: positive + the other image's two keys (both cos 1); own image's own-view key dropped.
    assert loss.item() == pytest.approx(math.log(3), rel=1e-6)
    # Marking two pairs of one image as the same place removes them from each other's negatives.
    one_image = torch.stack([E1, E1])[None]  # (1, 2, 3)
    apart = pixel_contrast_loss(one_image, one_image, one_image, one_image, torch.ones(1, 2, dtype=torch.bool),
                                diagonal_same_place(1, 2), 1.0)
    together = pixel_contrast_loss(one_image, one_image, one_image, one_image, torch.ones(1, 2, dtype=torch.bool),
                                   torch.ones(1, 2, 2, dtype=torch.bool), 1.0)
    assert apart.item() == pytest.approx(math.log(3), rel=1e-6)
    assert together.item() == pytest.approx(0.0, abs=1e-6)


def test_a_collapsed_prediction_solves_the_consistency_loss_but_not_the_contrast():
    # The shortcut the issue measured: every pixel predicts one shared direction.
    batch, num = 4, 16
    same = F.normalize(torch.ones(batch, num, 8), dim=-1)
    valid = torch.ones(batch, num, dtype=torch.bool)
    assert pixpro_pair_loss(same, same, same, same, valid).item() == pytest.approx(-2.0)
    contrast = pixel_contrast_loss(same, same, same, same, valid, diagonal_same_place(batch, num), 0.2)
    candidates = 2 * batch * num - 1  # every key but the query's own pixel in its own view
    assert contrast.item() == pytest.approx(math.log(candidates), rel=1e-5)


def test_contrast_gradient_reaches_queries_only_and_normaliser_scales_it():
    torch.manual_seed(0)
    q1, q2 = torch.randn(2, 5, 4, requires_grad=True), torch.randn(2, 5, 4, requires_grad=True)
    k1, k2 = torch.randn(2, 5, 4, requires_grad=True), torch.randn(2, 5, 4, requires_grad=True)
    valid = torch.ones(2, 5, dtype=torch.bool)
    same = diagonal_same_place(2, 5)
    loss = pixel_contrast_loss(q1, k2, q2, k1, valid, same, 0.2)
    loss.backward()
    assert q1.grad is not None and q2.grad is not None
    assert k1.grad is None and k2.grad is None
    # normaliser n means "n pairs" (DDP: the global count / world size), like pixpro_pair_loss's.
    scaled = pixel_contrast_loss(q1, k2, q2, k1, valid, same, 0.2, normaliser=torch.tensor(5.0))
    assert scaled.item() == pytest.approx(loss.item() * 10 / 5, rel=1e-5)


def test_diagnostics_tell_a_collapsed_model_from_a_discriminative_one():
    torch.manual_seed(0)
    model = PixPro(tiny_pretrain_config())
    batch, num, dim = 2, 12, 8
    index = torch.stack([torch.randperm(96)[:num] for _ in range(batch)])
    pairs = PixelPairs(index, index, torch.ones(batch, num, dtype=torch.bool), torch.full((batch,), num))
    distinct = F.normalize(torch.randn(batch, num, dim), dim=-1).repeat(2, 1, 1)  # partners agree, pixels differ
    feature_map = torch.randn(2 * batch, 5, 8, 12)
    healthy = model.diagnostics(feature_map, distinct, distinct, pairs)
    assert healthy.partner_gap.item() > 0.5
    assert healthy.effective_rank.item() > 3.0
    assert healthy.feature_std.item() > 0.2

    one_direction = F.normalize(torch.ones(2 * batch, num, dim), dim=-1)
    flat_map = torch.ones(2 * batch, 5, 8, 12)
    collapsed = model.diagnostics(flat_map, one_direction, one_direction, pairs)
    assert collapsed.partner_gap.item() == pytest.approx(0.0, abs=1e-6)
    assert collapsed.effective_rank.item() == pytest.approx(1.0, abs=1e-4)
    assert collapsed.feature_std.item() == pytest.approx(0.0, abs=1e-6)


def test_loss_terms_follow_their_weights():
    torch.manual_seed(0)
    both = PixPro(tiny_pretrain_config(loss=LossConfig(consistency=1.0, contrast=0.5, stages=0.0)))
    torch.manual_seed(0)  # the same weights as `both`
    only_pixpro = PixPro(tiny_pretrain_config(loss=LossConfig(consistency=1.0, contrast=0.0, stages=0.0)))
    views = torch.randn(2, 3, 8, 12), torch.randn(2, 3, 8, 12)
    index = torch.stack([torch.randperm(96)[:20] for _ in range(2)])
    pairs = PixelPairs(index, index, torch.ones(2, 20, dtype=torch.bool), torch.full((2,), 20))
    terms = both(*views, pairs)
    assert terms.total.item() == pytest.approx(terms.consistency.item() + 0.5 * terms.contrast.item(), rel=1e-5)
    terms0 = only_pixpro(*views, pairs)
    assert terms0.contrast.item() == 0.0
    assert terms0.total.item() == pytest.approx(terms.consistency.item(), rel=1e-5)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("pretrain.loss.contrast", -1.0, r"pretrain\.loss\.contrast must be >= 0"),
    ("pretrain.loss.temperature", 0.0, r"pretrain\.loss\.temperature must be > 0"),
    ("pretrain.loss.coarse_stride", 1, r"pretrain\.loss\.coarse_stride must be >= 2"),
])
def test_bad_loss_params_are_clear_errors(key, value, message):
    raw = tiny_params({key: value})
    with pytest.raises(ConfigError, match=message):
        params_from_dict(raw)


def test_all_terms_off_and_a_stride_that_does_not_fit_are_clear_errors():
    with pytest.raises(ConfigError, match=r"consistency and contrast are both 0"):
        params_from_dict(tiny_params({"pretrain.loss.consistency": 0.0, "pretrain.loss.contrast": 0.0}))
    with pytest.raises(ConfigError, match=r"coarse_stride = 48 must divide the view size"):
        params_from_dict(tiny_params({"pretrain.loss.coarse": 1.0, "pretrain.loss.coarse_stride": 48}))


def test_same_image_negatives_drop_the_other_images_keys():
    # Two images, one pair each, on the same direction E1. With the batch's negatives the other
    # image's two keys compete with the positive (log 3, as above); with the image's own only, the
    # positive is the sole candidate left (own-view key of the same place dropped): loss 0.
    queries = torch.stack([E1[None], E1[None]])  # (2, 1, 3)
    valid = torch.ones(2, 1, dtype=torch.bool)
    batch = pixel_contrast_loss(queries, queries, queries, queries, valid, diagonal_same_place(2, 1), 1.0)
    own = pixel_contrast_loss(queries, queries, queries, queries, valid, diagonal_same_place(2, 1), 1.0,
                              same_image_negatives=True)
    assert batch.item() == pytest.approx(math.log(3), rel=1e-6)
    assert own.item() == pytest.approx(0.0, abs=1e-6)
    # Two pairs per image on orthogonal directions: the image's own other pair stays a negative,
    # whichever image holds it (hand-computed: one positive at cos 1, two negatives at cos 0).
    two = torch.stack([E1, E2])[None].expand(2, 2, 3)  # (2, 2, 3)
    loss = pixel_contrast_loss(two, two, two, two, torch.ones(2, 2, dtype=torch.bool), diagonal_same_place(2, 2),
                               0.5, same_image_negatives=True)
    assert loss.item() == pytest.approx(math.log(1 + 2 * math.exp(-1 / 0.5)), rel=1e-6)
