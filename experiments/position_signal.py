"""Do the decoder stages still say where a pixel is? Held-out evidence, per stage.

A random-init CNN encodes absolute position through its zero padding (Islam et al., "How much
position information do convolutional neural networks encode?", ICLR 2020), and on driving frames
position alone is a strong class prior (sky on top, road below). Pretraining on crops asks a
pixel's feature to match its partner at another place in the other view, which could wash that
code out. This script measures it: for each decoder stage, ridge regression predicts each grid
cell's normalised row and column (cell centre / grid size, in [0, 1]) from the stage's unit-length
features, scored on held-out val images (5 folds over images, pixpro.regression.held_out_r2).

Cells: every cell of the 1/16 grid, and at most `--cells` cells per image drawn with a seeded
generator at the finer stages, so that each stage has about as many rows. One CSV row per
(backbone, stage), appended to --out.

    OMP_NUM_THREADS=2 .venv/bin/python experiments/position_signal.py --folder /tmp/run --data idd \\
        --setting default --out experiments/results/position_signal.csv [--backbones pretrained]
"""

from __future__ import annotations

import time

import torch
from torch import Tensor
from torch.nn import functional as F

from pixpro.config import load_params
from pixpro.features import labelled_batches, load_frozen_backbone, split_rows
from pixpro.model.backbone import forward_tapped
from pixpro.regression import held_out_r2
from pixpro.runs import append_result_rows, measurement_parser

COLUMNS = ["data", "setting", "seed", "backbone", "stage", "cells", "r2_row", "r2_column", "seconds"]


def cell_positions(height: int, width: int) -> Tensor:
    """(height * width, 2) row and column of each cell's centre over the grid's size, row-major."""
    rows = (torch.arange(height, dtype=torch.float64) + 0.5) / height
    columns = (torch.arange(width, dtype=torch.float64) + 0.5) / width
    grid_rows, grid_columns = torch.meshgrid(rows, columns, indexing="ij")
    return torch.stack([grid_rows.flatten(), grid_columns.flatten()], dim=1)


@torch.no_grad()
def stage_cells(backbone: torch.nn.Module, rows, batch_size: int, cells: int, seed: int, stages: int
                ) -> dict[int, tuple[Tensor, Tensor, Tensor]]:
    """-> {stage: (unit-length features (N, C_l), positions (N, 2), image index (N,))} for the
    decoder stages -stages ... -1 (the output) over the rows' images; at most `cells` cells per
    image, drawn with a generator seeded per image."""
    found: dict[int, list[tuple[Tensor, Tensor, Tensor]]] = {stage: [] for stage in range(-stages, 0)}
    for batch in labelled_batches(rows, batch_size, description="stage cells"):
        maps = forward_tapped(backbone, batch.image, tuple(range(-stages, -1)))
        for stage, stage_map in {**maps.stages, -1: maps.output}.items():
            b, c, h, w = stage_map.shape
            features = F.normalize(stage_map.float(), dim=1).permute(0, 2, 3, 1).reshape(b, h * w, c)
            positions = cell_positions(h, w)
            for i, index in enumerate(batch.index):
                keep = torch.arange(h * w)
                if h * w > cells:
                    generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
                    keep = torch.randperm(h * w, generator=generator)[:cells]
                found[stage].append((features[i, keep].double(), positions[keep],
                                     torch.full((len(keep),), index, dtype=torch.int64)))
    return {stage: tuple(torch.cat(parts) for parts in zip(*chunks)) for stage, chunks in found.items()}


def main() -> None:
    parser = measurement_parser(__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=160, help="cells per image at most (the 1/16 grid of 160x224 has 140)")
    args = parser.parse_args()

    folder = args.folder.resolve()
    params = load_params(folder / "params.yaml")
    val = split_rows(folder / "data" / "prepared", "val")
    for kind in args.backbones:
        start = time.perf_counter()
        backbone = load_frozen_backbone(kind, params, folder / "models" / "backbone.pt")
        cells = stage_cells(backbone, val, params.extract.batch_size, args.cells, params.seed,
                            len(params.pretrain.backbone.stage_channels))
        rows = []
        for stage, (features, positions, images) in cells.items():
            rows.append({"data": args.data, "setting": args.setting, "seed": params.seed, "backbone": kind,
                         "stage": stage, "cells": len(features),
                         "r2_row": held_out_r2(features, positions[:, :1], groups=images),
                         "r2_column": held_out_r2(features, positions[:, 1:], groups=images),
                         "seconds": round(time.perf_counter() - start, 1)})
            print(f"{kind:>10} {stage:>3} R2 row {rows[-1]['r2_row']:.3f} column {rows[-1]['r2_column']:.3f}", flush=True)
        append_result_rows(args.out, COLUMNS, rows)


if __name__ == "__main__":
    main()
