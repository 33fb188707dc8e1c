"""A pretrained backbone that people can take away: export in its library's own format, load in one call.

- `smp_unet`: segmentation-models-pytorch's `save_pretrained` folder (`config.json` +
  `model.safetensors`), so `segmentation_models_pytorch.from_pretrained(DIR)` returns an
  `smp.Unet` whose output is pixpro's per-pixel features: its segmentation head is a 3x3 conv
  set to the identity (smp's head has no other shape), with `classes` = feature channels.
- `unet` (the classic UNet): `model.safetensors` with the backbone's own weight names, and
  `pixpro_backbone.json` giving the constructor: `ClassicUNet(widths, dim)` from
  `pixpro.model.backbone`.

Both folders also hold `pixpro_backbone.json`: the backbone config, where it came from, and its
`preprocessing`: `mean` and `std` (ImageNet's), `input_range` [0, 1] (uint8 / 255 before
normalising), `input_space` RGB and `l2_normalize` (the probe reads unit-length features).
Feeding 0-255 tensors, or skipping the normalisation, gives other features than the probe saw.

`pixpro.load_backbone` reads an export folder or models/backbone.pt and applies that preprocessing:

```python
import pixpro
from PIL import Image

backbone = pixpro.load_backbone("models/backbone.pt")    # or a `pixpro export` folder
image = backbone.preprocess(Image.open("frame.png"))     # (1, 3, H, W): RGB / 255, ImageNet mean and std
features = backbone.features(image)                      # (1, dim, H, W), unit length per pixel
```

H and W must be divisible by `backbone.config.downsampling` (32 for smp_unet): resize the image
first, as `pixpro prepare` does. `backbone.module` is the plain `nn.Module` (normalised images in,
features before the L2 normalisation out) to put under your own head and fine-tune.
The features are the probe's when `probe.layers` is `[-1]` (the default): the output stage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from pixpro.backbone_file import PIXPRO_CONFIG, WEIGHTS, Preprocessing, build_from_file, read_backbone_file
from pixpro.config import BackboneConfig, backbone_from_dict
from pixpro.features import embed
from pixpro.io import atomic_directory

__all__ = ["PIXPRO_CONFIG", "WEIGHTS", "PretrainedBackbone", "export_backbone_dir", "load_backbone"]


def identity_head(model: nn.Module) -> None:
    """Set smp's segmentation head (3x3 conv, channels -> channels) to pass its input through."""
    conv = model.segmentation_head[0]
    with torch.no_grad():
        conv.weight.zero_()
        centre = conv.kernel_size[0] // 2, conv.kernel_size[1] // 2
        conv.weight[torch.arange(conv.out_channels), torch.arange(conv.in_channels), centre[0], centre[1]] = 1.0
        conv.bias.zero_()


def smp_model(config: dict[str, Any]) -> nn.Module:
    """The smp.Unet that equals pixpro's SmpUNet with `config` (random weights, identity head)."""
    import segmentation_models_pytorch as smp

    model = smp.Unet(encoder_name=config["encoder"], encoder_weights=None,
                     decoder_channels=(*config["decoder_channels"], config["dim"]), classes=config["dim"])
    identity_head(model)
    return model


def export_backbone_dir(checkpoint: Path, out: Path) -> Path:
    """Write models/backbone.pt's backbone into `out` (replaced atomically) in its library's format,
    with its preprocessing recorded in pixpro_backbone.json."""
    from safetensors.torch import save_file

    file = read_backbone_file(checkpoint)
    config = file.config
    build_from_file(file)  # checks the config and that the weights fit it, before anything is written
    with atomic_directory(out) as tmp:
        if config["arch"] == "smp_unet":
            model = smp_model(config)
            missing, unexpected = model.load_state_dict(file.weights, strict=False)
            # SmpUNet is smp.Unet without its head, so only the head can be missing.
            assert not unexpected and all(key.startswith("segmentation_head.") for key in missing), missing
            model.save_pretrained(str(tmp))
        else:
            save_file({k: v.contiguous() for k, v in file.weights.items()}, str(tmp / WEIGHTS))
        record = {"backbone_config": config, **file.provenance, "preprocessing": file.preprocessing.to_dict()}
        (tmp / PIXPRO_CONFIG).write_text(json.dumps(record, indent=2) + "\n")
    return out


@dataclass(frozen=True)
class PretrainedBackbone:
    """A pretrained backbone with the preprocessing it was trained with (see the module docstring)."""

    module: nn.Module  # eval mode, CPU: (B, 3, H, W) normalised -> (B, dim, H, W)
    config: BackboneConfig
    preprocessing: Preprocessing

    def preprocess(self, image: Image.Image | np.ndarray) -> Tensor:
        """PIL image or (H, W, 3) uint8 RGB array -> (1, 3, H, W) float32: scaled to [0, 1], then
        normalised with the recorded mean and std. No resizing."""
        return self.preprocessing.apply(image)[None]

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) preprocessed images, H and W divisible by config.downsampling ->
        (B, dim, H, W) float32 features, unit length per pixel when preprocessing.l2_normalize."""
        side = self.config.downsampling
        if images.shape[-2] % side or images.shape[-1] % side:
            raise ValueError(f"image size {tuple(images.shape[-2:])} is not divisible by {side}; "
                             f"resize it first")
        return embed(self.module, images) if self.preprocessing.l2_normalize else self.module(images).float()


def load_backbone(path: str | Path) -> PretrainedBackbone:
    """models/backbone.pt or an export folder -> the backbone (eval mode, CPU) and its preprocessing."""
    file = read_backbone_file(path)
    return PretrainedBackbone(build_from_file(file).eval(), backbone_from_dict(file.config), file.preprocessing)
