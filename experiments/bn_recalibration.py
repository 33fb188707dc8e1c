"""Does a fine-tuned network's val score depend on which batches last updated BatchNorm's running
statistics? Scores a `pixpro finetune --model` network as saved, then with its statistics
recomputed from 20 batches of train crops (what momentum 0.1 mostly remembers) for several crop
draws, then averaged over 150 batches (precise BN). A spread of a fraction of a point says the
run-to-run noise of fine-tuning lies in the weights, not in these statistics.

    OMP_NUM_THREADS=2 .venv/bin/python experiments/bn_recalibration.py --folder RUN \\
        --model RUN/label_study/net_pretrained.pt --params RUN/label_study/params.yaml --fraction 1.0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from pixpro.batchnorm import recalibrate_batchnorm
from pixpro.config import load_params
from pixpro.data.classes import load_prepared_classes
from pixpro.features import split_rows
from pixpro.finetune import PlannedCrops, crop_plan, labelled_subsets, score_segmenter
from pixpro.finetuned_file import read_finetuned
from pixpro.precision import autocast_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, required=True, help="the run folder (data/prepared)")
    parser.add_argument("--model", type=Path, required=True, help="a `pixpro finetune --model` network")
    parser.add_argument("--params", type=Path, required=True, help="the params it was fine-tuned with")
    parser.add_argument("--fraction", type=float, required=True, help="the labelled share it was fine-tuned on")
    parser.add_argument("--draws", type=int, default=4)
    args = parser.parse_args()
    params = load_params(args.params)
    cfg = params.finetune
    data = args.folder / "data" / "prepared"
    train, val = split_rows(data, "train"), split_rows(data, "val")
    classes = load_prepared_classes(data)
    device = torch.device("cpu")
    subset = labelled_subsets(len(train), (args.fraction,), params.seed)[args.fraction]
    saved = read_finetuned(args.model)
    state = {k: v.clone() for k, v in saved.model.state_dict().items()}

    def score() -> float:
        return 100 * score_segmenter(saved.model, val, 8, device, classes, cfg.amp, "val")[0]

    def crops(batches: int, draw: int):
        plan = crop_plan(subset, batches * cfg.batch_size, tuple(params.data.size), cfg,
                         torch.Generator().manual_seed(draw))
        return (images for images, _ in DataLoader(PlannedCrops(train, plan, cfg.crop_size), batch_size=cfg.batch_size))

    print(f"as saved: {score():.1f}", flush=True)
    for draw in range(args.draws):
        saved.model.load_state_dict(state)
        recalibrate_batchnorm(saved.model, crops(20, 100 + draw), False, autocast_for(device, cfg.amp))
        print(f"last 20 batches, draw {draw}: {score():.1f}", flush=True)
    saved.model.load_state_dict(state)
    recalibrate_batchnorm(saved.model, crops(150, 7), True, autocast_for(device, cfg.amp))
    print(f"precise BN, 150 batches: {score():.1f}", flush=True)


if __name__ == "__main__":
    main()
