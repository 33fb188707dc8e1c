"""Losses: tensors in, scalar out. They never see the model."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.nn import functional as F


def pixpro_pair_loss(online1: Tensor, target2: Tensor, online2: Tensor, target1: Tensor, valid: Tensor,
                     normaliser: Optional[Tensor] = None) -> Tensor:
    """Symmetric PixPro consistency over positive pairs (i in view 1, j in view 2):

        -cos(y_i, x'_j) - cos(y_j, x'_i), averaged over valid pairs.

    online1, target1: (B, P, D) at the pairs' view-1 pixels; online2, target2: (B, P, D) at their
    view-2 pixels; valid (B, P) bool. Returns a scalar in [-2, 2]; 0 when no pair is valid
    (the graph still reaches every parameter, so DDP ranks stay in step). `normaliser` () replaces
    this batch's valid-pair count as the denominator (DDP: see pixpro.train.pair_normaliser).
    """
    per_pair = -F.cosine_similarity(online1, target2.detach(), dim=-1) \
        - F.cosine_similarity(online2, target1.detach(), dim=-1)  # (B, P)
    mask = valid.to(per_pair.dtype)
    denominator = mask.sum().clamp(min=1.0) if normaliser is None else normaliser
    return (per_pair * mask).sum() / denominator


def pixel_contrast_loss(query1: Tensor, key2: Tensor, query2: Tensor, key1: Tensor, valid: Tensor,
                        same_place: Tensor, temperature: float, normaliser: Optional[Tensor] = None,
                        same_image_negatives: bool = False) -> Tensor:
    """Symmetric pixel InfoNCE over positive pairs with in-batch negatives (PixContrast, DenseCL).

    query1, key1: (B, P, D) at the pairs' view-1 pixels; query2, key2: (B, P, D) at their view-2
    pixels; valid (B, P) bool. Query i of view 1 must pick its partner's key key2[i] out of every
    valid key of both views in the batch (2 * B * P candidates), and symmetrically for view 2.
    same_place (B, P, P) bool marks pairs p, q of one image that share a pixel (either view): their
    keys show the same place as the query's partner, so they are not counted as negatives.
    `same_image_negatives` keeps only the keys of the query's own image (both views, 2 * P
    candidates): a feature shared by a whole image then no longer lowers the loss.

    Returns the mean cross-entropy over valid queries (divided by 2 * `normaliser` when given, to
    match pixpro_pair_loss's DDP convention of one count per pair); scalar.
    """
    batch, num, _ = query1.shape
    queries = F.normalize(torch.cat([query1, query2]).float(), dim=-1).flatten(0, 1)  # (2BP, D)
    keys = F.normalize(torch.cat([key1, key2]).float().detach(), dim=-1).flatten(0, 1)  # (2BP, D)
    logits = queries @ keys.T / temperature  # (2BP, 2BP): row = query, column = key

    rows = torch.arange(2 * batch * num, device=queries.device)
    # Row r = (view v, image b, pair p) holds its positive at column (other view, b, p).
    positive = (rows + batch * num) % (2 * batch * num)  # (2BP,)
    # Columns to drop for a query: invalid keys, and keys of the same place in the same image
    # (its own pixel in its own view included); the positive itself is then put back.
    image = torch.arange(batch, device=queries.device)
    block = torch.zeros(batch, num, 2, batch, num, dtype=torch.bool, device=queries.device)
    block[image, :, 0, image] = same_place  # (B, P, P): view-1 keys of the query's own image
    block[image, :, 1, image] = same_place  # and its view-2 keys
    # block (B, P, 2, B, P) -> columns in (view, image, pair) order: (B, P, 2BP); same for both query views.
    drop = block.reshape(batch, num, 2 * batch * num).repeat(2, 1, 1).flatten(0, 1)  # (2BP, 2BP)
    drop |= ~valid.repeat(2, 1).flatten()[None, :]
    if same_image_negatives:
        image_of = (rows // num) % batch  # (2BP,): rows and columns share the (view, image, pair) order
        drop |= image_of[:, None] != image_of[None, :]
    drop[rows, positive] = False
    logits = logits.masked_fill(drop, float("-inf"))

    per_query = F.cross_entropy(logits, positive, reduction="none")  # (2BP,)
    mask = valid.repeat(2, 1).flatten().to(per_query.dtype)  # (2BP,); invalid rows stay finite
    denominator = mask.sum().clamp(min=1.0) if normaliser is None else 2 * normaliser
    return (per_query * mask).sum() / denominator


def image_contrast_loss(query1: Tensor, key2: Tensor, query2: Tensor, key1: Tensor, temperature: float) -> Tensor:
    """Symmetric image-level InfoNCE (MoCo v3, DenseCL's global term) without a queue.

    query1, key1: (B, D) pooled embeddings of view 1; query2, key2: (B, D) of view 2. Query b of
    view 1 must pick key2[b] out of the keys of both views of every other image (2B - 1
    candidates: its own image's view-1 key is not a negative), and symmetrically. Returns the
    mean cross-entropy over the 2B queries (scalar). It is pixel_contrast_loss with one "pair"
    per image, so both terms share one masking rule.
    """
    batch = query1.shape[0]
    valid = torch.ones(batch, 1, dtype=torch.bool, device=query1.device)
    same_place = torch.ones(batch, 1, 1, dtype=torch.bool, device=query1.device)
    return pixel_contrast_loss(query1[:, None], key2[:, None], query2[:, None], key1[:, None], valid, same_place,
                               temperature)


@torch.no_grad()
def image_partner_gap(query1: Tensor, key2: Tensor, query2: Tensor, key1: Tensor) -> Tensor:
    """(B, D) each -> cos(query, its image's key in the other view) - cos(query, the next image's
    key in the other view), averaged over both views (). A collapsed or image-agnostic embedding
    gives 0, whatever the loss does."""
    queries = F.normalize(torch.cat([query1, query2]).float(), dim=-1)  # (2B, D)
    if len(query1) < 2:  # no other image to tell apart
        return queries.new_zeros(())
    partners = F.normalize(torch.cat([key2, key1]).float(), dim=-1)  # (2B, D): each query's partner
    others = partners.view(2, len(query1), -1).roll(1, dims=1).flatten(0, 1)  # previous image, same other view
    return (queries * partners).sum(-1).mean() - (queries * others).sum(-1).mean()
