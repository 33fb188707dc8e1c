"""Issue 27's label-efficiency study, one finished run at a time: fine-tune both backbones on each
labelled share with a params overlay (the converged budget of experiments/label_efficiency.yaml)
and append one row per (backbone, fraction) to a result CSV.

Each row holds the fine-tuned val mIoU and, as the frozen reference, the linear probe that
fine-tuning starts from (finetune.head_init: probe), fitted on the same labelled images and
scored on val before the first step. With finetune.ema_decay the fine-tuned score is the weight
average's, and `last_weights_miou` the last step's own weights' (without, the two are one score).
Another recipe (steps, ema_decay, class_weighting) or crop order (crop_seed) of the same run
makes rows of its own. The val curves go next to the CSV, in
`<csv stem>_curves/<setting>_<steps>steps[_ema<decay>][_balanced][_crops<crop_seed>]_seed<seed>/
val_curve_<backbone>.csv`.

The fine-tuning runs are `pixpro finetune` in the run folder, with their outputs in --work, so an
interrupted study resumes there (finished fractions are kept) and a finished one only collects.

    .venv/bin/python experiments/label_study.py --folder RUN --data idd --setting stages \\
        --work RUN/label_study --out experiments/results/idd_lite_label_efficiency.csv
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pixpro.runs import append_result_rows, measurement_parser
from pixpro.runtime_info import available_cores

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["data", "setting", "seed", "backbone", "fraction", "labelled_images", "probe_miou", "finetuned_miou",
           "last_weights_miou", "steps", "crop_size", "ema_decay", "class_weighting", "crop_seed", "amp", "threads"]
KEY = ["data", "setting", "seed", "steps", "ema_decay", "class_weighting", "crop_seed", "backbone", "fraction"]


def overlaid_params(params: dict, overlay: dict) -> dict:
    """params with each section of `overlay` updated key by key (keys it does not name keep
    params' values); a section params lacks is an error, not a silent addition."""
    merged = {section: (dict(values) if isinstance(values, dict) else values) for section, values in params.items()}
    for section, values in overlay.items():
        if not isinstance(merged.get(section), dict):
            raise SystemExit(f"overlay section {section!r} is no section of the run's params.yaml")
        merged[section].update(values)
    return merged


def fraction_rows(resume: dict, base: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per finished fraction of a `pixpro finetune --resume` file: the probe it started
    from (its step-0 val mIoU; NaN without a probe head) and the score after its last step."""
    rows = []
    for result in sorted(resume["results"].values(), key=lambda r: r["fraction"]):
        curve = result["val_curve"]
        probe = curve[0][1] if curve and curve[0][0] == 0 else float("nan")
        last_weights = result.get("last_weights_miou")
        rows.append({**base, "fraction": result["fraction"], "labelled_images": result["labelled_images"],
                     "probe_miou": probe, "finetuned_miou": result["miou"],
                     "last_weights_miou": result["miou"] if last_weights is None else last_weights})
    return rows


def curve_frame(resume: dict) -> pd.DataFrame:
    """(fraction, step, miou, pixel_accuracy) of every val pass of a resume file's fractions."""
    return pd.DataFrame([(r["fraction"], step, miou, accuracy) for r in resume["results"].values()
                         for step, miou, accuracy in r["val_curve"]],
                        columns=["fraction", "step", "miou", "pixel_accuracy"]).sort_values(["fraction", "step"])


def finetune(folder: Path, work: Path, backbone: str, threads: int) -> Path:
    """`pixpro finetune` of one backbone in the run folder; returns its resume file."""
    pixpro = Path(sys.executable).with_name("pixpro")
    command = [str(pixpro), "finetune", "--backbone", backbone, "--params", str(work / "params.yaml"),
               "--data", "data/prepared", "--checkpoint", "models/backbone.pt",
               "--metrics", str(work / f"finetune_{backbone}.json"), "--curve", str(work / f"curve_{backbone}.csv"),
               "--resume", str(work / f"resume_{backbone}.json"), "--model", str(work / f"net_{backbone}.pt"),
               "--live", str(work / f"live_{backbone}")]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    subprocess.run(command, cwd=folder, env=env, check=True)
    print(f"{backbone}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return work / f"resume_{backbone}.json"


def main() -> None:
    parser = measurement_parser(__doc__.splitlines()[0])
    parser.add_argument("--overlay", type=Path, default=ROOT / "experiments" / "label_efficiency.yaml",
                        help="params sections to apply over the run's params.yaml")
    parser.add_argument("--work", type=Path, required=True,
                        help="where the fine-tuning runs write (and resume from)")
    args = parser.parse_args()
    folder, work = args.folder.resolve(), args.work.resolve()
    for needed in ("params.yaml", "models/backbone.pt", "data/prepared"):
        if not (folder / needed).exists():
            raise SystemExit(f"{folder / needed} not found: --folder must be a finished pipeline folder")
    params = overlaid_params(yaml.safe_load((folder / "params.yaml").read_text()),
                             yaml.safe_load(args.overlay.read_text()))
    work.mkdir(parents=True, exist_ok=True)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    seed, tune = int(params["seed"]), params["finetune"]
    threads = int(params["threads"]) if str(params["threads"]).isdigit() else available_cores()  # auto
    done = set()
    if args.out.is_file():
        done = {tuple(row) for row in pd.read_csv(args.out)[KEY].astype(str).itertuples(index=False)}
    ema_decay, crop_seed = float(tune.get("ema_decay", 0.0)), int(tune.get("crop_seed", 0))
    weighting = tune.get("class_weighting", "none")
    recipe = (f"_{tune['steps']}steps" + (f"_ema{ema_decay:g}" if ema_decay else "")
              + (f"_{weighting}" if weighting != "none" else "") + (f"_crops{crop_seed}" if crop_seed else ""))
    curves = args.out.parent / f"{args.out.stem}_curves" / f"{args.setting}{recipe}_seed{seed}"
    curves.mkdir(parents=True, exist_ok=True)
    for backbone in args.backbones:
        resume = json.loads(finetune(folder, work, backbone, threads).read_text())
        curve_frame(resume).to_csv(curves / f"val_curve_{backbone}.csv", index=False, lineterminator="\n")
        base = {"data": args.data, "setting": args.setting, "seed": seed, "backbone": backbone,
                "steps": tune["steps"], "crop_size": "x".join(map(str, tune["crop_size"])), "ema_decay": ema_decay,
                "class_weighting": weighting, "crop_seed": crop_seed, "amp": tune["amp"], "threads": params["threads"]}
        rows = [row for row in fraction_rows(resume, base)
                if tuple(str(row[k]) for k in KEY) not in done]
        append_result_rows(args.out, COLUMNS, rows)
        for row in rows:
            print(f"{backbone} {100 * row['fraction']:g}%: probe {100 * row['probe_miou']:.1f}, "
                  f"fine-tuned {100 * row['finetuned_miou']:.1f}")


if __name__ == "__main__":
    main()
