"""Frozen backbones and the pixel-feature bank.

Features are L2-normalised everywhere (bank, probe, evaluation, retrieval): retrieval is by
cosine similarity, and the scale of random-init features differs wildly from pretrained ones,
so a shared unit scale lets one probe weight decay serve both backbones.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from pixpro.backbone_file import build_from_file, read_backbone_file, require_config
from pixpro.backbones import BACKBONES
from pixpro.checkpoint import load_checkpoint
from pixpro.config import ExtractConfig, Params
from pixpro.data.cityscapes import read_label
from pixpro.data.classes import IGNORE
from pixpro.data.manifest import load_manifest
from pixpro.data.views import load_image_tensor, normalize
from pixpro.errors import CheckpointError, DataError
from pixpro.model.backbone import build_backbone, decoder_stage_modules
from pixpro.progress import progress_bar


def frozen_backbone_on_device(kind: str, params: Params, checkpoint: Path) -> tuple[nn.Module, torch.device]:
    """load_frozen_backbone on CUDA when present, else the CPU; and that device. Its output is the
    decoder stages of `probe.layers` (DecoderStages) unless that is the last stage alone."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_frozen_backbone(kind, params, checkpoint)
    if params.probe_stages != (len(params.pretrain.backbone.stage_channels),):
        model = DecoderStages(model, params.probe_stages)
    return model.to(device), device


def probe_feature_dim(params: Params) -> int:
    """Channels of the frozen features the bank, probe and retrieval see: the sum over `probe.layers`."""
    channels = params.pretrain.backbone.stage_channels
    return sum(channels[stage - 1] for stage in params.probe_stages)


class DecoderStages(nn.Module):
    """A backbone whose output is several decoder stages at input resolution:
    (B, 3, H, W) -> (B, sum of the stages' channels, H, W).

    Each stage is upsampled bilinearly to (H, W) and L2-normalised on its own, so a wide coarse
    stage does not outweigh a narrow fine one; the concatenation is scaled by 1/sqrt(L), which keeps
    every pixel's vector at unit length, as the single-stage features are (see the module docstring).
    """

    def __init__(self, backbone: nn.Module, layers: tuple[int, ...]):
        super().__init__()
        self.backbone = backbone
        self.layers = tuple(layers)
        self._outputs: dict[int, Tensor] = {}
        modules = decoder_stage_modules(backbone)
        for layer in self.layers:
            modules[layer - 1].register_forward_hook(self._keeper(layer))

    def _keeper(self, layer: int):
        def keep(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            self._outputs[layer] = output
        return keep

    def forward(self, images: Tensor) -> Tensor:
        self._outputs.clear()
        self.backbone(images)
        size = images.shape[-2:]
        maps = []
        for layer in self.layers:
            stage = self._outputs[layer].float()  # (B, C_l, H / s, W / s)
            if stage.shape[-2:] != size:
                stage = F.interpolate(stage, size=size, mode="bilinear", align_corners=False)
            maps.append(F.normalize(stage, dim=1))
        self._outputs.clear()  # do not hold the stages' memory between batches
        return torch.cat(maps, dim=1) / len(maps) ** 0.5


def load_frozen_backbone(kind: str, params: Params, checkpoint: Path) -> nn.Module:
    """init_backbone's weights in eval mode, no gradients, channels_last weights.

    channels_last makes every conv (fed NCHW or NHWC images) produce NHWC maps: on 2 CPU cores
    the forward is 22% faster, and the per-pixel heads (norm, probe, argmax) reduce over
    contiguous channels (4x cheaper). Training keeps NCHW on CPU, where NHWC measured 8% slower.
    """
    model = init_backbone(kind, params, checkpoint)
    model.eval().to(memory_format=torch.channels_last)
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def init_backbone(kind: str, params: Params, checkpoint: Path) -> nn.Module:
    """The pretrained backbone from `checkpoint` (models/backbone.pt or a `pixpro export` folder), or
    the same architecture with random init from `seed`; in train mode, as built."""
    if kind not in BACKBONES:
        raise DataError(f"unknown backbone {kind!r}; use one of {', '.join(BACKBONES)}")
    # Seeded and built for both kinds: callers draw their heads' init from the RNG state after this.
    torch.manual_seed(params.seed)
    model = build_backbone(params.pretrain.backbone)
    if kind == "pretrained":
        file = read_backbone_file(checkpoint)
        require_config(file, params.pretrain.backbone)
        model = build_from_file(file)
    return model


def embed(backbone: nn.Module, images: Tensor) -> Tensor:
    """(B, 3, H, W) normalised images -> (B, C, H, W) unit-length pixel features."""
    return F.normalize(backbone(images).float(), dim=1)


class LabelledImage(NamedTuple):
    image: Tensor  # (3, H, W) normalised
    mask: Tensor  # (H, W) int64 trainIds, 255 = ignore
    index: int


@contextmanager
def prepared_file() -> Iterator[None]:
    """Adds what to do to the DataError of a prepared file that cannot be read (truncated, deleted)."""
    try:
        yield
    except DataError as err:
        raise DataError(f"{err}; the prepared data is damaged: rerun `pixpro prepare`") from None


def read_prepared_mask(path: str | Path) -> np.ndarray:
    """(H, W) uint8 trainIds of a prepared mask."""
    with prepared_file():
        return read_label(Path(path))


class LabelledImages(Dataset):
    """Prepared images and masks of one split, in manifest order."""

    def __init__(self, manifest: pd.DataFrame):
        self.rows = manifest.reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> LabelledImage:
        row = self.rows.iloc[index]
        with prepared_file():
            image = normalize(load_image_tensor(row["image"]))
        mask = torch.from_numpy(read_prepared_mask(row["mask"]).astype(np.int64))
        if mask.shape != image.shape[-2:]:
            raise DataError(f"mask {row['mask']} is {tuple(mask.shape)} but image {row['image']} is "
                            f"{tuple(image.shape[-2:])}; rerun `pixpro prepare`")
        return LabelledImage(image, mask, index)


def split_rows(prepared_dir: Path, split: str) -> pd.DataFrame:
    manifest = load_manifest(prepared_dir)
    rows = manifest[(manifest["split"] == split) & (manifest["mask"] != "")]
    if rows.empty:
        raise DataError(f"{prepared_dir}/manifest.csv has no labelled {split} images")
    return rows.reset_index(drop=True)


def labelled_batches(rows: pd.DataFrame, batch_size: int, workers: int = 0,
                     description: str = "") -> Iterator[LabelledImage]:
    """Batches of (images (B, 3, H, W), masks (B, H, W), indices (B,)) behind a progress bar."""
    loader = DataLoader(LabelledImages(rows), batch_size=batch_size, num_workers=workers,
                        collate_fn=lambda items: LabelledImage(torch.stack([i.image for i in items]),
                                                               torch.stack([i.mask for i in items]),
                                                               [i.index for i in items]))
    with progress_bar() as progress:
        task = progress.add_task(description, total=len(rows))
        for batch in loader:
            yield batch
            progress.advance(task, len(batch.index))


def balanced_pixels(mask: Tensor, count: int, generator: torch.Generator, num_classes: int) -> Tensor:
    """Flat indices of up to `count` labelled pixels, class-balanced within the image.

    mask (H, W) train ids in [0, num_classes) or IGNORE -> (n,) int64 with
    n = min(count, labelled pixels). Classes contribute in
    round-robin order of a random within-class ranking, so every class present gives
    count // classes pixels unless it has fewer, and the rest go to the larger classes.
    """
    labels = mask.flatten()
    labelled = (labels != IGNORE).nonzero().squeeze(1)  # (L,)
    if labelled.numel() == 0:
        return labelled
    classes = labels[labelled]
    shuffle = torch.randperm(labelled.numel(), generator=generator)
    labelled, classes = labelled[shuffle], classes[shuffle]
    order = torch.argsort(classes, stable=True)  # group by class, keep the random order inside
    sorted_classes = classes[order]
    starts = torch.searchsorted(sorted_classes, sorted_classes, right=False)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel()) - starts  # position inside its class
    # Round-robin across classes: rank first, then a random class order.
    class_order = torch.randperm(num_classes, generator=generator)  # (K,)
    key = rank * num_classes + class_order[classes]
    return labelled[torch.argsort(key)[:count]]


