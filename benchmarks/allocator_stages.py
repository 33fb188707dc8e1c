"""Wall time of each `pixpro` stage command with glibc's default malloc and with pixpro's tunables.

Decides which commands `stages/cli.py` restarts with the tunables (`TUNED_COMMANDS`): only
those the restart makes faster. In a temporary copy of the repository (as benchmarks/pipeline.py
makes it) the pipeline is reproduced once with `dvc repro`, so every stage has its inputs; then
each stage's command, as `dvc repro --dry --force` prints it, is rerun directly, alternating
`PIXPRO_MALLOC=default` and the tuned restart (default, tuned, tuned, default, ...), and the
median of each is reported. Resume state (pretraining checkpoints, the finetune store) is
deleted before every timed run so that each run does all its work. Pretraining is timed with
`pretrain.epochs` set by `--pretrain-epochs` (1 by default: ~13 steps on the synthetic default)
to keep the benchmark under ~25 minutes on 2 cores; its per-step speed is what matters.
`pixpro --help` is timed the same way: the cost of the restart itself.

Columns: default s, tuned s (medians), ratio = tuned / default (median of the per-repeat ratios,
each pair timed back to back), and whether the command is in `TUNED_COMMANDS`.

    .venv/bin/python benchmarks/allocator_stages.py [--repeats 3] [--threads 1] [--params FILE]
        [--stages extract finetune ...] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from pipeline import copy_env, deep_merge, snapshot  # benchmarks/pipeline.py

from pixpro.stages.cli import TUNED_COMMANDS

ROOT = Path(__file__).resolve().parent.parent
# Paths a stage resumes from, keyed by the option that names them: deleted before each timed run.
RESUME_OPTIONS = ("--checkpoints", "--resume", "--live")


def stage_commands(repo: Path, env: dict) -> dict[str, str]:
    """{stage name: shell command} for every stage, from `dvc repro --dry --force`."""
    out = subprocess.run(["dvc", "repro", "--dry", "--force"], cwd=repo, env=env, capture_output=True, text=True,
                         check=True).stdout
    commands, stage = {}, None
    for line in out.splitlines():
        if line.startswith("Running stage '"):
            stage = line.split("'")[1]
        elif line.startswith("> ") and stage:
            commands[stage] = line[2:]
    return commands


def timed(cmd: str, repo: Path, env: dict, log) -> float:
    args = shlex.split(cmd)
    for option in RESUME_OPTIONS:
        if option in args:
            state = repo / args[args.index(option) + 1]
            if state.is_dir():
                shutil.rmtree(state)
            else:
                state.unlink(missing_ok=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, shell=True, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, check=False)
    seconds = time.perf_counter() - start
    log.write(f"$ {cmd}  # {seconds:.2f} s, rc {proc.returncode}, PIXPRO_MALLOC={env.get('PIXPRO_MALLOC')}\n"
              f"{proc.stdout[-3000:]}\n")
    if proc.returncode:
        raise SystemExit(f"failed (rc {proc.returncode}): {cmd}\n{proc.stdout[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="params.yaml `threads` and OMP_NUM_THREADS")
    parser.add_argument("--pretrain-epochs", type=int, default=1)
    parser.add_argument("--params", type=Path, help="params file deep-merged over the copy's params.yaml")
    parser.add_argument("--stages", nargs="*", help="stage names to time (default: all, one per command)")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="pixpro_alloc_"))
    try:
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        if args.params:
            params = deep_merge(params, yaml.safe_load(args.params.read_text()) or {})
        params["threads"] = args.threads
        snapshot(tmp, params)
        short = deep_merge(params, {"pretrain": {"epochs": args.pretrain_epochs}})
        (tmp / "params_short_pretrain.yaml").write_text(yaml.safe_dump(short, sort_keys=False))
        env = copy_env(tmp, args.threads)
        env.pop("GLIBC_TUNABLES", None)
        start = time.perf_counter()
        subprocess.run(["dvc", "repro"], cwd=tmp, env=env, check=True, capture_output=True)
        print(f"copy {tmp}: dvc repro {time.perf_counter() - start:.0f} s; {os.cpu_count()} CPUs, "
              f"threads {args.threads}, {args.repeats} repeats", flush=True)

        commands = stage_commands(tmp, env)
        # One row per command: the @pretrained member of a foreach stands for both.
        chosen, seen = {}, set()
        for stage, cmd in commands.items():
            name = shlex.split(cmd)[1]
            if (args.stages and stage not in args.stages and name not in args.stages) or (
                    not args.stages and name in seen):
                continue
            seen.add(name)
            if name == "pretrain":
                cmd = cmd.replace("--params params.yaml", "--params params_short_pretrain.yaml")
            chosen[stage] = cmd
        chosen["--help"] = "pixpro --help"

        print(f"{'stage':22} {'default s':>10} {'tuned s':>10} {'ratio':>7}  restarted")
        with open(tmp / "allocator_benchmark.log", "w") as log:
            for stage, cmd in chosen.items():
                times = {"default": [], "tuned": []}
                for repeat in range(args.repeats):
                    order = ("default", "tuned") if repeat % 2 == 0 else ("tuned", "default")
                    for mode in order:
                        # Forced on for the tuned runs, so commands outside TUNED_COMMANDS are measured too.
                        times[mode].append(timed(cmd, tmp, dict(env, PIXPRO_MALLOC=mode), log))
                ratio = statistics.median(t / d for t, d in zip(times["tuned"], times["default"]))
                restarted = shlex.split(cmd)[1] in TUNED_COMMANDS
                print(f"{stage:22} {statistics.median(times['default']):10.2f} "
                      f"{statistics.median(times['tuned']):10.2f} {ratio:7.2f}  {'yes' if restarted else 'no'}",
                      flush=True)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
