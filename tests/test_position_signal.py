"""experiments/position_signal.py: cell positions by hand, and the cells it collects per stage."""

from __future__ import annotations

import pytest
import torch

from pixpro.features import load_frozen_backbone, split_rows
from tests.conftest import load_experiment, make_eval_params


@pytest.fixture(scope="module")
def position():
    return load_experiment("position_signal")


def test_cell_positions_are_row_major_centres(position):
    positions = position.cell_positions(2, 4)
    assert positions.shape == (8, 2)
    assert positions[0].tolist() == [0.25, 0.125]  # top-left cell's centre
    assert positions[5].tolist() == [0.75, 0.375]  # row 1, column 1
    assert positions[:, 0].mean().item() == pytest.approx(0.5) and positions[:, 1].mean().item() == pytest.approx(0.5)


def test_stage_cells_cap_the_cells_per_image_and_keep_their_image(position, prepared, tmp_path):
    params = make_eval_params()
    backbone = load_frozen_backbone("random", params, tmp_path / "absent.pt")
    val = split_rows(prepared, "val")
    stages = len(params.pretrain.backbone.stage_channels)
    cells = position.stage_cells(backbone, val, 2, cells=6, seed=0, stages=stages)
    assert set(cells) == set(range(-stages, 0))
    h, w = params.data.size
    for stage, (features, positions, images) in cells.items():
        grid = (h // 2 ** (-stage - 1)) * (w // 2 ** (-stage - 1))  # the output is stage -1, at full size
        assert len(features) == len(positions) == len(images) == len(val) * min(grid, 6)
        norms = features.norm(dim=1)  # unit length, or 0 where every channel is 0 (a dead ReLU map)
        assert (((norms - 1).abs() < 1e-6) | (norms == 0)).all() and (norms > 0).any()
        assert len(images.unique()) == len(val) and (images.bincount()[images.unique()] == min(grid, 6)).all()
        assert ((positions > 0) & (positions < 1)).all()
    again = position.stage_cells(backbone, val, 2, cells=6, seed=0, stages=stages)
    assert all(torch.equal(again[s][1], cells[s][1]) for s in cells)  # the draw is seeded
