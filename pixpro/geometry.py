"""Which pixels of two views show the same place: pure tensor functions, batched, O(pairs).

Box convention: a view's box is (top, left, bottom, right) in normalised original-image
coordinates ([0, 1]). A horizontally flipped view has left > right, so the same linear map
sends view column c to x = left + (c + 0.5) / w * (right - left) with or without a flip.
Distances are measured in original-image pixels, so `image_size` (H, W) is needed.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from pixpro.config import PairsConfig


class PixelPairs(NamedTuple):
    """Positive pixel pairs of a batch; P = pairs.num slots per image, some may be empty."""

    index1: Tensor  # (B, P) int64 flat pixel index r * w1 + c into view 1
    index2: Tensor  # (B, P) int64 flat pixel index into view 2
    valid: Tensor  # (B, P) bool: False for empty slots (not enough positives)
    count: Tensor  # (B,) int64 valid pairs per image


def pixel_centres(boxes: Tensor, size: tuple[int, int], image_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Original-image pixel coordinates of the view's pixel centres.

    boxes (B, 4) -> y (B, h), x (B, w).
    """
    h, w = size
    rows = (torch.arange(h, device=boxes.device, dtype=boxes.dtype) + 0.5) / h  # (h,)
    cols = (torch.arange(w, device=boxes.device, dtype=boxes.dtype) + 0.5) / w  # (w,)
    top, left, bottom, right = boxes.unbind(-1)  # each (B,)
    y = (top[:, None] + rows[None] * (bottom - top)[:, None]) * image_size[0]
    x = (left[:, None] + cols[None] * (right - left)[:, None]) * image_size[1]
    return y, x


def bin_diagonal(boxes: Tensor, size: tuple[int, int], image_size: tuple[int, int]) -> Tensor:
    """(B, 4) -> (B,) diagonal of one feature bin, in original-image pixels."""
    top, left, bottom, right = boxes.unbind(-1)
    bin_h = (bottom - top).abs() * image_size[0] / size[0]
    bin_w = (right - left).abs() * image_size[1] / size[1]
    return torch.hypot(bin_h, bin_w)


def intersection_mask(boxes1: Tensor, boxes2: Tensor, size1: tuple[int, int],
                      image_size: tuple[int, int]) -> Tensor:
    """(B, h1 * w1) bool: view-1 pixels whose centre lies inside view 2's box."""
    y, x = pixel_centres(boxes1, size1, image_size)  # (B, h1), (B, w1)
    top, left, bottom, right = boxes2.unbind(-1)
    y0, y1 = top * image_size[0], bottom * image_size[0]
    x0 = torch.minimum(left, right) * image_size[1]
    x1 = torch.maximum(left, right) * image_size[1]
    inside_y = (y >= y0[:, None]) & (y <= y1[:, None])  # (B, h1)
    inside_x = (x >= x0[:, None]) & (x <= x1[:, None])  # (B, w1)
    return (inside_y[:, :, None] & inside_x[:, None, :]).flatten(1)


def _random_topk(scores_shape: tuple[int, ...], allowed: Tensor, k: int,
                 generator: Optional[torch.Generator]) -> tuple[Tensor, Tensor]:
    """Pick k allowed entries uniformly at random along the last dim, without replacement.

    Returns (indices (..., k), picked_is_allowed (..., k)); fewer than k allowed entries leave
    slots marked False.
    """
    scores = torch.rand(scores_shape, generator=generator, device=allowed.device)
    scores = torch.where(allowed, scores, torch.full_like(scores, -1.0))
    top, index = scores.topk(min(k, scores.shape[-1]), dim=-1)
    return index, top >= 0


