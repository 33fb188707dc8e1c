"""PixPro with an online and a momentum target network, working on positive pixel pairs only."""

from __future__ import annotations

import copy
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pixpro.config import PretrainConfig
from pixpro.geometry import PixelPairs, window_indices
from pixpro.losses import image_contrast_loss, image_partner_gap, pixel_contrast_loss, pixpro_pair_loss
from pixpro.model.backbone import TappedMaps, build_backbone, forward_tapped
from pixpro.model.heads import Projector, build_transform, global_propagation, local_propagation
from pixpro.model.init_weights import load_init_weights


class LossTerms(NamedTuple):
    """What one step optimises, and its parts before weighting (each a scalar tensor).

    Every field between `total` and `diagnostics` is a term: the trainer logs each as
    `loss_<name>`, so a new term is one field here and one weight in LossConfig."""

    total: Tensor  # weighted sum of the terms below: the value that is optimised
    consistency: Tensor  # PixPro's pixel-propagation consistency, in [-2, 2]
    contrast: Tensor  # pixel InfoNCE with in-batch negatives
    coarse: Tensor  # consistency + contrast again on a pooled map, with a global PPM
    stages: Tensor  # pixel InfoNCE on coarser decoder stages, mean over LossConfig.stage_layers
    image: Tensor  # image-level InfoNCE on the encoder's pooled deepest map
    diagnostics: Optional["Diagnostics"] = None  # when asked for

    @classmethod
    def term_names(cls) -> tuple[str, ...]:
        return tuple(name for name in cls._fields if name not in ("total", "diagnostics"))


class Diagnostics(NamedTuple):
    """Signals that a shortcut solution of the loss cannot fake (scalars, no gradient); a term
    that is off leaves its signals None."""

    partner_gap: Tensor  # cos(prediction, partner's target) - cos(prediction, another pixel's target)
    feature_std: Tensor  # mean per-channel std of the unit-length backbone features at the pairs
    effective_rank: Tensor  # exp(entropy) of those features' normalised singular values, in [1, C]
    stage_partner_gap: Optional[Tensor] = None  # partner_gap of the stage term, mean over its stages
    image_partner_gap: Optional[Tensor] = None  # cos(query, own image's key) - cos(query, another image's key)
    # Share of the coarsest decoder stage's variance that lies between views, in [0, 1]: a per-image
    # signature that a pixel's class probe cannot use (docs/method.md, "What pretraining does to each decoder stage").
    coarse_image_share: Optional[Tensor] = None


class StagePairs(NamedTuple):
    """Positive pairs on one decoder stage's grid (h / s, w / s) of the views."""

    layer: int  # as probe.layers: -2 = 1/2 resolution ...
    pairs: PixelPairs
    normaliser: Optional[Tensor] = None  # DDP: this stage's global pair count (pixpro.train.pair_normaliser)


