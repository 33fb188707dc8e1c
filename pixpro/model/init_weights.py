"""`pretrain.init`: start pretraining from weights you have, then continue self-supervised on your
own images (domain-adaptive pretraining). Loaded into the online backbone before the momentum
target copies it, so both networks start from them.

What `pretrain.init` may name:
- `imagenet`: smp's own encoder weights for `pretrain.backbone.encoder` (smp downloads them);
- a `pixpro export` folder or a `models/backbone.pt`: the whole backbone, whose config must equal
  `pretrain.backbone`;
- a state-dict file (`torch.save` of a dict of tensors, or `.safetensors`) of
  - the whole backbone (`backbone.state_dict()` names),
  - an smp encoder (`model.backbone.encoder.state_dict()` names), or
  - a torchvision or timm classifier for the smp encoder of the same name (smp's ResNets use
    torchvision's names; the classifier, e.g. `fc.*`, is dropped; a `tu-` encoder's timm names
    are matched under its `model.` prefix).

Every key must fit: names the target does not have, or shapes that differ, stop with one line
naming the first few.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from torch import Tensor, nn

from pixpro.backbone_file import read_backbone_file, require_config
from pixpro.config import BackboneConfig
from pixpro.errors import CheckpointError, ConfigError

IMAGENET = "imagenet"
# Classifier heads of torchvision/timm/pretrainedmodels networks, which smp's encoders delete.
CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.", "last_linear.")
SHOWN = 3  # keys named in an error


def load_init_weights(backbone: nn.Module, spec: str | None, config: BackboneConfig) -> None:
    """Load `pretrain.init` (see the module docstring) into `backbone`, built from `config`, in place.
    None keeps the random init."""
    if spec is None:
        return
    if spec == IMAGENET:
        _load_smp_imagenet(backbone, config)
        return
    path = Path(spec)
    if path.is_dir():
        _load_backbone_file(backbone, path, config)
        return
    state = _read_weights_file(path)
    if isinstance(state, dict) and "backbone" in state and "backbone_config" in state:  # a backbone.pt
        _load_backbone_file(backbone, path, config)
        return
    for key in ("state_dict", "model"):  # how training scripts commonly nest the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"pretrain.init {path} is not a state dict (a dict of tensors), a backbone.pt "
                              f"or a pixpro export")
    module, fitted, what = _best_target(backbone, state, config, path)
    _load_checked(module, fitted, f"pretrain.init {path}", what)


def _load_smp_imagenet(backbone: nn.Module, config: BackboneConfig) -> None:
    import segmentation_models_pytorch as smp

    if config.arch != "smp_unet":
        raise ConfigError(f"pretrain.init = {IMAGENET} needs pretrain.backbone.arch smp_unet, not {config.arch}")
    # timm-universal encoders take True: their weights are named in the encoder name itself.
    weights = True if config.encoder.startswith("tu-") else IMAGENET
    try:
        encoder = smp.encoders.get_encoder(config.encoder, in_channels=3, depth=5, weights=weights)
    except KeyError:
        raise ConfigError(f"pretrain.init = {IMAGENET}: smp has no {IMAGENET} weights for encoder "
                          f"{config.encoder}") from None
    except OSError as err:  # no network, or the hub refused
        raise CheckpointError(f"pretrain.init = {IMAGENET}: smp could not download the {config.encoder} "
                              f"weights ({type(err).__name__}); download them elsewhere and set pretrain.init "
                              f"to the file") from None
    _load_checked(backbone.encoder, encoder.state_dict(), f"pretrain.init = {IMAGENET}",
                  f"smp {config.encoder} encoder")


def _load_backbone_file(backbone: nn.Module, path: Path, config: BackboneConfig) -> None:
    file = read_backbone_file(path)
    require_config(file, config, advice=f"set pretrain.backbone to match pretrain.init {path}")
    _load_checked(backbone, file.weights, f"pretrain.init {path}", f"{config.arch} backbone")


def _read_weights_file(path: Path) -> object:
    """What `path` holds: safetensors' dict of tensors, or torch.load's object (tensors and plain
    containers only: weights_only never runs code from a file someone else wrote)."""
    if not path.is_file():
        raise ConfigError(f"pretrain.init = {str(path)!r} is not a file, a pixpro export folder or {IMAGENET!r}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"pretrain.init {path} is not a weights file that torch.load (weights_only) or "
                              f"safetensors reads ({type(err).__name__})") from None


def _best_target(backbone: nn.Module, weights: dict[str, Tensor], config: BackboneConfig,
                 path: Path) -> tuple[nn.Module, dict[str, Tensor], str]:
    """The module the weights are meant for: the whole backbone, or its smp encoder (with a
    timm-universal encoder's `model.` prefix added); the one sharing the most key names."""
    candidates = [(backbone, weights, f"{config.arch} backbone")]
    if config.arch == "smp_unet":
        what = f"smp {config.encoder} encoder"
        candidates += [(backbone.encoder, weights, what),
                       (backbone.encoder, {f"model.{k}": v for k, v in weights.items()}, what)]
    shared = [len(named.keys() & module.state_dict().keys()) for module, named, _ in candidates]
    if max(shared) == 0:
        targets = " or the ".join(dict.fromkeys(what for _, _, what in candidates))
        raise CheckpointError(f"pretrain.init {path} shares no weight name with the {targets} "
                              f"(its first: {', '.join(list(weights)[:SHOWN])})")
    return candidates[shared.index(max(shared))]


def _load_checked(module: nn.Module, weights: dict[str, Tensor], source: str, what: str) -> None:
    """module.load_state_dict(weights) that first names the keys that do not fit, if any."""
    own = module.state_dict()
    weights = {k: v for k, v in weights.items() if k in own or not k.startswith(CLASSIFIER_PREFIXES)}
    unexpected = [k for k in weights if k not in own]
    # BatchNorm's step counter is not a weight; files written without it are complete.
    missing = [k for k in own if k not in weights and not k.endswith("num_batches_tracked")]
    reshaped = [f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}"
                for k in weights if k in own and weights[k].shape != own[k].shape]
    problems = [f"{label} {', '.join(keys[:SHOWN])}{', ...' if len(keys) > SHOWN else ''}"
                for label, keys in (("unknown", unexpected), ("missing", missing), ("other shape", reshaped))
                if keys]
    if problems:
        raise CheckpointError(f"{source} does not fit the {what}: {'; '.join(problems)}")
    module.load_state_dict(weights, strict=False)
