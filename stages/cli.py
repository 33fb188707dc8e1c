"""The `pixpro` console script: one subcommand per DVC stage."""

from __future__ import annotations

import typer

from stages import prepare, pretrain

app = typer.Typer(
    help="PixPro dense self-supervised pretraining for semantic segmentation. "
    "Each subcommand is one DVC stage; `dvc repro` runs them in order.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("prepare")(prepare.main)
app.command("synthesize")(prepare.synthesize)
app.command("pretrain")(pretrain.main)


if __name__ == "__main__":
    app()
