"""Linear-probe mIoU of one pretrained backbone and its random-init twin, per `probe.layers` choice.

Runs `pixpro extract`, `probe` and `evaluate` directly (not through DVC) in a finished pipeline
folder, i.e. one that holds `params.yaml`, `data/prepared` and `models/backbone.pt` (a
`dvc repro` checkout or a `dvc exp` workspace), once per layers choice and backbone, with the
installed pixpro (the `pixpro` next to this interpreter). Outputs go to `<folder>/probe_layers/`;
one CSV row per (layers, backbone) is appended to `--out` as soon as it is measured.

    .venv/bin/python experiments/probe_layers.py --folder /tmp/run --threads 1 \\
        --layers "[-1]" "[-3,-2,-1]" "[-5,-4,-3,-2,-1]" --label synthetic_seed0 --out results.csv
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from pixpro.checkpoint import load_checkpoint
from pixpro.runs import append_result_rows

COLUMNS = ["label", "layers", "backbone", "miou", "feature_dim", "seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--layers", nargs="+", required=True, help="YAML lists, e.g. '[-1]' '[-3,-2,-1]'")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--label", default="")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    folder = args.folder.resolve()
    work = folder / "probe_layers"
    work.mkdir(exist_ok=True)
    base = yaml.safe_load((folder / "params.yaml").read_text())
    # The installed pixpro, run in the finished folder; threads pinned as the stages pin them.
    pixpro = str(Path(sys.executable).with_name("pixpro"))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads)}
    for text in args.layers:
        layers = yaml.safe_load(text)
        tag = "_".join(str(x) for x in layers)
        params = work / f"params_{tag}.yaml"
        base["probe"]["layers"] = layers
        base["threads"] = args.threads
        params.write_text(yaml.safe_dump(base, sort_keys=False))
        for backbone in ("pretrained", "random"):
            out = work / f"{tag}_{backbone}"
            out.mkdir(exist_ok=True)
            common = ["--params", str(params), "--data", str(folder / "data/prepared")]
            start = time.perf_counter()
            for cmd in (
                [pixpro, "extract", "--backbone", backbone, *common, "--checkpoint", str(folder / "models/backbone.pt"),
                 "--out", str(out / "bank.pt")],
                [pixpro, "probe", "--params", str(params), "--bank", str(out / "bank.pt"), "--out", str(out / "probe.pt"),
                 "--curve", str(out / "curve.csv")],
                [pixpro, "evaluate", "--backbone", backbone, *common, "--checkpoint", str(folder / "models/backbone.pt"),
                 "--probe", str(out / "probe.pt"), "--metrics", str(out / "segmentation.json"),
                 "--predictions", str(out / "predictions"), "--plots", str(out / "plots")],
            ):
                subprocess.run(cmd, cwd=folder, env=env, check=True, stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - start
            miou = json.loads((out / "segmentation.json").read_text())["miou"]
            dim = load_checkpoint(out / "bank.pt", "extract")["features"].shape[1]
            row = {"label": args.label, "layers": text, "backbone": backbone, "miou": miou, "feature_dim": dim,
                   "seconds": round(seconds, 1)}
            append_result_rows(args.out, COLUMNS, [row])
            print(f"{text:>22} {backbone:>10} mIoU {miou * 100:6.2f}  ({dim} dims, {seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
