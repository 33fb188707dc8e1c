"""The `pixpro` console script: one subcommand per DVC stage."""

from __future__ import annotations

import os
import sys
from importlib.metadata import PackageNotFoundError, version

import typer

from . import (compare, evaluate, export, extract, finetune, prepare, pretrain, probe, report, retrieval,
               show_pairs)
from . import params as print_params
from . import predict, scan_data, synthesize

app = typer.Typer(
    help="PixPro dense self-supervised pretraining for semantic segmentation. `dvc repro` runs the stage "
    "commands in order, each for the pretrained and the random backbone; the others work with their results. "
    "`pixpro COMMAND --help` describes one.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("prepare")(prepare.main)
app.command("synthesize")(synthesize.main)
app.command("scan-data")(scan_data.main)
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
app.command("predict")(predict.main)
app.command("params")(print_params.main)

# `pixpro --help` lists each command on one line; `pixpro COMMAND --help` gives its full text.
SUMMARIES = {
    "prepare": "Resize images, map labels to train ids, write data/prepared/.",
    "synthesize": "Write the synthetic street scenes as a raw Cityscapes tree.",
    "scan-data": "Count a tree's images and labels; list its label values.",
    "pretrain": "Pretrain the backbone with PixPro -> models/backbone.pt.",
    "extract": "Sample labelled train pixels' features into a bank.",
    "probe": "Fit the linear probe on a feature bank.",
    "evaluate": "Score backbone + probe on every val pixel (mIoU).",
    "retrieval": "Retrieve val pixels from the train bank (precision@k).",
    "finetune": "Fine-tune on shares of the labels (label efficiency).",
    "report": "Tabulate pretrained vs random -> reports/summary.md.",
    "show-pairs": "Draw two augmented views and their positive pairs.",
    "compare": "Compare DVC experiments over seeds (not a stage).",
    "export": "Write the backbone for use outside pixpro (not a stage).",
    "predict": "Segment new images with a finished run (not a stage).",
    "params": "Print the validated params with every default filled in.",
}
for _command in app.registered_commands:
    _command.short_help = _command.short_help or SUMMARIES.get(_command.name)


def _print_version(value: bool) -> None:
    if value:
        try:
            typer.echo(f"pixpro {version('pixpro')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            typer.echo("pixpro (not installed: no version recorded)")
        raise typer.Exit()


@app.callback()
def _options(show_version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                               help="Print pixpro's version and exit.")) -> None:
    pass


# Commands restarted with pixpro's glibc malloc tunables (pixpro/allocator.py): those the restart
# made faster in benchmarks/allocator_stages.py (tuned/default wall time 0.59 for pretrain, 0.85 to
# 0.91 for the others; docs/benchmarks.md). probe (1.01), prepare (0.98), report and `--help` (a
# second interpreter start: 0.19 -> 0.29 s) gain nothing and start once.
TUNED_COMMANDS = frozenset({"pretrain", "extract", "evaluate", "retrieval", "finetune"})
MALLOC_MODES = ("auto", "tuned", "default")


def wants_tuned_malloc(args: list[str], environ: dict[str, str]) -> bool:
    """Whether `pixpro <args>` restarts itself with the tunables. PIXPRO_MALLOC: `auto` (unset) for
    TUNED_COMMANDS only, `tuned` for every command, `default` for none."""
    mode = environ.get("PIXPRO_MALLOC") or "auto"
    if mode not in MALLOC_MODES:
        raise SystemExit(f"PIXPRO_MALLOC={mode!r}: expected one of {', '.join(MALLOC_MODES)}")
    if mode != "auto":
        return mode == "tuned"
    command = next((arg for arg in args if not arg.startswith("-")), None)
    return command in TUNED_COMMANDS and not {"--help", "-h"} & set(args)


def main() -> None:
    """Console entry point. Stage modules import torch & co. inside their commands, so each stage
    loads only what it uses and `--help` is instant."""
    if wants_tuned_malloc(sys.argv[1:], dict(os.environ)):
        from pixpro.allocator import restart_with_tuned_malloc

        restart_with_tuned_malloc()  # CPU steps reuse freed memory instead of faulting it in again
    app()


if __name__ == "__main__":
    main()
