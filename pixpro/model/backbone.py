"""UNet backbones that return one feature vector per input pixel: (B, 3, H, W) -> (B, dim, H, W)."""

from __future__ import annotations

from typing import NamedTuple

import segmentation_models_pytorch as smp
import torch
from torch import Tensor, nn

from pixpro.config import BackboneConfig


class SmpUNet(nn.Module):
    """segmentation-models-pytorch Unet without its segmentation head; random init, no download.

    The decoder's last (full-resolution) stage has `dim` channels and is the output.
    """

    def __init__(self, encoder: str, decoder_channels: tuple[int, ...], dim: int):
        super().__init__()
        net = smp.Unet(encoder_name=encoder, encoder_weights=None,
                       decoder_channels=(*decoder_channels, dim), classes=1)
        self.encoder = net.encoder
        self.decoder = net.decoder

    def forward(self, images: Tensor) -> Tensor:
        features = self.encoder(images)  # list: input, then 1/2 ... 1/32 resolution
        return self.decoder(features)  # (B, dim, H, W)

    @property
    def encoder_channels(self) -> int:
        """Channels of the deepest encoder map (1/32 resolution)."""
        return self.encoder.out_channels[-1]


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class ClassicUNet(nn.Module):
    """The original UNet (Ronneberger et al. 2015) with BN: double convs, max-pool down,
    transposed-conv up, skip concatenation; widths e.g. (64, 128, 256, 512, 1024)."""

    def __init__(self, widths: tuple[int, ...], dim: int):
        super().__init__()
        self.down = nn.ModuleList()
        c_in = 3
        for width in widths:
            self.down.append(_double_conv(c_in, width))
            c_in = width
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for deep, shallow in zip(widths[::-1][:-1], widths[::-1][1:]):
            self.up.append(nn.ConvTranspose2d(deep, shallow, 2, stride=2))
            self.merge.append(_double_conv(2 * shallow, shallow))
        self.head = nn.Conv2d(widths[0], dim, 1)

    def forward(self, images: Tensor) -> Tensor:
        skips = []
        x = images
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else nn.functional.max_pool2d(x, 2))  # (B, w_i, H/2^i, W/2^i)
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, skips[-2::-1]):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)  # (B, dim, H, W)

    @property
    def encoder_channels(self) -> int:
        """Channels of the deepest encoder map (the bottom of the U)."""
        return self.down[-1][-2].num_features  # the double conv's last BatchNorm


def build_backbone(cfg: BackboneConfig) -> nn.Module:
    if cfg.arch == "smp_unet":
        return SmpUNet(cfg.encoder, tuple(cfg.decoder_channels), cfg.dim)
    return ClassicUNet(tuple(cfg.widths), cfg.dim)


def decoder_stage_modules(backbone: nn.Module) -> list[nn.Module]:
    """The modules whose outputs are the decoder stages, coarse to fine (BackboneConfig.stage_channels)."""
    if isinstance(backbone, SmpUNet):
        return list(backbone.decoder.blocks)
    if isinstance(backbone, ClassicUNet):
        return [*backbone.merge, backbone.head]
    raise TypeError(f"no decoder stages known for {type(backbone).__name__}")


def encoder_top_module(backbone: nn.Module) -> nn.Module:
    """The module whose output is (or ends with) the deepest encoder map."""
    if isinstance(backbone, SmpUNet):
        return backbone.encoder  # returns a list of maps, deepest last
    if isinstance(backbone, ClassicUNet):
        return backbone.down[-1]
    raise TypeError(f"no encoder known for {type(backbone).__name__}")


class TappedMaps(NamedTuple):
    """One backbone pass with the intermediate maps the losses read."""

    output: Tensor  # (B, dim, H, W)
    stages: dict[int, Tensor]  # decoder stage l (negative, as probe.layers) -> (B, C_l, H / s_l, W / s_l)
    encoder_top: Tensor | None  # (B, C_enc, H / 32, W / 32), when asked for


def forward_tapped(backbone: nn.Module, images: Tensor, stage_layers: tuple[int, ...] = (),
                   encoder_top: bool = False) -> TappedMaps:
    """backbone(images) that also returns decoder stages and the deepest encoder map, with their
    autograd graphs. Hooks live only for this call, so a deep copy of the backbone (the momentum
    target) never shares them."""
    kept: dict[int, Tensor] = {}
    modules = decoder_stage_modules(backbone)
    handles = []
    for layer in stage_layers:
        def keep(module: nn.Module, inputs: tuple, output: Tensor, layer: int = layer) -> None:
            kept[layer] = output
        handles.append(modules[layer].register_forward_hook(keep))
    if encoder_top:
        def keep_top(module: nn.Module, inputs: tuple, output) -> None:
            kept[0] = output[-1] if isinstance(output, (list, tuple)) else output
        handles.append(encoder_top_module(backbone).register_forward_hook(keep_top))
    try:
        output = backbone(images)
    finally:
        for handle in handles:
            handle.remove()
    top = kept.pop(0, None)
    return TappedMaps(output, kept, top)
