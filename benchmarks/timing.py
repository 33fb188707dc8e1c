"""Timing shared by the benchmarks: wall seconds bracketed by CUDA syncs, interleaved repetitions
(A B A B ...) so that load drifting on a shared machine hits every variant alike, and paired ratios.

Scripts in this folder import it as `from timing import ...` (Python puts a script's own folder
first on sys.path). torch.utils.benchmark.Timer does not fit: it times one statement in a block
and cannot interleave variants or pair each run with its neighbour.
"""

from __future__ import annotations

import resource
import statistics
import time
from typing import Callable, Iterable, Optional

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, sys_times: Optional[list] = None) -> float:
    """Wall seconds of fn(); appends the kernel (system) CPU seconds it took to sys_times, which on
    CPU is mostly page faults of freshly mapped tensor memory."""
    sync(device)
    sys_start = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    start = time.perf_counter()
    fn()
    sync(device)
    wall = time.perf_counter() - start
    if sys_times is not None:
        sys_times.append(resource.getrusage(resource.RUSAGE_SELF).ru_stime - sys_start)
    return wall


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device, warmup: int = 1,
                sys_times: Optional[dict[str, list]] = None) -> dict[str, list[float]]:
    """{name: [seconds per repetition]}: each fn run `warmup` times, then `repeats` rounds of every fn
    in turn. sys_times, when given, collects each run's kernel seconds under the same names."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, device, None if sys_times is None else sys_times.setdefault(name, [])))
    return times


def paired_ratio(numerators: Iterable[float], denominators: Iterable[float]) -> float:
    """Median of a_i / b_i over runs timed next to each other: robust to a load that drifts."""
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))
