"""Training diagnostics of several runs side by side: the "Reading the curves" picture.

    .venv/bin/python experiments/plot_curves.py --out docs/curves.png \\
        collapsed=experiments/results/synthetic_losses_curves/consistency_seed0 \\
        healthy=experiments/results/synthetic_losses_curves/contrast_seed0

Each RUN is LABEL=DIR, DIR holding dvclive's train/*.tsv (step, value) files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

PANELS = [
    ("partner_gap", "partner_gap: cos to partner - cos to another pixel"),
    ("feature_std", "feature_std: per-channel std of unit features"),
    ("effective_rank", "effective_rank of the features"),
    ("loss_consistency", "loss_consistency (PixPro, floor -2)"),
    ("loss_contrast", "loss_contrast (InfoNCE)"),
    ("target_drift", "target_drift: ||target - init|| / ||init||"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=DIR")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs = [run.split("=", 1) for run in args.runs]
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for axis, (metric, title) in zip(axes.flat, PANELS):
        for colour, (label, folder) in enumerate(runs):
            table = Path(folder) / f"{metric}.tsv"
            if table.is_file():
                frame = pd.read_csv(table, sep="\t")
                if (frame[metric] == 0).all():  # a loss term that was switched off
                    continue
                axis.plot(frame["step"], frame[metric], marker=".", label=label, color=f"C{colour}")
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.grid(alpha=0.3)
    axes.flat[0].axhline(0.05, color="grey", linestyle="--", linewidth=0.8)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
