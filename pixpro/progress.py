"""Rich progress bars shared by the stages."""

from __future__ import annotations

import sys

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


def progress_bar(*extra_columns) -> Progress:
    """A progress bar with count, elapsed and remaining time; plain when output is not a terminal."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        *extra_columns,
        disable=not sys.stderr.isatty() and not sys.stdout.isatty(),
    )
