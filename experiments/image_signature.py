"""What is the per-image signature in the coarse decoder stages? Cross-validated evidence.

stage_diagnostics.py finds that, after pretraining, a large share of a coarse stage's variance lies
between images. This script asks what that per-image component encodes. For each decoder stage,
each train image's signature is the mean over its grid cells of the stage's unit-length features,
(G, C) for G images, centred. Two descriptions of the images try to predict it with ridge
regression, scored on held-out images (5 folds over images):

- `colour`: the per-channel mean and std of the normalised input image (6 numbers): its global
  brightness, contrast and colour balance;
- `classes`: the image's class composition (the share of its labelled pixels per class), the
  scene content that context features should carry.

`r2_colour`, `r2_classes` and `r2_both` (the two descriptions together) are the shares of the
signatures' variance explained on held-out images (1 - residual / total sum of squares; negative
when a description predicts worse than the mean). On real scenes colour and content go together
(a frame with much sky is bright), so `r2_both - r2_classes` is what colour explains beyond the
content, and `r2_both - r2_colour` the reverse. `signature_variance` is the signatures' total
variance, so that the random network's can be compared in absolute terms. One CSV row per
(backbone, stage), appended to --out.

    OMP_NUM_THREADS=2 .venv/bin/python experiments/image_signature.py --folder . --data synthetic \\
        --setting default --out experiments/results/image_signature.csv
"""

from __future__ import annotations

import time

import torch
from torch import Tensor
from torch.nn import functional as F

from pixpro.config import load_params
from pixpro.data.classes import load_prepared_classes
from pixpro.features import labelled_batches, load_frozen_backbone, split_rows
from pixpro.model.backbone import forward_tapped
from pixpro.regression import held_out_r2
from pixpro.runs import append_result_rows, measurement_parser

COLUMNS = ["data", "setting", "seed", "backbone", "stage", "images", "signature_variance", "r2_colour",
           "r2_classes", "r2_both", "seconds"]
STAGES = (-5, -4, -3, -2, -1)


def colour_statistics(images: Tensor) -> Tensor:
    """images (B, 3, H, W) normalised -> per-channel mean and std (B, 6)."""
    flat = images.float().flatten(2)
    return torch.cat([flat.mean(dim=2), flat.std(dim=2)], dim=1)


def class_composition(masks: Tensor, num_classes: int) -> Tensor:
    """masks (B, H, W) trainIds, 255 = ignore -> share of each image's labelled pixels per class (B, K)."""
    shares = []
    for mask in masks:
        labelled = mask[mask != 255]
        counts = torch.bincount(labelled, minlength=num_classes)[:num_classes].float()
        shares.append(counts / counts.sum().clamp(min=1.0))
    return torch.stack(shares)


@torch.no_grad()
def image_signatures(backbone: torch.nn.Module, rows, batch_size: int, num_classes: int
                     ) -> tuple[dict[int, Tensor], Tensor, Tensor]:
    """-> ({stage: per-image mean of the unit-length stage features (G, C_l)}, colour (G, 6),
    class composition (G, K)), images in the rows' order."""
    signatures: dict[int, list[Tensor]] = {stage: [] for stage in STAGES}
    colours, compositions = [], []
    for batch in labelled_batches(rows, batch_size, description="signatures"):
        maps = forward_tapped(backbone, batch.image, STAGES[:-1])
        stage_maps = {**maps.stages, -1: maps.output}
        for stage, stage_map in stage_maps.items():
            signatures[stage].append(F.normalize(stage_map.float(), dim=1).mean(dim=(2, 3)))
        colours.append(colour_statistics(batch.image))
        compositions.append(class_composition(batch.mask, num_classes))
    return ({stage: torch.cat(parts).double() for stage, parts in signatures.items()},
            torch.cat(colours).double(), torch.cat(compositions).double())


def main() -> None:
    parser = measurement_parser(__doc__.splitlines()[0])
    args = parser.parse_args()

    folder = args.folder.resolve()
    params = load_params(folder / "params.yaml")
    prepared = folder / "data" / "prepared"
    train = split_rows(prepared, "train")
    num_classes = load_prepared_classes(prepared).num_classes
    for kind in args.backbones:
        start = time.perf_counter()
        backbone = load_frozen_backbone(kind, params, folder / "models" / "backbone.pt")
        signatures, colour, classes = image_signatures(backbone, train, params.extract.batch_size, num_classes)
        seconds = time.perf_counter() - start
        for stage, signature in signatures.items():
            centred = signature - signature.mean(dim=0)
            row = {"data": args.data, "setting": args.setting, "seed": params.seed, "backbone": kind,
                   "stage": stage, "images": len(signature),
                   "signature_variance": float(centred.pow(2).sum(dim=1).mean()),
                   "r2_colour": held_out_r2(colour, signature), "r2_classes": held_out_r2(classes, signature),
                   "r2_both": held_out_r2(torch.cat([colour, classes], dim=1), signature),
                   "seconds": round(seconds, 1)}
            append_result_rows(args.out, COLUMNS, [row])
            print(f"{kind:>10} {stage:>3} variance {row['signature_variance']:.4f} "
                  f"R2 colour {row['r2_colour']:+.3f} classes {row['r2_classes']:+.3f} both {row['r2_both']:+.3f}",
                  flush=True)


if __name__ == "__main__":
    main()
