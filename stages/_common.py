"""Shared plumbing of the stage commands: options, params loading and one-line errors."""

from __future__ import annotations

import functools
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Callable, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from pixpro.config import Params, load_params
from pixpro.errors import PixproError

F = TypeVar("F", bound=Callable)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)  # one message, one line

PARAMS_OPTION = typer.Option(Path("params.yaml"), "--params", help="Parameters file (validated up front).")
DATA_OPTION = typer.Option(Path("data/prepared"), "--data", help="Prepared dataset folder (from `pixpro prepare`).")
CHECKPOINT_OPTION = typer.Option(Path("models/backbone.pt"), "--checkpoint",
                                 help="Pretrained backbone (read only with --backbone pretrained).")


class Backbone(str, Enum):
    """The two backbones every experiment scores: the same architecture, pretrained or random."""

    pretrained = "pretrained"
    random = "random"


BACKBONE_OPTION = typer.Option(..., "--backbone", help="pretrained (models/backbone.pt) or random (same "
                                                       "architecture, random init from seed).")
BACKBONE_FOR_PATHS = typer.Option(None, "--backbone", help="pretrained or random: only names the default paths.")

# Where dvc.yaml's stages put each backbone's files ({backbone} = pretrained | random). A path
# option left out defaults to its entry here; tests/test_cli.py checks that dvc.yaml says the same.
LAYOUT = {
    "bank": "features/{backbone}/bank.pt",
    "probe": "models/probe/{backbone}.pt",
    "probe_curve": "plots/probe/{backbone}.csv",
    "segmentation_metrics": "metrics/segmentation/{backbone}.json",
    "predictions": "predictions/{backbone}",
    "evaluate_plots": "plots/evaluate/{backbone}",
    "retrieval_metrics": "metrics/retrieval/{backbone}.json",
    "retrieval_plots": "plots/retrieval/{backbone}",
    "finetune_metrics": "metrics/finetune/{backbone}.json",
    "finetune_curve": "plots/finetune/{backbone}.csv",
    "finetune_resume": "checkpoints/finetune/{backbone}.json",
    "finetune_model": "models/finetune/{backbone}.pt",
    "finetune_live": "dvclive/finetune/{backbone}",
}


def layout_option(entry: str, text: str) -> Any:
    """An optional path option whose default is LAYOUT[entry] for the stage's --backbone."""
    return typer.Option(None, help=f"{text} Default: {LAYOUT[entry].format(backbone='<backbone>')}.",
                        show_default=False)


def layout_path(given: Path | None, entry: str, backbone: Backbone | None, option: str) -> Path:
    """`given`, or the stage layout's path for `backbone` when the option was left out."""
    if given is not None:
        return given
    if backbone is None:
        raise PixproError(f"{option} not given: pass it, or --backbone pretrained|random for "
                          f"{LAYOUT[entry].format(backbone='<backbone>')}")
    return Path(LAYOUT[entry].format(backbone=backbone.value))


def user_errors(stage: str) -> Callable[[F], F]:
    """Turn PixproError into `pixpro <stage>: error: <message>` and a non-zero exit, no traceback."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except PixproError as err:
                err_console.print(f"[bold red]pixpro {stage}: error:[/] {escape(str(err))}", soft_wrap=True)
                sys.exit(err.exit_code)

        return wrapper  # type: ignore[return-value]

    return decorate


def load(params_path: Path) -> Params:
    """The validated params; also pins this process's CPU threads to `threads` (see pin_threads)."""
    params = load_params(params_path)
    pin_threads(params.threads)
    return params


def pin_threads(setting: int | str) -> int:
    """Set this process's CPU threads from the `threads` setting (a count, or `auto`: see
    pixpro.runtime_info) and return the count. CPU reductions are split by thread count, so the
    count is part of what a run computes: the same params must give the same numbers on a 2-core
    laptop and a 64-core server. The variables reach torch if it is imported later (and child
    processes); set_num_threads if it already is. Warns once (rank 0) when cores are left idle."""
    from pixpro.runtime_info import available_cores, local_processes, resolved_threads

    count = resolved_threads(setting)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(count)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(count)
    cores = available_cores() // local_processes()
    if count < cores and os.environ.get("RANK", "0") == "0":
        _warn_idle_cores(count, cores)
    return count


@functools.cache  # once per process, however often the params are loaded
def _warn_idle_cores(count: int, cores: int) -> None:
    err_console.print(f"pixpro: warning: computing with {count} of the {cores} CPU cores this process may use "
                      f"(threads: {count} in the params, fixed so results repeat; threads: auto uses them all)",
                      markup=False, highlight=False)
