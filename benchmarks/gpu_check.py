"""GPU check: every CUDA path of the project in one run of under 8 minutes, summarised in one JSON file.

Checks, in order (each a subprocess with its own time limit, so one hang cannot eat the rest):
  cuda tests      `pytest -m cuda`: bf16 autocast, channels_last, torch.compile (tests/test_cuda.py)
  pretrain        `pixpro pretrain` on a small synthetic set with pretrain.amp cuda, channels_last
                  and compile on: exits 0, finite loss, a backbone file
  resume          `pixpro pretrain` killed (SIGKILL) after its first checkpoint, then rerun: it
                  resumes from the checkpoint and finishes
  ddp             `pixpro pretrain --launch` with pretrain.nproc 2 (skipped with one GPU)
  step cost       benchmarks/step_cost.py, bf16, batch 16, crops 256x512 and 512x1024; then the
                  goal: the paired full/bare ratio at 512x1024 <= 1.10
  eval throughput benchmarks/eval_throughput.py, batch 16, at 256x512 and at 512x1024

Without CUDA, or with --dry-run, it checks its own wiring in seconds: every command exists and
accepts the arguments it would get (Python scripts with `--help` appended after them, which argparse
reads only once the arguments before it have parsed; pixpro commands through `--help` and their
params file through `pixpro params`), and every check is written as `skipped` with the wiring's
outcome. CI runs that mode (.ci/run).

    .venv/bin/python benchmarks/gpu_check.py [--dry-run] [--out gpu_check.json] [--budget-s 470]

Exit status 0 when no check failed (skipped ones do not count), 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import yaml

from pipeline import deep_merge  # benchmarks/pipeline.py
from synthetic_set import pixpro_command, prepared_synthetic  # benchmarks/synthetic_set.py

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = Path(__file__).resolve().parent
STEP_COST_GOAL = 1.10  # full step / bare backbone work at 512x1024, bf16, batch 16
# Small pretraining runs: the default model and views, few steps.
PRETRAIN = {"pretrain": {"device": "cuda", "amp": "cuda", "channels_last": True, "compile": True, "epochs": 2,
                         "batch_size": 16, "workers": 2, "log_every": 1, "checkpoint_every": 2}}


@dataclasses.dataclass
class Result:
    name: str
    status: str  # passed | failed | timeout | skipped
    seconds: float = 0.0
    commands: list[str] = dataclasses.field(default_factory=list)
    detail: str = ""  # why it failed or was skipped; the output's tail on failure
    data: dict = dataclasses.field(default_factory=dict)  # measurements


class Runner:
    """Runs commands within the check's overall budget and records them on a Result."""

    def __init__(self, budget_s: float, work: Path, dry: bool):
        self.deadline = time.monotonic() + budget_s
        self.work, self.dry = work, dry
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, result: Result, command: list[str], limit_s: float, cwd: Path = ROOT) -> tuple[int, str]:
        """(exit code, output) of `command`; raises TimedOut when it runs past min(limit_s, the
        budget left)."""
        result.commands.append(" ".join(command))
        timeout = max(1.0, min(limit_s, self.left()))
        proc = subprocess.Popen(command, cwd=cwd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=timeout)
            return proc.returncode, output
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its DataLoader workers and torchrun children too
            output, _ = proc.communicate()
            raise TimedOut(f"`{command[1] if len(command) > 1 else command[0]}` ran past {timeout:.0f} s: "
                           f"{tail(output)}") from None

    def wiring(self, result: Result, command: list[str], cwd: Path = ROOT) -> None:
        """Dry mode: raise if `command` (with --help appended) does not parse."""
        code, output = self.run(result, command + ["--help"], 60, cwd)
        if code != 0:
            raise CheckFailed(f"`{' '.join(command)} --help` exited {code}: {tail(output)}")


class CheckFailed(Exception):
    pass


class TimedOut(CheckFailed):
    pass


class Skipped(Exception):
    pass


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def python(script: str, *args: str) -> list[str]:
    return [sys.executable, str(BENCHMARKS / script), *args]


def params_file(folder: Path, base: dict, overrides: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(deep_merge(base, overrides), sort_keys=False))
    return path


def pretrain_command(params: Path, prepared: Path, out: Path, launch: bool = False) -> list[str]:
    return [pixpro_command(), "pretrain", "--params", str(params), "--data", str(prepared), "--out",
            str(out / "backbone.pt"), "--checkpoints", str(out / "ckpt"), "--live", str(out / "live"),
            *(["--launch"] if launch else [])]


def check_params(runner: Runner, result: Result, params: Path) -> None:
    code, output = runner.run(result, [pixpro_command(), "params", "--params", str(params)], 60)
    if code != 0:
        raise CheckFailed(f"params file {params} does not validate: {tail(output)}")


def final_loss(out: Path) -> float:
    metrics = json.loads((out / "live" / "metrics.json").read_text())
    return float(metrics["train"]["loss"])


