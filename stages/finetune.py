"""`pixpro finetune`: the label-efficiency curve, backbone + 1x1 classifier trained end to end."""

from __future__ import annotations

from pathlib import Path

import typer

from stages._common import (BACKBONE_OPTION, CHECKPOINT_OPTION, DATA_OPTION, PARAMS_OPTION, err_console, load,
                            user_errors)


@user_errors("finetune")
def main(
    backbone: str = BACKBONE_OPTION,
    params: Path = PARAMS_OPTION,
    data: Path = DATA_OPTION,
    checkpoint: Path = CHECKPOINT_OPTION,
    metrics: Path = typer.Option(..., help="Metrics JSON to write (metrics/finetune/<backbone>.json)."),
    curve: Path = typer.Option(..., help="CSV of mIoU per labelled fraction, for `dvc plots`."),
    resume: Path = typer.Option(..., help="JSON of finished fractions; an interrupted run reuses them."),
) -> None:
    """For each finetune.label_fractions entry, train the UNet plus a 1x1 classifier with
    cross-entropy on that share of the labelled train images (nested subsets drawn with `seed`,
    the same for both backbones), starting again from the backbone's initial weights, and score
    every val pixel."""
    import torch

    from pixpro.config import to_dict
    from pixpro.data.classes import load_prepared_classes
    from pixpro.features import init_backbone, split_rows
    from pixpro.finetune import ResultStore, curve_frame, file_digest, label_efficiency, metrics_dict
    from pixpro.io import atomic_write_json, atomic_write_text

    cfg = load(params)
    classes = load_prepared_classes(data)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    init_backbone(backbone, cfg, checkpoint)  # fail on a missing or mismatched checkpoint before any work
    recipe = {k: v for k, v in to_dict(cfg.finetune).items() if k != "label_fractions"}
    fingerprint = {
        "recipe": recipe, "seed": cfg.seed, "threads": cfg.threads, "backbone": backbone,
        "weights": file_digest(checkpoint) if backbone == "pretrained" else to_dict(cfg.pretrain.backbone),
        "manifest": file_digest(data / "manifest.csv"), "device": device.type,
    }
    results = label_efficiency(
        lambda: init_backbone(backbone, cfg, checkpoint), cfg.pretrain.backbone.dim, split_rows(data, "train"),
        split_rows(data, "val"), tuple(cfg.data.size), cfg.finetune, cfg.seed, classes, device,
        ResultStore(resume, fingerprint), backbone, log=err_console.print)
    atomic_write_text(curve, curve_frame(results).to_csv(index=False))
    atomic_write_json(metrics, metrics_dict(results))
