"""experiments/image_signature.py: the held-out R² and the image descriptions against cases worked
out by hand."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import load_experiment


@pytest.fixture(scope="module")
def signature():
    return load_experiment("image_signature")


def test_held_out_r2_is_near_one_for_a_linear_target_and_not_above_zero_for_noise(signature):
    generator = torch.Generator().manual_seed(0)
    predictors = torch.randn(200, 6, generator=generator, dtype=torch.float64)
    mixing = torch.randn(6, 32, generator=generator, dtype=torch.float64)
    assert signature.held_out_r2(predictors, predictors @ mixing + 3.0) > 0.99
    noise = torch.randn(200, 32, generator=generator, dtype=torch.float64)
    assert signature.held_out_r2(predictors, noise) < 0.0  # held out, fitted noise predicts worse than the mean


def test_held_out_r2_scores_a_half_explained_target_near_one_half(signature):
    generator = torch.Generator().manual_seed(1)
    explained = torch.randn(4000, 1, generator=generator, dtype=torch.float64)
    unexplained = torch.randn(4000, 1, generator=generator, dtype=torch.float64)
    # Equal variances: the predictor explains half of the target's.
    assert signature.held_out_r2(explained, explained + unexplained) == pytest.approx(0.5, abs=0.05)


def test_colour_statistics_and_class_composition_by_hand(signature):
    images = torch.zeros(1, 3, 2, 2)
    images[0, 0] = torch.tensor([[1.0, 3.0], [1.0, 3.0]])  # mean 2, std (ddof 1) 2 / sqrt(3)
    colour = signature.colour_statistics(images)
    assert colour.shape == (1, 6)
    assert colour[0, 0].item() == pytest.approx(2.0)
    assert colour[0, 3].item() == pytest.approx(2.0 / 3 ** 0.5)
    masks = torch.tensor([[[0, 0], [2, 255]]])  # two pixels of class 0, one of class 2, one ignored
    composition = signature.class_composition(masks, num_classes=3)
    assert composition[0].tolist() == pytest.approx([2 / 3, 0.0, 1 / 3])


def test_held_out_r2_ignores_a_predictor_constant_on_the_training_folds(signature):
    generator = torch.Generator().manual_seed(2)
    predictors = torch.randn(50, 2, generator=generator, dtype=torch.float64)
    target = predictors[:, :1] * 2.0
    rare = torch.zeros(50, 1, dtype=torch.float64)
    rare[0] = 1.0  # present in one held-out image only, as a class the other folds never show
    with_rare = torch.cat([predictors, rare], dim=1)
    assert signature.held_out_r2(with_rare, target) == pytest.approx(signature.held_out_r2(predictors, target), abs=1e-3)
