"""`pixpro show-pairs`: draw two augmented views of one image and their positive pixel pairs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ._common import DATA_OPTION, PARAMS_OPTION, err_console, load, user_errors

if TYPE_CHECKING:  # imported where used: `pixpro --help` should not load torch
    import numpy as np
    import torch

    from pixpro.config import Params


def _to_rgb(view: torch.Tensor) -> np.ndarray:
    """(3, h, w) normalised -> (h, w, 3) uint8."""
    import torch

    from pixpro.data.views import IMAGENET_MEAN, IMAGENET_STD

    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return ((view * std + mean).clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()


@user_errors("show-pairs")
def main(
    out: Path = typer.Option(Path("plots/pairs.png"), help="Picture to write."),
    params: Path = PARAMS_OPTION,
    data: Path = DATA_OPTION,
    image: int = typer.Option(0, help="Index of the pretraining image to use."),
    epoch: int = typer.Option(0, help="Epoch whose augmentation draw to show."),
    pairs: int = typer.Option(40, help="How many of the sampled pairs to draw."),
) -> None:
    """Show what pretraining sees: the two views' boxes on the image, and lines joining the
    positive pixel pairs found between the views (with the params' crop, flip and threshold)."""
    from pixpro.io import stage_outputs

    cfg = load(params)
    with stage_outputs() as outputs:
        found, drawn = draw_pairs(cfg, data, image, epoch, pairs, outputs.file(out))
    err_console.print(f"{found} positive pairs; drew {drawn} -> {out}")


def draw_pairs(cfg: Params, data: Path, image: int, epoch: int, pairs: int, out: Path) -> tuple[int, int]:
    """Draw up to `pairs` positive pairs of one image's two views into `out`; returns how many
    pairs were found and how many drawn."""
    import torch

    from pixpro.data.views import TwoViewDataset, load_image_tensor
    from pixpro.geometry import sample_positive_pairs
    from pixpro.train import pretraining_images
    from pixpro.viz import plot_pairs

    paths = pretraining_images(data)
    dataset = TwoViewDataset(paths, cfg.pretrain.views, cfg.seed)
    item = dataset[(epoch, image)]
    size = tuple(cfg.pretrain.views.size)
    found = sample_positive_pairs(item.box1[None], item.box2[None], size, size, tuple(cfg.data.size),
                                  cfg.pretrain.pairs, torch.Generator().manual_seed(cfg.seed))
    keep = found.valid[0].nonzero().squeeze(1)[:pairs]
    index1, index2 = found.index1[0, keep], found.index2[0, keep]
    width = size[1]
    original = (load_image_tensor(paths[image]) * 255).byte().permute(1, 2, 0).numpy()
    plot_pairs(original, [tuple(item.box1.tolist()), tuple(item.box2.tolist())],
               [_to_rgb(item.view1), _to_rgb(item.view2)],
               [(int(i) // width, int(i) % width) for i in index1],
               [(int(i) // width, int(i) % width) for i in index2], out)
    return int(found.count[0]), len(keep)
