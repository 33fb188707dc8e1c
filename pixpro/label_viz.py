"""Label masks as pictures: the class-colour map, its legend and the dataset example grid
(matplotlib with the Agg canvas, no pyplot state).

Apart from pixpro/viz.py so that `prepare`, which draws the examples, does not depend on the
evaluation and retrieval pictures: editing those must not rerun data preparation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.patches import Patch


def colorize_train_ids(mask: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """(H, W) uint8 trainIds (255 = ignore) -> (H, W, 3) uint8 RGB.

    colors: (K, 3) uint8, the class table's colour per train id; ignore (and ids >= K) are black.
    """
    palette = np.zeros((256, 3), np.uint8)  # (256, 3): any uint8 id indexes it
    palette[: len(colors)] = colors
    return palette[np.asarray(mask, dtype=np.uint8)]


def present_ids(masks: Iterable[np.ndarray], num_classes: int) -> list[int]:
    """Sorted train ids in [0, num_classes) that occur in any (H, W) mask; ignore (255) is left out."""
    seen = np.zeros(256, bool)
    for mask in masks:
        seen[np.unique(np.asarray(mask, dtype=np.uint8))] = True
    return [int(i) for i in np.flatnonzero(seen[:num_classes])]


def class_legend(target: Axes | Figure, names: Sequence[str], colours: np.ndarray,
                 ids: Sequence[int] | None = None, *, fontsize: float = 7) -> Legend:
    """A legend of class colours: one filled swatch per train id, labelled with its class name.

    names: K class names and colours: (K, 3) uint8 RGB, both indexed by train id (the class
    table's order). ids: which train ids to list (default all K), e.g. `present_ids(masks, K)`
    so a 19-class table does not crowd a picture of four classes. On a Figure (call it after
    `tight_layout`) the figure grows by a band below the axes for the legend, as many columns
    as its width holds, so the pictures keep their size; on an Axes the legend sits outside,
    right of the image.
    """
    colours = np.asarray(colours)
    if len(names) != len(colours):
        raise ValueError(f"{len(names)} class names but {len(colours)} colours")
    ids = range(len(names)) if ids is None else ids
    handles = [Patch(facecolor=colours[i] / 255.0, edgecolor="black", linewidth=0.4, label=names[i]) for i in ids]
    if not isinstance(target, Figure):
        return target.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=fontsize,
                             frameon=False, handlelength=1.2, borderaxespad=0.0)
    # Inches per column: swatch and spacing (~3.5 em) plus the longest name (~0.6 em a character).
    per_column = (max((len(h.get_label()) for h in handles), default=0) * 0.6 + 3.5) * fontsize / 72
    columns = max(1, min(len(handles), int(target.get_figwidth() // per_column)))
    band = 0.2 * -(-len(handles) // columns) + 0.15  # inches: one line per legend row, and a margin
    height, pars = target.get_figheight(), target.subplotpars
    target.set_figheight(height + band)
    # The same axes in inches, shifted up by the band (subplot params are fractions of the height).
    target.subplots_adjust(bottom=(pars.bottom * height + band) / (height + band),
                           top=1 - (1 - pars.top) * height / (height + band))
    return target.legend(handles=handles, loc="lower center", ncols=columns, fontsize=fontsize, frameon=False,
                         handlelength=1.2, columnspacing=1.0, borderaxespad=0.3)


def plot_examples(images: list[np.ndarray], masks: list[np.ndarray], path: Path, *, colors: np.ndarray,
                  title: str | None = None, names: Sequence[str] | None = None) -> None:
    """Save a grid, one row per example: image (H, W, 3) uint8 | colourised trainId mask (H, W),
    colours (K, 3) from the class table, with a legend of the classes shown when the K class
    `names` are given.

    Written as PNG at path; parent folders are created.
    """
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    if not images:
        raise ValueError("plot_examples needs at least one example")
    h, w = np.asarray(images[0]).shape[:2]
    row_h = 2.2
    fig = new_figure(2 * row_h * w / h + 0.2, row_h * len(images) + (0.4 if title else 0.1))
    axes = fig.subplots(len(images), 2, squeeze=False)
    for row, (image, mask) in enumerate(zip(images, masks)):
        axes[row, 0].imshow(np.asarray(image))
        axes[row, 1].imshow(colorize_train_ids(mask, colors), interpolation="nearest")
        for ax in axes[row]:
            ax.set_axis_off()
    axes[0, 0].set_title("image", fontsize=9)
    axes[0, 1].set_title("train ids", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if names is not None:
        class_legend(fig, names, colors, present_ids(masks, len(colors)))
    save_figure(fig, path)


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
