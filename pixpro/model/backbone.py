"""UNet backbones that return one feature vector per input pixel: (B, 3, H, W) -> (B, dim, H, W)."""

from __future__ import annotations

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


def build_backbone(cfg: BackboneConfig) -> nn.Module:
    if cfg.arch == "smp_unet":
        return SmpUNet(cfg.encoder, tuple(cfg.decoder_channels), cfg.dim)
    return ClassicUNet(tuple(cfg.widths), cfg.dim)
