"""A pretrained backbone that people can take away: export in its library's own format, load in one call.

- `smp_unet`: segmentation-models-pytorch's `save_pretrained` folder (`config.json` +
  `model.safetensors`), so `segmentation_models_pytorch.from_pretrained(DIR)` returns an
  `smp.Unet` whose output is pixpro's per-pixel features: its segmentation head is a 3x3 conv
  set to the identity (smp's head has no other shape), with `classes` = feature channels.
- `unet` (the classic UNet): `model.safetensors` with the backbone's own weight names, and
  `pixpro_backbone.json` giving the constructor: `ClassicUNet(widths, dim)` from
  `pixpro.model.backbone`.

Both folders also hold `pixpro_backbone.json` (the backbone config and where it came from), which
is what `load_backbone` reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pixpro.checkpoint import load_checkpoint
from pixpro.config import backbone_from_dict
from pixpro.errors import CheckpointError, ConfigError
from pixpro.io import atomic_directory
from pixpro.model.backbone import build_backbone

PIXPRO_CONFIG = "pixpro_backbone.json"
WEIGHTS = "model.safetensors"


def read_backbone_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """models/backbone.pt -> (backbone state dict, backbone config dict, provenance); a clear
    error for any other file."""
    state = load_checkpoint(path, "pretrain")
    if "backbone" not in state or "backbone_config" not in state:
        raise CheckpointError(f"{path} is not a pretrained backbone (no 'backbone' weights and config); "
                              f"export models/backbone.pt, written by `dvc repro pretrain`")
    provenance = {key: state.get(key) for key in ("seed", "step", "git")}
    return state["backbone"], state["backbone_config"], provenance


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
    """Write models/backbone.pt's backbone into `out` (replaced atomically) in its library's format."""
    from safetensors.torch import save_file

    weights, config, provenance = read_backbone_checkpoint(checkpoint)
    backbone_from_dict(config)  # validates the saved config before anything is written
    with atomic_directory(out) as tmp:
        if config["arch"] == "smp_unet":
            model = smp_model(config)
            missing, unexpected = model.load_state_dict(weights, strict=False)
            if unexpected or any(not key.startswith("segmentation_head.") for key in missing):
                raise CheckpointError(f"{checkpoint}: its weights do not fit an smp Unet with its own config")
            model.save_pretrained(str(tmp))
        else:
            save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / WEIGHTS))
        (tmp / PIXPRO_CONFIG).write_text(json.dumps({"backbone_config": config, **provenance}, indent=2) + "\n")
    return out


def load_backbone(path: str | Path) -> nn.Module:
    """models/backbone.pt or an export folder -> pixpro's backbone, eval mode, on the CPU:
    (B, 3, H, W) -> (B, dim, H, W) with H, W divisible by the architecture's downsampling."""
    path = Path(path)
    if path.is_dir():
        weights, config = _read_export(path)
    else:
        weights, config, _ = read_backbone_checkpoint(path)
    try:
        model = build_backbone(backbone_from_dict(config))
    except (ConfigError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: its backbone config is not one pixpro builds ({err})") from None
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise CheckpointError(f"{path}: its weights were written by another architecture than its config "
                              f"({config.get('arch')}) describes: {first}") from None
    return model.eval()


def _read_export(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors.torch import load_file

    config_file, weights_file = folder / PIXPRO_CONFIG, folder / WEIGHTS
    if not config_file.is_file() or not weights_file.is_file():
        raise CheckpointError(f"{folder} is not a pixpro export (needs {PIXPRO_CONFIG} and {WEIGHTS}); "
                              f"write one with `pixpro export`")
    config = json.loads(config_file.read_text())["backbone_config"]
    weights = load_file(str(weights_file))
    # An smp export holds the identity segmentation head too; pixpro's backbone has none.
    return {k: v for k, v in weights.items() if not k.startswith("segmentation_head.")}, config
