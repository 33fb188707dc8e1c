"""`pixpro prepare`: raw Cityscapes, a folder tree (or the synthetic default) -> data/prepared/."""

from __future__ import annotations

import functools
from pathlib import Path

import typer

from stages._common import PARAMS_OPTION, err_console, load, user_errors


@user_errors("prepare")
def main(
    params: Path = PARAMS_OPTION,
    out: Path = typer.Option(Path("data/prepared"), help="Prepared dataset folder (written atomically)."),
    metrics: Path = typer.Option(Path("metrics/prepare.json"), help="Class-frequency metrics file."),
    plots: Path = typer.Option(Path("plots/prepare"), help="Folder for frequency tables and example pictures."),
) -> None:
    """Resize images, convert label values to train ids with the class table (data.classes) and
    write the manifest and classes.csv.

    With data.source=synthetic a street-scene Cityscapes tree is generated from `seed` first;
    data.source=folder reads any tree laid out like Cityscapes, with its own suffixes.
    """
    from pixpro.data.prepare import run_prepare

    cfg = load(params)
    result = run_prepare(cfg, out, metrics, plots)
    counts = result.manifest["split"].value_counts().to_dict()
    err_console.print(f"prepared {len(result.manifest)} images {counts} into {out}")


@user_errors("synthesize")
def synthesize(
    out: Path = typer.Argument(..., help="Folder to write the raw Cityscapes-layout tree into."),
    params: Path = PARAMS_OPTION,
) -> None:
    """Write the synthetic street scenes as a raw Cityscapes tree (leftImg8bit + gtFine labelIds).

    `prepare` does this itself for data.source=synthetic; this command lets you inspect the tree
    or use it as data.root with data.source=cityscapes.
    """
    from pixpro.data import synthetic
    from pixpro.data.prepare import num_workers, parallel_map

    cfg = load(params)
    syn = cfg.data.synthetic
    jobs = synthetic.scene_jobs(out, syn.train, syn.val, syn.cities, cfg.seed, syn.extra)
    write = functools.partial(synthetic.write_scene, size=tuple(syn.raw_size))
    for _ in parallel_map(write, jobs, num_workers(cfg.data.workers), "generate synthetic scenes"):
        pass
    err_console.print(f"wrote {len(jobs)} scenes to {out}")
