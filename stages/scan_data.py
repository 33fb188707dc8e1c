"""`pixpro scan-data`: what data.root holds, with the current params, before preparing it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import PARAMS_OPTION, err_console, load, user_errors


@user_errors("scan-data")
def main(
    params: Path = PARAMS_OPTION,
    write_classes: Optional[Path] = typer.Option(None, "--write-classes",
                                                 help="Write a starter class CSV of the values found."),
) -> None:
    """Per split: images and labels found, names without a partner; the label values present with
    their pixel share and which ones the class table (data.classes) lacks. Reads image headers
    and label values only; prepares nothing."""
    from pixpro.data.classes import load_class_table
    from pixpro.data.prepare import layout
    from pixpro.data.scan import format_report, scan_tree, starter_classes
    from pixpro.errors import ConfigError
    from pixpro.io import atomic_write_text

    cfg = load(params)
    try:
        classes = load_class_table(cfg.data.classes)
    except ConfigError as err:  # writing the table is what this command helps with
        err_console.print(f"no class table yet: {err}")
        classes = None
    result = scan_tree(cfg.data, layout(cfg.data), classes)
    typer.echo(format_report(result, classes, cfg.data.classes))
    if write_classes is not None:
        atomic_write_text(write_classes, starter_classes(result, classes))
        err_console.print(f"wrote {write_classes}: check the names, then set data.classes: {write_classes}")
