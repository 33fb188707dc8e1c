"""The params.yaml sections only the evaluation stages read: extract, probe, evaluate, retrieval.

They live apart from pixpro/config.py so that DVC can tell them apart: a stage lists this
module in its `deps` only when it reads one of these sections (tests/test_dvc_deps.py), so
editing, say, a retrieval range check reruns the evaluation stages but leaves `pretrain` (and
`prepare`) up to date. pixpro.config imports these classes into `Params`, and every stage
still validates the whole file before it starts; a range check here only ever decides whether
a stage starts, never what `pretrain` computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pixpro.errors import require as _require


@dataclass(frozen=True)
class ExtractConfig:
    pixels_per_image: int = 64
    batch_size: int = 8

    def validate(self, key: str) -> None:
        _require(self.pixels_per_image >= 1, f"{key}.pixels_per_image", "must be >= 1")
        _require(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")


@dataclass(frozen=True)
class ProbeConfig:
    layers: tuple[int, ...] = (-1,)
    weight_decay: float = 1e-4
    class_weighting: Literal["none", "balanced"] = "none"
    max_iter: int = 300
    tolerance: float = 1e-7

    def validate(self, key: str) -> None:
        _require(self.weight_decay >= 0, f"{key}.weight_decay", "must be >= 0")
        _require(self.max_iter >= 1, f"{key}.max_iter", "must be >= 1")
        _require(self.tolerance > 0, f"{key}.tolerance", "must be > 0")
        _require(len(self.layers) >= 1, f"{key}.layers", "needs at least one decoder stage")


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int = 8
    overlays: int = 4

    def validate(self, key: str) -> None:
        _require(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")
        _require(self.overlays >= 0, f"{key}.overlays", "must be >= 0")


@dataclass(frozen=True)
class RetrievalConfig:
    queries: int = 570
    k: int = 10
    knn_k: int = 10
    knn_stride: int = 4
    chunk_size: int = 8192
    examples: int = 3

    def validate(self, key: str) -> None:
        _require(self.queries >= 1, f"{key}.queries", "must be >= 1")
        _require(self.k >= 10, f"{key}.k", "must be >= 10 (precision@10 is reported)")
        _require(self.knn_k >= 1, f"{key}.knn_k", "must be >= 1")
        _require(self.knn_stride >= 1, f"{key}.knn_stride", "must be >= 1 (1 = every pixel)")
        _require(self.chunk_size >= 1, f"{key}.chunk_size", "must be >= 1")
        _require(self.examples >= 0, f"{key}.examples", "must be >= 0")
