"""experiments/weight_drift.py: per-block relative weight change, against cases worked out by hand,
and the init it compares with is the pretrain stage's own."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import load_experiment, make_params


@pytest.fixture(scope="module")
def drift():
    return load_experiment("weight_drift")


def test_relative_drift_per_block_by_hand(drift):
    initial = {"encoder.layer1.0.conv1.weight": torch.full((2, 2), 3.0),
               "encoder.layer1.0.conv2.weight": torch.full((2, 2), 4.0),
               "encoder.layer1.0.bn1.weight": torch.ones(2),  # a vector: left out
               "decoder.blocks.0.conv.weight": torch.ones(1, 4)}
    trained = {**initial,
               "encoder.layer1.0.conv2.weight": torch.full((2, 2), 4.0) + torch.tensor([[5.0, 0], [0, 0]]),
               "encoder.layer1.0.bn1.weight": torch.full((2,), 9.0)}
    # layer1.0: |w - w0| = 5 over |w0| = sqrt(4 * 9 + 4 * 16) = 10 -> 0.5; the decoder block did not move.
    assert drift.relative_drift(initial, trained) == {"encoder.layer1.0": pytest.approx(0.5),
                                                      "decoder.blocks.0": 0.0}
    assert drift.block_of("encoder.conv1.weight") == "encoder.conv1"


def test_its_random_init_is_the_one_pretraining_starts_from(drift, tmp_path):
    from pixpro.features import init_backbone
    from pixpro.model.pixpro import PixPro

    params = make_params()
    torch.manual_seed(params.seed)  # as pixpro.train does before building the model
    start = PixPro(params.pretrain).backbone.state_dict()
    rebuilt = init_backbone("random", params, tmp_path / "absent").state_dict()
    assert all(torch.equal(start[k], rebuilt[k]) for k in start)
    assert set(drift.relative_drift(rebuilt, start).values()) == {0.0}
