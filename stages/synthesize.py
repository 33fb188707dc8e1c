"""`pixpro synthesize`: the synthetic default dataset, written as a raw Cityscapes tree."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import PARAMS_OPTION, err_console, load, user_errors


@user_errors("synthesize")
def main(
    out: Path = typer.Argument(Path("data/synthetic"), help="Folder to write the tree into (replaced atomically)."),
    params: Path = PARAMS_OPTION,
) -> None:
    """Write the synthetic street scenes (data.synthetic, seed) as a raw Cityscapes tree:
    leftImg8bit/ images, gtFine/ labelIds PNGs and synthetic.json, the params it came from.

    The `synthesize` stage of dvc.yaml writes data/synthetic, the default data.root; `prepare`
    reads it like any Cityscapes tree.
    """
    from pixpro.data.parallel import num_workers
    from pixpro.data.synthetic import generate_tree
    from pixpro.io import atomic_directory

    cfg = load(params)
    syn = cfg.data.synthetic
    with atomic_directory(out) as tmp:
        jobs = generate_tree(tmp, syn.train, syn.val, syn.cities, tuple(syn.raw_size), cfg.seed, syn.extra,
                             workers=num_workers(cfg.data.workers))
    err_console.print(f"wrote {len(jobs)} scenes to {out}")