# --------------------------------------------------------------------------------------------
# Checks: each fills its Result or raises CheckFailed
# --------------------------------------------------------------------------------------------


def cuda_tests(runner: Runner, result: Result, setup: dict) -> None:
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests"]
    if runner.dry:  # the marker and the module that holds the GPU tests (the whole suite is slow to collect)
        code, output = runner.run(result, command[:-1] + ["tests/test_cuda.py", "--collect-only"], 90)
        if code != 0:
            raise CheckFailed(f"pytest could not collect the cuda tests: {tail(output)}")
        result.data["collected"] = collected(output)
        return
    code, output = runner.run(result, command, 100)
    result.data["summary"] = tail(output, 1)
    if code != 0:
        raise CheckFailed(tail(output, 30))


def collected(output: str) -> int:
    found = re.search(r"(\d+)(?:/\d+)? tests? collected", output)
    return int(found.group(1)) if found else 0


def pretrain_run(runner: Runner, result: Result, setup: dict) -> None:
    out = runner.work / "pretrain"
    params = params_file(out, setup["base"], PRETRAIN)
    command = pretrain_command(params, setup["prepared"], out)
    if runner.dry:
        check_params(runner, result, params)
        runner.wiring(result, command)
        return
    code, output = runner.run(result, command, 100, cwd=setup["prepared"].parent)
    if code != 0:
        raise CheckFailed(f"exit {code}: {tail(output)}")
    loss = final_loss(out)
    result.data["final_loss"] = loss
    rates = (out / "live" / "plots" / "metrics" / "train" / "images_per_s.tsv").read_text().split()[3::2]
    result.data["images_per_s_last"] = float(rates[-1]) if rates else None
    if not math.isfinite(loss) or not (out / "backbone.pt").is_file():
        raise CheckFailed(f"loss {loss}, backbone written: {(out / 'backbone.pt').is_file()}")


