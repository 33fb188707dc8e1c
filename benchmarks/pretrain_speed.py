"""Images per second of `pixpro pretrain` under variants of its params, measured side by side:
`--compare amp` is bf16 (pretrain.amp: always) against fp32 (off), `--compare threads` is threads 1,
2 and auto.

Each configuration is params.yaml, or params.yaml with an overlay's data.size and pretrain.views
(experiments/idd_lite.yaml by default: IDD Lite's prepared size), trained on a small synthetic set
prepared at that size in a temporary folder. For every configuration the variants run as real
`pixpro pretrain` commands, interleaved (A B, B A, A B, ...: the order alternates, so no variant
always runs first), `--repeats` times, each from scratch for `--epochs` passes. A run's images/s
is the median of the trainer's own throughput log (dvclive plots/metrics/train/images_per_s.tsv,
one value per log interval) without its first interval (warm-up: kernel selection, DataLoader
workers starting). Other processes on a shared machine slow every variant of a round alike, so a
speed-up is the median over rounds of variant / first variant within the round.

    .venv/bin/python benchmarks/pretrain_speed.py [--compare amp|threads]
        [--overlays default experiments/idd_lite.yaml] [--repeats 3] [--epochs 10] [--images 48]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from pixpro.config import params_from_dict
from pixpro.precision import native_cpu_bf16
from pixpro.runtime_info import available_cores
from pipeline import deep_merge  # benchmarks/pipeline.py
from timing import paired_ratio  # benchmarks/timing.py
from synthetic_set import pixpro_command, prepared_synthetic  # benchmarks/synthetic_set.py

ROOT = Path(__file__).resolve().parent.parent
# Variants: name -> params overrides. The first is the reference of the speed-ups.
COMPARISONS = {
    "amp": {"fp32": {"pretrain": {"amp": "off"}}, "bf16": {"pretrain": {"amp": "always"}}},
    "threads": {"1": {"threads": 1}, "2": {"threads": 2}, "auto": {"threads": "auto"}},
}


def configuration(overlay: str, args) -> dict:
    """params.yaml with the overlay's data.size and pretrain.views, and short runs."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    if overlay != "default":
        extra = yaml.safe_load(Path(overlay).read_text())
        raw = deep_merge(raw, {"data": {"size": extra["data"]["size"]},
                               "pretrain": {"views": extra.get("pretrain", {}).get("views", {})}})
    short = {"epochs": args.epochs, "log_every": args.log_every, "checkpoint_every": 10_000}
    return deep_merge(raw, {"pretrain": {**short, **({"batch_size": args.batch} if args.batch else {})}})


def run_pretrain(folder: Path, raw: dict, prepared: Path, variant: str, overrides: dict) -> tuple[float, float]:
    """One `pixpro pretrain` from scratch in `folder`: (median images/s after the first log interval,
    wall seconds of the command)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    params = folder / "params.yaml"
    params.write_text(yaml.safe_dump(deep_merge(raw, overrides), sort_keys=False))
    command = [pixpro_command(), "pretrain", "--params", str(params), "--data",
               str(prepared), "--out", str(folder / "backbone.pt"), "--checkpoints", str(folder / "ckpt"),
               "--live", str(folder / "live")]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=prepared.parent, capture_output=True, text=True)  # manifest paths
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"pixpro pretrain failed ({variant}):\n{proc.stderr[-2000:]}")
    table = (folder / "live" / "plots" / "metrics" / "train" / "images_per_s.tsv").read_text().split("\n")
    rates = [float(line.split("\t")[1]) for line in table[1:] if line]
    if len(rates) < 2:
        sys.exit("fewer than 2 log intervals: raise --epochs or lower --log-every")
    return statistics.median(rates[1:]), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overlays", nargs="+", default=["default", str(ROOT / "experiments/idd_lite.yaml")],
                        help="'default' (params.yaml) or params overlays whose data.size / pretrain.views are used")
    parser.add_argument("--compare", choices=sorted(COMPARISONS), default="amp")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every variant per configuration")
    parser.add_argument("--epochs", type=int, default=10, help="passes over --images per run")
    parser.add_argument("--images", type=int, default=48, help="synthetic train images (3 steps of 16 per epoch)")
    parser.add_argument("--log-every", type=int, default=5, help="steps per throughput value")
    parser.add_argument("--batch", type=int, default=0, help="pretrain.batch_size (0: params.yaml's)")
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one)")
    args = parser.parse_args()

    variants = COMPARISONS[args.compare]
    work = args.keep or Path(tempfile.mkdtemp(prefix="pretrain_speed_"))
    print(f"CPU native bf16: {native_cpu_bf16()}; cores this process may use: {available_cores()}; "
          f"{args.images} synthetic images, {args.epochs} epochs per run, {args.repeats} interleaved rounds of "
          f"{', '.join(variants)}; work folder {work}", flush=True)
    rows = []
    try:
        for index, overlay in enumerate(args.overlays):
            raw = configuration(overlay, args)
            prepared, raw = prepared_synthetic(work / f"config{index}", tuple(raw["data"]["size"]), args.images, 2,
                                               base=raw)
            params = params_from_dict(raw)
            rates = {name: [] for name in variants}
            for round_ in range(args.repeats):
                order = list(variants) if round_ % 2 == 0 else list(variants)[::-1]
                for name in order:
                    rate, wall = run_pretrain(work / f"config{index}" / name, raw, prepared, name, variants[name])
                    rates[name].append(rate)
                    print(f"  {Path(overlay).stem:10} round {round_} {name:5}: {rate:6.2f} images/s "
                          f"(command {wall:.0f} s)", flush=True)
            reference = list(variants)[0]
            speedups = {name: paired_ratio(rates[name], rates[reference]) for name in variants}
            rows.append((Path(overlay).stem, params.data.size, params.pretrain.views.size,
                         {name: statistics.median(rates[name]) for name in variants}, speedups))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    reference = list(variants)[0]
    others = list(variants)[1:]
    print(f"\n{'config':10} {'image':>9} {'views':>9} "
          + " ".join(f"{name + ' img/s':>11}" for name in variants) + " "
          + " ".join(f"{name + ' / ' + reference:>12}" for name in others))
    for name, size, views, medians, speedups in rows:
        print(f"{name:10} {size[0]:>4}x{size[1]:<4} {views[0]:>4}x{views[1]:<4} "
              + " ".join(f"{medians[v]:11.2f}" for v in variants) + " "
              + " ".join(f"{speedups[v]:11.2f}x" for v in others))


if __name__ == "__main__":
    sys.exit(main())
