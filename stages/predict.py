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
    head: Head = typer.Option(Head.probe, "--head", help="probe: the linear probe of `pixpro probe` on the frozen "
                                                         "backbone. finetune-100pct: the network `pixpro finetune` "
                                                         "fine-tuned on all the labels (--model)."),
    params: Path = PARAMS_OPTION,
    data: Path = DATA_OPTION,
    checkpoint: Path = CHECKPOINT_OPTION,
    probe: Optional[Path] = layout_option("probe", "Probe from `pixpro probe`."),
    model: Optional[Path] = layout_option("finetune_model", "Fine-tuned network from `pixpro finetune` (read only "
                                                            "with --head finetune-100pct)."),
    overlays: bool = typer.Option(True, "--overlays/--no-overlays",
                                  help="Also write overlays/<stem>.png: the image under its class colours, "
                                       "with a legend."),
) -> None:
    """Segment images of any size with the run's frozen backbone and linear probe, or its fine-tuned
    network. Each image is resized to data.size (bilinear, as prepare does), segmented as the run
    scores val images, and its label map resized back to the image's own size with nearest
    neighbour. Writes OUT/<stem>.png
    (single-channel train ids of the prepared class table, 255 = ignore). An unreadable image is
    reported in one line and skipped; the exit code is then non-zero."""
    import torch

    from pixpro.checkpoint import load_checkpoint
    from pixpro.evaluate import require_probe_fits
    from pixpro.data.classes import load_prepared_classes
    from pixpro.errors import DataError
    from pixpro.features import frozen_backbone_on_device, probe_feature_dim
    from pixpro.predict import (find_images, finetuned_for_prediction, finetuned_labeller, predict_images,
                                probe_labeller)
    from pixpro.probe import probe_from_state

    cfg = load(params)
    paths = find_images(images)
    classes = load_prepared_classes(data)

    def log(line: str) -> None:
        err_console.print(f"pixpro predict: {line}", markup=False)

    if head is Head.finetune_100pct:
        model = layout_path(model, "finetune_model", backbone, "--model")
        network = finetuned_for_prediction(model, classes)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # Its own size and preprocessing, as fine-tuning scored it (data.size when it was trained).
        result = predict_images(paths, finetuned_labeller(network, device), network.image_size, device, out,
                                classes, overlays, log=log, preprocessing=network.preprocessing)
    else:
        probe = layout_path(probe, "probe", backbone, "--probe")
        backbone_model, device = frozen_backbone_on_device(backbone.value, cfg, checkpoint)
        linear = probe_from_state(load_checkpoint(probe, "probe"), probe_feature_dim(cfg), str(probe))
        require_probe_fits(linear, classes)
        result = predict_images(paths, probe_labeller(backbone_model, linear.to(device)), tuple(cfg.data.size),
                                device, out, classes, overlays, log=log)
    named = backbone.value if head is Head.probe else f"{backbone.value} {head.value}"
    err_console.print(f"{named}: {len(result.written)} label maps -> {out}")
    if result.failed:
        raise DataError(f"{len(result.failed)} of {len(paths)} images could not be read (see above); the "
                        f"others were written")
