"""PixPro with an online and a momentum target network, working on positive pixel pairs only."""

from __future__ import annotations

import copy

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

    def forward(self, views1: Tensor, views2: Tensor, pairs: PixelPairs) -> Tensor:
        """views1, views2 (B, 3, h, w) -> scalar PixPro loss over the pairs."""
        features = self.backbone(torch.cat([views1, views2]))  # (2B, C, h, w)
        feat1, feat2 = features.chunk(2)
        online1 = self.propagate(feat1, pairs.index1)  # (B, P, D)
        online2 = self.propagate(feat2, pairs.index2)
        with torch.no_grad():
            target = self.target_backbone(torch.cat([views1, views2]))  # (2B, C, h, w)
            tgt1, tgt2 = target.chunk(2)
            pixels = torch.cat([gather_pixels(tgt1, pairs.index1), gather_pixels(tgt2, pairs.index2)])
            projected = self.target_projector(pixels.flatten(0, 1)).view(*pixels.shape[:2], -1)
            target1, target2 = projected.float().chunk(2)  # (B, P, D) each
        return pixpro_pair_loss(online1.float(), target2, online2.float(), target1, pairs.valid)

    def propagate(self, features: Tensor, index: Tensor) -> Tensor:
        """features (B, C, h, w), index (B, P) -> PPM output y (B, P, D) at those pixels."""
        batch, _, height, width = features.shape
        if self.window is None:
            pixels = features.flatten(2).transpose(1, 2)  # (B, hw, C)
            projected = self.projector(pixels.flatten(0, 1)).view(batch, height * width, -1)
            transformed = self.transform(projected.flatten(0, 1)).view_as(projected)
            unit = F.normalize(projected, dim=-1)
            centre = unit.gather(1, index[..., None].expand(-1, -1, unit.shape[-1]))  # (B, P, D)
            return global_propagation(centre, unit, transformed, self.gamma)

        window_index, inside = window_indices(index, (height, width), self.window)  # (B, P, K)
        # Neighbouring windows overlap: project each needed pixel once.
        offset = torch.arange(batch, device=index.device)[:, None, None] * (height * width)
        needed, inverse = torch.unique(window_index + offset, return_inverse=True)  # (U,), (B, P, K)
        flat = features.flatten(2)  # (B, C, hw), a view
        pixels = flat[needed // (height * width), :, needed % (height * width)]  # (U, C)
        projected = self.projector(pixels)  # (U, D)
        transformed = self.transform(projected)
        unit = F.normalize(projected, dim=-1)  # once per distinct pixel, not per window copy
        window = unit[inverse]  # (B, P, K, D)
        window_t = transformed[inverse]
        centre_slot = (self.window // 2) * self.window + self.window // 2
        centre = unit[inverse[:, :, centre_slot]]  # (B, P, D)
        out = local_propagation(centre.flatten(0, 1), window.flatten(0, 1), window_t.flatten(0, 1),
                                inside.flatten(0, 1), self.gamma)  # (B*P, D)
        return out.view(batch, index.shape[1], -1)

    @torch.no_grad()
    def momentum_update(self, momentum: float) -> None:
        """target <- momentum * target + (1 - momentum) * online; BN statistics are copied."""
        for online, target in self.online_pairs():
            online_params = list(online.parameters())
            target_params = list(target.parameters())
            torch._foreach_lerp_(target_params, online_params, 1.0 - momentum)
            for buf_online, buf_target in zip(online.buffers(), target.buffers()):
                buf_target.copy_(buf_online)
