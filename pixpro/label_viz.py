"""Label masks as pictures: the class-colour map and the dataset example grid (matplotlib with
the Agg canvas, no pyplot state).

Apart from pixpro/viz.py so that `prepare`, which draws the examples, does not depend on the
evaluation and retrieval pictures: editing those must not rerun data preparation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def colorize_train_ids(mask: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """(H, W) uint8 trainIds (255 = ignore) -> (H, W, 3) uint8 RGB.

    colors: (K, 3) uint8, the class table's colour per train id; ignore (and ids >= K) are black.
    """
    palette = np.zeros((256, 3), np.uint8)  # (256, 3): any uint8 id indexes it
    palette[: len(colors)] = colors
    return palette[np.asarray(mask, dtype=np.uint8)]


def plot_examples(images: list[np.ndarray], masks: list[np.ndarray], path: Path, *, colors: np.ndarray,
                  title: str | None = None) -> None:
    """Save a grid, one row per example: image (H, W, 3) uint8 | colourised trainId mask (H, W),
    colours (K, 3) from the class table.

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
    save_figure(fig, path)


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
