"""Pictures of the evaluation, retrieval and pair sampling (matplotlib with the Agg canvas, no pyplot
state); label-mask basics live in pixpro/label_viz.py."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from pixpro.label_viz import class_legend, colorize_train_ids, new_figure, present_ids, save_figure


def plot_overlays(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], path: Path, title: str,
                  colors: np.ndarray, names: Sequence[str] | None = None) -> None:
    """One row per example: image (H, W, 3) | ground truth (H, W) | prediction (H, W) trainIds,
    coloured with the class table's (K, 3) colours, above a legend of the classes that appear.

    names: the K class names; without them the legend names each colour by its train id.
    """
    if not rows:
        return
    names = [str(i) for i in range(len(colors))] if names is None else list(names)
    h, w = rows[0][0].shape[:2]
    fig = new_figure(3 * 2.0 * w / h + 0.2, 2.0 * len(rows) + 0.4)
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for r, (image, truth, prediction) in enumerate(rows):
        axes[r, 0].imshow(image)
        axes[r, 1].imshow(colorize_train_ids(truth, colors), interpolation="nearest")
        axes[r, 2].imshow(colorize_train_ids(prediction, colors), interpolation="nearest")
        for ax in axes[r]:
            ax.set_axis_off()
    for ax, name in zip(axes[0], ("image", "ground truth", "prediction")):
        ax.set_title(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    shown = present_ids([m for _, truth, prediction in rows for m in (truth, prediction)], len(colors))
    class_legend(fig, names, colors, shown)
    save_figure(fig, path)


def plot_confusion(conf: np.ndarray, names: list[str], path: Path, title: str) -> None:
    """(K, K) counts, rows = ground truth -> row-normalised heatmap; absent classes are dropped."""
    conf = np.asarray(conf, dtype=np.float64)
    keep = (conf.sum(1) > 0) | (conf.sum(0) > 0)
    conf = conf[keep][:, keep]
    names = [n for n, k in zip(names, keep) if k]
    normalised = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    fig = new_figure(0.45 * len(names) + 2.5, 0.45 * len(names) + 1.5)
    ax = fig.subplots()
    im = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    for i in range(len(names)):
        for j in range(len(names)):
            if normalised[i, j] >= 0.01:
                ax.text(j, i, f"{normalised[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if normalised[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def plot_label_efficiency(curves: dict[str, tuple[list[float], list[float]]], path: Path, title: str,
                          seeds: dict[str, list[list[float]]] | None = None, target: float | None = None,
                          xlabel: str = "labelled train images") -> None:
    """mIoU against the labelled fraction (log x axis), one line per backbone:
    curves = {backbone: (fractions, mious)}.

    seeds: {backbone: one mIoU list per seed, on the same fractions}: drawn as dots with the
    seeds' min-max band around the line (which then is their mean). target: a dashed level named
    "target" in the legend, e.g. the random network's score with all labels, which "labels saved"
    is read against.
    """
    fig = new_figure(5.0, 3.4)
    ax = fig.subplots()
    for name, (fractions, mious) in curves.items():
        line, = ax.plot(fractions, mious, marker="o", label=name)
        for per_seed in (seeds or {}).get(name, []):
            ax.plot(fractions, per_seed, linestyle="none", marker=".", color=line.get_color(), alpha=0.6)
        if seeds and seeds.get(name):
            values = np.asarray(seeds[name], dtype=np.float64)
            ax.fill_between(fractions, values.min(0), values.max(0), color=line.get_color(), alpha=0.15)
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label="target")
    ax.set_xscale("log")
    fractions = sorted({f for xs, _ in curves.values() for f in xs})
    ax.set_xticks(fractions, [f"{100 * f:g}%" for f in fractions])
    ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("val mIoU")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def _mark(ax, pixel: int, width: int, colour: str = "red") -> None:
    ax.plot(pixel % width, pixel // width, marker="o", markersize=9, markerfacecolor="none",
            markeredgecolor=colour, markeredgewidth=2)
    ax.plot(pixel % width, pixel // width, marker="+", markersize=5, color=colour)


def plot_retrieval(query_image: np.ndarray, query_pixel: int, query_name: str,
                   retrieved: list[tuple[np.ndarray, int, str, float]], heatmap: np.ndarray, path: Path) -> None:
    """Query image with its pixel marked | top retrieved pixels on their images | similarity
    of the query to every pixel of the top-1 image (H, W)."""
    h, w = query_image.shape[:2]
    shown = retrieved[:4]
    fig = new_figure(2.6 * w / h * 3 + 0.5, 2.2 * 2 + 0.6)
    axes = fig.subplots(2, 3, squeeze=False)
    axes[0, 0].imshow(query_image)
    _mark(axes[0, 0], query_pixel, w)
    axes[0, 0].set_title(f"query: {query_name}", fontsize=9)
    slots = [axes[0, 1], axes[0, 2], axes[1, 0], axes[1, 1]]
    for rank, (ax, (image, pixel, name, score)) in enumerate(zip(slots, shown), start=1):
        ax.imshow(image)
        _mark(ax, pixel, image.shape[1], "lime" if name == query_name else "red")
        ax.set_title(f"#{rank}: {name} (cos {score:.2f})", fontsize=9)
    im = axes[1, 2].imshow(heatmap, cmap="magma", vmin=-1, vmax=1)
    axes[1, 2].set_title("similarity to the #1 image", fontsize=9)
    fig.colorbar(im, ax=axes[1, 2], fraction=0.046)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.tight_layout()
    save_figure(fig, path)


def plot_pairs(image: np.ndarray, boxes: list[tuple[float, float, float, float]], views: list[np.ndarray],
               pixels1: list[tuple[float, float]], pixels2: list[tuple[float, float]], path: Path) -> None:
    """The original image (H, W, 3) with both view boxes, and the two views with their paired
    pixels joined by lines: matching places, whatever the crop, scale and flip."""
    from matplotlib.patches import ConnectionPatch, Rectangle

    h, w = image.shape[:2]
    fig = new_figure(12, 3.6)
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [w / h, 1.6, 1.6]})
    axes[0].imshow(image)
    for (top, left, bottom, right), colour in zip(boxes, ("orange", "cyan")):
        x0, x1 = sorted((left * w, right * w))
        axes[0].add_patch(Rectangle((x0, top * h), x1 - x0, (bottom - top) * h, fill=False, edgecolor=colour,
                                    linewidth=2))
    axes[0].set_title("image: view 1 (orange), view 2 (cyan)", fontsize=9)
    for ax, view, name in zip(axes[1:], views, ("view 1", "view 2 (may be flipped)")):
        ax.imshow(view)
        ax.set_title(name, fontsize=9)
    colours = np.random.default_rng(0).uniform(0.2, 1.0, size=(len(pixels1), 3))
    for (r1, c1), (r2, c2), colour in zip(pixels1, pixels2, colours):
        axes[1].plot(c1, r1, "o", color=colour, markersize=3)
        axes[2].plot(c2, r2, "o", color=colour, markersize=3)
        fig.add_artist(ConnectionPatch((c1, r1), (c2, r2), "data", "data", axesA=axes[1], axesB=axes[2],
                                       color=colour, linewidth=0.6, alpha=0.7))
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    save_figure(fig, path)
