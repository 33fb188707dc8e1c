"""PixPro with an online and a momentum target network, working on positive pixel pairs only."""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pixpro.config import PretrainConfig
from pixpro.geometry import PixelPairs, window_indices
from pixpro.losses import pixpro_pair_loss
from pixpro.model.backbone import build_backbone
from pixpro.model.heads import Projector, build_transform, global_propagation, local_propagation


def gather_pixels(features: Tensor, flat_index: Tensor) -> Tensor:
    """features (B, C, H, W), flat_index (B, N) into H*W -> (B, N, C), without copying the map."""
    batch = torch.arange(features.shape[0], device=features.device)[:, None]  # (B, 1)
    return features.flatten(2)[batch, :, flat_index]  # advanced indices first: (B, N, C)


class PixPro(nn.Module):
    """Online backbone -> projector -> pixel propagation; target backbone -> projector (EMA).

    The projector and the propagation run only on the pixels the pairs need: the pairs' PPM
    windows (online) and the pair pixels themselves (target).
    """

    def __init__(self, cfg: PretrainConfig):
        super().__init__()
        dim, proj = cfg.backbone.dim, cfg.projector
        self.backbone = build_backbone(cfg.backbone)
        self.projector = Projector(dim, proj.hidden, proj.out)
        self.transform = build_transform(proj.out, cfg.ppm.transform_layers)
        self.target_backbone = copy.deepcopy(self.backbone)
        self.target_projector = copy.deepcopy(self.projector)
        for param in (*self.target_backbone.parameters(), *self.target_projector.parameters()):
            param.requires_grad_(False)
        self.window = cfg.ppm.window
        self.gamma = cfg.ppm.gamma

    def online_pairs(self):
        return ((self.backbone, self.target_backbone), (self.projector, self.target_projector))

    def forward(self, views1: Tensor, views2: Tensor, pairs: PixelPairs, normaliser: Optional[Tensor] = None) -> Tensor:
        """views1, views2 (B, 3, h, w) -> scalar PixPro loss over the pairs (divided by
        `normaliser` () instead of the batch's valid-pair count when given)."""
        views = torch.cat([views1, views2])  # (2B, 3, h, w): one backbone call per network
        online_map = self.backbone(views)
        with torch.no_grad():
            target_map = self.target_backbone(views)
        return self.loss_from_maps(online_map, target_map, pairs, normaliser)

    def loss_from_maps(self, online_map: Tensor, target_map: Tensor, pairs: PixelPairs,
                       normaliser: Optional[Tensor] = None) -> Tensor:
        """The head: online_map, target_map (2B, C, h, w) of the stacked views -> scalar loss."""
        index = torch.cat([pairs.index1, pairs.index2])  # (2B, P), rows match the stacked views
        # Both views in one propagate(): the gather's backward then writes the single dense map
        # gradient the backbone needs anyway, instead of one per view plus their concatenation.
        online = self.propagate(online_map, index, groups=2)  # (2B, P, D), BN per view
        with torch.no_grad():
            target = self.project_target(target_map, index)
        return self.pair_loss(online, target, pairs.valid, normaliser)

    def project_target(self, target_map: Tensor, index: Tensor) -> Tensor:
        """target_map (2B, C, h, w), index (2B, P) -> target projections (2B, P, D), float32."""
        pixels = gather_pixels(target_map, index)  # (2B, P, C)
        return self.target_projector(pixels.flatten(0, 1)).view(*pixels.shape[:2], -1).float()

    @staticmethod
    def pair_loss(online: Tensor, target: Tensor, valid: Tensor, normaliser: Optional[Tensor] = None) -> Tensor:
        """online, target (2B, P, D) with view 1 in the first half; valid (B, P) -> scalar.

        Symmetric: view 1's propagated features predict view 2's target, and vice versa.
        """
        online1, online2 = online.float().chunk(2)
        target1, target2 = target.chunk(2)
        return pixpro_pair_loss(online1, target2, online2, target1, valid, normaliser)

    def propagate(self, features: Tensor, index: Tensor, groups: int = 1) -> Tensor:
        """features (B, C, h, w), index (B, P) -> PPM output y (B, P, D) at those pixels.

        The batch is `groups` equal chunks (forward passes 2: the views) whose pixels get their own
        BatchNorm statistics in the projector and g(), as if each chunk were projected alone.
        """
        batch, _, height, width = features.shape
        if self.window is None:
            pixels = features.flatten(2).transpose(1, 2).flatten(0, 1)  # (B*hw, C)
            sizes = [len(pixels) // groups] * groups
            projected = self._grouped(self.projector, pixels, sizes).view(batch, height * width, -1)
            unit = F.normalize(projected, dim=-1)
            centre = unit.gather(1, index[..., None].expand(-1, -1, unit.shape[-1]))  # (B, P, D)
            values = self._propagated_values(projected.flatten(0, 1), sizes).view(batch, height * width, -1)
            return self._transform_sum(global_propagation(centre, unit, values, self.gamma))

        window_index, inside = window_indices(index, (height, width), self.window)  # (B, P, K)
        # Neighbouring windows overlap: project each needed pixel once.
        offset = torch.arange(batch, device=index.device)[:, None, None] * (height * width)
        needed, inverse = torch.unique(window_index + offset, return_inverse=True)  # (U,), (B, P, K)
        # `needed` is sorted, so each group's pixels are one slice (unique has synced already).
        bounds = torch.arange(1, groups + 1, device=needed.device) * (batch // groups * height * width)
        ends = torch.searchsorted(needed, bounds).tolist()
        sizes = [end - start for start, end in zip([0, *ends[:-1]], ends)]
        flat = features.flatten(2)  # (B, C, hw), a view
        pixels = flat[needed // (height * width), :, needed % (height * width)]  # (U, C)
        projected = self._grouped(self.projector, pixels, sizes)  # (U, D)
        unit = F.normalize(projected, dim=-1)  # once per distinct pixel, not per window copy
        values = self._propagated_values(projected, sizes)  # (U, D) or (U, D + 1)
        centre_slot = (self.window // 2) * self.window + self.window // 2
        centre = unit[inverse[:, :, centre_slot]]  # (B, P, D)
        out = local_propagation(centre.flatten(0, 1), unit[inverse].flatten(0, 1), values[inverse].flatten(0, 1),
                                inside.flatten(0, 1), self.gamma)  # (B*P, D or D + 1)
        return self._transform_sum(out).view(batch, index.shape[1], -1)

    @staticmethod
    def _grouped(module: nn.Module, rows: Tensor, sizes: list[int]) -> Tensor:
        """module applied to consecutive row slices of the given sizes: (N, ...) -> (N, ...)."""
        if len(sizes) == 1:
            return module(rows)
        return torch.cat([module(part) for part in rows.split(sizes)])

    def _propagated_values(self, projected: Tensor, sizes: list[int]) -> Tensor:
        """What the PPM sums over a window, from projected pixels x (N, D) in groups of `sizes`.

        A nonlinear g() is applied to every pixel: g(x) (N, D). A linear g(x) = A x + b commutes
        with the sum, sum_j s_ij g(x_j) = A sum_j s_ij x_j + b sum_j s_ij, so it is applied after
        propagation to the P pair pixels instead of every window pixel: this returns x with a ones
        column (N, D + 1) whose sum is sum_j s_ij, and _transform_sum finishes the job.
        """
        if isinstance(self.transform, nn.Identity):
            return projected
        if isinstance(self.transform, nn.Linear):
            return torch.cat([projected, projected.new_ones(len(projected), 1)], dim=-1)
        return self._grouped(self.transform, projected, sizes)

    def _transform_sum(self, summed: Tensor) -> Tensor:
        """(..., D + 1) from a linear g's values -> A z + b * total (..., D); otherwise unchanged."""
        if isinstance(self.transform, nn.Linear):
            weighted, total = summed[..., :-1], summed[..., -1:]
            return F.linear(weighted, self.transform.weight) + total * self.transform.bias
        return summed

    @torch.no_grad()
    def momentum_update(self, momentum: float) -> None:
        """target <- momentum * target + (1 - momentum) * online; BN statistics are copied."""
        for online, target in self.online_pairs():
            online_params = list(online.parameters())
            target_params = list(target.parameters())
            torch._foreach_lerp_(target_params, online_params, 1.0 - momentum)
            torch._foreach_copy_(list(target.buffers()), list(online.buffers()))
