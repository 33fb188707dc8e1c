"""pixpro.regression: the held-out R² of ridge regression against cases worked out by hand."""

from __future__ import annotations

import pytest
import torch

from pixpro.regression import held_out_r2


def test_held_out_r2_is_near_one_for_a_linear_target_and_not_above_zero_for_noise():
    generator = torch.Generator().manual_seed(0)
    predictors = torch.randn(200, 6, generator=generator, dtype=torch.float64)
    mixing = torch.randn(6, 32, generator=generator, dtype=torch.float64)
    assert held_out_r2(predictors, predictors @ mixing + 3.0) > 0.99
    noise = torch.randn(200, 32, generator=generator, dtype=torch.float64)
    assert held_out_r2(predictors, noise) < 0.0  # held out, fitted noise predicts worse than the mean


def test_held_out_r2_scores_a_half_explained_target_near_one_half():
    generator = torch.Generator().manual_seed(1)
    explained = torch.randn(4000, 1, generator=generator, dtype=torch.float64)
    unexplained = torch.randn(4000, 1, generator=generator, dtype=torch.float64)
    # Equal variances: the predictor explains half of the target's.
    assert held_out_r2(explained, explained + unexplained) == pytest.approx(0.5, abs=0.05)


def test_held_out_r2_ignores_a_predictor_constant_on_the_training_folds():
    generator = torch.Generator().manual_seed(2)
    predictors = torch.randn(50, 2, generator=generator, dtype=torch.float64)
    target = predictors[:, :1] * 2.0
    rare = torch.zeros(50, 1, dtype=torch.float64)
    rare[0] = 1.0  # present in one held-out image only, as a class the other folds never show
    with_rare = torch.cat([predictors, rare], dim=1)
    assert held_out_r2(with_rare, target) == pytest.approx(held_out_r2(predictors, target), abs=1e-3)


def test_held_out_r2_keeps_a_group_on_one_side_of_each_split():
    # Each group is one value repeated: a target that is a pure group effect. Split row by row, the
    # group's own rows are in training and the group one-hot predicts its held-out rows perfectly;
    # split by group, every held-out group is unseen, so the same predictors explain nothing.
    groups = torch.arange(40).repeat_interleave(5)
    one_hot = torch.nn.functional.one_hot(groups).double()
    target = torch.randn(40, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)[groups]
    assert held_out_r2(one_hot, target, penalty=1e-6) > 0.99
    assert held_out_r2(one_hot, target, penalty=1e-6, groups=groups) < 0.05
