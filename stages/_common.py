"""Shared plumbing of the stage commands: params loading and one-line errors."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable, TypeVar

import typer
from rich.console import Console

from pixpro.config import Params, load_params
from pixpro.errors import PixproError

F = TypeVar("F", bound=Callable)
err_console = Console(stderr=True, highlight=False)

PARAMS_OPTION = typer.Option(Path("params.yaml"), "--params", help="Parameters file (validated up front).")


def user_errors(stage: str) -> Callable[[F], F]:
    """Turn PixproError into `error: <message>` and exit code 1, without a traceback."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except PixproError as err:
                err_console.print(f"[bold red]pixpro {stage}: error:[/] {err}", soft_wrap=True)
                sys.exit(err.exit_code)

        return wrapper  # type: ignore[return-value]

    return decorate


def load(params_path: Path) -> Params:
    return load_params(params_path)
