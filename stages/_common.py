"""Shared plumbing of the stage commands: options, params loading and one-line errors."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Callable, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from pixpro.config import Params, load_params
from pixpro.errors import PixproError

F = TypeVar("F", bound=Callable)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)  # one message, one line

PARAMS_OPTION = typer.Option(Path("params.yaml"), "--params", help="Parameters file (validated up front).")
DATA_OPTION = typer.Option(Path("data/prepared"), "--data", help="Prepared dataset folder (from `pixpro prepare`).")
BACKBONE_OPTION = typer.Option(..., "--backbone", help="pretrained (models/backbone.pt) or random (same "
                                                       "architecture, random init from seed).")
CHECKPOINT_OPTION = typer.Option(Path("models/backbone.pt"), "--checkpoint",
                                 help="Pretrained backbone (read only with --backbone pretrained).")


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


def pin_threads(count: int) -> None:
    """CPU reductions are split by thread count, so the count is part of what a run computes: the
    same params must give the same numbers on a 2-core laptop and a 64-core server. The variables
    reach torch if it is imported later (and child processes); set_num_threads if it already is."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(count)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(count)
