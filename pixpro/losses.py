"""Losses: tensors in, scalar out. They never see the model."""

from __future__ import annotations

from typing import Optional

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
