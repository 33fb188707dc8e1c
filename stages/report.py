"""`pixpro report`: reports/summary.md comparing the pretrained and random backbones."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import err_console, user_errors


@user_errors("report")
def main(
    segmentation: Path = typer.Option(Path("metrics/segmentation"), help="Folder of segmentation metrics."),
    retrieval: Path = typer.Option(Path("metrics/retrieval"), help="Folder of retrieval metrics."),
    finetune: Optional[Path] = typer.Option(None, help="Folder of fine-tuning metrics (the label-efficiency table); "
                                             "left out of the summary when not given."),
    out: Path = typer.Option(Path("reports/summary.md"), help="Markdown summary to write."),
    plots: Optional[Path] = typer.Option(None, help="Folder for the label-efficiency picture (with --finetune)."),
) -> None:
    """Tabulate pretrained vs random, overall, per class and per labelled fraction, with the gain."""
    from pixpro.io import stage_outputs
    from pixpro.report import finetune_curves, read_metrics, summary_markdown
    from pixpro.viz import plot_label_efficiency

    with stage_outputs() as outputs:
        out_tmp = outputs.file(out)
        plots_tmp = outputs.folder(plots) if finetune is not None and plots is not None else None
        text = summary_markdown(segmentation, retrieval, finetune)
        out_tmp.write_text(text)
        if plots_tmp is not None:
            plot_label_efficiency(finetune_curves(read_metrics(finetune)), plots_tmp / "label_efficiency.png",
                                  "fine-tuned end to end on a share of the labels")
    err_console.print(text)
