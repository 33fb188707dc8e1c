"""The pixpro command restarts itself with glibc tunables so freed tensor memory is reused."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from pixpro import allocator
from pixpro.allocator import TUNABLES, tuned_environment
from pixpro.stages.cli import wants_tuned_malloc
from tests.conftest import REPO

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc tunables")

# Restart as the CLI does, then count minor page faults of allocating, touching and freeing a
# 256 MB tensor three times (torch allocates with posix_memalign).
_CHILD = """
import json, os, resource, sys, torch
from pixpro.allocator import restart_with_tuned_malloc
restart_with_tuned_malloc()
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(64 * 2 ** 20, dtype=torch.float32).fill_(1.0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"pid": os.getpid(), "faults": faults, "tunables": os.environ.get("GLIBC_TUNABLES", "")}))
"""

PAGES = 256 * 2 ** 20 // 4096


def _run_child(**env) -> dict:
    environ = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "PIXPRO_MALLOC")}
    out = subprocess.run([sys.executable, "-c", _CHILD], cwd=REPO, capture_output=True, text=True,
                         timeout=120, check=True, env={**environ, **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_restarted_process_reuses_freed_memory_instead_of_faulting_it_in_again():
    default = _run_child(PIXPRO_MALLOC="default")
    tuned = _run_child()
    # glibc's default maps and unmaps every large tensor: each allocation faults every page in.
    assert all(f > PAGES // 2 for f in default["faults"]), default
    assert tuned["faults"][0] > PAGES // 2  # the first touch must fault its pages in
    assert all(f < PAGES // 20 for f in tuned["faults"][1:]), tuned
    assert all(f"{k}={v}" in tuned["tunables"] for k, v in TUNABLES.items())


@glibc_only
def test_tuned_environment_keeps_user_tunables_and_is_idempotent():
    env = tuned_environment({"GLIBC_TUNABLES": "glibc.malloc.tcache_count=7:glibc.pthread.mutex_spin_count=5"})
    items = env["GLIBC_TUNABLES"].split(":")
    assert "glibc.malloc.tcache_count=7" in items and "glibc.pthread.mutex_spin_count=5" in items
    assert "glibc.malloc.mmap_max=0" in items
    assert tuned_environment(env) is None  # no second restart
    assert tuned_environment({"PIXPRO_MALLOC": "default"}) is None


def test_cli_help_does_not_import_torch():
    code = "import sys; from pixpro.stages.cli import app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                         check=True)
    assert out.stdout.strip() == "False"


def test_a_failed_restart_runs_on_untuned(monkeypatch):
    attempts = []

    def cannot_exec(path, argv, env):
        attempts.append((path, list(argv), env))
        raise OSError("no such interpreter")

    monkeypatch.setattr(allocator.os, "execve", cannot_exec)
    monkeypatch.setattr(allocator, "tuned_environment", lambda environ: {"GLIBC_TUNABLES": "x"})
    before = dict(os.environ)
    assert allocator.restart_with_tuned_malloc() is None  # returns instead of raising
    assert attempts == [(sys.executable, list(sys.orig_argv), {"GLIBC_TUNABLES": "x"})]  # it did try
    assert dict(os.environ) == before  # and runs on in the environment it had


@pytest.mark.parametrize("args, expected", [
    (["pretrain", "--params", "params.yaml"], True),
    (["finetune", "--backbone", "random"], True),
    (["pretrain", "--help"], False),  # help text needs no second interpreter start
    (["--help"], False),
    ([], False),
    (["report", "--out", "reports/summary.md"], False),
    (["probe", "--bank", "features/random/bank.pt"], False),  # measured: no faster with the tunables
    (["compare"], False),
    (["export", "--checkpoint", "models/backbone.pt"], False),
])
def test_only_commands_the_tunables_speed_up_restart(args, expected):
    assert wants_tuned_malloc(args, {}) is expected
    assert wants_tuned_malloc(args, {"PIXPRO_MALLOC": "auto"}) is expected
    assert wants_tuned_malloc(args, {"PIXPRO_MALLOC": "tuned"}) is True
    assert wants_tuned_malloc(args, {"PIXPRO_MALLOC": "default"}) is False


def test_an_unknown_malloc_mode_is_a_one_line_error():
    with pytest.raises(SystemExit, match="PIXPRO_MALLOC='fast': expected one of auto, tuned, default"):
        wants_tuned_malloc(["pretrain"], {"PIXPRO_MALLOC": "fast"})


@glibc_only
@pytest.mark.parametrize("command, restarted", [("report", False), ("extract", True)])
def test_the_console_entry_restarts_only_tuned_commands(command, restarted):
    # The child prints its GLIBC_TUNABLES from inside the command, after main() had its chance to restart.
    code = (f"import sys; import pixpro.stages.cli as cli; sys.argv = ['pixpro', {command!r}]\n"
            "cli.app = lambda: print('TUNABLES=' + __import__('os').environ.get('GLIBC_TUNABLES', ''))\n"
            "cli.main()")
    environ = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "PIXPRO_MALLOC")}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                         check=True, env=environ)
    line = [x for x in out.stdout.splitlines() if x.startswith("TUNABLES=")][-1]
    assert ("glibc.malloc.mmap_max=0" in line) is restarted
