"""Evaluation metrics: dataset-level semantic segmentation scores and dense retrieval.

Segmentation follows the official Cityscapes protocol
(``cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling``): one confusion
matrix accumulated over the whole dataset, per-class IoU = TP / (TP + FP + FN),
pixels whose ground truth is ignored are dropped entirely, and the mean is taken
over the classes whose IoU is defined (not NaN).

The number of classes K is always an argument: it comes from the data's class table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pixpro.data.classes import IGNORE as IGNORE_INDEX  # one definition of the ignore label

__all__ = [
    "IGNORE_INDEX",
    "confusion_matrix",
    "iou_per_class",
    "mean_iou",
    "pixel_accuracy",
    "SegmentationScores",
    "segmentation_scores",
    "ConfusionAccumulator",
    "precision_at_k",
    "topk_cosine",
    "knn_vote",
]


# --------------------------------------------------------------------------- #
# Segmentation
# --------------------------------------------------------------------------- #


def _check_integer(name: str, t: Tensor) -> None:
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got dtype {t.dtype}")


def confusion_matrix(
    pred: Tensor,
    target: Tensor,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Confusion matrix of one batch (or image, or dataset).

    Args:
        pred: integer class predictions, any shape, e.g. (B, H, W).
        target: integer ground truth, same shape as ``pred``; ``ignore_index``
            marks pixels that are excluded (whatever was predicted there).
        num_classes: K.
        ignore_index: label value in ``target`` to drop.

    Returns:
        (K, K) int64 on ``pred``'s device; rows = ground truth, cols = prediction.

    Raises:
        ValueError: shapes differ, a valid pixel's prediction is outside [0, K),
            or a target value is neither in [0, K) nor ``ignore_index``.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target shapes differ: pred {tuple(pred.shape)} vs target {tuple(target.shape)}"
        )
    _check_integer("pred", pred)
    _check_integer("target", target)
    k = int(num_classes)

    # int64 before any arithmetic: uint8 inputs would overflow in target * K.
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    valid = target != ignore_index
    pred = pred[valid]
    target = target[valid]

    # One host sync per call; silently miscounting out-of-range labels is worse.
    bad_target = (target < 0) | (target >= k)
    if bool(bad_target.any()):
        raise ValueError(
            f"target contains values outside [0, {k}) that are not ignore_index={ignore_index}: "
            f"{torch.unique(target[bad_target])[:10].tolist()}"
        )
    bad_pred = (pred < 0) | (pred >= k)
    if bool(bad_pred.any()):
        raise ValueError(
            f"pred contains values outside [0, {k}) at non-ignored pixels: "
            f"{torch.unique(pred[bad_pred])[:10].tolist()}"
        )

    # Encode each (gt, pred) pair as one bin index; a single bincount does the counting.
    counts = torch.bincount(target * k + pred, minlength=k * k)
    return counts.reshape(k, k).to(torch.int64)


def _check_conf(conf: Tensor) -> Tensor:
    if conf.dim() != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion matrix must be square (K, K), got shape {tuple(conf.shape)}")
    return conf.to(torch.float64)


def iou_per_class(conf: Tensor) -> Tensor:
    """Per-class intersection over union.

    Args:
        conf: (K, K) confusion matrix, rows = ground truth, cols = prediction.

    Returns:
        (K,) float64, TP / (TP + FP + FN). NaN where the class is absent from both
        ground truth and prediction; 0 where it has false positives but no ground truth.
    """
    c = _check_conf(conf)
    tp = torch.diagonal(c)
    fp = c.sum(dim=0) - tp
    fn = c.sum(dim=1) - tp
    denom = tp + fp + fn
    iou = tp / denom.clamp_min(1.0)
    return torch.where(denom > 0, iou, torch.full_like(iou, float("nan")))


def mean_iou(conf: Tensor) -> float:
    """Mean IoU over the classes with a defined IoU (NaNs excluded, as in
    cityscapesscripts' ``getScoreAverage``). NaN if no class is defined.

    Args:
        conf: (K, K) confusion matrix.
    """
    iou = iou_per_class(conf)
    defined = ~torch.isnan(iou)
    if not bool(defined.any()):
        return float("nan")
    return float(iou[defined].mean().item())


def pixel_accuracy(conf: Tensor) -> float:
    """Fraction of non-ignored pixels predicted correctly; NaN for an empty matrix.

    Args:
        conf: (K, K) confusion matrix.
    """
    c = _check_conf(conf)
    total = c.sum()
    if float(total) == 0.0:
        return float("nan")
    return float((torch.diagonal(c).sum() / total).item())


def _nan_to_none(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


@dataclass(frozen=True)
class SegmentationScores:
    """Dataset-level segmentation scores.

    ``iou`` maps class name -> IoU, with None where the IoU is undefined (NaN).
    """

    miou: float
    pixel_accuracy: float
    iou: dict[str, float | None]

    def to_json_dict(self) -> dict:
        """JSON-safe dict ({"miou", "pixel_accuracy", "iou"}); NaN becomes None."""
        return {
            "miou": _nan_to_none(self.miou),
            "pixel_accuracy": _nan_to_none(self.pixel_accuracy),
            "iou": {name: (None if v is None else _nan_to_none(v)) for name, v in self.iou.items()},
        }


def segmentation_scores(conf: Tensor, class_names: list[str] | None = None) -> SegmentationScores:
    """Summarise a confusion matrix.

    Args:
        conf: (K, K) confusion matrix.
        class_names: K names in class-index order (the class table's); defaults to
            "class_0", "class_1", ...
    """
    k = conf.shape[0]
    if class_names is None:
        class_names = [f"class_{i}" for i in range(k)]
    if len(class_names) != k:
        raise ValueError(f"got {len(class_names)} class names for a {k}x{k} confusion matrix")
    iou = iou_per_class(conf).cpu().tolist()
    return SegmentationScores(
        miou=mean_iou(conf),
        pixel_accuracy=pixel_accuracy(conf),
        iou={name: _nan_to_none(v) for name, v in zip(class_names, iou)},
    )


class ConfusionAccumulator:
    """Streaming dataset-level confusion matrix.

    Call ``update(pred, target)`` per batch and ``scores()`` at the end. Counts are
    summed over the whole dataset, so IoUs are never averaged per batch or image
    (which would weight small images/rare classes differently from the official metric).
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self._conf: Tensor | None = None

    def reset(self) -> None:
        self._conf = None

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch. pred, target: same shape, e.g. (B, H, W), integer."""
        batch = confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        if self._conf is None:
            self._conf = batch
        else:
            # Stay on the device of the first batch (GPU avoids a copy per batch).
            self._conf += batch.to(self._conf.device)

    @property
    def conf(self) -> Tensor:
        """(K, K) int64 copy of the accumulated matrix (zeros before any update)."""
        if self._conf is None:
            return torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        return self._conf.clone()

    def scores(self, class_names: list[str] | None = None) -> SegmentationScores:
        return segmentation_scores(self.conf.cpu(), class_names)


# --------------------------------------------------------------------------- #
# Dense retrieval
# --------------------------------------------------------------------------- #


def precision_at_k(
    query_labels: Tensor,
    retrieved_labels: Tensor,
    ks: tuple[int, ...] = (1, 10),
) -> dict[int, float]:
    """Class-balanced retrieval precision.

    Args:
        query_labels: (Q,) labels of the queries.
        retrieved_labels: (Q, k_max) labels of the retrieved items, sorted by
            decreasing similarity.
        ks: cut-offs, each in [1, k_max].

    Returns:
        {k: precision}: per query, the fraction of its top-k with the query's label;
        averaged over the queries of each class, then over the classes present among
        the queries (so frequent classes such as road do not dominate).
    """
    if query_labels.dim() != 1 or retrieved_labels.dim() != 2 or retrieved_labels.shape[0] != query_labels.shape[0]:
        raise ValueError(
            f"expected query_labels (Q,) and retrieved_labels (Q, k_max), got "
            f"{tuple(query_labels.shape)} and {tuple(retrieved_labels.shape)}"
        )
    q, k_max = retrieved_labels.shape
    if q == 0:
        raise ValueError("precision_at_k needs at least one query")
    query_labels = query_labels.to(retrieved_labels.device)
    classes, inverse = torch.unique(query_labels, return_inverse=True)
    n_per_class = torch.bincount(inverse, minlength=len(classes)).to(torch.float64)
    hits = (retrieved_labels == query_labels[:, None]).to(torch.float64)
    # Cumulative hit counts give every cut-off from one pass.
    cum_hits = hits.cumsum(dim=1)

    out: dict[int, float] = {}
    for k in ks:
        if not 1 <= k <= k_max:
            raise ValueError(f"k={k} outside [1, {k_max}] (retrieved_labels has {k_max} columns)")
        per_query = cum_hits[:, k - 1] / k
        # scatter_add_ rather than bincount(weights=...): the latter has no deterministic CUDA kernel.
        per_class_sum = torch.zeros(len(classes), dtype=torch.float64, device=per_query.device)
        per_class = per_class_sum.scatter_add_(0, inverse, per_query) / n_per_class
        out[int(k)] = float(per_class.mean().item())
    return out


def topk_cosine(
    queries: Tensor,
    gallery: Tensor,
    k: int,
    chunk_size: int = 4096,
) -> tuple[Tensor, Tensor]:
    """k nearest gallery rows by cosine similarity, computed chunk by chunk.

    Args:
        queries: (Q, D), need not be normalised.
        gallery: (N, D), need not be normalised; may live on another device
            (each chunk is moved to ``queries``' device).
        k: number of neighbours, 1 <= k <= N (may exceed ``chunk_size``).
        chunk_size: gallery rows per matmul.

    Returns:
        scores (Q, k) float32 and indices (Q, k) int64 into ``gallery``, sorted by
        decreasing similarity. Peak extra memory is O(Q * k + 16M floats).
    """
    if queries.dim() != 2 or gallery.dim() != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"expected queries (Q, D) and gallery (N, D), got {tuple(queries.shape)} and {tuple(gallery.shape)}"
        )
    n = gallery.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k={k} outside [1, {n}] (gallery size)")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    device = queries.device
    q = F.normalize(queries.to(torch.float32), dim=1)
    # Query blocks keep each similarity tile at about 16M floats whatever Q is.
    block = max(1, (1 << 24) // min(chunk_size, n))
    best_scores = torch.empty(q.shape[0], 0, dtype=torch.float32, device=device)
    best_idx = torch.empty(q.shape[0], 0, dtype=torch.int64, device=device)
    for start in range(0, n, chunk_size):
        # Normalise per chunk so a half-precision gallery is never copied whole to float32.
        g = F.normalize(gallery[start : start + chunk_size].to(device=device, dtype=torch.float32), dim=1)
        keep = min(k, g.shape[0])
        tiles = [(q[i : i + block] @ g.T).topk(keep, dim=1) for i in range(0, q.shape[0], block)]
        chunk_scores = torch.cat([t.values for t in tiles])  # (Q, keep)
        chunk_idx = torch.cat([t.indices for t in tiles]) + start
        # Merge the chunk's own top-k with the running one: O(Q * k) per chunk.
        cand_scores = torch.cat([best_scores, chunk_scores], dim=1)
        cand_idx = torch.cat([best_idx, chunk_idx], dim=1)
        best_scores, pos = cand_scores.topk(min(k, cand_scores.shape[1]), dim=1, largest=True, sorted=True)
        best_idx = cand_idx.gather(1, pos)
    return best_scores, best_idx


def knn_vote(scores: Tensor, neighbour_labels: Tensor, num_classes: int) -> Tensor:
    """Similarity-weighted k-NN classification.

    Args:
        scores: (Q, k) similarities of each query's neighbours.
        neighbour_labels: (Q, k) integer labels in [0, num_classes).
        num_classes: C.

    Returns:
        (Q,) int64: the class with the largest summed similarity among the classes
        that received at least one vote; ties go to the lowest class id.
    """
    if scores.shape != neighbour_labels.shape or scores.dim() != 2:
        raise ValueError(
            f"scores and neighbour_labels must both be (Q, k), got {tuple(scores.shape)} "
            f"and {tuple(neighbour_labels.shape)}"
        )
    labels = neighbour_labels.long()
    if bool(((labels < 0) | (labels >= num_classes)).any()):
        raise ValueError(f"neighbour_labels must lie in [0, {num_classes}); filter ignore pixels first")
    w = scores.to(torch.float64)
    votes = torch.zeros(w.shape[0], num_classes, dtype=torch.float64, device=w.device)
    votes.scatter_add_(1, labels, w)
    counts = torch.zeros_like(votes).scatter_add_(1, labels, torch.ones_like(w))
    # Classes without any neighbour must not win when all similarities are negative.
    votes = votes.masked_fill(counts == 0, float("-inf"))
    # Explicit tie-break (lowest id among the maxima) rather than relying on argmax order.
    best = votes.max(dim=1, keepdim=True).values
    class_ids = torch.arange(num_classes, device=w.device).expand_as(votes)
    return torch.where(votes == best, class_ids, num_classes).min(dim=1).values
