"""Typed, validated view of params.yaml.

Every section is a frozen dataclass. `load_params` validates the whole file up front: an
unknown key, a wrong type or an out-of-range value raises `ConfigError` naming the dotted key
(e.g. ``data.sizee``), before any stage does work.

Layers: this module holds `Params` (the whole file), its loading and the pretraining sections.
The other sections live in modules of their own so that DVC can tell them apart:
pixpro.config_data (`data`), pixpro.config_eval (extract, probe, evaluate, retrieval) and
pixpro.config_finetune (`finetune`). Every stage runs this module, but lists a section module
in its deps only when its params read that section (tests/test_dvc_deps.py runs `dvc status`
on it): editing a retrieval range check or the finetune recipe leaves pretraining up to date.
The generic building from YAML is pixpro.config_base. None of them imports anything of pixpro
but the error classes and, for the synthetic city count, the leaf list pixpro.data.cities.

Why dataclasses and not pydantic: frozen dataclasses are hashable, immutable values that the
checkpoints' `run_config` and `to_dict` compare and serialise as plain data; they add no
dependency to the package; and the checks that matter are relations between fields
(`ppm.window` against the view size, the fraction keys, the city count) with one-line
messages that name the dotted key, already tested case by case. pydantic's `Field`
constraints would cover only the simple bounds and change every message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from pixpro.config_base import ParamsLoader, build, legacy_amp
from pixpro.config_data import DataConfig
from pixpro.config_eval import EvaluateConfig, ExtractConfig, ProbeConfig, RetrievalConfig
from pixpro.config_finetune import FinetuneConfig
from pixpro.errors import ConfigError, require as _require

# --------------------------------------------------------------------------------------------
# Pretraining sections (the others: pixpro/config_data.py, config_eval.py, config_finetune.py)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneConfig:
    arch: Literal["smp_unet", "unet"] = "smp_unet"
    encoder: str = "resnet18"
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32)
    widths: tuple[int, ...] = (64, 128, 256, 512, 1024)
    dim: int = 64

    def validate(self, key: str) -> None:
        _require(self.dim >= 1, f"{key}.dim", "must be >= 1")
        _require(len(self.decoder_channels) == 4, f"{key}.decoder_channels",
                 "needs 4 entries (the 5th decoder stage has `dim` channels)")
        _require(len(self.widths) >= 2, f"{key}.widths", "needs at least 2 entries")
        _require(all(w >= 1 for w in (*self.decoder_channels, *self.widths)), f"{key}",
                 "channel widths must be >= 1")

    @property
    def downsampling(self) -> int:
        """Input sides must be divisible by this."""
        return 32 if self.arch == "smp_unet" else 2 ** (len(self.widths) - 1)

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Channels of each decoder stage's output, coarse to fine; the last is the full-resolution
        output (`dim`). Stage l of `probe.layers` is entry l - 1."""
        if self.arch == "smp_unet":
            return (*self.decoder_channels, self.dim)
        return (*self.widths[::-1][1:], self.dim)

    @property
    def stage_strides(self) -> dict[int, int]:
        """Decoder stage (negative index, as probe.layers) -> its downsampling from the input."""
        stages = len(self.stage_channels)
        if self.arch == "smp_unet":  # each of the 5 blocks doubles the resolution, up to the input's
            return {-l: 2 ** (l - 1) for l in range(1, stages + 1)}
        # classic: the merges double it from 1/2^(n-2) up to 1, then the 1x1 head keeps it
        return {-l: 2 ** max(l - 2, 0) for l in range(1, stages + 1)}


