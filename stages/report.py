"""`pixpro report`: reports/summary.md comparing the pretrained and random backbones."""

from __future__ import annotations

from pathlib import Path

import typer

from stages._common import err_console, user_errors


@user_errors("report")
def main(
    segmentation: Path = typer.Option(Path("metrics/segmentation"), help="Folder of segmentation metrics."),
    retrieval: Path = typer.Option(Path("metrics/retrieval"), help="Folder of retrieval metrics."),
    out: Path = typer.Option(Path("reports/summary.md"), help="Markdown summary to write."),
) -> None:
    """Tabulate pretrained vs random, overall and per class, with the gain."""
    from pixpro.io import atomic_write_text
    from pixpro.report import summary_markdown

    text = summary_markdown(segmentation, retrieval)
    atomic_write_text(out, text)
    err_console.print(text)
