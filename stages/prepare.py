"""`pixpro prepare`: raw Cityscapes, a folder tree (or the synthetic default) -> data/prepared/."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import PARAMS_OPTION, err_console, load, user_errors


@user_errors("prepare")
def main(
    params: Path = PARAMS_OPTION,
    out: Path = typer.Option(Path("data/prepared"), help="Prepared dataset folder (written atomically)."),
    metrics: Path = typer.Option(Path("metrics/prepare.json"), help="Image counts per split (metrics file)."),
    plots: Path = typer.Option(Path("plots/prepare"), help="Folder for per-class frequencies and example pictures."),
) -> None:
    """Resize images, convert label values to train ids with the class table (data.classes) and
    write the manifest and classes.csv.

    data.root is read as a Cityscapes tree (data.source cityscapes, or synthetic: the tree
    `pixpro synthesize` wrote) or with data.source folder as any tree, with its own folders
    (data.image_dir, data.label_dir) and suffixes. Outputs appear together or not at all.
    """
    from pixpro.data.prepare import run_prepare

    cfg = load(params)
    result = run_prepare(cfg, out, metrics, plots)
    counts = result.manifest["split"].value_counts().to_dict()
    err_console.print(f"prepared {len(result.manifest)} images {counts} into {out}")