@dataclass(frozen=True)
class ViewsConfig:
    size: tuple[int, int] = (64, 128)
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (0.75, 1.3333333)
    flip: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: tuple[float, float] = (1.0, 0.1)
    solarize_p: tuple[float, float] = (0.0, 0.2)
    min_overlap: float = 0.25
    max_tries: int = 10

    def validate(self, key: str) -> None:
        _require(0 < self.scale[0] <= self.scale[1] <= 1, f"{key}.scale", "must be 0 < lo <= hi <= 1")
        _require(0 < self.ratio[0] <= self.ratio[1], f"{key}.ratio", "must be 0 < lo <= hi")
        for name in ("flip", "jitter_p", "grayscale_p", "min_overlap"):
            _require(0 <= getattr(self, name) <= 1, f"{key}.{name}", "must be in [0, 1]")
        for name in ("blur_p", "solarize_p"):
            _require(all(0 <= p <= 1 for p in getattr(self, name)), f"{key}.{name}",
                     "probabilities must be in [0, 1]")
        _require(all(j >= 0 for j in self.jitter) and self.jitter[3] <= 0.5, f"{key}.jitter",
                 "must be >= 0, hue <= 0.5")
        _require(self.max_tries >= 1, f"{key}.max_tries", "must be >= 1")


@dataclass(frozen=True)
class PairsConfig:
    candidates: int = 512
    neighbours: int = 4
    num: int = 256
    dist_thresh: float = 0.7

    def validate(self, key: str) -> None:
        _require(self.candidates >= 1 and self.num >= 1 and self.neighbours >= 1, key,
                 "candidates, neighbours and num must be >= 1")
        _require(self.num <= self.candidates * self.neighbours, f"{key}.num",
                 f"= {self.num} exceeds candidates x neighbours = "
                 f"{self.candidates} x {self.neighbours}; lower num or raise the others")
        _require(self.dist_thresh > 0, f"{key}.dist_thresh", "must be > 0")


@dataclass(frozen=True)
class PPMConfig:
    window: Optional[int] = 7
    gamma: float = 2.0
    transform_layers: int = 1

    def validate(self, key: str) -> None:
        _require(self.window is None or self.window >= 1, f"{key}.window",
                 "must be >= 1, or null for global PPM")
        _require(self.gamma > 0, f"{key}.gamma", "must be > 0")
        _require(self.transform_layers in (0, 1, 2), f"{key}.transform_layers", "must be 0, 1 or 2")


@dataclass(frozen=True)
class ProjectorConfig:
    hidden: int = 256
    out: int = 128

    def validate(self, key: str) -> None:
        _require(self.hidden >= 1 and self.out >= 1, key, "hidden and out must be >= 1")


@dataclass(frozen=True)
class LossConfig:
    consistency: float = 0.0  # measured better off (docs/method.md, docs/results.md)
    contrast: float = 1.0
    temperature: float = 0.2
    # Whose keys are the InfoNCE's negatives: every pair's in the batch, or the query's own image's only.
    negatives: Literal["batch", "image"] = "batch"
    coarse: float = 0.0
    coarse_stride: int = 8
    # Pixel InfoNCE on coarser decoder stages, each with pairs on its own grid (mean over stages).
    stages: float = 1.0
    stage_layers: tuple[int, ...] = (-5, -4, -3, -2)  # as probe.layers: -5 = 1/16 res ... -2 = 1/2 res
    stage_pairs: int = 64  # pairs per image and stage (fewer where the stage's grid has fewer bins)
    # Image-level InfoNCE on the encoder's pooled deepest map: the other images of the batch are negatives.
    image: float = 0.0

    def validate(self, key: str) -> None:
        for name in ("consistency", "contrast", "coarse", "stages", "image"):
            _require(getattr(self, name) >= 0, f"{key}.{name}", "must be >= 0 (0 switches the term off)")
        _require(len(self.stage_layers) >= 1 and all(layer < 0 for layer in self.stage_layers)
                 and len(set(self.stage_layers)) == len(self.stage_layers), f"{key}.stage_layers",
                 "must be distinct negative decoder-stage indices, e.g. [-5, -4, -3, -2]")
        _require(self.stage_pairs >= 1, f"{key}.stage_pairs", "must be >= 1")
        _require(self.consistency > 0 or self.contrast > 0, key,
                 "consistency and contrast are both 0: nothing would be trained")
        _require(self.temperature > 0, f"{key}.temperature", "must be > 0")
        _require(self.coarse_stride >= 2, f"{key}.coarse_stride", "must be >= 2")


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["lars", "sgd", "adamw"] = "adamw"
    base_lr: float = 0.032
    weight_decay: float = 0.01
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    trust_coefficient: float = 0.001

    def validate(self, key: str) -> None:
        _require(self.base_lr > 0, f"{key}.base_lr", "must be > 0")
        _require(self.weight_decay >= 0, f"{key}.weight_decay", "must be >= 0")
        _require(0 <= self.momentum < 1, f"{key}.momentum", "must be in [0, 1)")
        _require(self.warmup_epochs >= 0, f"{key}.warmup_epochs", "must be >= 0")
        _require(0 <= self.min_lr_ratio <= 1, f"{key}.min_lr_ratio", "must be in [0, 1]")
        _require(self.trust_coefficient > 0, f"{key}.trust_coefficient", "must be > 0")


