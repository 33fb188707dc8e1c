"""How many CPU threads a stage computes with, from the top-level `threads` setting.

A number is used as given: CPU reductions are split by thread count, so a fixed count gives the
same numbers on a 2-core laptop and a 64-core server. `auto` takes the cores this process may run
on (its affinity mask, which a batch scheduler or `taskset` narrows, not the machine's count),
shared out among the processes torchrun starts on this node; results then depend on the machine,
so a run records the count it used.
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """Cores this process may run on (sched_getaffinity; os.cpu_count where that is missing, e.g. macOS)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def local_processes() -> int:
    """Processes torchrun runs on this node (LOCAL_WORLD_SIZE), 1 outside torchrun."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def resolved_threads(setting: int | str) -> int:
    """The thread count for a `threads` setting: the number itself, or for `auto` this process's
    share of the cores it may use (at least 1)."""
    if setting == "auto":
        return max(1, available_cores() // local_processes())
    return int(setting)
