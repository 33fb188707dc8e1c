"""Multinomial logistic regression on frozen pixel features, fitted with full-batch L-BFGS."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pixpro.config import ProbeConfig
from pixpro.errors import CheckpointError


@dataclass
class ProbeFit:
    probe: nn.Linear
    curve: list[float]  # objective at every L-BFGS function evaluation
    converged: bool


def class_weights(labels: Tensor, num_classes: int, mode: str) -> Tensor | None:
    """'balanced': weight_c = N / (classes_present * count_c) (as scikit-learn); 'none': None."""
    if mode == "none":
        return None
    counts = torch.bincount(labels, minlength=num_classes).double()
    present = (counts > 0).sum()
    weights = torch.where(counts > 0, labels.numel() / (present * counts.clamp(min=1)), torch.zeros_like(counts))
    return weights.float()


def fit_probe(features: Tensor, labels: Tensor, num_classes: int, cfg: ProbeConfig) -> ProbeFit:
    """features (N, C) float, labels (N,) int64 in [0, num_classes) -> fitted nn.Linear(C, K).

    Objective: mean (weighted) cross-entropy + weight_decay * ||W||^2 / 2 (bias not decayed).
    """
    features = features.float()
    labels = labels.long()
    probe = nn.Linear(features.shape[1], num_classes)
    nn.init.zeros_(probe.weight)
    nn.init.zeros_(probe.bias)
    weights = class_weights(labels, num_classes, cfg.class_weighting)
    optimizer = torch.optim.LBFGS(probe.parameters(), lr=1.0, max_iter=cfg.max_iter, history_size=20,
                                  tolerance_grad=cfg.tolerance, tolerance_change=cfg.tolerance * 1e-2,
                                  line_search_fn="strong_wolfe")
    curve: list[float] = []  # objective at every evaluation, line-search steps included

    def objective() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(features), labels, weight=weights)
        loss = loss + 0.5 * cfg.weight_decay * probe.weight.pow(2).sum()
        loss.backward()
        curve.append(float(loss.detach()))
        return loss

    optimizer.step(objective)
    state = optimizer.state[probe.weight]
    # L-BFGS also stops at max_eval (1.25 x max_iter) evaluations, before max_iter iterations:
    # that is running out of budget too, not convergence.
    out_of_budget = (int(state.get("n_iter", 0)) >= cfg.max_iter
                     or int(state.get("func_evals", 0)) >= optimizer.defaults["max_eval"])
    return ProbeFit(probe, curve, converged=not out_of_budget)


def probe_state(fit: ProbeFit) -> dict:
    return {"weight": fit.probe.weight.detach(), "bias": fit.probe.bias.detach(),
            "curve": fit.curve, "converged": fit.converged}


def probe_from_state(state: dict, feature_dim: int, path: str) -> nn.Linear:
    weight = state.get("weight")
    if weight is None:
        raise CheckpointError(f"{path} holds no probe; rerun `dvc repro probe`")
    if weight.shape[1] != feature_dim:
        raise CheckpointError(f"{path} expects {weight.shape[1]}-dim features but the backbone gives "
                              f"{feature_dim}; rerun `dvc repro extract probe`")
    probe = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        probe.weight.copy_(weight)
        probe.bias.copy_(state["bias"])
    return probe
