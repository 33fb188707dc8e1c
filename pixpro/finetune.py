"""Label efficiency: the backbone plus a 1x1 classifier trained end to end on a share of the labels.

For each `finetune.label_fractions` entry the same recipe (steps, learning rates, crops) starts
again from the backbone's initial weights, so the curve mIoU(fraction) differs between the
pretrained and random backbones only by their initialisation and the number of labelled images.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from pixpro.config import FinetuneConfig, fraction_percent
from pixpro.data.classes import IGNORE, ClassTable
from pixpro.data.views import load_image_tensor, normalize
from pixpro.errors import ConfigError, DataError
from pixpro.features import labelled_batches
from pixpro.io import atomic_write_json
from pixpro.metrics import ConfusionAccumulator
from pixpro.optim import parameter_groups
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
        image = normalize(load_image_tensor(row["image"]))  # (3, H, W)
        mask = torch.from_numpy(np.asarray(Image.open(row["mask"]), dtype=np.int64))  # (H, W)
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


class Segmenter(nn.Module):
    """backbone (B, 3, H, W) -> (B, C, H, W), then a 1x1 conv -> (B, K, H, W) class logits."""

    def __init__(self, backbone: nn.Module, dim: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Conv2d(dim, num_classes, 1)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.backbone(images))


def build_optimizer(model: Segmenter, cfg: FinetuneConfig) -> tuple[torch.optim.Optimizer, list[float]]:
    """AdamW with the backbone's and the classifier's learning rates; and each group's base lr.

    lr_backbone = 0 freezes the backbone (no gradients, BatchNorm statistics kept)."""
    groups = []
    parts = [(model.classifier, cfg.lr_head)]
    if cfg.lr_backbone > 0:
        parts.append((model.backbone, cfg.lr_backbone))
    else:
        model.backbone.requires_grad_(False)
    for module, lr in parts:
        for group in parameter_groups(module, cfg.weight_decay):
            group.pop("lars_exclude")
            groups.append({**group, "lr": lr})
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups), [g["lr"] for g in groups]


@dataclass
class FractionResult:
    fraction: float
    labelled_images: int
    miou: float
    pixel_accuracy: float
    final_loss: float
    skipped_batches: int  # batches whose crops held no labelled pixel


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when enabled; a no-op elsewhere (CPU runs in fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def train_segmenter(model: Segmenter, rows: pd.DataFrame, subset: Tensor, image_size: tuple[int, int],
                    cfg: FinetuneConfig, generator: torch.Generator, device: torch.device,
                    description: str) -> tuple[float, int]:
    """cfg.steps AdamW steps of pixel cross-entropy (255 ignored) on crops of `subset`'s images.

    Returns the last step's loss and the number of skipped all-ignore batches."""
    plan = crop_plan(subset, cfg.steps * cfg.batch_size, image_size, cfg, generator)
    loader = DataLoader(PlannedCrops(rows, plan, cfg.crop_size), batch_size=cfg.batch_size,
                        num_workers=cfg.workers, persistent_workers=False)
    optimizer, base_lrs = build_optimizer(model, cfg)
    schedule = warmup_cosine(1.0, 0.0, cfg.steps, cfg.warmup_steps)  # (steps,) lr multiplier
    model.train()
    if cfg.lr_backbone == 0:
        model.backbone.eval()  # a frozen backbone keeps its BatchNorm statistics too
    loss_value, skipped = math.nan, 0
    with progress_bar() as progress:
        task = progress.add_task(description, total=cfg.steps)
        for step, (images, masks) in enumerate(loader):
            masks = masks.to(device)
            if not (masks != IGNORE).any():
                skipped += 1  # cross-entropy over no pixel is NaN
                progress.advance(task)
                continue
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * schedule[step]
            with autocast(device, cfg.amp):
                logits = model(images.to(device))  # (B, K, h, w)
            loss = F.cross_entropy(logits.float(), masks, ignore_index=IGNORE)
            if not torch.isfinite(loss):
                raise DataError(f"fine-tuning loss is {loss.item()} at step {step}: lower finetune.lr_head / "
                                f"lr_backbone")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_value = loss.item()
            progress.advance(task)
    return loss_value, skipped