def sample_positive_pairs(
    boxes1: Tensor,
    boxes2: Tensor,
    size1: tuple[int, int],
    size2: tuple[int, int],
    image_size: tuple[int, int],
    sampling: PairsConfig,
    generator: Optional[torch.Generator] = None,
) -> PixelPairs:
    """Draw positive pixel pairs between view 1 (size1) and view 2 (size2) of each image.

    The budgets come from `sampling` (candidates, neighbours, num, dist_thresh):
    1. `candidates` view-1 pixels inside the views' intersection, without replacement.
    2. Each candidate's centre is projected analytically into view 2; only the few view-2 pixels
       around that point are tested, so the cost is O(candidates x window), never O(pixels^2).
       A pair is positive when its centre distance < dist_thresh x the larger bin diagonal.
    3. At most `neighbours` positives per candidate, then `num` pairs per image, at random.

    boxes1, boxes2: (B, 4) float. Returns PixelPairs with P = sampling.num.
    """
    candidates, neighbours, num = sampling.candidates, sampling.neighbours, sampling.num
    dist_thresh = sampling.dist_thresh
    batch = boxes1.shape[0]
    boxes1, boxes2 = boxes1.float(), boxes2.float()
    h2, w2 = size2
    thresh = dist_thresh * torch.maximum(bin_diagonal(boxes1, size1, image_size),
                                         bin_diagonal(boxes2, size2, image_size))  # (B,)

    inside = intersection_mask(boxes1, boxes2, size1, image_size)  # (B, h1*w1)
    cand_index, cand_ok = _random_topk(inside.shape, inside, candidates, generator)  # (B, N)
    y1, x1 = pixel_centres(boxes1, size1, image_size)
    cand_y = y1.gather(1, cand_index // size1[1])  # (B, N)
    cand_x = x1.gather(1, cand_index % size1[1])

    # Candidate centres in view-2 pixel units (fractional), then a window of integer offsets
    # wide enough for the threshold radius in every image of the batch.
    top2, left2, bottom2, right2 = (v[:, None] for v in boxes2.unbind(-1))  # each (B, 1)
    row2 = (cand_y / image_size[0] - top2) / (bottom2 - top2) * h2 - 0.5  # (B, N)
    col2 = (cand_x / image_size[1] - left2) / (right2 - left2) * w2 - 0.5
    bin2_h = ((bottom2 - top2).abs() * image_size[0] / h2).squeeze(1)  # (B,)
    bin2_w = ((right2 - left2).abs() * image_size[1] / w2).squeeze(1)
    reach_r = math.ceil(float((thresh / bin2_h).max()) + 0.5)
    reach_c = math.ceil(float((thresh / bin2_w).max()) + 0.5)
    off_r = torch.arange(-reach_r, reach_r + 1, device=boxes1.device)
    off_c = torch.arange(-reach_c, reach_c + 1, device=boxes1.device)
    rows = row2.round().long()[..., None, None] + off_r[:, None]  # (B, N, Kr, 1)
    cols = col2.round().long()[..., None, None] + off_c[None, :]  # (B, N, 1, Kc)
    rows, cols = torch.broadcast_tensors(rows, cols)  # (B, N, Kr, Kc)
    rows, cols = rows.flatten(2), cols.flatten(2)  # (B, N, K)

    in_view = (rows >= 0) & (rows < h2) & (cols >= 0) & (cols < w2)
    ny = (top2[..., None] + (rows + 0.5) / h2 * (bottom2 - top2)[..., None]) * image_size[0]
    nx = (left2[..., None] + (cols + 0.5) / w2 * (right2 - left2)[..., None]) * image_size[1]
    dist = torch.hypot(ny - cand_y[..., None], nx - cand_x[..., None])  # (B, N, K)
    positive = in_view & (dist < thresh[:, None, None]) & cand_ok[..., None]

    pick, pick_ok = _random_topk(positive.shape, positive, neighbours, generator)  # (B, N, M)
    flat2 = (rows * w2 + cols).gather(2, pick)  # (B, N, M)
    flat1 = cand_index[..., None].expand_as(flat2)
    flat1, flat2, pick_ok = flat1.flatten(1), flat2.flatten(1), pick_ok.flatten(1)  # (B, N*M)

    chosen, valid = _random_topk(pick_ok.shape, pick_ok, num, generator)  # (B, <=num)
    index1, index2 = flat1.gather(1, chosen), flat2.gather(1, chosen)
    if chosen.shape[1] < num:  # fewer slots than num in total: pad with empty slots
        pad = num - chosen.shape[1]
        index1, index2 = (torch.nn.functional.pad(t, (0, pad)) for t in (index1, index2))
        valid = torch.nn.functional.pad(valid, (0, pad), value=False)
    # Empty slots point at pixel 0 so gathers stay in range; `valid` masks them out.
    index1 = torch.where(valid, index1, torch.zeros_like(index1))
    index2 = torch.where(valid, index2, torch.zeros_like(index2))
    del batch
    return PixelPairs(index1, index2, valid, valid.sum(1))


def window_indices(index: Tensor, size: tuple[int, int], window: int) -> tuple[Tensor, Tensor]:
    """Flat indices of the window x window neighbourhood of each pixel, clipped at borders.

    index (B, P) flat pixel indices into a (h, w) map -> (indices (B, P, K), inside (B, P, K))
    with K = window**2. Outside positions are clamped into range and marked False. For even
    windows the extra row/column lies before the centre (offsets -window//2 .. window//2 - 1).
    """
    h, w = size
    offsets = torch.arange(window, device=index.device) - window // 2  # (window,)
    rows = (index // w)[..., None, None] + offsets[:, None]  # (B, P, window, 1)
    cols = (index % w)[..., None, None] + offsets[None, :]  # (B, P, 1, window)
    inside = ((rows >= 0) & (rows < h)) & ((cols >= 0) & (cols < w))  # (B, P, window, window)
    flat = rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)
    return flat.flatten(2), inside.flatten(2)
