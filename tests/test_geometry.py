"""Positive pixel pairs and windows, checked against hand-computed cases."""

import math

import pytest
import torch

from pixpro.config import PairsConfig
from pixpro.geometry import (bin_diagonal, intersection_mask, pixel_centres, sample_positive_pairs,
                             window_indices)

FULL = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
FLIPPED = torch.tensor([[0.0, 1.0, 1.0, 0.0]])


def all_pairs(box1, box2, size1, size2, image_size=(8, 8), thresh=0.7, neighbours=64):
    """Sample with budgets large enough to return every positive pair, as a set."""
    pixels = size1[0] * size1[1]
    sampling = PairsConfig(candidates=pixels, neighbours=neighbours, num=pixels * neighbours, dist_thresh=thresh)
    pairs = sample_positive_pairs(box1, box2, size1, size2, image_size, sampling,
                                  generator=torch.Generator().manual_seed(0))
    found = set()
    for b in range(box1.shape[0]):
        for i1, i2, ok in zip(pairs.index1[b].tolist(), pairs.index2[b].tolist(), pairs.valid[b].tolist()):
            if ok:
                found.add((b, i1, i2))
    return pairs, found


def test_pixel_centres_follow_the_box():
    y, x = pixel_centres(torch.tensor([[0.5, 0.25, 1.0, 0.75]]), (2, 4), (8, 16))
    assert y.tolist() == [[5.0, 7.0]]
    assert x.tolist() == [[5.0, 7.0, 9.0, 11.0]]


def test_identical_boxes_pair_each_pixel_with_itself():
    pairs, found = all_pairs(FULL, FULL, (4, 6), (4, 6), image_size=(8, 12))
    assert found == {(0, i, i) for i in range(24)}
    assert pairs.count.tolist() == [24]


def test_disjoint_boxes_have_no_positives():
    left = torch.tensor([[0.0, 0.0, 1.0, 0.4]])
    right = torch.tensor([[0.0, 0.6, 1.0, 1.0]])
    pairs, found = all_pairs(left, right, (4, 4), (4, 4))
    assert found == set()
    assert pairs.count.tolist() == [0]
    assert not pairs.valid.any()


def test_flip_maps_column_c_to_w_minus_1_minus_c():
    h, w = 4, 5
    _, found = all_pairs(FULL, FLIPPED, (h, w), (h, w), image_size=(8, 10))
    expected = {(0, r * w + c, r * w + (w - 1 - c)) for r in range(h) for c in range(w)}
    assert found == expected


def test_two_times_scale_gives_hand_computed_neighbour_counts():
    # View 1 covers the image with 8x8 bins of side b; view 2 covers the top-left quarter with
    # bins of side b/2. The threshold is 0.7 * sqrt(2) b ~= 0.99 b (the larger diagonal).
    # Offsets of view-2 centres from a view-1 centre are odd multiples of b/4: the pairs
    # (b/4, b/4) and (b/4, 3b/4) are within 0.99 b, (3b/4, 3b/4) = 1.06 b is not, so an
    # interior pixel has 4 + 8 = 12 positives; the corner pixel (0, 0) has 8.
    quarter = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    _, found = all_pairs(FULL, quarter, (8, 8), (8, 8), image_size=(8, 8))
    per_pixel = {}
    for _, i1, _ in found:
        per_pixel[i1] = per_pixel.get(i1, 0) + 1
    assert per_pixel[0] == 8
    assert per_pixel[1 * 8 + 1] == 12  # (1, 1): all 12 neighbours lie inside view 2
    assert per_pixel[3 * 8 + 3] == 8  # (3, 3): at view 2's far corner, mirrored case of (0, 0)
    assert set(per_pixel) == {r * 8 + c for r in range(4) for c in range(4)}  # the overlap


def test_threshold_uses_the_larger_bin_diagonal():
    quarter = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    big = bin_diagonal(FULL, (8, 8), (8, 8))
    small = bin_diagonal(quarter, (8, 8), (8, 8))
    assert big.item() == pytest.approx(math.sqrt(2))
    assert small.item() == pytest.approx(math.sqrt(2) / 2)
    # 0.7 x the smaller diagonal equals 0.35 x the larger one: it keeps only the 4 nearest
    # view-2 pixels of an interior view-1 pixel, while 0.7 x the larger keeps 12.
    counts = {}
    for thresh in (0.7, 0.35):
        _, found = all_pairs(FULL, quarter, (8, 8), (8, 8), image_size=(8, 8), thresh=thresh)
        counts[thresh] = sum(1 for _, i1, _ in found if i1 == 9)
    assert counts == {0.7: 12, 0.35: 4}


