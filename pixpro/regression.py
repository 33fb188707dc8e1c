"""Held-out R² of ridge regression: how much of one set of per-sample numbers another set predicts
on samples it was not fitted on. The diagnostics under experiments/ use it (what a stage's image
signature encodes; whether a stage's features still say where a pixel is); no stage does.
"""

from __future__ import annotations

import torch
from torch import Tensor

FOLDS = 5


def ridge_fit(design: Tensor, target: Tensor, penalty: float) -> Tensor:
    """design (N, K) with an intercept column last, target (N, C) -> weights (K, C) of ridge
    regression (the intercept unpenalised)."""
    eye = torch.eye(design.shape[1], dtype=design.dtype)
    eye[-1, -1] = 0.0
    return torch.linalg.solve(design.T @ design + penalty * eye, design.T @ target)


def held_out_r2(predictors: Tensor, target: Tensor, folds: int = FOLDS, penalty: float = 1e-2,
                groups: Tensor | None = None) -> float:
    """predictors (N, K), target (N, C) -> 1 - sum of squared held-out residuals / total sum of
    squares around the training folds' mean, over `folds` folds.

    Row i is in fold i mod folds, or with `groups` (N,) ints, in fold groups[i] mod folds, so that
    rows of one group (the cells of one image) are never split between fitting and scoring.
    Predictors are standardised on the training folds, so the penalty (per training row) means
    the same for every description; a predictor constant there gets weight 0."""
    fold_of = torch.arange(len(target)) if groups is None else groups.long()
    residual = total = 0.0
    for fold in range(folds):
        test = (fold_of % folds) == fold
        train = ~test
        mean, std = predictors[train].mean(dim=0), predictors[train].std(dim=0).clamp(min=1e-6)

        def design(rows: Tensor) -> Tensor:
            scaled = (predictors[rows] - mean) / std
            return torch.cat([scaled, torch.ones(len(scaled), 1, dtype=scaled.dtype)], dim=1)

        weights = ridge_fit(design(train), target[train], penalty * train.sum().item())
        residual += float((target[test] - design(test) @ weights).pow(2).sum())
        total += float((target[test] - target[train].mean(dim=0)).pow(2).sum())
    return 1.0 - residual / max(total, 1e-12)
