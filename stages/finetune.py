"""`pixpro finetune`: the label-efficiency curve, backbone + 1x1 classifier trained end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


from ._common import (BACKBONE_OPTION, CHECKPOINT_OPTION, DATA_OPTION, PARAMS_OPTION, Backbone, err_console,
                      layout_option, layout_path, load, user_errors)


@user_errors("finetune")
def main(
    backbone: Backbone = BACKBONE_OPTION,
    params: Path = PARAMS_OPTION,
    data: Path = DATA_OPTION,
    checkpoint: Path = CHECKPOINT_OPTION,
    metrics: Optional[Path] = layout_option("finetune_metrics", "Metrics JSON to write."),
    curve: Optional[Path] = layout_option("finetune_curve", "CSV of mIoU per labelled fraction, for `dvc plots`."),
    resume: Optional[Path] = layout_option("finetune_resume", "JSON of finished fractions; an interrupted run "
                                                              "reuses them."),
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
    from pixpro.io import atomic_write_json, atomic_write_text, make_parents, stage_outputs

    cfg = load(params)
    metrics = layout_path(metrics, "finetune_metrics", backbone, "--metrics")
    curve = layout_path(curve, "finetune_curve", backbone, "--curve")
    resume = layout_path(resume, "finetune_resume", backbone, "--resume")
    name = backbone.value
    # The resume file is not a result: it grows as fractions finish, so an interruption keeps them.
    make_parents(resume)
    with stage_outputs() as outputs:
        metrics_tmp, curve_tmp = outputs.file(metrics), outputs.file(curve)
        classes = load_prepared_classes(data)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        init_backbone(name, cfg, checkpoint)  # fail on a missing or mismatched checkpoint before any work
        recipe = {k: v for k, v in to_dict(cfg.finetune).items() if k != "label_fractions"}
        fingerprint = {
            "recipe": recipe, "seed": cfg.seed, "threads": cfg.threads, "backbone": name,
            "weights": file_digest(checkpoint) if name == "pretrained" else to_dict(cfg.pretrain.backbone),
            "manifest": file_digest(data / "manifest.csv"), "device": device.type,
        }
        results = label_efficiency(
            lambda: init_backbone(name, cfg, checkpoint), cfg.pretrain.backbone.dim, split_rows(data, "train"),
            split_rows(data, "val"), tuple(cfg.data.size), cfg.finetune, cfg.seed, classes, device,
            ResultStore(resume, fingerprint), name, log=err_console.print)
        atomic_write_text(curve_tmp, curve_frame(results).to_csv(index=False))
        atomic_write_json(metrics_tmp, metrics_dict(results))