@torch.no_grad()
def score_segmenter(model: Segmenter, rows: pd.DataFrame, batch_size: int, device: torch.device,
                    classes: ClassTable, amp: bool, description: str) -> tuple[float, float]:
    """(mIoU, pixel accuracy) on every pixel of `rows` at the prepared resolution, one
    dataset-level confusion matrix (the evaluate stage's protocol)."""
    model.eval()
    accumulator = ConfusionAccumulator(classes.num_classes)
    for batch in labelled_batches(rows, batch_size, description=description):
        with autocast(device, amp):
            logits = model(batch.image.to(device))  # (B, K, H, W)
        accumulator.update(logits.argmax(1).cpu(), batch.mask)
    scores = accumulator.scores(list(classes.names))
    return scores.miou, scores.pixel_accuracy


class ResultStore:
    """Finished fractions of one stage run, kept across an interruption.

    A rerun reuses a fraction only when everything that decides it (its `fingerprint`) is
    unchanged; anything else starts that fraction again."""

    def __init__(self, path: Path, fingerprint: dict):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.results: dict[str, dict] = {}
        if self.path.is_file():
            try:
                saved = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError):
                saved = {}
            if saved.get("fingerprint") == fingerprint:
                self.results = saved.get("results", {})

    def get(self, fraction: float) -> FractionResult | None:
        found = self.results.get(repr(fraction))
        return FractionResult(**found) if found else None

    def put(self, result: FractionResult) -> None:
        self.results[repr(result.fraction)] = asdict(result)
        atomic_write_json(self.path, {"fingerprint": self.fingerprint, "results": self.results})


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def label_efficiency(init_backbone: Callable[[], nn.Module], dim: int, train_rows: pd.DataFrame,
                     val_rows: pd.DataFrame, image_size: tuple[int, int], cfg: FinetuneConfig, seed: int,
                     classes: ClassTable, device: torch.device, store: ResultStore,
                     name: str, log: Callable[[str], None] = print) -> list[FractionResult]:
    """Fine-tune a fresh copy of the backbone per label fraction and score it on val.

    init_backbone() returns the initial backbone (the same weights every call)."""
    subsets = labelled_subsets(len(train_rows), cfg.label_fractions, seed)
    results = []
    for index, fraction in enumerate(cfg.label_fractions):
        done = store.get(fraction)
        if done is not None:
            log(f"{name} {fraction_percent(fraction)}%: reused from the interrupted run, mIoU {done.miou:.4f}")
            results.append(done)
            continue
        backbone = init_backbone()
        torch.manual_seed(seed)  # after the backbone is built: the same classifier init for both backbones
        model = Segmenter(backbone, dim, classes.num_classes).to(device)
        # One stream per fraction, from seed alone: both backbones see identical crops.
        generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
        loss, skipped = train_segmenter(model, train_rows, subsets[fraction], image_size, cfg, generator,
                                        device, f"finetune {name} {fraction_percent(fraction)}%")
        miou, accuracy = score_segmenter(model, val_rows, cfg.batch_size, device, classes, cfg.amp,
                                         f"score {name} {fraction_percent(fraction)}%")
        result = FractionResult(fraction, len(subsets[fraction]), miou, accuracy, loss, skipped)
        store.put(result)
        log(f"{name} {fraction_percent(fraction)}% ({result.labelled_images} images): mIoU {miou:.4f}, "
            f"last loss {loss:.3f}")
        results.append(result)
    return results


def metrics_dict(results: list[FractionResult]) -> dict:
    """metrics/finetune/<backbone>.json: miou_<p>pct (the contract) and the subset sizes."""
    metrics = {f"miou_{fraction_percent(r.fraction)}pct": r.miou for r in results}
    metrics.update({f"labelled_images_{fraction_percent(r.fraction)}pct": r.labelled_images for r in results})
    return metrics


def curve_frame(results: list[FractionResult]) -> pd.DataFrame:
    """The label-efficiency curve: one row per fraction, for `dvc plots`."""
    return pd.DataFrame({"labelled_fraction": [r.fraction for r in results],
                         "labelled_images": [r.labelled_images for r in results],
                         "miou": [r.miou for r in results],
                         "pixel_accuracy": [r.pixel_accuracy for r in results]})
