"""How many queued DVC experiments a machine runs at once to best effect.

In a temporary copy of the repository (as benchmarks/pipeline.py makes it; params deep-merged
with `--params`), for each (jobs, threads) configuration: queue `--experiments` experiments
(`dvc exp run --queue -S seed=... -S threads=T`), start the clock, `dvc queue start -j jobs`, and
poll `dvc queue status` until nothing is queued or running. Every configuration uses seeds of its
own, so DVC's run-cache never restores a stage from an earlier configuration.

Columns: wall seconds for the batch, experiments per hour, speed-up over the first
configuration, and failed experiments. `threads` is the params.yaml key (torch intra-op threads
per stage process). Results depend on it (see docs/method.md, "Determinism"), so
compare settings only between runs with the same `threads`.

    .venv/bin/python benchmarks/queue_concurrency.py [--params benchmarks/tiny_params.yaml]
        [--experiments 4] [--configs 1x2 1x1 2x1 2x2 3x1] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from pipeline import copy_env, deep_merge, snapshot  # benchmarks/pipeline.py

ROOT = Path(__file__).resolve().parent.parent


def dvc(args: list[str], repo: Path, env: dict, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["dvc", *args], cwd=repo, env=env, text=True, capture_output=True, check=True, **kwargs)


def queue_counts(repo: Path, env: dict) -> dict[str, int]:
    """{status: count} of the queue's tasks, from `dvc queue status`."""
    counts: dict[str, int] = {}
    for line in dvc(["queue", "status"], repo, env).stdout.splitlines():
        for status in ("Queued", "Running", "Success", "Failed"):
            if f" {status} " in f" {line} ":
                counts[status] = counts.get(status, 0) + 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=ROOT / "benchmarks/tiny_params.yaml",
                        help="params file deep-merged over the copy's params.yaml")
    parser.add_argument("--experiments", type=int, default=4, help="experiments per configuration")
    parser.add_argument("--configs", nargs="+", default=["1x2", "1x1", "2x1", "2x2", "3x1"],
                        help="JOBSxTHREADS: concurrent queue workers x torch threads per process")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    configs = [tuple(int(x) for x in c.split("x")) for c in args.configs]

    tmp = Path(tempfile.mkdtemp(prefix="pixpro_queue_"))
    env = copy_env(tmp)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(key, None)  # each stage pins its own threads from params.yaml
    try:
        base = yaml.safe_load((ROOT / "params.yaml").read_text())
        if args.params:
            base = deep_merge(base, yaml.safe_load(args.params.read_text()) or {})
        snapshot(tmp, base)
        print(f"copy {tmp}; {os.cpu_count()} CPUs; {args.experiments} experiments per configuration; "
              f"params.yaml + {args.params}", flush=True)
        print(f"{'jobs':>4} {'threads':>7} {'wall s':>8} {'exps/hour':>10} {'speed-up':>9} {'failed':>7}", flush=True)
        first_rate = None
        for index, (jobs, threads) in enumerate(configs):
            dvc(["queue", "remove", "--all"], tmp, env)
            seeds = range(index * args.experiments, (index + 1) * args.experiments)
            for seed in seeds:
                dvc(["exp", "run", "--queue", "-S", f"seed={seed}", "-S", f"threads={threads}"], tmp, env)
            start = time.perf_counter()
            # The worker keeps the stdout it was given: a file, so that this call returns at once.
            with open(tmp / f"queue_{jobs}x{threads}.log", "w") as log:
                subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], cwd=tmp, env=env, stdout=log,
                               stderr=subprocess.STDOUT, check=True)
            while True:
                counts = queue_counts(tmp, env)
                if not counts.get("Queued") and not counts.get("Running"):
                    break
                time.sleep(2)
            wall = time.perf_counter() - start
            rate = args.experiments / wall * 3600
            first_rate = first_rate or rate
            print(f"{jobs:4d} {threads:7d} {wall:8.0f} {rate:10.1f} {rate / first_rate:9.2f} "
                  f"{counts.get('Failed', 0):7d}", flush=True)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            subprocess.run(["dvc", "queue", "stop"], cwd=tmp, env=env, capture_output=True, check=False)
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
