"""`pixpro evaluate`: frozen backbone + probe on every val pixel -> mIoU, predictions, plots."""

from __future__ import annotations

from pathlib import Path

import typer

from stages._common import (BACKBONE_OPTION, CHECKPOINT_OPTION, DATA_OPTION, PARAMS_OPTION, err_console, load,
                            user_errors)


@user_errors("evaluate")
def main(
    backbone: str = BACKBONE_OPTION,
    params: Path = PARAMS_OPTION,
    data: Path = DATA_OPTION,
    checkpoint: Path = CHECKPOINT_OPTION,
    probe: Path = typer.Option(..., help="Probe from `pixpro probe`."),
    metrics: Path = typer.Option(..., help="Metrics JSON to write (metrics/segmentation/<backbone>.json)."),
    predictions: Path = typer.Option(..., help="Folder for trainId prediction PNGs."),
    plots: Path = typer.Option(..., help="Folder for the confusion matrix, per-class IoU and overlays."),
) -> None:
    """Predict every val pixel at the prepared resolution; score one dataset-level confusion
    matrix (mIoU as cityscapesscripts: mean over classes with TP + FP + FN > 0)."""
    import pandas as pd

    from pixpro.checkpoint import load_checkpoint
    from pixpro.data.classes import load_prepared_classes
    from pixpro.evaluate import evaluate_segmentation
    from pixpro.features import frozen_backbone_on_device, probe_feature_dim, split_rows
    from pixpro.io import atomic_write_json, atomic_write_text
    from pixpro.probe import probe_from_state
    from pixpro.viz import plot_confusion, plot_overlays

    cfg = load(params)
    classes = load_prepared_classes(data)
    model, device = frozen_backbone_on_device(backbone, cfg, checkpoint)
    linear = probe_from_state(load_checkpoint(probe, "probe"), probe_feature_dim(cfg), str(probe))
    rows = split_rows(data, "val")
    result = evaluate_segmentation(model, linear, rows, cfg.evaluate.batch_size, device, predictions,
                                   cfg.evaluate.overlays, classes)
    names = list(classes.names)
    iou = pd.DataFrame({"class": names, "iou": [result.scores.iou[n] for n in names]}).dropna()
    atomic_write_text(plots / "per_class_iou.csv", iou.to_csv(index=False))
    plot_confusion(result.confusion.numpy(), names, plots / "confusion.png",
                   f"{backbone}: row-normalised confusion (val)")
    plot_overlays([(o.image, o.truth, o.prediction) for o in result.overlays], plots / "overlays.png",
                  f"{backbone} backbone + linear probe", classes.colors)
    atomic_write_json(metrics, result.scores.to_json_dict())
    err_console.print(f"{backbone}: mIoU {result.scores.miou:.4f}, pixel accuracy "
                      f"{result.scores.pixel_accuracy:.4f} on {len(rows)} val images")
