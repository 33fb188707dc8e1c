"""Host-memory allocator settings for CPU runs.

glibc serves every allocation above its mmap threshold (at most 32 MB) with a fresh mmap and
unmaps it on free, so each large activation of every training or inference step is faulted in
again page by page: on 2 cores at 256x512 that was ~1.2 s of kernel time in a 5.2 s PixPro
step (benchmarks/step_cost.py). With the tunables below freed memory stays in the heap for the
next step (whole step 21% faster, same peak RSS). tcache and fastbins are off because torch
allocates with posix_memalign, whose small alignment fragments, parked there uncoalesced, would
otherwise keep a freed block from being reused, and the heap would grow at every step.

glibc reads tunables only at start-up, so the `pixpro` command re-executes itself once with
them set, for the commands in `pixpro.stages.cli.TUNED_COMMANDS` (the ones it speeds up). PIXPRO_MALLOC
is `auto` (unset), `tuned` (every command) or `default` (none).
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Mapping, Optional

TUNABLES = {
    "glibc.malloc.tcache_count": "0",
    "glibc.malloc.mxfast": "0",
    "glibc.malloc.mmap_max": "0",  # glibc still falls back to mmap when the heap cannot grow
    "glibc.malloc.trim_threshold": str(4 * 2 ** 30),
}


def tuned_environment(environ: Mapping[str, str]) -> Optional[dict[str, str]]:
    """The environment to restart with, or None: already tuned, opted out, or not glibc.

    Values the user already set in GLIBC_TUNABLES are kept.
    """
    if environ.get("PIXPRO_MALLOC") == "default" or platform.libc_ver()[0] != "glibc":
        return None
    current = dict(item.split("=", 1) for item in environ.get("GLIBC_TUNABLES", "").split(":") if "=" in item)
    if all(key in current for key in TUNABLES):
        return None
    merged = {**TUNABLES, **current}
    return {**environ, "GLIBC_TUNABLES": ":".join(f"{key}={value}" for key, value in merged.items())}


def restart_with_tuned_malloc() -> None:
    """Re-execute this Python process (same PID, arguments and interpreter options) with the
    tunables set; returns only if nothing needs to change. Call it before any real work."""
    env = tuned_environment(os.environ)
    if env is None or not sys.executable:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, env)
    except OSError:  # e.g. an interpreter path that vanished: run on with glibc's defaults
        return
