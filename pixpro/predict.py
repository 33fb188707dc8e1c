"""Segment new images with a finished run (`pixpro predict`): its frozen backbone and linear probe,
or the network `pixpro finetune` kept.

Images of any size: each is resized to the prepared size `data.size` (bilinear, as `pixpro
prepare` resizes), segmented exactly as the run scores the val images (`pixpro evaluate` for the
probe: same normalisation, `probe.layers` stages and L2-normalised features; the fine-tuning's
val scoring for the fine-tuned network: the same functions), and its label map is resized back to
the image's own size with nearest neighbour, so every value stays a train id. Not tiled: a large
image is segmented at the prepared resolution.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from pixpro.backbone_file import Preprocessing
from pixpro.config_finetune import fraction_percent
from pixpro.data.classes import ClassTable
from pixpro.data.cityscapes import read_image
from pixpro.errors import CheckpointError, DataError, PixproError
from pixpro.evaluate import predict, save_prediction
from pixpro.finetuned_file import FinetunedNetwork, read_finetuned
from pixpro.io import make_parents
from pixpro.label_viz import class_legend, colorize_train_ids, new_figure, present_ids, save_figure
from pixpro.precision import autocast_for
from pixpro.progress import progress_bar

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
OVERLAYS = "overlays"  # sub-folder of the output folder for the coloured pictures


# (B, 3, h, w) normalised images -> (B, h, w) int64 train ids
Labeller = Callable[[Tensor], Tensor]


class PredictSummary(NamedTuple):
    written: list[Path]  # trainId PNGs, one per readable input
    failed: list[Path]  # inputs that could not be read


def find_images(inputs: list[Path]) -> list[Path]:
    """Image files given directly, or found under given folders (recursively, sorted, by suffix).

    Output files are named after the inputs' stems, so two inputs with one stem are an error."""
    found: list[Path] = []
    for path in inputs:
        if path.is_dir():
            under = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not under:
                raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {path}")
            found += under
        elif path.is_file():
            found.append(path)
        else:
            raise DataError(f"{path} not found")
    first: dict[str, Path] = {}
    for path in found:
        other = first.setdefault(path.stem, path)
        if other != path:
            raise DataError(f"{other} and {path} would both be written as {path.stem}.png; predict them "
                            f"into separate --out folders")
    return list(dict.fromkeys(found))


def probe_labeller(backbone: nn.Module, probe: nn.Linear) -> Labeller:
    """The linear probe on the frozen backbone's features, as `pixpro evaluate` labels val.

    backbone: as `pixpro evaluate` loads it (pixpro.features.frozen_backbone_on_device)."""
    return lambda images: predict(backbone, probe, images)


def finetuned_labeller(network: FinetunedNetwork, device: torch.device) -> Labeller:
    """The fine-tuned network's argmax, as its val scoring (pixpro.finetune.score_segmenter) labels val."""
    model = network.model.eval().to(device)

    def label(images: Tensor) -> Tensor:
        with autocast_for(device, network.amp):  # the precision it was scored in
            return model(images).argmax(1)  # (B, K, h, w) logits -> (B, h, w)

    return label


def finetuned_for_prediction(path: Path, classes: ClassTable) -> FinetunedNetwork:
    """The network `pixpro finetune` kept, checked to be the 100% one and to label `classes`."""
    network = read_finetuned(path)
    if network.fraction != 1.0:
        raise CheckpointError(f"{path} holds the network fine-tuned on {fraction_percent(network.fraction)}% of "
                              f"the labels, not 100%: finetune.label_fractions had no 1.0; add it and rerun "
                              f"`dvc repro finetune`")
    if network.class_names != tuple(classes.names):
        raise CheckpointError(f"{path} was fine-tuned on {len(network.class_names)} classes "
                              f"({', '.join(network.class_names)}), not the prepared data's {classes.num_classes} "
                              f"({', '.join(classes.names)}); rerun `dvc repro finetune`")
    return network


@torch.no_grad()
def segment(label: Labeller, image: Image.Image, size: tuple[int, int], device: torch.device,
            preprocessing: Preprocessing = Preprocessing()) -> np.ndarray:
    """An RGB image of any size -> (H, W) uint8 train ids at the image's own size.

    size: the prepared (h, w), divisible by the backbone's downsampling."""
    height, width = size
    resized = image.resize((width, height), Image.BILINEAR)  # as pixpro prepare resizes
    batch = preprocessing.apply(resized)[None].to(device)  # (1, 3, h, w), as the val images
    labels = label(batch)[0].cpu().numpy().astype(np.uint8)  # (h, w)
    return np.asarray(Image.fromarray(labels).resize(image.size, Image.NEAREST))  # (H, W)


def plot_prediction(image: np.ndarray, labels: np.ndarray, path: Path, classes: ClassTable, title: str) -> None:
    """The image (H, W, 3) uint8 half-covered by its label map's class colours, with a legend
    of the classes it shows."""
    height, width = labels.shape
    blend = (0.5 * image + 0.5 * colorize_train_ids(labels, classes.colors)).astype(np.uint8)
    fig = new_figure(6.0, 6.0 * height / width + 0.4)
    ax = fig.subplots()
    ax.imshow(blend, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    class_legend(fig, list(classes.names), classes.colors, present_ids([labels], classes.num_classes))
    save_figure(fig, path)


def predict_images(paths: list[Path], label: Labeller, size: tuple[int, int], device: torch.device, out: Path,
                   classes: ClassTable, overlays: bool = True, log: Callable[[str], None] = print,
                   preprocessing: Preprocessing = Preprocessing()) -> PredictSummary:
    """Write out/<stem>.png (train ids at the input's size, from `label` on the image resized to
    `size`) and, with `overlays`, out/overlays/<stem>.png for each input. An unreadable input is
    logged in one line and skipped; the rest go on."""
    make_parents(out / OVERLAYS)  # a file in the way: one line, not a traceback
    if not out.is_dir():
        raise PixproError(f"cannot write label maps into {out}: it is a file, not a folder")
    written, failed = [], []
    with progress_bar() as progress:
        task = progress.add_task("predict", total=len(paths))
        for path in paths:
            progress.advance(task)
            try:
                image = read_image(path)
            except DataError as err:
                log(str(err))
                failed.append(path)
                continue
            labels = segment(label, image, size, device, preprocessing)
            save_prediction(labels, out / f"{path.stem}.png")
            written.append(out / f"{path.stem}.png")
            if overlays:
                plot_prediction(np.asarray(image), labels, out / OVERLAYS / f"{path.stem}.png", classes, path.name)
    return PredictSummary(written, failed)