def test_budgets_are_respected_and_pairs_are_unique():
    boxes1 = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.1, 0.2, 0.9, 0.7]])
    boxes2 = torch.tensor([[0.2, 0.3, 0.8, 0.9], [0.0, 0.6, 1.0, 0.0]])
    pairs = sample_positive_pairs(boxes1, boxes2, (16, 16), (16, 16), (64, 64),
                                  PairsConfig(candidates=20, neighbours=2, num=30),
                                  generator=torch.Generator().manual_seed(1))
    assert pairs.index1.shape == (2, 30)
    for b in range(2):
        valid = pairs.valid[b]
        assert len(set(pairs.index1[b][valid].tolist())) <= 20
        assert valid.sum() <= 30
        keys = list(zip(pairs.index1[b][valid].tolist(), pairs.index2[b][valid].tolist()))
        assert len(keys) == len(set(keys))


def test_pairs_are_reproducible_from_the_generator():
    boxes1 = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    boxes2 = torch.tensor([[0.2, 0.3, 0.8, 0.9]])
    sampling = PairsConfig(candidates=50, neighbours=3, num=40)
    run = lambda seed: sample_positive_pairs(boxes1, boxes2, (16, 16), (16, 16), (64, 64), sampling,  # noqa: E731
                                             generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(3).index2, run(3).index2)
    assert not torch.equal(run(3).index2, run(4).index2)


def test_every_returned_pair_is_within_threshold():
    torch.manual_seed(0)
    boxes1 = torch.tensor([[0.05, 0.1, 0.95, 0.8], [0.0, 0.9, 0.6, 0.2]])
    boxes2 = torch.tensor([[0.3, 0.0, 1.0, 0.5], [0.1, 0.1, 0.9, 0.95]])
    size1, size2, image = (12, 20), (16, 8), (100, 200)
    pairs = sample_positive_pairs(boxes1, boxes2, size1, size2, image,
                                  PairsConfig(candidates=500, neighbours=50, num=5000),
                                  generator=torch.Generator().manual_seed(0))
    y1, x1 = pixel_centres(boxes1, size1, image)
    y2, x2 = pixel_centres(boxes2, size2, image)
    thresh = 0.7 * torch.maximum(bin_diagonal(boxes1, size1, image), bin_diagonal(boxes2, size2, image))
    for b in range(2):
        assert pairs.count[b] > 0
        for i1, i2, ok in zip(pairs.index1[b], pairs.index2[b], pairs.valid[b]):
            if ok:
                d = torch.hypot(y1[b, i1 // size1[1]] - y2[b, i2 // size2[1]],
                                x1[b, i1 % size1[1]] - x2[b, i2 % size2[1]])
                assert d < thresh[b]
        # Brute force over all pixel pairs, for view-1 pixels inside the intersection (the only
        # candidates), finds the same number of positives.
        d_all = torch.hypot(y1[b][:, None, None, None] - y2[b][None, None, :, None],
                            x1[b][None, :, None, None] - x2[b][None, None, None, :])  # (h1, w1, h2, w2)
        inside = intersection_mask(boxes1[b:b + 1], boxes2[b:b + 1], size1, image).view(*size1, 1, 1)
        assert int(((d_all < thresh[b]) & inside).sum()) == int(pairs.count[b])


def test_intersection_mask_marks_overlapping_pixels():
    mask = intersection_mask(FULL, torch.tensor([[0.0, 0.5, 1.0, 1.0]]), (2, 4), (8, 8))
    assert mask.view(2, 4).tolist() == [[False, False, True, True]] * 2


def test_window_indices_are_clipped_at_the_border():
    index = torch.tensor([[0, 5]])  # (0, 0) and (1, 1) in a 3x4 map
    flat, inside = window_indices(index, (3, 4), 3)
    assert flat.shape == (1, 2, 9)
    assert inside[0, 0].tolist() == [False, False, False, False, True, True, False, True, True]
    assert inside[0, 1].all()
    assert flat[0, 1].tolist() == [0, 1, 2, 4, 5, 6, 8, 9, 10]
