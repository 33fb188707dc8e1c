"""Per-file work spread over processes, in order, behind a progress bar: generating the synthetic
tree and preparing images."""

from __future__ import annotations

import multiprocessing
import os
from typing import Callable, Iterable, Iterator, TypeVar

from pixpro.progress import progress_bar

T = TypeVar("T")
R = TypeVar("R")


def num_workers(requested: int) -> int:
    """data.workers: 0 = all cores."""
    return requested or os.cpu_count() or 1


def parallel_map(fn: Callable[[T], R], items: list[T], workers: int, description: str) -> Iterator[R]:
    """Yield fn(item) for every item, in order, across processes, behind a progress bar.

    A worker's exception is re-raised here and the pool is torn down.
    """
    with progress_bar() as progress:
        task = progress.add_task(description, total=len(items))
        if workers <= 1 or len(items) <= 1:
            results: Iterable[R] = map(fn, items)
            pool = None
        else:
            pool = multiprocessing.get_context("fork").Pool(workers)
            results = pool.imap(fn, items, chunksize=max(1, min(16, len(items) // (4 * workers))))
        try:
            for result in results:
                progress.advance(task)
                yield result
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
