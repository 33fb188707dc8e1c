"""The `pixpro` console script: one subcommand per DVC stage."""

from __future__ import annotations

import typer

from stages import (compare, evaluate, export, extract, finetune, prepare, pretrain, probe, report, retrieval,
                    show_pairs)

app = typer.Typer(
    help="PixPro dense self-supervised pretraining for semantic segmentation. "
    "Each subcommand is one DVC stage; `dvc repro` runs them in order "
    "(prepare -> pretrain -> extract -> probe -> evaluate, retrieval; finetune -> report); "
    "`compare` (experiments over seeds) and `export` (the backbone for other code) are not stages.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("prepare")(prepare.main)
app.command("synthesize")(prepare.synthesize)
app.command("pretrain")(pretrain.main)
app.command("extract")(extract.main)
app.command("probe")(probe.main)
app.command("evaluate")(evaluate.main)
app.command("retrieval")(retrieval.main)
app.command("finetune")(finetune.main)
app.command("report")(report.main)
app.command("show-pairs")(show_pairs.main)
app.command("compare")(compare.main)
app.command("export")(export.main)


def main() -> None:
    """Console entry point. Stage modules import torch & co. inside their commands, so each stage
    loads only what it uses and `--help` is instant."""
    from pixpro.allocator import restart_with_tuned_malloc

    restart_with_tuned_malloc()  # CPU steps reuse freed memory instead of faulting it in again
    app()


if __name__ == "__main__":
    main()
