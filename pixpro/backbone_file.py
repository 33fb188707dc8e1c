"""The one reader of pretrained backbones: `models/backbone.pt` (written by `pixpro pretrain`) and
`pixpro export` folders, with one set of checks and messages for every user of them (the
evaluation stages, export, predict, `pixpro.load_backbone` and `pretrain.init`).

Also how images become backbone inputs (`Preprocessing`): pixpro trains and evaluates on RGB
scaled to [0, 1] and normalised with ImageNet's mean and std, and the probe and retrieval read
L2-normalised features. An export records this; a backbone.pt implies it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from pixpro.checkpoint import first_difference, load_checkpoint, lookup
from pixpro.config import BackboneConfig, backbone_from_dict
from pixpro.config_base import to_dict
from pixpro.data.views import IMAGENET_MEAN, IMAGENET_STD
from pixpro.errors import CheckpointError, ConfigError
from pixpro.model.backbone import build_backbone

PIXPRO_CONFIG = "pixpro_backbone.json"
WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB image becomes a backbone input, and what the probe does to the output.

    The names follow smp's and timm's encoder settings (`input_space`, `input_range`, `mean`, `std`).
    """

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_range: tuple[float, float] = (0.0, 1.0)  # uint8 / 255, before subtracting the mean
    input_space: str = "RGB"
    l2_normalize: bool = True  # the probe and retrieval see unit-length per-pixel features

    def to_dict(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: Path) -> "Preprocessing":
        try:
            made = cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in raw.items()})
        except TypeError as err:
            raise CheckpointError(f"{where}: its preprocessing record is not one pixpro writes ({err})") from None
        if made.input_space != "RGB" or tuple(made.input_range) != (0.0, 1.0):
            raise CheckpointError(f"{where}: input_space {made.input_space} with input_range "
                                  f"{list(made.input_range)} is not supported (pixpro feeds RGB in [0, 1])")
        return made

    def apply(self, image: Image.Image | np.ndarray) -> Tensor:
        """PIL image or (H, W, 3) uint8 RGB array -> (3, H, W) float32, scaled and normalised."""
        return TF.normalize(unit_range(image), list(self.mean), list(self.std))


def unit_range(image: Image.Image | np.ndarray) -> Tensor:
    """PIL image (converted to RGB) or (H, W, 3) uint8 array -> (3, H, W) float32 in [0, 1]."""
    if isinstance(image, Image.Image):
        pixels = TF.pil_to_tensor(image.convert("RGB"))  # (3, H, W) uint8
    else:
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {array.dtype} {array.shape}")
        pixels = torch.from_numpy(array.copy()).permute(2, 0, 1)  # copy: the array may be read-only
    return TF.to_dtype(pixels, torch.float32, scale=True)


class BackboneFile(NamedTuple):
    """What a backbone file or export folder holds."""

    path: Path
    weights: dict[str, Tensor]  # the backbone's state dict (pixpro.model.backbone names)
    config: dict[str, Any]  # the BackboneConfig it was trained with, as a dict
    provenance: dict[str, Any]  # seed, step and git revision of the pretraining run
    preprocessing: Preprocessing


def read_backbone_file(path: str | Path) -> BackboneFile:
    """models/backbone.pt or a `pixpro export` folder, checked to hold a backbone and its config."""
    path = Path(path)
    if path.is_dir():
        return _read_export(path)
    state = load_checkpoint(path, "pretrain")  # missing or corrupt: says to run `dvc repro pretrain`
    if not isinstance(state.get("backbone"), dict) or not isinstance(state.get("backbone_config"), dict):
        raise CheckpointError(f"{path} is not a pretrained backbone (no 'backbone' weights and config); "
                              f"use models/backbone.pt, written by `dvc repro pretrain`")
    provenance = {key: state.get(key) for key in ("seed", "step", "git")}
    return BackboneFile(path, state["backbone"], state["backbone_config"], provenance, Preprocessing())


def _read_export(folder: Path) -> BackboneFile:
    from safetensors.torch import load_file

    record_file, weights_file = folder / PIXPRO_CONFIG, folder / WEIGHTS
    if not record_file.is_file() or not weights_file.is_file():
        raise CheckpointError(f"{folder} is not a pixpro export (needs {PIXPRO_CONFIG} and {WEIGHTS}); "
                              f"write one with `pixpro export`")
    try:
        record = json.loads(record_file.read_text())
        config = record["backbone_config"]
        weights = load_file(str(weights_file))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{folder} is a damaged pixpro export ({type(err).__name__}: {err}); "
                              f"write it again with `pixpro export`") from None
    # An export written before preprocessing was recorded used pixpro's only preprocessing.
    preprocessing = Preprocessing.from_dict(record.get("preprocessing", {}), record_file)
    provenance = {key: record.get(key) for key in ("seed", "step", "git")}
    # An smp export holds the identity segmentation head too; pixpro's backbone has none.
    weights = {k: v for k, v in weights.items() if not k.startswith("segmentation_head.")}
    return BackboneFile(folder, weights, config, provenance, preprocessing)


def require_config(file: BackboneFile, expected: BackboneConfig,
                   advice: str = "rerun `dvc repro pretrain`") -> None:
    """Stop when the file was trained with another backbone config than `expected` (params.yaml's)."""
    wanted = to_dict(expected)
    changed = first_difference(file.config, wanted)
    if changed:
        raise CheckpointError(
            f"{file.path} was trained with pretrain.backbone.{changed} = {lookup(file.config, changed)!r} but "
            f"params.yaml has {lookup(wanted, changed)!r}; {advice}")


def build_from_file(file: BackboneFile) -> nn.Module:
    """The backbone the file describes with its weights loaded, in train mode, as built."""
    try:
        model = build_backbone(backbone_from_dict(file.config))
    except (ConfigError, KeyError, TypeError) as err:
        raise CheckpointError(f"{file.path}: its backbone config is not one pixpro builds ({err})") from None
    try:
        model.load_state_dict(file.weights)
    except RuntimeError as err:
        lines = str(err).splitlines()
        first = lines[1].strip() if len(lines) > 1 else str(err)
        raise CheckpointError(f"{file.path}: its weights were written by another architecture than its config "
                              f"({file.config.get('arch')}) describes: {first}") from None
    return model
