"""Redraw every picture under docs/ from the files it shows: the default run's outputs (after
`dvc repro`) and the run folders under experiments/results/. `make refresh` runs it.

    .venv/bin/python experiments/docs_pictures.py [--only NAME ...]

docs/pairs.png needs data/prepared (the default run's `prepare`); the others read only
committed files. The README and docs embed the default run's own pictures (plots/...) directly,
so `dvc repro` refreshes those.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
from pixpro.data.classes import load_class_table
from pixpro.label_viz import class_legend, new_figure, save_figure

RESULTS = Path("experiments/results")
SYNTHETIC = RESULTS / "synthetic_losses_curves"
IDD = RESULTS / "idd_lite_curves"
# docs picture -> the runs plot_curves.py draws side by side (LABEL=dvclive train folder).
CURVES = {
    "docs/curves.png": [f"consistency alone (seed 1)={SYNTHETIC / 'consistency_seed1'}",
                        f"consistency + InfoNCE (seed 0)={SYNTHETIC / 'contrast_seed0'}",
                        f"frozen-backbone control (seed 0)={SYNTHETIC / 'frozen_control_seed0_pretrain_only'}",
                        f"InfoNCE alone, the default (seed 0)={SYNTHETIC / 'contrast_only_seed0'}"],
    "docs/idd_curves.png": [f"consistency alone={IDD / 'consistency_seed0'}",
                            f"consistency + InfoNCE={IDD / 'contrast_seed0'}",
                            f"InfoNCE alone, the default={IDD / 'contrast_only_seed0'}"],
    "docs/default_curves.png": ["the default run=dvclive/pretrain/plots/metrics/train"],
}
IDD_OVERLAYS = (IDD / "contrast_only_seed0" / "pretrained_overlays.png", "idd_lite", "docs/idd_overlays.png")


# Fine-tuning's val curves at N and 2N steps (the convergence check of the label-efficiency
# budget), all scored on the weight average: label -> CSV. Solid: the profile's recipe
# (class-balanced cross-entropy); dashed: the earlier unweighted one.
CONVERGENCE = ({"balanced, 1000 steps": "docs/finetune_convergence_balanced_1000.csv",
                "balanced, 2000 steps": "docs/finetune_convergence_balanced_2000.csv",
                "balanced, 4000 steps": "docs/finetune_convergence_balanced_4000.csv",
                "unweighted, 1000 steps": "docs/finetune_convergence_ema_1000.csv",
                "unweighted, 2000 steps": "docs/finetune_convergence_ema_2000.csv"},
               "docs/finetune_convergence.png")


def convergence(curves: dict[str, str], out: str) -> None:
    """Val mIoU against fine-tuning step, one line per recipe and budget."""
    import pandas as pd

    figure = new_figure(6, 3.5)
    axis = figure.add_subplot()
    for label, path in curves.items():
        curve = pd.read_csv(path)
        earlier = label.startswith("unweighted")
        axis.plot(curve["step"], 100 * curve["miou"], marker="o", markersize=3, label=label,
                  linestyle="--" if earlier else "-")
    axis.set(xlabel="fine-tuning step", ylabel="val mIoU", title="IDD Lite, random init, 100% of the labels")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    save_figure(figure, Path(out))


# Issue 27's label-efficiency study: (result CSV, setting, picture, the recipe's finetune keys:
# steps, and those that differ from RECIPE_DEFAULTS). Its rows land once the study has run; until
# then the picture is skipped, and says so.
LABEL_EFFICIENCY = (RESULTS / "idd_lite_label_efficiency.csv", "stages", "docs/label_efficiency.png",
                    {"steps": 1000, "ema_decay": 0.995, "class_weighting": "balanced"})


def label_efficiency(csv: Path, setting: str, out: str, recipe: Mapping[str, Any] | None = None) -> None:
    """The study's val mIoU against the labelled share (experiments/label_study.py rows): each
    backbone fine-tuned and the pretrained backbone's frozen probe on the same images, as the
    seeds' mean, each seed a dot, their min-max band, and the random network's mean score with
    all labels (what "labels saved" is read against) as a dashed level. Seeds that lack a
    fraction or a backbone (a study still running) are left out. Only rows of one fine-tuning
    recipe are drawn: `recipe`'s finetune keys, the others at pixpro.runs.RECIPE_DEFAULTS (rows
    written before a recipe column existed count as its default); rows of several recipes left
    after that (say two budgets, `steps` not named) are an error, not a mean."""
    import pandas as pd

    from pixpro.runs import RECIPE_DEFAULTS, RECIPE_KEYS, label_study_by_fraction, with_recipe_columns
    from pixpro.viz import plot_label_efficiency

    recipe = {key: value for key, value in (recipe or {}).items() if key != "crop_seed"}  # repeats are drawn
    wanted = {**{key: RECIPE_DEFAULTS[key] for key in RECIPE_KEYS if key in RECIPE_DEFAULTS}, **recipe}
    rows = with_recipe_columns(pd.read_csv(csv))
    chosen = rows["setting"] == setting
    for key, value in wanted.items():
        chosen &= rows[key] == value
    mixed = [key for key in RECIPE_KEYS if rows.loc[chosen, key].nunique() > 1]
    if mixed:
        raise SystemExit(f"{csv} has rows of several recipes for setting {setting!r}: name {', '.join(mixed)} "
                         f"in the recipe")
    scores = label_study_by_fraction(rows[chosen])
    named = ", ".join(f"{key} {value}" for key, value in recipe.items())
    if scores is None or scores[0].empty:
        raise SystemExit(f"{csv} has no seed of setting {setting!r}{' and ' + named if named else ''} with both "
                         f"backbones at every fraction")
    tuned, probe = scores
    lines = {"pretrained, fine-tuned": tuned["pretrained"], "random, fine-tuned": tuned["random"],
             "pretrained, frozen probe": probe["pretrained"]}
    curves, seeds = {}, {}
    for name, scores in lines.items():
        fractions = sorted(scores.columns)
        values = 100 * scores[fractions].to_numpy()  # (seeds, fractions)
        curves[name] = (fractions, values.mean(0).tolist())
        seeds[name] = values.tolist()
    seed_list = ", ".join(str(s) for s in tuned.index)
    title = f"{csv.stem}, `{setting}`, seeds {seed_list}" + (f"\n{named}" if named else "")
    plot_label_efficiency(curves, Path(out), title, seeds=seeds,
                          target=curves["random, fine-tuned"][1][-1], xlabel="labelled train images (share)")


def run(*command: str) -> None:
    subprocess.run(command, cwd=ROOT, check=True)


def with_legend(picture: Path, classes: str, out: Path) -> None:
    """An overlay picture saved by an earlier run (H, W, 3), redrawn above a legend of its class
    table's colours, for pictures that predate the legend."""
    image = np.asarray(Image.open(ROOT / picture).convert("RGB"))
    table = load_class_table(classes)
    h, w = image.shape[:2]
    fig = new_figure(w / 100, h / 100)
    ax = fig.subplots()
    fig.subplots_adjust(left=0, right=1, bottom=0, top=1)
    ax.imshow(image, interpolation="nearest")
    ax.set_axis_off()
    class_legend(fig, list(table.names), table.colors)  # grows the figure by the legend's band
    save_figure(fig, ROOT / out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = ["pairs", *(Path(p).stem for p in CURVES), "idd_overlays", "finetune_convergence", "label_efficiency"]
    parser.add_argument("--only", nargs="+", choices=names, default=names)
    args = parser.parse_args()
    python = sys.executable
    if "pairs" in args.only:  # the views and pairs of the default params, on a prepared image
        run(str(Path(python).parent / "pixpro"), "show-pairs", "--out", "docs/pairs.png", "--image", "3")
    for out, runs in CURVES.items():
        if Path(out).stem in args.only:
            run(python, "experiments/plot_curves.py", "--out", out, *runs)
    if "idd_overlays" in args.only:
        with_legend(*IDD_OVERLAYS)
        print(f"wrote {IDD_OVERLAYS[2]}")
    if "finetune_convergence" in args.only:
        convergence(*CONVERGENCE)
        print(f"wrote {CONVERGENCE[1]}")
    if "label_efficiency" in args.only:
        if LABEL_EFFICIENCY[0].is_file():
            label_efficiency(*LABEL_EFFICIENCY)
            print(f"wrote {LABEL_EFFICIENCY[2]}")
        else:
            print(f"skipped {LABEL_EFFICIENCY[2]}: {LABEL_EFFICIENCY[0]} has no rows yet (issue 27's study)")


if __name__ == "__main__":
    main()
