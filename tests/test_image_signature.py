"""experiments/image_signature.py: the image descriptions against cases worked out by hand (the
held-out R² it scores them with: tests/test_regression.py)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import load_experiment


@pytest.fixture(scope="module")
def signature():
    return load_experiment("image_signature")


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
