"""Label efficiency: the backbone plus a 1x1 classifier trained end to end on a share of the labels.

For each `finetune.label_fractions` entry the same recipe (steps, learning rates, crops) starts
again from the backbone's initial weights, so the curve mIoU(fraction) differs between the
pretrained and random backbones only by their initialisation and the number of labelled images.

The classifier starts as the linear probe fitted on the fraction's images (LP-FT, head_init: probe):
20 AdamW steps of a randomly initialised head on frozen pretrained features reached 0.08-0.09 val
mIoU on the synthetic default where the probe reaches 0.19, so end-to-end training from a random
head spent its steps bending the backbone towards a poor head.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from pixpro.config import OptimConfig
from pixpro.config_eval import ExtractConfig, ProbeConfig
from pixpro.config_finetune import FinetuneConfig, fraction_percent
from pixpro.data.classes import IGNORE, ClassTable
from pixpro.data.views import load_image_tensor, normalize
from pixpro.errors import ConfigError, DataError
from pixpro.features import extract_bank, labelled_batches, prepared_file, read_prepared_mask
from pixpro.finetune_results import FractionResult, ResultStore, write_val_curves
from pixpro.finetuned_file import KeptNetwork, Segmenter
from pixpro.metrics import ConfusionAccumulator
from pixpro.optim import build_optimizer
from pixpro.precision import autocast_for
from pixpro.probe import fit_probe
from pixpro.progress import progress_bar
from pixpro.schedules import warmup_cosine


def labelled_subsets(num_images: int, fractions: tuple[float, ...], seed: int) -> dict[float, Tensor]:
    """Row indices of the labelled train images each fraction uses: (round(fraction x N),) int64.

    Every subset is a prefix of one permutation drawn from `seed` alone, so the subsets are
    nested (5% inside 20%) and identical for both backbones.
    """
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed))
    subsets = {}
    for fraction in fractions:
        count = round(fraction * num_images)
        if count == 0:
            raise ConfigError(f"finetune.label_fractions: {fraction} x {num_images} labelled train images "
                              f"rounds to 0 images; use at least {1 / num_images:.4g} (one image)")
        subsets[fraction] = order[:count]
    return subsets


class CropPlan(NamedTuple):
    """Every training crop of one run, drawn up front so workers and resumes see the same crops."""
    image: Tensor  # (N,) int64 row of the split's manifest rows
    box: Tensor  # (N, 4) int64 top, left, height, width in prepared-image pixels
    flip: Tensor  # (N,) bool


def crop_plan(subset: Tensor, samples: int, image_size: tuple[int, int], cfg: FinetuneConfig,
              generator: torch.Generator) -> CropPlan:
    """`samples` crops: images in shuffled passes over `subset`, random resized boxes with the
    crop's aspect ratio and an area share in cfg.crop_scale, and horizontal flips."""
    passes = math.ceil(samples / len(subset))
    image = torch.cat([subset[torch.randperm(len(subset), generator=generator)] for _ in range(passes)])[:samples]
    height, width = image_size
    aspect = cfg.crop_size[1] / cfg.crop_size[0]
    low, high = cfg.crop_scale
    area = (low + (high - low) * torch.rand(samples, generator=generator, dtype=torch.float64)) * height * width
    box_h = (area / aspect).sqrt().round().clamp(1, height)
    box_w = (box_h * aspect).round().clamp(1, width)
    top = (torch.rand(samples, generator=generator, dtype=torch.float64) * (height - box_h + 1)).floor()
    left = (torch.rand(samples, generator=generator, dtype=torch.float64) * (width - box_w + 1)).floor()
    flip = torch.rand(samples, generator=generator) < cfg.flip
    return CropPlan(image, torch.stack([top, left, box_h, box_w], 1).long(), flip)


class Crop(NamedTuple):
    image: Tensor  # (3, h, w) normalised
    mask: Tensor  # (h, w) int64 trainIds, 255 = ignore


class PlannedCrops(Dataset):
    """The crops of a CropPlan, resized to crop_size (bilinear images, nearest masks)."""

    def __init__(self, rows: pd.DataFrame, plan: CropPlan, crop_size: tuple[int, int]):
        self.rows = rows.reset_index(drop=True)
        self.plan = plan
        self.crop_size = list(crop_size)

    def __len__(self) -> int:
        return len(self.plan.image)

    def __getitem__(self, k: int) -> Crop:
        row = self.rows.iloc[int(self.plan.image[k])]
        with prepared_file():
            image = normalize(load_image_tensor(row["image"]))  # (3, H, W)
        mask = torch.from_numpy(read_prepared_mask(row["mask"]).astype(np.int64))  # (H, W)
        if mask.shape != image.shape[-2:]:
            raise DataError(f"mask {row['mask']} is {tuple(mask.shape)} but image {row['image']} is "
                            f"{tuple(image.shape[-2:])}; rerun `pixpro prepare`")
        top, left, height, width = self.plan.box[k].tolist()
        image = TF.resized_crop(image, top, left, height, width, self.crop_size, antialias=True)
        mask = TF.resized_crop(mask[None], top, left, height, width, self.crop_size,
                               interpolation=InterpolationMode.NEAREST_EXACT)[0]
        if self.plan.flip[k]:
            image, mask = image.flip(-1), mask.flip(-1)
        return Crop(image, mask)


