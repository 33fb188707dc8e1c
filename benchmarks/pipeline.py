"""Wall time of each stage of `dvc repro` from clean, in a temporary copy of the repository.

Copies the files git tracks plus the untracked-but-not-ignored ones (so pipeline outputs, the
DVC cache and .venv stay behind) into a temporary folder, makes it a git repository with one
commit, then reproduces the pipeline one stage at a time in topological order (`dvc stage list`
order, constrained by `dvc dag --dot` edges): `dvc repro --single-item --no-run-cache <stage>`.
Each row is the wall time of that call, DVC's own start-up and hashing included (the DVC start-up
alone is printed for reference). The repository's .venv/bin is put first on PATH and the copy
first on PYTHONPATH, so the stages run the copied code with the project's interpreter.

`--params FILE` deep-merges FILE over the copied params.yaml (a complete params file replaces
every value; a partial one, e.g. benchmarks/tiny_params.yaml, only the keys it names).

Last line: `total <seconds>`, the sum of the stage rows (goal < 600 on 2 CPU cores with the
default params.yaml; that takes ~10 minutes).

    .venv/bin/python benchmarks/pipeline.py [--params benchmarks/tiny_params.yaml] [--keep]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def git_files(repo: Path) -> list[str]:
    files = []
    for extra in ([], ["--others", "--exclude-standard"]):
        out = subprocess.run(["git", "ls-files", "-z", *extra], cwd=repo, check=True, capture_output=True).stdout
        files += [f for f in out.decode().split("\0") if f]
    return sorted(set(files))


def copy_tree(files: list[str], src: Path, dst: Path) -> int:
    copied = 0
    for name in files:
        source = src / name
        if not source.is_file():  # deleted in the working tree, or a submodule
            continue
        target = dst / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        copied += 1
    return copied


def deep_merge(base, override):
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = deep_merge(base.get(key), value) if key in base else value
        return merged
    return override


def snapshot(repo: Path, params: dict | None = None, rev: str | None = None) -> None:
    """Fill the empty folder `repo` with this repository's working tree (tracked files plus the
    untracked-but-not-ignored ones) or, with `rev`, that git revision; write `params` as its
    params.yaml when given; and commit it all as a new git repository's first commit."""
    if rev:
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(repo)], input=archive, check=True)
    else:
        copy_tree(git_files(ROOT), ROOT, repo)
    if params is not None:
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], [*git, "commit", "-q", "-m", "benchmark snapshot"]):
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True)


def copy_env(repo: Path, threads: int | None = None) -> dict[str, str]:
    """The environment to run `dvc` and `pixpro` in the copy `repo`: the project's .venv first on
    PATH, the copy's code first on PYTHONPATH, no DVC analytics; OMP/MKL threads when given."""
    env = {**os.environ, "PATH": f"{ROOT / '.venv/bin'}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(repo), "DVC_NO_ANALYTICS": "1"}
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def topological(stages: list[str], dot: str) -> list[str]:
    """Stages in `stages` order, each after every stage it depends on."""
    edges = re.findall(r'"([^"]+)"\s*->\s*"([^"]+)"', dot)
    parents = {s: set() for s in stages}
    for a, b in edges:
        parents.setdefault(b, set()).add(a)
    order, done = [], set()
    while len(order) < len(stages):
        ready = [s for s in stages if s not in done and parents.get(s, set()) <= done]
        if not ready:
            raise RuntimeError(f"cycle or unknown stage among {set(stages) - done}")
        order.append(ready[0])
        done.add(ready[0])
    return order


def run(cmd: list[str], cwd: Path, env: dict, log) -> tuple[int, float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          check=False)
    seconds = time.perf_counter() - start
    log.write(f"$ {' '.join(cmd)}  # {seconds:.1f} s, rc {proc.returncode}\n{proc.stdout}\n")
    return proc.returncode, seconds, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, help="params file deep-merged over the copy's params.yaml")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy (its path is printed)")
    parser.add_argument("--repo", type=Path, default=ROOT, help="repository to copy")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="pixpro_pipeline_"))
    ok = False
    try:
        files = git_files(args.repo)
        copied = copy_tree(files, args.repo, tmp)
        if args.params:
            base = yaml.safe_load((tmp / "params.yaml").read_text()) or {}
            override = yaml.safe_load(args.params.read_text()) or {}
            (tmp / "params.yaml").write_text(yaml.safe_dump(deep_merge(base, override), sort_keys=False))
        git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
        for cmd in (["git", "init", "-q"], ["git", "add", "-A"], [*git, "commit", "-q", "-m", "benchmark snapshot"]):
            subprocess.run(cmd, cwd=tmp, check=True, capture_output=True)

        env = dict(os.environ)
        env["PATH"] = f"{args.repo / '.venv/bin'}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONPATH"] = f"{tmp}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(tmp)
        env["DVC_NO_ANALYTICS"] = "1"
        log_path = tmp / "pipeline_benchmark.log"
        with open(log_path, "w") as log:
            rc, dvc_start, out = run(["dvc", "stage", "list", "--name-only"], tmp, env, log)
            if rc:
                raise SystemExit(f"dvc stage list failed:\n{out}")
            stages = [line.strip() for line in out.splitlines() if line.strip()]
            rc, _, dot = run(["dvc", "dag", "--dot"], tmp, env, log)
            if rc:
                raise SystemExit(f"dvc dag failed:\n{dot}")
            order = topological(stages, dot)
            print(f"copied {copied} files of {args.repo} to {tmp}; params: "
                  f"{'params.yaml + ' + str(args.params) if args.params else 'params.yaml'}; "
                  f"{os.cpu_count()} CPUs; dvc start-up (dvc stage list) {dvc_start:.1f} s")
            print(f"{'stage':24} {'seconds':>9}")
            results = []
            for stage in order:
                rc, seconds, out = run(["dvc", "repro", "--single-item", "--no-run-cache", stage], tmp, env, log)
                results.append((stage, seconds))
                print(f"{stage:24} {seconds:9.1f}", flush=True)
                if rc:
                    tail = "\n".join(out.splitlines()[-25:])
                    print(f"stage {stage} failed (rc {rc}); last lines:\n{tail}\nfull log: {log_path}")
                    args.keep = True
                    raise SystemExit(1)
            rc, _, status = run(["dvc", "status"], tmp, env, log)
            clean = "up to date" in status.lower() or "up-to-date" in status.lower()
            print(f"dvc status after the run: {'up to date' if clean else status.strip()[:300]}")
        ok = True
        total = sum(s for _, s in results)
        if args.keep:
            print(f"kept {tmp} (log: {log_path})")
        print(f"total {total:.1f}")
    finally:
        if args.keep or not ok:
            if not ok:
                print(f"kept {tmp} for inspection", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
