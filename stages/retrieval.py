"""`pixpro retrieval`: val pixels retrieved from the train bank -> precision@k, k-NN mIoU, pictures."""

from __future__ import annotations

from pathlib import Path

import typer

from stages._common import (BACKBONE_OPTION, CHECKPOINT_OPTION, DATA_OPTION, PARAMS_OPTION, err_console, load,
                            user_errors)


@user_errors("retrieval")
def main(
    backbone: str = BACKBONE_OPTION,
    params: Path = PARAMS_OPTION,
    data: Path = DATA_OPTION,
    checkpoint: Path = CHECKPOINT_OPTION,
    bank: Path = typer.Option(..., help="Train feature bank from `pixpro extract` (the gallery)."),
    metrics: Path = typer.Option(..., help="Metrics JSON to write (metrics/retrieval/<backbone>.json)."),
    plots: Path = typer.Option(..., help="Folder for the retrieval pictures."),
) -> None:
    """Cosine top-k retrieval of class-stratified val query pixels from the train bank, and a
    k-NN label for every labelled val pixel."""
    import numpy as np
    from PIL import Image

    from pixpro.data.classes import load_prepared_classes
    from pixpro.features import frozen_backbone_on_device, load_bank, probe_feature_dim, split_rows
    from pixpro.io import atomic_write_json
    from pixpro.retrieval import run_retrieval
    from pixpro.viz import plot_retrieval

    cfg = load(params)
    classes = load_prepared_classes(data)
    model, device = frozen_backbone_on_device(backbone, cfg, checkpoint)
    result = run_retrieval(model, load_bank(bank, probe_feature_dim(cfg)), split_rows(data, "val"),
                           split_rows(data, "train"),
                           cfg.retrieval, cfg.seed, device, cfg.evaluate.batch_size, classes)
    names = list(classes.names)
    for i, example in enumerate(result.examples):
        retrieved = [(np.asarray(Image.open(path).convert("RGB")), pixel, names[label], score)
                     for path, pixel, label, score in example.retrieved]
        plot_retrieval(np.asarray(Image.open(example.image_path).convert("RGB")), example.pixel,
                       names[example.label], retrieved, example.heatmap, plots / f"query_{i}.png")
    atomic_write_json(metrics, {
        "precision@1": result.precision[1],
        "precision@10": result.precision[10],
        "knn_miou": result.knn.miou,
        "queries": result.query_count,
        "knn_iou": result.knn.to_json_dict()["iou"],
    })
    err_console.print(f"{backbone}: precision@1 {result.precision[1]:.4f}, precision@10 "
                      f"{result.precision[10]:.4f}, kNN mIoU {result.knn.miou:.4f}")
