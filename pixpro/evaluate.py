"""Score a frozen backbone + linear probe on every val pixel, one batch at a time."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import Tensor, nn
from torch.nn import functional as F

from pixpro.data.cityscapes import read_image
from pixpro.data.classes import ClassTable
from pixpro.errors import CheckpointError, DataError, PixproError
from pixpro.features import labelled_batches
from pixpro.io import make_parents
from pixpro.metrics import ConfusionAccumulator, SegmentationScores


@dataclass
class Overlay:
    image: np.ndarray  # (H, W, 3) uint8
    truth: np.ndarray  # (H, W) uint8 trainIds
    prediction: np.ndarray  # (H, W) uint8 trainIds


@dataclass
class Evaluation:
    scores: SegmentationScores
    confusion: Tensor  # (K, K) int64, rows = ground truth
    overlays: list[Overlay]


def predict(backbone: nn.Module, probe: nn.Linear, images: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, H, W) int64 trainIds of the probe on L2-normalised features.

    argmax_k(W_k f / |f| + b_k) = argmax_k(W_k f + b_k |f|), so the normalised map is never
    built (|f| clamped like F.normalize's eps, so an all-zero feature still gets argmax(b)).
    """
    features = backbone(images).float()  # (B, C, H, W)
    norm = torch.linalg.vector_norm(features, dim=1, keepdim=True).clamp(min=1e-12)  # (B, 1, H, W)
    logits = F.conv2d(features, probe.weight[:, :, None, None])  # (B, K, H, W)
    return logits.addcmul_(probe.bias[None, :, None, None], norm).argmax(1)


def save_prediction(array: np.ndarray, path: Path) -> None:
    try:
        Image.fromarray(array).save(path, compress_level=1)
    except OSError as err:
        raise PixproError(f"could not write {path}: {err.strerror or err}") from None


def check_same_size(prediction: Tensor, mask: Tensor, name: str) -> None:
    if prediction.shape != mask.shape:
        raise DataError(f"prediction for {name} is {tuple(prediction.shape[-2:])} but its label is "
                        f"{tuple(mask.shape[-2:])}")


class BoundedWriter:
    """Runs writes in background threads with at most `limit` of them queued or running.

    Predictions wait in the queue as full-size arrays: unbounded, a slow disk at Cityscapes
    resolution would hold the whole val set in memory. submit() blocks on the oldest write
    once the limit is reached; a failed write re-raises there or in wait().
    """

    def __init__(self, threads: int, limit: int):
        self.pool = ThreadPoolExecutor(max_workers=threads)
        self.limit = limit
        self.pending: deque[Future] = deque()

    def submit(self, fn, *args) -> None:
        while len(self.pending) >= self.limit:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(fn, *args))

    def wait(self) -> None:
        while self.pending:
            self.pending.popleft().result()

    def __enter__(self) -> "BoundedWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True)


def require_probe_fits(probe: nn.Linear, classes: ClassTable) -> None:
    """A probe fitted on another class table cannot label this data: stop before any work."""
    if probe.out_features != classes.num_classes:
        raise CheckpointError(f"the probe predicts {probe.out_features} classes but the prepared data has "
                              f"{classes.num_classes}; rerun `dvc repro extract probe`")


@torch.no_grad()
def evaluate_segmentation(backbone: nn.Module, probe: nn.Linear, rows: pd.DataFrame, batch_size: int,
                          device: torch.device, predictions_dir: Path, overlays: int,
                          classes: ClassTable) -> Evaluation:
    """Predict every val pixel, write trainId PNGs named after the input images, and
    accumulate one dataset-level (K, K) confusion matrix, K and names from `classes`."""
    require_probe_fits(probe, classes)
    make_parents(predictions_dir)  # a file in the way: one line, not a traceback
    if predictions_dir.exists() and not predictions_dir.is_dir():
        raise PixproError(f"cannot write predictions into {predictions_dir}: it is a file, not a folder")
    predictions_dir.mkdir(exist_ok=True)
    accumulator = ConfusionAccumulator(classes.num_classes)
    kept: list[Overlay] = []
    probe = probe.to(device)
    # PNG encoding runs in threads (it releases the GIL) so it overlaps the next forward pass.
    # Each write's future is checked: a failed write (disk full) must fail the stage.
    with BoundedWriter(threads=2, limit=2 * batch_size) as writer:
        for batch in labelled_batches(rows, batch_size, description="evaluate"):
            prediction = predict(backbone, probe, batch.image.to(device)).cpu()  # (B, H, W)
            for b, index in enumerate(batch.index):
                check_same_size(prediction[b], batch.mask[b], rows.iloc[index]["image"])
            accumulator.update(prediction, batch.mask)
            for b, index in enumerate(batch.index):
                image_path = Path(rows.iloc[index]["image"])
                array = prediction[b].numpy().astype(np.uint8)
                writer.submit(save_prediction, array, predictions_dir / image_path.name)
                if len(kept) < overlays:
                    kept.append(Overlay(np.asarray(read_image(image_path)),
                                        batch.mask[b].numpy().astype(np.uint8), array))
        writer.wait()  # re-raises a failed write
    return Evaluation(accumulator.scores(list(classes.names)), accumulator.conf, kept)


