"""`pixpro predict`: label maps for new images with a finished run (not a DVC stage)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from ._common import (CHECKPOINT_OPTION, DATA_OPTION, PARAMS_OPTION, Backbone, err_console, layout_option,
                      layout_path, load, user_errors)


class Head(str, Enum):
    probe = "probe"
    finetune_100pct = "finetune-100pct"


@user_errors("predict")
def main(
    images: List[Path] = typer.Argument(..., help="Image files, or folders searched recursively for "
                                                  ".png/.jpg/.jpeg/.bmp/.tif/.tiff/.webp files."),
    out: Path = typer.Option(..., "--out", help="Folder for <image stem>.png label maps and overlays/."),
    backbone: Backbone = typer.Option(Backbone.pretrained, "--backbone",
                                      help="pretrained (models/backbone.pt) or random (same architecture, "
                                           "random init from seed)."),
    head: Head = typer.Option(Head.probe, "--head", help="probe: the linear probe of `pixpro probe`. "
                                                         "finetune-100pct needs a saved fine-tuned network, "
                                                         "which `pixpro finetune` does not keep yet."),
    params: Path = PARAMS_OPTION,
    data: Path = DATA_OPTION,
    checkpoint: Path = CHECKPOINT_OPTION,
    probe: Optional[Path] = layout_option("probe", "Probe from `pixpro probe`."),
    overlays: bool = typer.Option(True, "--overlays/--no-overlays",
                                  help="Also write overlays/<stem>.png: the image under its class colours, "
                                       "with a legend."),
) -> None:
    """Segment images of any size with the run's frozen backbone and linear probe. Each image is
    resized to data.size (bilinear, as prepare does), segmented as `pixpro evaluate` does, and its
    label map resized back to the image's own size with nearest neighbour. Writes OUT/<stem>.png
    (single-channel train ids of the prepared class table, 255 = ignore). An unreadable image is
    reported in one line and skipped; the exit code is then non-zero."""
    from pixpro.checkpoint import load_checkpoint
    from pixpro.evaluate import require_probe_fits
    from pixpro.data.classes import load_prepared_classes
    from pixpro.errors import CheckpointError, DataError
    from pixpro.features import frozen_backbone_on_device, probe_feature_dim
    from pixpro.predict import find_images, predict_images
    from pixpro.probe import probe_from_state

    if head is Head.finetune_100pct:
        raise CheckpointError("`pixpro finetune` keeps no trained network (it writes only its metrics), so there "
                              "is no finetune-100pct head to predict with; use --head probe")
    cfg = load(params)
    paths = find_images(images)
    classes = load_prepared_classes(data)
    probe = layout_path(probe, "probe", backbone, "--probe")
    model, device = frozen_backbone_on_device(backbone.value, cfg, checkpoint)
    linear = probe_from_state(load_checkpoint(probe, "probe"), probe_feature_dim(cfg), str(probe))
    require_probe_fits(linear, classes)
    result = predict_images(paths, model, linear.to(device), tuple(cfg.data.size), device, out, classes,
                            overlays, log=lambda line: err_console.print(f"pixpro predict: {line}", markup=False))
    err_console.print(f"{backbone.value}: {len(result.written)} label maps -> {out}")
    if result.failed:
        raise DataError(f"{len(result.failed)} of {len(paths)} images could not be read (see above); the "
                        f"others were written")