@dataclass
class FeatureBank:
    features: Tensor  # (N, C) float16, unit length
    labels: Tensor  # (N,) uint8 trainIds in [0, num_classes)
    image_index: Tensor  # (N,) int32 row in the split's manifest
    pixel_index: Tensor  # (N,) int64 flat pixel index in the prepared image
    num_classes: int  # K of the prepared data's class table: the probe needs it, not only the labels seen

    def to_dict(self) -> dict:
        return {"features": self.features, "labels": self.labels, "image_index": self.image_index,
                "pixel_index": self.pixel_index, "num_classes": self.num_classes}


@torch.no_grad()
def extract_bank(backbone: nn.Module, rows: pd.DataFrame, cfg: ExtractConfig, seed: int,
                 device: torch.device, num_classes: int) -> FeatureBank:
    """Stream the labelled train images and keep cfg.pixels_per_image sampled pixels each:
    memory is bounded by the batch and the bank, not by the dataset. num_classes: K of the
    prepared class table."""
    chunks: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
    for batch in labelled_batches(rows, cfg.batch_size, description="extract features"):
        features = embed(backbone, batch.image.to(device))  # (B, C, H, W)
        for b, index in enumerate(batch.index):
            generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
            pixels = balanced_pixels(batch.mask[b], cfg.pixels_per_image, generator, num_classes)  # (n,)
            feats = features[b].flatten(1)[:, pixels.to(device)].T  # (n, C)
            chunks.append((feats.half().cpu(), batch.mask[b].flatten()[pixels].to(torch.uint8),
                           torch.full((len(pixels),), index, dtype=torch.int32), pixels))
    features, labels, image_index, pixel_index = (torch.cat(parts) for parts in zip(*chunks))
    return FeatureBank(features, labels, image_index, pixel_index, num_classes)


def load_bank(path: Path, feature_dim: int | None = None) -> FeatureBank:
    """The bank at `path`; with feature_dim, also check it matches the backbone's features."""
    state = load_checkpoint(path, "extract")
    try:
        bank = FeatureBank(**state)
    except TypeError:
        raise CheckpointError(f"{path} is not a feature bank; rerun `dvc repro extract`") from None
    if feature_dim is not None and bank.features.shape[1] != feature_dim:
        raise CheckpointError(f"{path} holds {bank.features.shape[1]}-dim features but the backbone gives "
                              f"{feature_dim}; rerun `dvc repro extract`")
    return bank
