"""The `pixpro` console script: one subcommand per DVC stage."""

from __future__ import annotations

import os
import sys

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


# Commands restarted with pixpro's glibc malloc tunables (pixpro/allocator.py): those the restart
# made faster in benchmarks/allocator_stages.py (tuned/default wall time 0.59 for pretrain, 0.85 to
# 0.91 for the others; README, Benchmarks). probe (1.01), prepare (0.98), report and `--help` (a
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