def resume_after_kill(runner: Runner, result: Result, setup: dict) -> None:
    out = runner.work / "resume"
    params = params_file(out, setup["base"], deep_merge(PRETRAIN, {"pretrain": {"compile": False, "epochs": 4}}))
    command = pretrain_command(params, setup["prepared"], out)
    if runner.dry:
        check_params(runner, result, params)
        runner.wiring(result, command)
        return
    result.commands.append(" ".join(command) + "   (killed with SIGKILL after the first checkpoint)")
    proc = subprocess.Popen(command, cwd=setup["prepared"].parent, env=runner.env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoint = out / "ckpt" / "last.pt"  # pixpro.train writes it atomically every checkpoint_every steps
    waited = time.monotonic() + min(60, runner.left())
    while time.monotonic() < waited and proc.poll() is None and not checkpoint.is_file():
        time.sleep(0.5)
    if proc.poll() is not None:
        raise CheckFailed(f"the run ended (exit {proc.returncode}) before it could be killed")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if not checkpoint.is_file():
        raise CheckFailed("no checkpoint within 60 s")
    code, output = runner.run(result, command, 60, cwd=setup["prepared"].parent)
    result.data["resumed"] = "resuming from" in output
    if code != 0 or not result.data["resumed"]:
        raise CheckFailed(f"rerun exit {code}, resumed: {result.data['resumed']}: {tail(output)}")


def ddp(runner: Runner, result: Result, setup: dict) -> None:
    out = runner.work / "ddp"
    params = params_file(out, setup["base"], deep_merge(PRETRAIN, {"pretrain": {"compile": False, "epochs": 1,
                                                                                "nproc": 2}}))
    command = pretrain_command(params, setup["prepared"], out, launch=True)
    if runner.dry:
        check_params(runner, result, params)
        runner.wiring(result, command)
        return
    if setup["gpus"] < 2:
        raise Skipped(f"{setup['gpus']} GPU: DDP needs 2")
    code, output = runner.run(result, command, 70, cwd=setup["prepared"].parent)
    if code != 0:
        raise CheckFailed(f"exit {code}: {tail(output)}")
    result.data["final_loss"] = final_loss(out)


STEP_COST_ARGS = ("--device", "cuda", "--batch", "16", "--sizes", "256x512", "512x1024", "--repeats", "6",
                  "--precisions", "bf16")


def benchmark_output(runner: Runner, result: Result, command: list[str], limit_s: float) -> Optional[str]:
    """The output of a benchmark script that exited 0; None in dry mode, after checking its wiring."""
    if runner.dry:
        runner.wiring(result, command)
        return None
    code, output = runner.run(result, command, limit_s)
    if code != 0:
        raise CheckFailed(f"exit {code}: {tail(output)}")
    return output


def step_cost(runner: Runner, result: Result, setup: dict) -> None:
    output = benchmark_output(runner, result, python("step_cost.py", *STEP_COST_ARGS), 90)
    if output is None:
        return
    # Summary rows: precision, crop, full s, bare s, paired ratio, ratio of medians, pairs, floor ratio.
    for line in output.splitlines():
        fields = line.split()
        if len(fields) == 8 and fields[0] == "bf16" and "x" in fields[1]:
            result.data[fields[1]] = {"full_s": float(fields[2]), "bare_s": float(fields[3]),
                                      "ratio": float(fields[4]), "floor_ratio": float(fields[7])}
    setup["step_cost"] = result.data
    if "512x1024" not in result.data:
        raise CheckFailed(f"no 512x1024 row in the output: {tail(output)}")


def step_cost_goal(runner: Runner, result: Result, setup: dict) -> None:
    if runner.dry:
        return  # reads the step-cost check's numbers: nothing of its own to wire
    row = setup.get("step_cost", {}).get("512x1024")
    if row is None:
        raise Skipped("the step-cost check gave no 512x1024 ratio")
    result.data = {"ratio": row["ratio"], "goal": STEP_COST_GOAL}
    if row["ratio"] > STEP_COST_GOAL:
        raise CheckFailed(f"full / bare = {row['ratio']:.3f} > {STEP_COST_GOAL}")


def eval_throughput(size: str) -> Callable:
    def check(runner: Runner, result: Result, setup: dict) -> None:
        # --data: a folder without a manifest, so the script makes its synthetic set at --size.
        command = python("eval_throughput.py", "--device", "cuda", "--batch", "16", "--images", "32", "--size", size,
                         "--repeats", "3", "--data", str(runner.work / "no_manifest"))
        output = benchmark_output(runner, result, command, 40)
        if output is None:
            return
        # Rows: label, median s, images/s, of bare, samples ("bare backbone forward" is 3 words).
        for line in output.splitlines():
            fields = line.split()
            if line.startswith("evaluate_segmentation"):
                result.data["evaluate_images_per_s"] = float(fields[2])
            elif line.startswith("bare backbone forward"):
                result.data["bare_images_per_s"] = float(fields[4])
            elif line.startswith("ratio "):
                result.data["ratio"] = float(fields[1])
    return check


CHECKS: list[tuple[str, Callable]] = [
    ("cuda tests", cuda_tests),
    ("pretrain amp+channels_last+compile", pretrain_run),
    ("resume after kill", resume_after_kill),
    ("ddp 2 GPUs", ddp),
    ("step cost 256x512 512x1024 bf16 batch 16", step_cost),
    (f"step cost <= {STEP_COST_GOAL}x at 512x1024 bf16 batch 16", step_cost_goal),
    ("eval throughput 256x512 batch 16", eval_throughput("256x512")),
    ("eval throughput 512x1024 batch 16", eval_throughput("512x1024")),
]


def environment(dry: bool) -> dict:
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "gpus": gpus,
            "gpu_names": [torch.cuda.get_device_name(i) for i in range(gpus)], "dry_run": dry}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="check the wiring only (automatic without CUDA)")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON summary")
    parser.add_argument("--budget-s", type=float, default=470, help="stop starting checks after this many seconds")
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    args = parser.parse_args()

    started = time.monotonic()
    env = environment(args.dry_run)
    dry = args.dry_run or env["gpus"] == 0
    env["dry_run"] = dry
    temp = None if args.work else tempfile.TemporaryDirectory(prefix="gpu_check_")
    work = args.work or Path(temp.name)
    runner = Runner(args.budget_s, work, dry)
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    setup: dict = {"gpus": env["gpus"], "base": base, "prepared": work / "data" / "prepared"}
    results: list[Result] = []
    try:
        if not dry:  # 64 images: 4 steps of 16 per epoch
            setup["prepared"], setup["base"] = prepared_synthetic(work / "data", (128, 256), 64, 4, base=base)
        for name, check in CHECKS:
            result = Result(name, "passed")
            began = time.monotonic()
            try:
                if runner.left() < 5:
                    raise Skipped(f"the {args.budget_s:.0f} s budget is spent")
                check(runner, result, setup)
                if dry:
                    result.status, result.detail = "skipped", "dry run: wiring ok"
            except Skipped as why:
                result.status, result.detail = "skipped", str(why)
            except CheckFailed as why:
                result.status, result.detail = "timeout" if isinstance(why, TimedOut) else "failed", str(why)
            result.seconds = round(time.monotonic() - began, 1)
            results.append(result)
            print(f"{result.status:8} {result.seconds:6.1f} s  {name}" + (f": {result.detail.splitlines()[0]}"
                                                                          if result.detail else ""), flush=True)
    finally:
        if temp is not None:
            temp.cleanup()
    ok = all(r.status in ("passed", "skipped") for r in results)
    summary = {"ok": ok, "seconds": round(time.monotonic() - started, 1), "environment": env,
               "checks": [dataclasses.asdict(r) for r in results]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{'ok' if ok else 'FAILED'}: {args.out} ({summary['seconds']:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