def adamw(parts: list[tuple[nn.Module, float]], weight_decay: float) -> tuple[torch.optim.Optimizer, list[float]]:
    """AdamW over each (module, lr) part's trainable parameters (pixpro.optim's groups: no decay on
    1-D ones); and each group's base lr, which the schedule multiplies."""
    optimizer = build_optimizer(parts, OptimConfig(name="adamw", weight_decay=weight_decay))
    return optimizer, [group["lr"] for group in optimizer.param_groups]


class Phase(NamedTuple):
    """A stretch of training: which weights learn, at which lrs, and whether BatchNorm's running
    statistics follow the batches."""
    steps: int
    optimizer: torch.optim.Optimizer
    base_lrs: list[float]
    schedule: np.ndarray  # (steps,) lr multiplier
    backbone_learns: bool
    batch_statistics: bool


def training_phases(model: Segmenter, cfg: FinetuneConfig) -> list[Phase]:
    """LP-FT (Kumar et al., ICLR 2022): `head_steps` of the classifier alone on the frozen
    backbone, then `steps` of everything. A random head sends the backbone noise gradients that
    distort pretrained features before the head has learnt anything; a fitted head does not.

    lr_backbone = 0 keeps the backbone frozen throughout (a linear head on fixed features).
    freeze_bn keeps the backbone's BatchNorm running statistics while its weights learn: a few
    labelled images give noisy batch statistics, the initial ones came from many images."""
    phases = []
    if cfg.head_steps:
        optimizer, base_lrs = adamw([(model.classifier, cfg.lr_head)], cfg.weight_decay)
        phases.append(Phase(cfg.head_steps, optimizer, base_lrs, warmup_cosine(1.0, 0.0, cfg.head_steps),
                            backbone_learns=False, batch_statistics=False))
    learns = cfg.lr_backbone > 0
    parts = [(model.classifier, cfg.lr_head)] + ([(model.backbone, cfg.lr_backbone)] if learns else [])
    optimizer, base_lrs = adamw(parts, cfg.weight_decay)
    phases.append(Phase(cfg.steps, optimizer, base_lrs, warmup_cosine(1.0, 0.0, cfg.steps, cfg.warmup_steps),
                        backbone_learns=learns, batch_statistics=learns and not cfg.freeze_bn))
    return phases


def enter_phase(model: Segmenter, phase: Phase) -> None:
    """Training mode for the phase (also after a val pass put the model in eval mode)."""
    model.train()
    model.backbone.requires_grad_(phase.backbone_learns)  # frozen: no backbone graph is built
    if not phase.batch_statistics:
        for module in model.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()  # normalise with the running statistics and leave them unchanged


class TrainResult(NamedTuple):
    final_loss: float
    skipped_batches: int
    val_curve: list[tuple[int, float, float]]  # (step, val mIoU, val pixel accuracy); empty without a scorer
    # with ema_decay: (val mIoU, pixel accuracy) of the last step's own weights, which the curve does not score
    last_weights_score: tuple[float, float] | None = None


