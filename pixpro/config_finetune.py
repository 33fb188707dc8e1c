"""The params.yaml `finetune` section (the label-efficiency recipe) and its metric keys.

Apart from pixpro/config.py, like pixpro/config_eval.py, so that DVC can tell it apart: only
the finetune stage lists this module in its `deps` (tests/test_dvc_deps.py), so editing the
recipe's defaults or checks leaves pretraining and the evaluation stages up to date.
Params.validate still checks `finetune.crop_size` against the backbone, a relation between
sections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pixpro.config_base import legacy_amp
from pixpro.errors import require as _require


@dataclass(frozen=True)
class FinetuneConfig:
    label_fractions: tuple[float, ...] = (0.05, 0.2, 1.0)
    steps: int = 20  # per fraction: every fraction gets the same compute
    batch_size: int = 8
    crop_size: tuple[int, int] = (64, 128)
    crop_scale: tuple[float, float] = (0.2, 1.0)
    flip: float = 0.5
    lr_head: float = 3e-3
    lr_backbone: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 2
    head_init: Literal["random", "probe"] = "probe"  # probe: the linear probe fitted on the fraction's images
    head_steps: int = 0  # LP-FT: steps of the classifier alone on the frozen backbone before `steps`
    freeze_bn: bool = False  # the backbone's BatchNorm keeps its running statistics while it learns
    class_weighting: Literal["none", "balanced"] = "none"  # balanced: cross-entropy weights N / (K x N_c)
    eval_every: int = 0  # steps between val scores (the convergence curve); 0 = the end only
    # d in (0, 1): val scores (and the kept network) are of an exponential moving average of the
    # weights and BatchNorm statistics, decay d per step; 0 = the last step's weights
    ema_decay: float = 0.0
    crop_seed: int = 0  # another crop order and flips for the same run (repeats measure a run's noise)
    workers: int = 0
    # bf16 autocast: auto | cuda | always | off, as pretrain.amp (pixpro/precision.py); legacy true = cuda
    amp: Literal["auto", "cuda", "always", "off"] | bool = "cuda"

    def __post_init__(self) -> None:
        if isinstance(self.amp, bool):  # one spelling downstream, as PretrainConfig
            object.__setattr__(self, "amp", legacy_amp(self.amp, "finetune.amp"))

    def validate(self, key: str) -> None:
        _require(len(self.label_fractions) >= 1, f"{key}.label_fractions", "must list at least one fraction")
        for i, fraction in enumerate(self.label_fractions):
            _require(0 < fraction <= 1, f"{key}.label_fractions[{i}]",
                     f"= {fraction} must be in (0, 1]: the share of labelled train images used")
        percents = [fraction_percent(f) for f in self.label_fractions]
        _require(len(set(percents)) == len(percents), f"{key}.label_fractions",
                 f"= {list(self.label_fractions)} gives the same metric key miou_<p>pct twice "
                 f"(p = round(100 x fraction): {percents})")
        _require(self.steps >= 1, f"{key}.steps", "must be >= 1")
        _require(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")
        _require(min(self.crop_size) >= 16, f"{key}.crop_size", "must be [h, w] with both >= 16")
        _require(0 < self.crop_scale[0] <= self.crop_scale[1] <= 1, f"{key}.crop_scale",
                 f"= {list(self.crop_scale)} must be [min, max] crop area shares with 0 < min <= max <= 1")
        _require(0 <= self.flip <= 1, f"{key}.flip", "must be a probability in [0, 1]")
        _require(self.lr_head > 0 and self.lr_backbone >= 0, f"{key}.lr_head/lr_backbone",
                 "must be > 0 (head) and >= 0 (backbone; 0 freezes it)")
        _require(self.weight_decay >= 0, f"{key}.weight_decay", "must be >= 0")
        _require(0 <= self.warmup_steps < self.steps, f"{key}.warmup_steps", "must be in [0, steps)")
        _require(self.head_steps >= 0, f"{key}.head_steps", "must be >= 0 (0 = no head-only phase)")
        _require(self.eval_every >= 0, f"{key}.eval_every", "must be >= 0 (0 = score val at the end only)")
        _require(self.workers >= 0, f"{key}.workers", "must be >= 0")
        _require(0 <= self.ema_decay < 1, f"{key}.ema_decay",
                 f"= {self.ema_decay} must be in [0, 1) (0 = no weight average)")
        _require(0 <= self.crop_seed < 1000, f"{key}.crop_seed", f"= {self.crop_seed} must be in [0, 1000)")


def fraction_percent(fraction: float) -> int:
    """The p of a label fraction's metric key miou_<p>pct: round(100 x fraction)."""
    return round(100 * fraction)
