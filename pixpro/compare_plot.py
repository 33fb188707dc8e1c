"""The picture of `pixpro compare`: per metric, each group's paired gain with its t-interval."""

from __future__ import annotations

import io

from pixpro.compare import Comparison, gain_column, split_groups
from pixpro.stats import CONFIDENCE


def gain_plot_png(comparison: Comparison, confidence: float = CONFIDENCE) -> bytes:
    """PNG bytes: per metric, each group's paired gain (mean, error bar = the t-interval) and its
    runs as dots. Rendered in memory so nothing is written unless every output is ready."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table, labels = comparison.table, comparison.table["group"].tolist()
    width = max(4.0, 0.9 * len(labels) + 2.0)
    fig = Figure(figsize=(3 * width, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(comparison.metrics), squeeze=False)[0]
    groups = {label: runs for label, _, runs in split_groups(comparison.runs, comparison.keys)}
    for ax, metric in zip(axes, comparison.metrics):
        prefix = gain_column(metric)
        means = table[f"{prefix}_mean"] * 100
        below = (table[f"{prefix}_mean"] - table[f"{prefix}_ci_low"]).fillna(0) * 100
        above = (table[f"{prefix}_ci_high"] - table[f"{prefix}_mean"]).fillna(0) * 100
        x = list(range(len(labels)))
        ax.axhline(0.0, color="grey", linewidth=0.8)
        for i, label in enumerate(labels):
            gains = groups[label][prefix] * 100
            ax.plot([i] * len(gains), gains, "o", color="silver", markersize=4, zorder=1)
        ax.errorbar(x, means, yerr=[below, above], fmt="o", color="tab:blue", capsize=4, zorder=2)
        ax.set_xticks(x, [f"{lab}\n(baseline)" if lab == comparison.baseline else lab for lab in labels],
                      rotation=20 if len(labels) > 3 else 0, ha="right" if len(labels) > 3 else "center",
                      fontsize=8)
        ax.set_xlim(-0.5, len(labels) - 0.5)  # keep the outer groups' bars off the frame
        ax.set_title(f"{metric.title} gain (pretrained − random)", fontsize=10)
        ax.set_ylabel("points")
    fig.suptitle(f"Paired gain per group: mean and {confidence * 100:g}% t-interval; dots = runs", fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
