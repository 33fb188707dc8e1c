"""How far pretraining moved each block of the backbone from its random init: per encoder layer
and decoder block, ||w - w0|| / ||w0|| over the block's weight tensors (convolution kernels;
BatchNorm affine vectors and running statistics left out, as their scale is not comparable).

w0 is the random init of the run's `seed`, built as the pretrain stage builds it (the same
seeded call), so a block at 0% got no gradient at all. Two independent inits of one shape are
about 141% apart, so values well below that also confirm the init is the right one. Under AdamW
an update's size does not follow the gradient's (every weight moves about lr a step), so drift
says that a block was trained, not that it learned anything a probe can use.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/weight_drift.py --folder /tmp/run [--folder ...]
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import torch

from pixpro.config import load_params
from pixpro.features import init_backbone


def block_of(name: str) -> str:
    """The block a parameter belongs to: its first three dotted parts ('encoder.layer3.1',
    'decoder.blocks.0'), or fewer for a shallower name ('encoder.conv1.weight' -> 'encoder.conv1')."""
    parts = name.split(".")[:-1]  # drop 'weight'
    return ".".join(parts[:3])


def relative_drift(initial: dict[str, torch.Tensor], trained: dict[str, torch.Tensor]) -> dict[str, float]:
    """{block: ||w - w0|| / ||w0||} over the block's tensors of two or more dimensions, in the
    state dict's order."""
    squares: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for name, w0 in initial.items():
        if w0.is_floating_point() and w0.dim() >= 2:
            squares[block_of(name)][0] += (trained[name].double() - w0.double()).pow(2).sum().item()
            squares[block_of(name)][1] += w0.double().pow(2).sum().item()
    return {block: (moved / norm) ** 0.5 for block, (moved, norm) in squares.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, action="append", required=True,
                        help="a finished pipeline folder (params.yaml, models/backbone.pt); repeatable")
    args = parser.parse_args()
    drifts = {}
    for folder in args.folder:
        params = load_params(folder / "params.yaml")
        initial = init_backbone("random", params, folder / "absent").state_dict()
        trained = init_backbone("pretrained", params, folder / "models" / "backbone.pt").state_dict()
        drifts[folder.name] = relative_drift(initial, trained)
    print("| block | " + " | ".join(drifts) + " |")
    print("|---|" + "---|" * len(drifts))
    for block in next(iter(drifts.values())):
        print(f"| {block} | " + " | ".join(f"{100 * d[block]:.1f}%" for d in drifts.values()) + " |")


if __name__ == "__main__":
    main()