@torch.no_grad()
def pair_partner_gap(online: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """online predictions, target keys (2B, P, D) at the pairs, view 1 first; valid (B, P) ->
    cos(prediction, partner's target) - cos(prediction, another pixel's target of the same image) ().

    A collapsed or position-only solution gives 0: it cannot tell its partner from a pixel elsewhere
    in the same view."""
    online, target = F.normalize(online.float(), dim=-1), F.normalize(target.float(), dim=-1)
    valid = valid.repeat(2, 1)  # (2B, P)
    partner = target.roll(online.shape[0] // 2, dims=0)  # each view's partner targets: (2B, P, D)
    # Another pixel of the same image, other view: the partner slots shifted by half the pairs.
    shift = online.shape[1] // 2
    other, other_valid = partner.roll(shift, dims=1), valid & valid.roll(shift, dims=1)
    if not valid.any() or not other_valid.any():
        return online.new_zeros(())
    return (online * partner).sum(-1)[valid].mean() - (online * other).sum(-1)[other_valid].mean()


@torch.no_grad()
def between_group_share(features: Tensor, groups: Tensor) -> Tensor:
    """features (N, C), groups (N,) int ids -> between-group sum of squares over the total sum of
    squares around the mean of the unit-length features (): 0 when every group looks alike, 1 when
    each group is a single point."""
    unit = F.normalize(features.float(), dim=1)
    centred = unit - unit.mean(dim=0)
    _, inverse, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    sums = centred.new_zeros(len(counts), unit.shape[1]).index_add_(0, inverse, centred)  # (G, C)
    return (sums.pow(2).sum(dim=1) / counts).sum() / centred.pow(2).sum().clamp(min=1e-12)


def effective_rank(features: Tensor) -> Tensor:
    """features (N, C) -> exp(entropy of the normalised singular values) (), in [1, min(N, C)]:
    RankMe (Garrido et al. 2023), a collapse to a few directions that a falling loss hides."""
    singular = torch.linalg.svdvals(features.float())
    share = singular / singular.sum().clamp(min=1e-12)
    return torch.exp(-(share * torch.log(share.clamp(min=1e-12))).sum())


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
        load_init_weights(self.backbone, cfg.init, cfg.backbone)  # pretrain.init; None keeps the random init
        if cfg.freeze_backbone:  # the "frozen random backbone" control: only the heads can learn
            self.backbone.requires_grad_(False)
        self.projector = Projector(dim, proj.hidden, proj.out)
        self.transform = build_transform(proj.out, cfg.ppm.transform_layers)
        self.target_backbone = copy.deepcopy(self.backbone)
        self.target_projector = copy.deepcopy(self.projector)
        # Projectors of the stage and image terms: built only when their weight is on, so DDP
        # never sees parameters without gradients.
        loss = cfg.loss
        channels = cfg.backbone.stage_channels
        self.stage_layers = tuple(loss.stage_layers) if loss.stages > 0 else ()
        self.coarsest = -len(channels)  # as probe.layers: the first decoder stage
        self.stage_projectors = nn.ModuleDict({
            str(layer): Projector(channels[layer], proj.hidden, proj.out) for layer in self.stage_layers})
        self.image_projector = Projector(self.backbone.encoder_channels, proj.hidden, proj.out) \
            if loss.image > 0 else None
        self.target_stage_projectors = copy.deepcopy(self.stage_projectors)
        self.target_image_projector = copy.deepcopy(self.image_projector)
        for target in (self.target_backbone, self.target_projector, self.target_stage_projectors,
                       self.target_image_projector):
            if target is not None:
                target.requires_grad_(False)
        self.bn_per_view = cfg.bn_per_view
        self.window = cfg.ppm.window
        self.gamma = cfg.ppm.gamma
        self.loss_cfg = cfg.loss

    def online_pairs(self):
        pairs = [(self.backbone, self.target_backbone), (self.projector, self.target_projector)]
        if self.stage_layers:
            pairs.append((self.stage_projectors, self.target_stage_projectors))
        if self.image_projector is not None:
            pairs.append((self.image_projector, self.target_image_projector))
        return tuple(pairs)

    def forward(self, views1: Tensor, views2: Tensor, pairs: PixelPairs, normaliser: Optional[Tensor] = None,
                coarse_pairs: Optional[PixelPairs] = None, diagnose: bool = False,
                stage_pairs: tuple[StagePairs, ...] = ()) -> LossTerms:
        """views1, views2 (B, 3, h, w) -> the loss terms over the pairs (divided by `normaliser` ()
        instead of the batch's valid-pair count when given). `coarse_pairs` index the pooled map
        (h / coarse_stride, w / coarse_stride) and are needed when the coarse term is on;
        `stage_pairs` index each of LossConfig.stage_layers' maps when the stage term is on.
        `diagnose` adds Diagnostics."""
        views = torch.cat([views1, views2])  # (2B, 3, h, w)
        sizes = self.bn_groups(len(views))  # one backbone call per network, or per view and network
        # The coarsest stage is tapped on diagnosing steps too, for coarse_image_share.
        extra = (self.coarsest,) if diagnose and self.coarsest not in self.stage_layers else ()
        online = self._tapped(self.backbone, views, sizes, extra)  # output (2B, C, h, w) + stages + encoder top
        with torch.no_grad():
            target = self._tapped(self.target_backbone, views, sizes)
        terms = self.loss_from_maps(online.output, target.output, pairs, normaliser, coarse_pairs, diagnose)
        total, diagnostics = terms.total, terms.diagnostics
        stages = image = total.new_zeros((), dtype=torch.float32)
        stage_gap = image_gap = None
        if self.stage_layers:
            if {entry.layer for entry in stage_pairs} != set(self.stage_layers):
                raise ValueError(f"pretrain.loss.stages > 0 needs pairs for stages {list(self.stage_layers)}")
            stages, stage_gap = self._stage_term(online, target, stage_pairs, diagnose)
            total = total + self.loss_cfg.stages * stages
        if self.image_projector is not None:
            image, image_gap = self._image_term(online.encoder_top, target.encoder_top, diagnose)
            total = total + self.loss_cfg.image * image
        if diagnostics is not None:
            coarsest_map = online.stages[self.coarsest].detach()  # (2B, C_1, h / 16, w / 16)
            # One group per view: each view is a sample of its image's content.
            view_of_bin = torch.arange(len(coarsest_map), device=coarsest_map.device) \
                .repeat_interleave(coarsest_map[0, 0].numel())
            share = between_group_share(coarsest_map.permute(0, 2, 3, 1).flatten(0, 2), view_of_bin)
            diagnostics = diagnostics._replace(stage_partner_gap=stage_gap, image_partner_gap=image_gap,
                                               coarse_image_share=share)
        return terms._replace(total=total, stages=stages.detach(), image=image.detach(), diagnostics=diagnostics)

    def _tapped(self, backbone: nn.Module, views: Tensor, sizes: list[int], extra: tuple[int, ...] = ()) -> TappedMaps:
        """forward_tapped over consecutive BatchNorm groups of `views` (2B, 3, h, w), concatenated;
        `extra` stages are tapped beside the stage term's."""
        wants_top = self.image_projector is not None
        layers = (*self.stage_layers, *extra)
        parts = [forward_tapped(backbone, group, layers, wants_top) for group in views.split(sizes)]
        if len(parts) == 1:
            return parts[0]
        return TappedMaps(torch.cat([p.output for p in parts]),
                          {layer: torch.cat([p.stages[layer] for p in parts]) for layer in layers},
                          torch.cat([p.encoder_top for p in parts]) if wants_top else None)

    def _stage_term(self, online: TappedMaps, target: TappedMaps, stage_pairs: tuple[StagePairs, ...],
                    diagnose: bool) -> tuple[Tensor, Optional[Tensor]]:
        """Pixel InfoNCE on each decoder stage's own grid, through that stage's projector (no PPM:
        a coarse bin already averages a region) -> (mean over stages (), mean partner gap or None)."""
        losses, gaps = [], []
        for entry in stage_pairs:
            key = str(entry.layer)
            index = torch.cat([entry.pairs.index1, entry.pairs.index2])  # (2B, P)
            query = self.project_pixels(self.stage_projectors[key], online.stages[entry.layer], index)  # (2B, P, D)
            with torch.no_grad():
                keys = self.project_pixels(self.target_stage_projectors[key], target.stages[entry.layer], index)
            losses.append(self.contrast_loss(query, keys.float(), entry.pairs, entry.normaliser))
            if diagnose:
                gaps.append(pair_partner_gap(query, keys, entry.pairs.valid))
        gap = torch.stack(gaps).mean() if gaps else None
        return torch.stack(losses).mean(), gap

    def _image_term(self, online_top: Tensor, target_top: Tensor, diagnose: bool) -> tuple[Tensor, Optional[Tensor]]:
        """online_top, target_top (2B, C_enc, h / 32, w / 32), view 1 first -> image InfoNCE over the
        pooled maps (), and its partner gap when diagnosing."""
        pooled = online_top.float().mean(dim=(2, 3))  # (2B, C_enc)
        sizes = self.bn_groups(len(pooled))
        query = self._grouped(self.image_projector, pooled, sizes)  # (2B, D)
        with torch.no_grad():
            keys = self._grouped(self.target_image_projector, target_top.float().mean(dim=(2, 3)), sizes)
        query1, query2 = query.float().chunk(2)
        key1, key2 = keys.float().chunk(2)
        loss = image_contrast_loss(query1, key2, query2, key1, self.loss_cfg.temperature)
        gap = image_partner_gap(query1.detach(), key2, query2.detach(), key1) if diagnose else None
        return loss, gap

    def loss_from_maps(self, online_map: Tensor, target_map: Tensor, pairs: PixelPairs,
                       normaliser: Optional[Tensor] = None, coarse_pairs: Optional[PixelPairs] = None,
                       diagnose: bool = False) -> LossTerms:
        """The pixel head: online_map, target_map (2B, C, h, w) of the stacked views -> LossTerms
        (the stage and image terms 0)."""
        cfg = self.loss_cfg
        consistency, contrast, online, target = self._pair_terms(online_map, target_map, pairs, normaliser,
                                                                 self.window)
        diagnostics = self.diagnostics(online_map, online, target, pairs) if diagnose else None
        total = cfg.consistency * consistency + cfg.contrast * contrast
        coarse = total.new_zeros(())
        if cfg.coarse > 0:
            if coarse_pairs is None:
                raise ValueError("pretrain.loss.coarse > 0 needs coarse_pairs on the pooled map")
            # Average pooling keeps the map differentiable and gives bins of stride x stride
            # pixels: positives then mean "the same region", the scale of the paper's 7x7 maps.
            coarse_online = F.avg_pool2d(online_map, cfg.coarse_stride)  # (2B, C, h / s, w / s)
            coarse_target = F.avg_pool2d(target_map, cfg.coarse_stride)
            coarse_terms = self._pair_terms(coarse_online, coarse_target, coarse_pairs, None, None)[:2]
            coarse = cfg.consistency * coarse_terms[0] + cfg.contrast * coarse_terms[1]
            total = total + cfg.coarse * coarse
        zero = total.new_zeros((), dtype=torch.float32)
        return LossTerms(total, consistency.detach(), contrast.detach(), coarse.detach(), zero, zero, diagnostics)

    def _pair_terms(self, online_map: Tensor, target_map: Tensor, pairs: PixelPairs,
                    normaliser: Optional[Tensor], window: Optional[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Over the pairs of one map pair (2B, C, h, w): (consistency (), contrast (), online PPM
        output (2B, P, D), target projections (2B, P, D)); a term whose weight is 0 is 0."""
        cfg = self.loss_cfg
        index = torch.cat([pairs.index1, pairs.index2])  # (2B, P), rows match the stacked views
        # Both views in one propagate(): the gather's backward then writes the single dense map
        # gradient the backbone needs anyway, instead of one per view plus their concatenation.
        online = self.propagate(online_map, index, groups=2, window=window)  # (2B, P, D), BN per view
        with torch.no_grad():
            target = self.project_target(target_map, index)
        zero = online.new_zeros((), dtype=torch.float32)
        consistency = self.pair_loss(online, target, pairs.valid, normaliser) if cfg.consistency > 0 else zero
        contrast = self.contrast_loss(online, target, pairs, normaliser) if cfg.contrast > 0 else zero
        return consistency, contrast, online, target

    def contrast_loss(self, online: Tensor, target: Tensor, pairs: PixelPairs,
                      normaliser: Optional[Tensor] = None) -> Tensor:
        """online, target (2B, P, D), view 1 first -> pixel InfoNCE (scalar); negatives are
        the other pairs' targets of both views in the batch, or in the same image
        (loss.negatives: image)."""
        online1, online2 = online.float().chunk(2)
        target1, target2 = target.chunk(2)
        same_place = (pairs.index1[:, :, None] == pairs.index1[:, None, :]) \
            | (pairs.index2[:, :, None] == pairs.index2[:, None, :])  # (B, P, P)
        return pixel_contrast_loss(online1, target2, online2, target1, pairs.valid, same_place,
                                   self.loss_cfg.temperature, normaliser, self.loss_cfg.negatives == "image")

    @torch.no_grad()
    def diagnostics(self, online_map: Tensor, online: Tensor, target: Tensor, pairs: PixelPairs) -> Diagnostics:
        """online_map (2B, C, h, w); online PPM outputs and target projections (2B, P, D) at the
        pairs, view 1 first -> Diagnostics."""
        index = torch.cat([pairs.index1, pairs.index2])  # (2B, P)
        valid = pairs.valid.repeat(2, 1)  # (2B, P)
        gap = pair_partner_gap(online, target, pairs.valid)
        features = F.normalize(gather_pixels(online_map, index).float(), dim=-1)[valid]  # (N, C)
        return Diagnostics(gap, features.std(dim=0).mean(), effective_rank(features))

    def project_target(self, target_map: Tensor, index: Tensor) -> Tensor:
        """target_map (2B, C, h, w), index (2B, P) -> target projections (2B, P, D), float32."""
        return self.project_pixels(self.target_projector, target_map, index).float()

    def project_pixels(self, projector: nn.Module, feature_map: Tensor, index: Tensor) -> Tensor:
        """feature_map (2B, C, h, w), index (2B, P) -> projector(pixels) (2B, P, D). BatchNorm
        statistics are per view with bn_per_view, else joint over both views."""
        pixels = gather_pixels(feature_map, index)  # (2B, P, C)
        rows = pixels.flatten(0, 1)  # (2BP, C), view 1's pixels first
        return self._grouped(projector, rows, self.bn_groups(len(rows))).view(*pixels.shape[:2], -1)

    @staticmethod
    def pair_loss(online: Tensor, target: Tensor, valid: Tensor, normaliser: Optional[Tensor] = None) -> Tensor:
        """online, target (2B, P, D) with view 1 in the first half; valid (B, P) -> scalar.

        Symmetric: view 1's propagated features predict view 2's target, and vice versa.
        """
        online1, online2 = online.float().chunk(2)
        target1, target2 = target.chunk(2)
        return pixpro_pair_loss(online1, target2, online2, target1, valid, normaliser)

    def propagate(self, features: Tensor, index: Tensor, groups: int = 1, window: Optional[int] = -1) -> Tensor:
        """features (B, C, h, w), index (B, P) -> PPM output y (B, P, D) at those pixels.

        The batch is `groups` equal chunks (forward passes 2: the views) whose pixels get their own
        BatchNorm statistics in the projector and g(), as if each chunk were projected alone.
        `window` overrides pretrain.ppm.window (None = global PPM); -1 keeps it.
        """
        batch, _, height, width = features.shape
        window = self.window if window == -1 else window
        if window is None:
            pixels = features.flatten(2).transpose(1, 2).flatten(0, 1)  # (B*hw, C)
            sizes = [len(pixels) // groups] * groups
            projected = self._grouped(self.projector, pixels, sizes).view(batch, height * width, -1)
            unit = F.normalize(projected, dim=-1)
            centre = unit.gather(1, index[..., None].expand(-1, -1, unit.shape[-1]))  # (B, P, D)
            values = self._propagated_values(projected.flatten(0, 1), sizes).view(batch, height * width, -1)
            return self._transform_sum(global_propagation(centre, unit, values, self.gamma))

        window_index, inside = window_indices(index, (height, width), window)  # (B, P, K)
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
        centre_slot = (window // 2) * window + window // 2
        centre = unit[inverse[:, :, centre_slot]]  # (B, P, D)
        out = local_propagation(centre.flatten(0, 1), unit[inverse].flatten(0, 1), values[inverse].flatten(0, 1),
                                inside.flatten(0, 1), self.gamma)  # (B*P, D or D + 1)
        return self._transform_sum(out).view(batch, index.shape[1], -1)

    def bn_groups(self, rows: int) -> list[int]:
        """Row counts of the BatchNorm groups for `rows` rows holding view 1 then view 2: both
        views together, or each alone with bn_per_view."""
        return [rows // 2] * 2 if self.bn_per_view else [rows]

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