def weight_average(model: nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of `model`'s parameters and buffers (BatchNorm's running
    statistics too, so the averaged network normalises with statistics of its own stretch of
    training), or None for decay 0."""
    if decay == 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def evaluation_steps(cfg: FinetuneConfig) -> set[int]:
    """Steps (counted over both phases) after which val is scored: every eval_every, the start
    with a probe head, the end of the head phase and the last step."""
    total = cfg.head_steps + cfg.steps
    every = set(range(cfg.eval_every, total + 1, cfg.eval_every)) if cfg.eval_every else set()
    starts = {0} if cfg.head_init == "probe" else set()  # the probe that fine-tuning starts from
    return every | {total} | starts | ({cfg.head_steps} if cfg.head_steps else set())


def pixel_class_weights(rows: pd.DataFrame, subset: Tensor, num_classes: int) -> Tensor:
    """(K,) 'balanced' cross-entropy weights N / (present classes x N_c) from the pixel counts of
    `subset`'s masks (0 for absent classes): the probe sees class-balanced pixels, and unweighted
    cross-entropy drifts a probe head towards the frequent classes."""
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for path in rows["mask"].iloc[subset.numpy()]:
        labels = torch.from_numpy(read_prepared_mask(path).astype(np.int64)).flatten()
        counts += torch.bincount(labels[labels != IGNORE], minlength=num_classes)[:num_classes].double()
    present = (counts > 0).sum()
    return torch.where(counts > 0, counts.sum() / (present * counts.clamp(min=1)), 0.0).float()


def train_segmenter(model: Segmenter, rows: pd.DataFrame, subset: Tensor, image_size: tuple[int, int],
                    cfg: FinetuneConfig, generator: torch.Generator, device: torch.device,
                    description: str, score: Callable[[nn.Module], tuple[float, float]] | None = None,
                    class_weights: Tensor | None = None) -> TrainResult:
    """cfg.head_steps + cfg.steps AdamW steps of pixel cross-entropy (255 ignored) on crops of
    `subset`'s images, in the phases of training_phases; `score(network)` (val mIoU, pixel
    accuracy) runs after each of evaluation_steps. class_weights (K,) weight the cross-entropy
    (None: unweighted).

    With cfg.ema_decay > 0 the scored network is the moving average of the weights, updated after
    every optimiser step, and it is copied into `model` at the end; the last step's own weights are
    scored once more (TrainResult.last_weights_score), so one run shows what averaging changed.

    A batch without a labelled pixel is skipped (cross-entropy over no pixel is NaN) but keeps its
    step, so the schedule stays aligned with the crop plan."""
    phases = training_phases(model, cfg)
    total = sum(phase.steps for phase in phases)
    plan = crop_plan(subset, total * cfg.batch_size, image_size, cfg, generator)
    loader = DataLoader(PlannedCrops(rows, plan, cfg.crop_size), batch_size=cfg.batch_size,
                        num_workers=cfg.workers, persistent_workers=False)
    steps = [(phase, local) for phase in phases for local in range(phase.steps)]  # global step -> phase, local step
    scored_after = evaluation_steps(cfg) if score is not None else set()
    average = weight_average(model, cfg.ema_decay)
    scored = model if average is None else average.module
    loss_value, skipped, curve = math.nan, 0, []
    if 0 in scored_after:
        curve.append((0, *score(scored)))
    with progress_bar() as progress:
        task = progress.add_task(description, total=total)
        for step, (images, masks) in enumerate(loader):
            phase, local = steps[step]
            if local == 0 or step in scored_after:  # a phase starts, or a val pass left eval mode
                enter_phase(model, phase)
            masks = masks.to(device)
            if (masks != IGNORE).any():
                for group, base in zip(phase.optimizer.param_groups, phase.base_lrs):
                    group["lr"] = base * phase.schedule[local]
                with autocast_for(device, cfg.amp):
                    logits = model(images.to(device))  # (B, K, h, w)
                loss = F.cross_entropy(logits.float(), masks, weight=class_weights, ignore_index=IGNORE)
                if not torch.isfinite(loss):
                    raise DataError(f"fine-tuning loss is {loss.item()} at step {step}: lower finetune.lr_head / "
                                    f"lr_backbone")
                phase.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                phase.optimizer.step()
                if average is not None:
                    average.update_parameters(model)
                loss_value = loss.item()
            else:
                skipped += 1
            progress.advance(task)
            if step + 1 in scored_after:
                curve.append((step + 1, *score(scored)))
    last_weights = None
    if average is not None:
        if score is not None:
            last_weights = score(model)
        model.load_state_dict(average.module.state_dict())  # the kept network is the one scored
    return TrainResult(loss_value, skipped, curve, last_weights)


def fit_probe_head(model: Segmenter, rows: pd.DataFrame, subset: Tensor, extract: ExtractConfig,
                   probe: ProbeConfig, seed: int, device: torch.device, num_classes: int) -> None:
    """The LP of LP-FT: the probe stage's logistic regression, fitted on the frozen backbone's
    output features of class-balanced pixels of `subset`'s images only, becomes the classifier
    (probe.layers is not read: the classifier sees the output stage alone)."""
    model.eval()
    with torch.no_grad():
        bank = extract_bank(model.backbone, rows.iloc[subset.numpy()], extract, seed, device, num_classes)
    linear = fit_probe(bank.features.float(), bank.labels.long(), num_classes, probe).probe  # (K, C) weights
    with torch.no_grad():
        model.classifier.weight.copy_(linear.weight[:, :, None, None])
        model.classifier.bias.copy_(linear.bias)


@torch.no_grad()
def score_segmenter(model: Segmenter, rows: pd.DataFrame, batch_size: int, device: torch.device,
                    classes: ClassTable, amp: str, description: str) -> tuple[float, float]:
    """(mIoU, pixel accuracy) on every pixel of `rows` at the prepared resolution, one
    dataset-level confusion matrix (the evaluate stage's protocol)."""
    model.eval()
    accumulator = ConfusionAccumulator(classes.num_classes)
    for batch in labelled_batches(rows, batch_size, description=description):
        with autocast_for(device, amp):
            logits = model(batch.image.to(device))  # (B, K, H, W)
        accumulator.update(logits.argmax(1).cpu(), batch.mask)
    scores = accumulator.scores(list(classes.names))
    return scores.miou, scores.pixel_accuracy


def label_efficiency(init_backbone: Callable[[], nn.Module], dim: int, train_rows: pd.DataFrame,
                     val_rows: pd.DataFrame, image_size: tuple[int, int], cfg: FinetuneConfig, seed: int,
                     classes: ClassTable, device: torch.device, store: ResultStore,
                     name: str, log: Callable[[str], None] = print, live: Path | None = None,
                     extract: ExtractConfig = ExtractConfig(), probe: ProbeConfig = ProbeConfig(),
                     keep: KeptNetwork | None = None) -> list[FractionResult]:
    """Fine-tune a fresh copy of the backbone per label fraction and score it on val, also during
    training (evaluation_steps); the val curves go to the dvclive folder `live` when given.
    With finetune.head_init = probe, the classifier starts as the linear probe fitted on the
    fraction's images with `extract` and `probe` (pass the params' sections: the defaults are the
    code's). probe.layers does not apply: the classifier is a 1x1 conv on the output stage, so the
    probe is fitted on the output's features whatever the probe stage uses.

    `keep` saves the network of the largest fraction when it finishes. A rerun reuses that
    fraction only while its saved network is there and from this run (the same fingerprint);
    otherwise (deleted, or saved under other params) the fraction is trained again, to the same
    weights on the same device.

    init_backbone() returns the initial backbone (the same weights every call)."""
    subsets = labelled_subsets(len(train_rows), cfg.label_fractions, seed)
    kept_fraction = max(cfg.label_fractions) if keep is not None else None
    results = []
    for index, fraction in enumerate(cfg.label_fractions):
        percent = fraction_percent(fraction)
        done = store.get(fraction)
        if done is not None and fraction == kept_fraction:
            problem = keep.problem(fraction, store.fingerprint)
            if problem is not None:
                log(f"{name} {percent}%: finished in the interrupted run, but {problem}; training it again")
                done = None
        if done is not None:
            log(f"{name} {percent}%: reused from the interrupted run, mIoU {done.miou:.4f}")
            results.append(done)
            continue
        backbone = init_backbone()
        torch.manual_seed(seed)  # after the backbone is built: the same classifier init for both backbones
        model = Segmenter(backbone, dim, classes.num_classes).to(device)
        if cfg.head_init == "probe":
            fit_probe_head(model, train_rows, subsets[fraction], extract, probe, seed, device, classes.num_classes)
        # One stream per fraction, from seed (and crop_seed) alone: both backbones see identical crops.
        generator = torch.Generator().manual_seed(seed * 1_000_003 + 1_000 * cfg.crop_seed + index)
        weights = (pixel_class_weights(train_rows, subsets[fraction], classes.num_classes).to(device)
                   if cfg.class_weighting == "balanced" else None)
        trained = train_segmenter(
            model, train_rows, subsets[fraction], image_size, cfg, generator, device, f"finetune {name} {percent}%",
            score=lambda network: score_segmenter(network, val_rows, cfg.batch_size, device, classes, cfg.amp,
                                                  f"score {name} {percent}%"), class_weights=weights)
        _, miou, accuracy = trained.val_curve[-1]  # after the last step
        last_weights_miou = trained.last_weights_score[0] if trained.last_weights_score else None
        result = FractionResult(fraction, len(subsets[fraction]), miou, accuracy, trained.final_loss,
                                trained.skipped_batches, trained.val_curve, last_weights_miou)
        if fraction == kept_fraction:
            # first: a finished record implies its network
            keep.save(model, result.fraction, result.labelled_images, result.miou, store.fingerprint)
        store.put(result)
        log(f"{name} {percent}% ({result.labelled_images} images): mIoU {miou:.4f}, "
            f"last loss {trained.final_loss:.3f}")
        results.append(result)
        if live is not None:
            write_val_curves(live, results)  # after every fraction: an interrupted run shows its progress
    if live is not None:
        write_val_curves(live, results)  # also when every fraction was reused
    return results
