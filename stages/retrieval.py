"""`pixpro retrieval`: val pixels retrieved from the train bank -> precision@k, k-NN mIoU, pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


from ._common import (BACKBONE_OPTION, CHECKPOINT_OPTION, DATA_OPTION, PARAMS_OPTION, Backbone, err_console,
                      layout_option, layout_path, load, user_errors)


@user_errors("retrieval")
def main(
    backbone: Backbone = BACKBONE_OPTION,
    params: Path = PARAMS_OPTION,
    data: Path = DATA_OPTION,
    checkpoint: Path = CHECKPOINT_OPTION,
    bank: Optional[Path] = layout_option("bank", "Train feature bank from `pixpro extract` (the gallery)."),
    metrics: Optional[Path] = layout_option("retrieval_metrics", "Metrics JSON to write."),
    plots: Optional[Path] = layout_option("retrieval_plots", "Folder for the retrieval pictures."),
) -> None:
    """Cosine top-k retrieval of class-stratified val query pixels from the train bank, and a
    k-NN label for every labelled val pixel."""
    import numpy as np

    from pixpro.data.cityscapes import read_image
    from pixpro.data.classes import load_prepared_classes
    from pixpro.features import frozen_backbone_on_device, load_bank, probe_feature_dim, split_rows
    from pixpro.io import atomic_write_json, stage_outputs
    from pixpro.retrieval import run_retrieval
    from pixpro.viz import plot_retrieval

    cfg = load(params)
    bank = layout_path(bank, "bank", backbone, "--bank")
    metrics = layout_path(metrics, "retrieval_metrics", backbone, "--metrics")
    plots = layout_path(plots, "retrieval_plots", backbone, "--plots")
    name = backbone.value
    with stage_outputs() as outputs:
        metrics_tmp, plots_tmp = outputs.file(metrics), outputs.folder(plots)
        classes = load_prepared_classes(data)
        model, device = frozen_backbone_on_device(name, cfg, checkpoint)
        result = run_retrieval(model, load_bank(bank, probe_feature_dim(cfg)), split_rows(data, "val"),
                               split_rows(data, "train"),
                               cfg.retrieval, cfg.seed, device, cfg.evaluate.batch_size, classes)
        names = list(classes.names)
        for i, example in enumerate(result.examples):
            retrieved = [(np.asarray(read_image(path)), pixel, names[label], score)
                         for path, pixel, label, score in example.retrieved]
            plot_retrieval(np.asarray(read_image(example.image_path)), example.pixel,
                           names[example.label], retrieved, example.heatmap, plots_tmp / f"query_{i}.png")
        atomic_write_json(metrics_tmp, {
            "precision@1": result.precision[1],
            "precision@10": result.precision[10],
            "knn_miou": result.knn.miou,
            "queries": result.query_count,
            "knn_iou": result.knn.to_json_dict()["iou"],
        })
    err_console.print(f"{name}: precision@1 {result.precision[1]:.4f}, precision@10 "
                      f"{result.precision[10]:.4f}, kNN mIoU {result.knn.miou:.4f}")
