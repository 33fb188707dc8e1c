"""Class-colour legends on every picture of label maps (pixpro/label_viz.py, pixpro/viz.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pixpro.label_viz import class_legend, new_figure, plot_examples, present_ids
from pixpro.viz import plot_overlays

NAMES = ["road", "car", "sky"]
COLOURS = np.array([[128, 64, 128], [0, 0, 142], [70, 130, 180]], np.uint8)


def legend_entries(legend) -> list[tuple[str, tuple[float, ...]]]:
    return [(text.get_text(), tuple(np.round(patch.get_facecolor()[:3], 4)))
            for text, patch in zip(legend.get_texts(), legend.get_patches())]


def test_class_legend_names_each_colour_on_axes_and_figure():
    fig = new_figure(4, 3)
    ax = fig.subplots()
    wanted = [(name, tuple(np.round(colour / 255.0, 4))) for name, colour in zip(NAMES, COLOURS)]
    assert legend_entries(class_legend(ax, NAMES, COLOURS)) == wanted
    assert legend_entries(class_legend(fig, NAMES, COLOURS, ids=[2, 0])) == [wanted[2], wanted[0]]


def test_class_legend_refuses_names_and_colours_of_different_lengths():
    with pytest.raises(ValueError, match="2 class names but 3 colours"):
        class_legend(new_figure(4, 3), NAMES[:2], COLOURS)


def test_present_ids_skips_ignore_and_ids_outside_the_table():
    masks = [np.array([[0, 255], [2, 2]], np.uint8), np.array([[7, 0]], np.uint8)]
    assert present_ids(masks, num_classes=3) == [0, 2]


def row_blocks(path, colour: np.ndarray) -> int:
    """How many separate horizontal bands of the PNG hold pixels of exactly `colour`: the masks
    of one grid row make one band, a legend below them another."""
    picture = np.asarray(Image.open(path).convert("RGB"))
    rows = (picture == colour).all(-1).any(1).astype(int)
    return int(np.count_nonzero(np.diff(np.concatenate([[0], rows])) == 1))


def test_overlays_carry_a_legend_of_the_classes_shown(tmp_path):
    image = np.full((32, 64, 3), 127, np.uint8)
    truth = np.zeros((32, 64), np.uint8)  # road only
    prediction = np.where(np.arange(64) < 32, 0, 2).astype(np.uint8)[None].repeat(32, 0)  # road | sky
    path = tmp_path / "overlays.png"
    plot_overlays([(image, truth, prediction)], path, "probe", COLOURS, names=NAMES)
    # Road and sky: once in the masks, once as a legend swatch; car, in no mask, is not listed.
    assert row_blocks(path, COLOURS[0]) == 2
    assert row_blocks(path, COLOURS[2]) == 2
    assert row_blocks(path, COLOURS[1]) == 0


def test_examples_grid_has_a_legend_when_names_are_given(tmp_path):
    images = [np.full((32, 64, 3), 127, np.uint8)]
    masks = [np.full((32, 64), 1, np.uint8)]  # car everywhere
    with_names, without = tmp_path / "with.png", tmp_path / "without.png"
    plot_examples(images, masks, with_names, colors=COLOURS, names=NAMES)
    plot_examples(images, masks, without, colors=COLOURS)
    assert row_blocks(with_names, COLOURS[1]) == 2
    assert row_blocks(without, COLOURS[1]) == 1


def test_an_older_overlay_picture_is_redrawn_with_its_class_legend(tmp_path):
    """experiments/docs_pictures.py: overlays saved before the legend existed get one."""
    from pixpro.data.classes import load_class_table
    from tests.conftest import load_experiment

    script = load_experiment("docs_pictures")
    old = tmp_path / "old.png"
    Image.fromarray(np.full((60, 120, 3), 127, np.uint8)).save(old)
    script.with_legend(old, "idd_lite", tmp_path / "new.png")
    sky = load_class_table("idd_lite").colors[-1]
    assert row_blocks(old, sky) == 0
    assert row_blocks(tmp_path / "new.png", sky) == 1  # the legend's swatch, below the picture
    assert Image.open(tmp_path / "new.png").height > 60