@dataclass(frozen=True)
class PretrainConfig:
    epochs: int = 6
    batch_size: int = 16
    momentum: float = 0.99
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    ppm: PPMConfig = field(default_factory=PPMConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    # weights to start from (pixpro/model/init_weights.py): a file, a pixpro export or imagenet; None = random
    init: Optional[str] = None
    freeze_backbone: bool = False
    bn_per_view: bool = False
    device: str = "auto"
    nproc: int = 1
    nnodes: int = 1
    rdzv_endpoint: str = "localhost:29400"
    workers: int = 2
    # bf16 autocast: auto | cuda | on | off (pixpro/precision.py); legacy true = cuda, false = off
    amp: Literal["auto", "cuda", "always", "off"] | bool = "cuda"
    channels_last: bool = True
    compile: bool = False
    deterministic: bool = False
    checkpoint_every: int = 50
    log_every: int = 5
    ddp_timeout_s: int = 600

    def __post_init__(self) -> None:
        if isinstance(self.amp, bool):  # one spelling downstream: true meant bf16 on CUDA only
            object.__setattr__(self, "amp", legacy_amp(self.amp, "pretrain.amp"))

    def validate(self, key: str) -> None:
        _require(self.epochs >= 1, f"{key}.epochs", "must be >= 1")
        _require(self.batch_size >= 2, f"{key}.batch_size", "must be >= 2 (BatchNorm needs a batch)")
        _require(0 <= self.momentum <= 1, f"{key}.momentum", "must be in [0, 1]")
        _require(self.nproc >= 1, f"{key}.nproc", "must be >= 1")
        _require(self.nnodes >= 1, f"{key}.nnodes", "must be >= 1")
        # Only read for several nodes: one node rendezvouses privately on a free port.
        _require(self.nnodes == 1 or _is_host_port(self.rdzv_endpoint), f"{key}.rdzv_endpoint",
                 f"= {self.rdzv_endpoint!r} must be host:port, e.g. node0:29400 (a port in 1-65535 that "
                 f"every node can reach), for {key}.nnodes = {self.nnodes}")
        _require(self.workers >= 0, f"{key}.workers", "must be >= 0")
        _require(self.checkpoint_every >= 1, f"{key}.checkpoint_every", "must be >= 1")
        _require(self.log_every >= 1, f"{key}.log_every", "must be >= 1")
        _require(self.ddp_timeout_s >= 10, f"{key}.ddp_timeout_s", "must be >= 10")
        _require(self.init is None or self.init == "imagenet" or Path(self.init).exists(), f"{key}.init",
                 f"= {self.init!r} is not an existing weights file or pixpro export folder, nor imagenet")
        _require(self.init != "imagenet" or self.backbone.arch == "smp_unet", f"{key}.init",
                 f"= imagenet (smp's encoder weights) needs {key}.backbone.arch smp_unet")
        _require(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
                 f"{key}.device", f"= {self.device!r}; use auto, cpu or cuda[:N]")
        for section in ("backbone", "views", "pairs", "ppm", "projector", "loss", "optim"):
            getattr(self, section).validate(f"{key}.{section}")
        step = self.backbone.downsampling
        _require(all(s % step == 0 for s in self.views.size), f"{key}.views.size",
                 f"= {list(self.views.size)} must be divisible by {step} for {self.backbone.arch}")
        window = self.ppm.window
        _require(window is None or window <= min(self.views.size), f"{key}.ppm.window",
                 f"= {window} is larger than the view {list(self.views.size)}")
        stride = self.loss.coarse_stride
        _require(self.loss.coarse == 0 or all(s % stride == 0 and s // stride >= 2 for s in self.views.size),
                 f"{key}.loss.coarse_stride", f"= {stride} must divide the view size {list(self.views.size)} "
                 f"and leave at least 2 bins per side")
        stages = len(self.backbone.stage_channels)
        _require(self.loss.stages == 0 or all(2 <= -layer <= stages for layer in self.loss.stage_layers),
                 f"{key}.loss.stage_layers", f"= {list(self.loss.stage_layers)} must name decoder stages -2 "
                 f"(1/2 res) .. -{stages} (the coarsest) of {self.backbone.arch}; -1, the output, has the "
                 f"pixel term")


def _is_host_port(endpoint: str) -> bool:
    """'node0:29400', '10.0.0.1:29400' or '[::1]:29400': what torchrun's --rdzv-endpoint takes."""
    host, _, port = endpoint.rpartition(":")
    return (bool(host.strip("[]")) and not any(c.isspace() or c == "/" for c in host)
            and port.isdigit() and 1 <= int(port) <= 65535)


@dataclass(frozen=True)
class Params:
    seed: int = 0
    threads: int | Literal["auto"] = 2  # auto: the cores this process may use (pixpro/runtime_info.py)
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    @property
    def probe_stages(self) -> tuple[int, ...]:
        """probe.layers as decoder stage numbers 1 (coarsest) .. N (the output), negatives resolved."""
        stages = len(self.pretrain.backbone.stage_channels)
        return tuple(layer if layer > 0 else stages + 1 + layer for layer in self.probe.layers)

    def validate(self, key: str = "") -> None:
        _require(self.seed >= 0, "seed", "must be >= 0")
        _require(self.threads == "auto" or self.threads >= 1, "threads", "must be >= 1 or auto")
        for section in ("data", "pretrain", "extract", "probe", "evaluate", "retrieval", "finetune"):
            getattr(self, section).validate(section)
        stages = len(self.pretrain.backbone.stage_channels)
        _require(all(1 <= abs(layer) <= stages for layer in self.probe.layers), "probe.layers",
                 f"= {list(self.probe.layers)} must name decoder stages 1 (coarsest) .. {stages} (the "
                 f"full-resolution output), or -1 (the output) .. -{stages}, of {self.pretrain.backbone.arch}")
        _require(len(set(self.probe_stages)) == len(self.probe.layers), "probe.layers",
                 f"= {list(self.probe.layers)} names a stage twice")
        step = self.pretrain.backbone.downsampling
        _require(all(s % step == 0 for s in self.finetune.crop_size), "finetune.crop_size",
                 f"= {list(self.finetune.crop_size)} must be divisible by {step} for {self.pretrain.backbone.arch}")


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read, type-check and range-check the whole params file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file {path} not found (run from the repository root or pass --params)")
    try:
        raw = yaml.load(path.read_text(), Loader=ParamsLoader)
        if raw is None:  # all defaults by accident (an empty or truncated file) is never what was meant
            raise ConfigError(f"params file {path} is empty: copy the repository's params.yaml and edit it")
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    except UnicodeDecodeError as err:  # a binary or non-UTF-8 file: still the user's to fix
        raise ConfigError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise ConfigError(f"cannot read params file {path}: {err.strerror or err}") from None
    return params_from_dict(raw)


def params_from_dict(raw: Any) -> Params:
    params = build(Params, raw, "")
    params.validate()
    return params


def backbone_from_dict(raw: dict) -> BackboneConfig:
    return build(BackboneConfig, raw, "backbone")
