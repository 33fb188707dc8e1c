"""Pixel retrieval on val against the train feature bank: precision@k, k-NN mIoU, pictures."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from pixpro.config import RetrievalConfig
from pixpro.data.classes import IGNORE, ClassTable
from pixpro.data.views import load_image_tensor, normalize
from pixpro.errors import CheckpointError, ConfigError
from pixpro.features import FeatureBank, embed, labelled_batches, read_prepared_mask
from pixpro.metrics import ConfusionAccumulator, SegmentationScores, knn_vote, precision_at_k, topk_cosine


@dataclass
class QueryExample:
    image_path: str
    pixel: int  # flat index in the query image
    label: int
    retrieved: list[tuple[str, int, int, float]]  # (train image, flat pixel, label, cosine)
    heatmap: np.ndarray  # (H, W) cosine of the query against the top-1 retrieved image
    heatmap_image: str


@dataclass
class RetrievalResult:
    precision: dict[int, float]
    knn: SegmentationScores
    examples: list[QueryExample]
    query_count: int


def stratified_queries(masks: list[np.ndarray], count: int, generator: torch.Generator,
                       num_classes: int) -> tuple[Tensor, Tensor]:
    """Pick about count // classes pixels per class present over the whole split.

    masks: list of (H, W) uint8 train ids in [0, num_classes) or IGNORE
    -> (image index (Q,), flat pixel (Q,)), sorted by image.
    """
    labels = torch.from_numpy(np.stack(masks).astype(np.int64)).flatten(1)  # (I, HW)
    present = [c for c in range(num_classes) if (labels == c).any()]
    per_class = max(1, count // max(len(present), 1))
    chosen = []
    for cls in present:
        where = (labels == cls).flatten().nonzero().squeeze(1)
        chosen.append(where[torch.randperm(where.numel(), generator=generator)[:per_class]])
    flat = torch.cat(chosen).sort().values
    return flat // labels.shape[1], flat % labels.shape[1]


@torch.no_grad()
def run_retrieval(backbone: nn.Module, bank: FeatureBank, val_rows: pd.DataFrame, train_rows: pd.DataFrame,
                  cfg: RetrievalConfig, seed: int, device: torch.device, batch_size: int,
                  classes: ClassTable) -> RetrievalResult:
    """classes: the prepared data's table (K for the k-NN vote, names for the per-class IoU)."""
    if bank.num_classes != classes.num_classes:
        raise CheckpointError(f"the feature bank has {bank.num_classes} classes but the prepared data has "
                              f"{classes.num_classes}; rerun `dvc repro extract`")
    if len(bank.labels) < max(cfg.k, cfg.knn_k):
        # topk_cosine would fail with a bare ValueError; say which parameters to change.
        raise ConfigError(f"retrieval.k = {cfg.k} and retrieval.knn_k = {cfg.knn_k} need that many gallery "
                          f"pixels but the feature bank holds {len(bank.labels)} pixels; raise "
                          f"extract.pixels_per_image or lower retrieval.k / retrieval.knn_k")
    generator = torch.Generator().manual_seed(seed)
    masks = [read_prepared_mask(p) for p in val_rows["mask"]]
    query_image, query_pixel = stratified_queries(masks, cfg.queries, generator, classes.num_classes)
    gallery = bank.features.to(device)  # (N, C) float16, unit length
    gallery_labels = bank.labels.long().to(device)
    knn = ConfusionAccumulator(classes.num_classes)
    height, width = masks[0].shape
    grid = torch.zeros(height, width, dtype=torch.bool)
    grid[::cfg.knn_stride, ::cfg.knn_stride] = True  # the pixels that get a k-NN label
    grid = grid.flatten().to(device)
    query_feats, query_labels = [], []
    for batch in labelled_batches(val_rows, batch_size, description="retrieval"):
        features = embed(backbone, batch.image.to(device))  # (B, C, H, W)
        for b, index in enumerate(batch.index):
            pixel_feats = features[b].flatten(1).T  # (HW, C)
            labels = batch.mask[b].flatten().to(device)
            labelled = ((labels != IGNORE) & grid).nonzero().squeeze(1)  # unlabelled pixels never count
            scores, neighbours = topk_cosine(pixel_feats[labelled], gallery, cfg.knn_k, cfg.chunk_size)
            knn.update(knn_vote(scores, gallery_labels[neighbours], classes.num_classes), labels[labelled])
            mine = query_pixel[query_image == index].to(device)
            query_feats.append(pixel_feats[mine])
            query_labels.append(labels[mine])
    queries, labels = torch.cat(query_feats), torch.cat(query_labels)
    scores, neighbours = topk_cosine(queries, gallery, cfg.k, cfg.chunk_size)  # (Q, k)
    precision = precision_at_k(labels, gallery_labels[neighbours], ks=(1, 10))
    examples = [
        describe_query(backbone, val_rows, train_rows, bank, device, int(query_image[q]), int(query_pixel[q]),
                       int(labels[q]), scores[q].cpu(), neighbours[q].cpu())
        for q in pick_examples(labels.cpu(), cfg.examples, generator)
    ]
    return RetrievalResult(precision, knn.scores(list(classes.names)), examples, len(labels))


def pick_examples(labels: Tensor, count: int, generator: torch.Generator) -> list[int]:
    """Query indices of `count` distinct classes where possible, for the pictures."""
    classes = labels.unique()
    classes = classes[torch.randperm(classes.numel(), generator=generator)][:count]
    return [int((labels == c).nonzero()[0]) for c in classes]


def describe_query(backbone: nn.Module, val_rows: pd.DataFrame, train_rows: pd.DataFrame, bank: FeatureBank,
                   device: torch.device, image_index: int, pixel: int, label: int, scores: Tensor,
                   neighbours: Tensor) -> QueryExample:
    query_path = val_rows.iloc[image_index]["image"]
    query_feats = embed(backbone, normalize(load_image_tensor(query_path))[None].to(device))[0]  # (C, H, W)
    query = query_feats.flatten(1)[:, pixel]  # (C,)
    retrieved = [(train_rows.iloc[int(bank.image_index[n])]["image"], int(bank.pixel_index[n]),
                  int(bank.labels[n]), float(s)) for n, s in zip(neighbours, scores)]
    top_image = retrieved[0][0]
    top_feats = embed(backbone, normalize(load_image_tensor(top_image))[None].to(device))[0]
    heatmap = torch.einsum("chw,c->hw", top_feats, query).cpu().numpy()
    return QueryExample(query_path, pixel, label, retrieved, heatmap, top_image)
