"""`pixpro evaluate`: frozen backbone + probe on every val pixel -> mIoU, predictions, plots."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


from ._common import (BACKBONE_OPTION, CHECKPOINT_OPTION, DATA_OPTION, PARAMS_OPTION, Backbone, err_console,
                      layout_option, layout_path, load, user_errors)


@user_errors("evaluate")
def main(
    backbone: Backbone = BACKBONE_OPTION,
    params: Path = PARAMS_OPTION,
    data: Path = DATA_OPTION,
    checkpoint: Path = CHECKPOINT_OPTION,
    probe: Optional[Path] = layout_option("probe", "Probe from `pixpro probe`."),
    metrics: Optional[Path] = layout_option("segmentation_metrics", "Metrics JSON to write."),
    predictions: Optional[Path] = layout_option("predictions", "Folder for trainId prediction PNGs."),
    plots: Optional[Path] = layout_option("evaluate_plots", "Folder for the confusion matrix, per-class IoU and "
                                                            "overlays."),
) -> None:
    """Predict every val pixel at the prepared resolution; score one dataset-level confusion
    matrix (mIoU as cityscapesscripts: mean over classes with TP + FP + FN > 0)."""
    import pandas as pd

    from pixpro.checkpoint import load_checkpoint
    from pixpro.data.classes import load_prepared_classes
    from pixpro.evaluate import evaluate_segmentation
    from pixpro.features import frozen_backbone_on_device, probe_feature_dim, split_rows
    from pixpro.io import atomic_write_json, atomic_write_text, stage_outputs
    from pixpro.probe import probe_from_state
    from pixpro.viz import plot_confusion, plot_overlays

    cfg = load(params)
    probe = layout_path(probe, "probe", backbone, "--probe")
    metrics = layout_path(metrics, "segmentation_metrics", backbone, "--metrics")
    predictions = layout_path(predictions, "predictions", backbone, "--predictions")
    plots = layout_path(plots, "evaluate_plots", backbone, "--plots")
    name = backbone.value
    with stage_outputs() as outputs:
        metrics_tmp, predictions_tmp, plots_tmp = (outputs.file(metrics), outputs.folder(predictions),
                                                   outputs.folder(plots))
        classes = load_prepared_classes(data)
        model, device = frozen_backbone_on_device(name, cfg, checkpoint)
        linear = probe_from_state(load_checkpoint(probe, "probe"), probe_feature_dim(cfg), str(probe))
        rows = split_rows(data, "val")
        result = evaluate_segmentation(model, linear, rows, cfg.evaluate.batch_size, device, predictions_tmp,
                                       cfg.evaluate.overlays, classes)
        names = list(classes.names)
        iou = pd.DataFrame({"class": names, "iou": [result.scores.iou[n] for n in names]}).dropna()
        atomic_write_text(plots_tmp / "per_class_iou.csv", iou.to_csv(index=False))
        plot_confusion(result.confusion.numpy(), names, plots_tmp / "confusion.png",
                       f"{name}: row-normalised confusion (val)")
        plot_overlays([(o.image, o.truth, o.prediction) for o in result.overlays], plots_tmp / "overlays.png",
                      f"{name} backbone + linear probe", classes.colors, names=names)
        atomic_write_json(metrics_tmp, result.scores.to_json_dict())
    err_console.print(f"{name}: mIoU {result.scores.miou:.4f}, pixel accuracy "
                      f"{result.scores.pixel_accuracy:.4f} on {len(rows)} val images")
