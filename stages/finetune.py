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
    model: Optional[Path] = layout_option("finetune_model", "The network fine-tuned on the largest fraction "
                                                            "(1.0: what `pixpro predict --head finetune-100pct` "
                                                            "uses), saved when that fraction finishes."),
    live: Optional[Path] = layout_option("finetune_live", "dvclive folder: val mIoU against the step, one "
                                                          "curve val/miou_<p>pct per fraction."),
) -> None:
    """For each finetune.label_fractions entry, train the UNet plus a 1x1 classifier with
    cross-entropy on that share of the labelled train images (nested subsets drawn with `seed`,
    the same for both backbones), starting again from the backbone's initial weights, and score
    every val pixel. With head_init: probe the classifier starts as the linear probe fitted with
    the `extract` and `probe` sections on the output stage (probe.layers does not apply: the
    classifier is a 1x1 conv on the output). Keeps the network of the largest fraction (--model)."""
    import torch

    from pixpro.config_base import to_dict
    from pixpro.data.classes import load_prepared_classes
    from pixpro.features import init_backbone, split_rows
    from pixpro.finetune import label_efficiency
    from pixpro.finetune_results import ResultStore, curve_frame, file_digest, metrics_dict
    from pixpro.finetuned_file import KeptNetwork
    from pixpro.io import atomic_write_json, atomic_write_text, make_parents, stage_outputs

    cfg = load(params)
    metrics = layout_path(metrics, "finetune_metrics", backbone, "--metrics")
    curve = layout_path(curve, "finetune_curve", backbone, "--curve")
    resume = layout_path(resume, "finetune_resume", backbone, "--resume")
    model = layout_path(model, "finetune_model", backbone, "--model")
    live = layout_path(live, "finetune_live", backbone, "--live")
    name = backbone.value
    # The resume file, the kept network and the dvclive curves are written as fractions finish (not
    # staged below), so an interruption keeps them.
    make_parents(resume)
    make_parents(model)
    with stage_outputs() as outputs:
        metrics_tmp, curve_tmp = outputs.file(metrics), outputs.file(curve)
        classes = load_prepared_classes(data)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        init_backbone(name, cfg, checkpoint)  # fail on a missing or mismatched checkpoint before any work
        recipe = {k: v for k, v in to_dict(cfg.finetune).items() if k != "label_fractions"}
        # The probe head's recipe decides the numbers too; probe.layers does not (output stage only).
        probe_head = ({"extract": to_dict(cfg.extract),
                       "probe": {k: v for k, v in to_dict(cfg.probe).items() if k != "layers"}}
                      if cfg.finetune.head_init == "probe" else None)
        fingerprint = {
            "recipe": recipe, "probe_head": probe_head, "seed": cfg.seed, "threads": cfg.threads, "backbone": name,
            "weights": file_digest(checkpoint) if name == "pretrained" else to_dict(cfg.pretrain.backbone),
            # data.size too: a new size rewrites the prepared images but not the manifest's rows
            "manifest": file_digest(data / "manifest.csv"), "image_size": list(cfg.data.size),
            "device": device.type,
        }
        results = label_efficiency(
            lambda: init_backbone(name, cfg, checkpoint), cfg.pretrain.backbone.dim, split_rows(data, "train"),
            split_rows(data, "val"), tuple(cfg.data.size), cfg.finetune, cfg.seed, classes, device,
            ResultStore(resume, fingerprint), name, log=err_console.print, live=live, extract=cfg.extract,
            probe=cfg.probe, keep=KeptNetwork(model, to_dict(cfg.pretrain.backbone), classes, tuple(cfg.data.size),
                                              cfg.finetune, cfg.seed, name))
        atomic_write_text(curve_tmp, curve_frame(results).to_csv(index=False))
        atomic_write_json(metrics_tmp, metrics_dict(results))
