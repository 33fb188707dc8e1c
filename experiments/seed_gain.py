"""Gain of pretrained over random-init features, per setting and seed, from real `dvc repro` runs.

One temporary copy of the repository (as benchmarks/pipeline.py makes it) runs the whole
pipeline once per (seed, setting). Seeds are the outer loop, so within a seed only pretraining
and the `@pretrained` stages rerun between settings: DVC skips the random-init branch, whose
params did not change. Each finished run appends one row to the CSV (nothing is lost when this
is interrupted), with both backbones' probe mIoU, kNN mIoU, P@1, the last logged training
diagnostics and the wall time.

    .venv/bin/python experiments/seed_gain.py --seeds 0 1 2 --out experiments/results/synthetic.csv \\
        --setting baseline='{pretrain: {loss: {contrast: 0.0}}}' --setting default='{}'

`--base FILE` (YAML) is merged over params.yaml first, e.g. a data set's `data:` section; a
setting's YAML is merged over that. `--threads` sets the `threads` param (and OMP/MKL threads):
results depend on it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from pipeline import copy_env, deep_merge, snapshot  # noqa: E402

COLUMNS = ["setting", "seed", "pretrained_miou", "random_miou", "gain", "pretrained_knn_miou", "random_knn_miou",
           "knn_gain", "pretrained_p1", "random_p1", "partner_gap", "feature_std", "effective_rank",
           "target_drift", "loss", "seconds"]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def row_for(copy: Path, setting: str, seed: int, seconds: float) -> dict:
    seg = {b: read_json(copy / f"metrics/segmentation/{b}.json") for b in ("pretrained", "random")}
    ret = {b: read_json(copy / f"metrics/retrieval/{b}.json") for b in ("pretrained", "random")}
    train = read_json(copy / "dvclive/pretrain/metrics.json").get("train", {})
    row = {"setting": setting, "seed": seed, "seconds": round(seconds, 1)}
    for b in ("pretrained", "random"):
        row[f"{b}_miou"] = seg[b]["miou"]
        row[f"{b}_knn_miou"] = ret[b]["knn_miou"]
        row[f"{b}_p1"] = ret[b]["precision@1"]
    row["gain"] = row["pretrained_miou"] - row["random_miou"]
    row["knn_gain"] = row["pretrained_knn_miou"] - row["random_knn_miou"]
    for name in ("partner_gap", "feature_std", "effective_rank", "target_drift", "loss"):
        row[name] = train.get(name, "")
    return row


def interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=YAML",
                        help="a named params override, e.g. nocontrast='{pretrain: {loss: {contrast: 0}}}'")
    parser.add_argument("--base", type=Path, help="YAML merged over params.yaml before every setting")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a dotted override applied after --base, e.g. data.root=/data/idd20k_lite")
    parser.add_argument("--out", type=Path, required=True, help="CSV to append rows to")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy")
    parser.add_argument("--rev", help="copy this git revision (git archive) instead of the working tree")
    args = parser.parse_args()
    # A background job starts with SIGINT ignored, and SIGTERM would skip the cleanup: both interrupt.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)
    settings = [s.split("=", 1) for s in (args.setting or ["default={}"])]
    for name, text in settings:  # fail now, not after an hour of runs
        if not isinstance(yaml.safe_load(text) or {}, dict):
            parser.error(f"setting {name}: {text!r} is not a YAML mapping")

    tmp = Path(tempfile.mkdtemp(prefix="pixpro_seeds_"))
    snapshot(tmp, rev=args.rev)
    base = yaml.safe_load((tmp / "params.yaml").read_text())
    if args.base:
        base = deep_merge(base, yaml.safe_load(args.base.read_text()) or {})
    for item in args.set:
        key, value = item.split("=", 1)
        override: dict = {}
        node = override
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
        base = deep_merge(base, override)
    env = copy_env(tmp, args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    new_file = not args.out.is_file()
    print(f"copy: {tmp}; {len(settings)} settings x {len(args.seeds)} seeds; threads {args.threads}", flush=True)
    try:
        for seed in args.seeds:
            for name, text in settings:
                pinned = {"seed": seed}
                if "threads" in base:  # the param pins the stages' threads; older revisions read the env only
                    pinned["threads"] = args.threads
                params = deep_merge(deep_merge(base, yaml.safe_load(text) or {}), pinned)
                (tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
                start = time.perf_counter()
                log = tmp / f"repro_{name}_{seed}.log"
                stage_times = []  # (stage, seconds): from one "Running stage" line to the next
                with open(log, "w") as handle:
                    # Own process group: an interrupt can then reach dvc and the stage it runs.
                    proc = subprocess.Popen(["dvc", "repro"], cwd=tmp, env=env, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
                    try:
                        for line in proc.stdout:
                            handle.write(line)
                            if line.startswith("Running stage '"):
                                stage_times.append([line.split("'")[1], time.perf_counter()])
                        proc.wait()
                    finally:  # interrupted (Ctrl-C, SIGTERM): stop the run too, not only this script
                        if proc.poll() is None:
                            os.killpg(proc.pid, signal.SIGINT)  # pixpro checkpoints on SIGINT
                            try:
                                proc.wait(timeout=120)
                            except subprocess.TimeoutExpired:
                                os.killpg(proc.pid, signal.SIGKILL)
                ends = [began for _, began in stage_times[1:]] + [time.perf_counter()]
                stage_times = [(stage, round(end - began, 1)) for (stage, began), end in zip(stage_times, ends)]
                if proc.returncode:
                    print(f"{name} seed {seed}: dvc repro failed (rc {proc.returncode}); see {log}", flush=True)
                    args.keep = True
                    continue
                row = row_for(tmp, name, seed, time.perf_counter() - start)
                # Keep the training curves next to the CSV: experiments/plot_curves.py draws them.
                curves = args.out.parent / f"{args.out.stem}_curves" / f"{name}_seed{seed}"
                shutil.rmtree(curves, ignore_errors=True)
                shutil.copytree(tmp / "dvclive/pretrain/plots/metrics/train", curves)
                # Per backbone: example pictures, per-class IoU, label-efficiency scores (if that stage ran).
                for backbone in ("pretrained", "random"):
                    kept = {f"{backbone}_{picture}": tmp / "plots/evaluate" / backbone / picture
                            for picture in ("overlays.png", "per_class_iou.csv")}
                    kept[f"finetune_{backbone}.json"] = tmp / "metrics/finetune" / f"{backbone}.json"
                    for kept_name, source in kept.items():
                        if source.is_file():
                            shutil.copy(source, curves / kept_name)
                shutil.copy(tmp / "reports/summary.md", curves / "summary.md")
                (curves / "stage_seconds.csv").write_text(
                    "stage,seconds\n" + "".join(f"{stage},{seconds}\n" for stage, seconds in stage_times))
                with open(args.out, "a", newline="") as handle:
                    writer = csv.DictWriter(handle, COLUMNS)
                    if new_file:
                        writer.writeheader()
                        new_file = False
                    writer.writerow(row)
                print(f"{name} seed {seed}: gain {row['gain']:+.4f} ({row['pretrained_miou']:.4f} vs "
                      f"{row['random_miou']:.4f}), kNN gain {row['knn_gain']:+.4f}, partner_gap "
                      f"{row['partner_gap']}, {row['seconds']:.0f} s", flush=True)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
