"""Why do the coarse decoder stages probe worse after pretraining? Per-stage evidence, in one process.

For the pretrained backbone of a finished pipeline folder and its random-init twin, and for each
BatchNorm treatment (`as_saved`: the running statistics the file holds; `recalibrated`: running
statistics re-estimated by a forward pass in train mode over the prepared train images at the
prepared size, nothing else changed), it measures per decoder stage (-5 = 1/16 res ... -1 = the
output) and for all stages together:

- the linear probe's val mIoU (the probe fitted on the class-balanced train bank, as `pixpro
  probe`; scored on every val pixel, as `pixpro evaluate`);
- the effective rank (RankMe) of the stage's unit-length features on the train bank;
- the share of the unit-length features' variance that lies between images (the per-image means'
  spread over the total), and the share between classes: a per-pixel class probe cannot use an
  image signature (constant within an image); with the total variance (mean squared distance of
  the unit-length features from their mean), so that a share that rises because the within-image
  spread fell can be told from a growing signature;
- the spread of the stage's raw (pre-normalisation) activations: the mean over channels of the
  per-channel std, over the mean per-channel |mean| (a small value means a shared offset dominates).

One CSV row per (backbone, bn, stage), appended to `--out` as measured; with `--per-class CSV`, also
each stage's val IoU per class.

    OMP_NUM_THREADS=2 .venv/bin/python experiments/stage_diagnostics.py --folder /tmp/run \\
        --data synthetic --setting default --out experiments/results/stage_diagnostics.csv
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from pixpro.batchnorm import recalibrate_batchnorm
from pixpro.config import load_params
from pixpro.data.classes import load_prepared_classes
from pixpro.features import DecoderStages, extract_bank, labelled_batches, load_frozen_backbone, split_rows
from pixpro.metrics import ConfusionAccumulator, iou_per_class, mean_iou
from pixpro.model.backbone import forward_tapped
from pixpro.model.pixpro import between_group_share, effective_rank
from pixpro.probe import fit_probe
from pixpro.runs import append_result_rows, measurement_parser

COLUMNS = ["data", "setting", "seed", "backbone", "bn", "stage", "miou", "effective_rank", "total_variance",
           "image_share", "class_share", "activation_spread", "seconds"]
PER_CLASS_COLUMNS = ["data", "setting", "seed", "backbone", "bn", "stage", "class_name", "iou"]
STAGES = (-5, -4, -3, -2, -1)


def stage_slices(channels: list[int]) -> dict[int, slice]:
    """Column range of each stage in DecoderStages' concatenation over STAGES."""
    slices, start = {}, 0
    for stage in STAGES:
        width = channels[stage]
        slices[stage] = slice(start, start + width)
        start += width
    return slices


@torch.no_grad()
def raw_spreads(backbone: nn.Module, rows, batch_size: int) -> dict[int, float]:
    """Per stage, mean per-channel std over mean per-channel |mean| of the raw stage map on the
    first val batch (one tapped forward pass)."""
    batch = next(iter(labelled_batches(rows, batch_size, description="spread")))
    maps = forward_tapped(backbone, batch.image, STAGES).stages  # stage -> (B, C, h, w)
    spreads = {}
    for stage, stage_map in maps.items():
        values = stage_map.float().transpose(0, 1).flatten(1)  # (C, B * h * w)
        spreads[stage] = float(values.std(dim=1).mean() / values.mean(dim=1).abs().mean().clamp(min=1e-12))
    return spreads


def write_per_class(out: Path, args: argparse.Namespace, seed: int, kind: str, bn: str, names: tuple[str, ...],
                    scores: dict) -> None:
    """Appends one row per (stage, class): the class's val IoU (empty where the class is absent)."""
    append_result_rows(out, PER_CLASS_COLUMNS, [
        {"data": args.data, "setting": args.setting, "seed": seed, "backbone": kind, "bn": bn, "stage": stage,
         "class_name": name, "iou": "" if iou != iou else iou}
        for stage, accumulator in scores.items() for name, iou in zip(names, iou_per_class(accumulator.conf).tolist())])


def main() -> None:
    parser = measurement_parser(__doc__.splitlines()[0])
    parser.add_argument("--bn", nargs="+", choices=("as_saved", "recalibrated"), default=["as_saved"])
    parser.add_argument("--per-class", type=Path, help="also append each stage's val IoU per class to this CSV")
    args = parser.parse_args()

    folder = args.folder.resolve()
    params = load_params(folder / "params.yaml")
    prepared = folder / "data" / "prepared"
    train, val = split_rows(prepared, "train"), split_rows(prepared, "val")
    classes = load_prepared_classes(prepared)
    num_classes = classes.num_classes
    channels = list(params.pretrain.backbone.stage_channels)
    slices = stage_slices(channels)
    device = torch.device("cpu")
    for kind in args.backbones:
        base = load_frozen_backbone(kind, params, folder / "models" / "backbone.pt")
        for bn in args.bn:
            start = time.perf_counter()
            # recalibrated: the plain average over the prepared train images, at the size the probe sees them
            backbone = base if bn == "as_saved" else recalibrate_batchnorm(
                copy.deepcopy(base), (batch.image for batch in labelled_batches(
                    train, params.extract.batch_size, description="recalibrate BatchNorm")))
            model = DecoderStages(backbone, tuple(len(STAGES) + 1 + stage for stage in STAGES))
            bank = extract_bank(model, train, params.extract, params.seed, device, num_classes)
            probes = {}
            for stage, cols in [*slices.items(), ("all", slice(None))]:
                feats = F.normalize(bank.features[:, cols].float(), dim=1)
                probes[stage] = (cols, fit_probe(feats, bank.labels.long(), num_classes, params.probe).probe)
            scores = {stage: ConfusionAccumulator(num_classes) for stage in probes}
            for batch in labelled_batches(val, params.evaluate.batch_size, description="score val"):
                maps = model(batch.image)  # (B, sum C, H, W)
                for stage, (cols, probe) in probes.items():
                    feats = F.normalize(maps[:, cols], dim=1).permute(0, 2, 3, 1)  # (B, H, W, C_l)
                    scores[stage].update(probe(feats).argmax(-1), batch.mask)
            seconds = time.perf_counter() - start
            spreads = raw_spreads(backbone, val, 4)
            rows = []
            for stage, (cols, _) in probes.items():
                unit = F.normalize(bank.features[:, cols].float(), dim=1)
                row = {"data": args.data, "setting": args.setting, "seed": params.seed, "backbone": kind,
                       "bn": bn, "stage": stage,
                       "miou": mean_iou(scores[stage].conf), "effective_rank": float(effective_rank(unit)),
                       "total_variance": float((unit - unit.mean(dim=0)).pow(2).sum(dim=1).mean()),
                       "image_share": float(between_group_share(unit, bank.image_index.long())),
                       "class_share": float(between_group_share(unit, bank.labels.long())),
                       "activation_spread": spreads.get(stage, ""),
                       "seconds": round(seconds, 1)}
                rows.append(row)
                print(f"{kind:>10} {bn:>12} {stage!s:>4} mIoU {row['miou'] * 100:6.2f} "
                      f"rank {row['effective_rank']:6.1f} var {row['total_variance']:.3f} "
                      f"image {row['image_share']:.3f} class {row['class_share']:.3f}", flush=True)
            append_result_rows(args.out, COLUMNS, rows)
            if args.per_class:
                write_per_class(args.per_class, args, params.seed, kind, bn, classes.names, scores)


if __name__ == "__main__":
    main()
