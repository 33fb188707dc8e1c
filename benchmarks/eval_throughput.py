"""Val images per second through the evaluate stage's work vs a bare backbone forward.

Evaluate = `pixpro.evaluate.evaluate_segmentation` exactly as `pixpro evaluate` calls it: PNG
loading and normalisation (DataLoader, batch evaluate.batch_size), backbone, L2-normalise,
linear probe (a random nn.Linear(dim, 19) here: its weights do not change the work), argmax,
dataset confusion matrix, trainId PNGs written to a temporary folder, evaluate.overlays
overlays kept. The backbone is the stage's `random` one (load_frozen_backbone: eval mode,
frozen), on the device the stage would use.

CPU threads: 1 by default (--threads), see benchmarks/step_cost.py. Allocator: restarts itself with
the `pixpro` command's glibc malloc tunables (pixpro/allocator.py; PIXPRO_MALLOC=default to skip).

Bare = `backbone(images)` under no_grad on the same images, already normalised and on the
device, in batches of the same size.

Images: the val split of data/prepared when its manifest exists, else a small synthetic set
made by `pixpro synthesize` and `pixpro prepare` in a temporary folder (--size). Runs are interleaved
(evaluate, bare, evaluate, bare, ...) after one warm-up of each; medians. A breakdown times
the evaluate path's parts alone: loading (iterating labelled_batches), predict() on preloaded
images (backbone + normalise + probe + argmax + copy to host), the confusion update, and PNG
encoding of the predictions.

Last line: `ratio <median>` = the median over repetitions of evaluate time / bare time, each
evaluate run paired with the bare run right after it (robust to the load drifting on a shared
machine); the ratio of the medians is printed above it (goal <= 1.15).

    .venv/bin/python benchmarks/eval_throughput.py [--images 16] [--repeats 5] [--batch N]
        [--device auto|cpu|cuda] [--threads 1] [--data data/prepared] [--size 128x256] [--amp off]
    # GPU: --device cuda --images 0 --repeats 10   (0 = every val image)
    # bf16 what-if: --amp on (the stage runs fp32); --size sets the synthetic set's HxW
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from pixpro.allocator import restart_with_tuned_malloc
from pixpro.config import load_params
from pixpro.data.classes import load_prepared_classes
from pixpro.evaluate import evaluate_segmentation, predict
from pixpro.features import labelled_batches, load_frozen_backbone, split_rows
from pixpro.metrics import ConfusionAccumulator
from pixpro.precision import autocast_for, native_cpu_bf16, precision_name
from synthetic_set import prepared_synthetic  # benchmarks/synthetic_set.py
from timing import interleaved, paired_ratio  # benchmarks/timing.py

ROOT = Path(__file__).resolve().parent.parent


def synthetic_rows(tmp: Path, size: tuple[int, int], val: int):
    """The val rows of `val` synthetic scenes prepared at `size`; changes into `tmp`, which the
    manifest's paths are relative to."""
    prepared, _ = prepared_synthetic(tmp, size, 2, val)
    os.chdir(tmp)
    return split_rows(prepared, "val")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16, help="val images used (0 = all)")
    parser.add_argument("--batch", type=int, default=0, help="batch size (0 = params.yaml evaluate.batch_size)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads on CPU (0 = torch's default); 1 by default because a second "
                             "OpenMP thread on a shared, oversubscribed machine mostly waits at barriers")
    parser.add_argument("--data", default=str(ROOT / "data/prepared"))
    parser.add_argument("--size", default="128x256",
                        help="HxW of the synthetic set made when --data has no manifest")
    parser.add_argument("--amp", default="off", choices=("auto", "cuda", "always", "off"),
                        help="what-if: evaluate and bare forward under bf16 autocast as this setting decides "
                             "(pixpro/precision.py); the evaluate stage runs fp32")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    args = parser.parse_args()
    restart_with_tuned_malloc()  # as the `pixpro` command runs every stage (pixpro/allocator.py)

    os.chdir(ROOT)  # manifest paths are relative to the repository root
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    elif args.threads:
        torch.set_num_threads(args.threads)
    params = load_params(args.params)
    batch_size = args.batch or params.evaluate.batch_size
    overlays = params.evaluate.overlays

    with tempfile.TemporaryDirectory(prefix="eval_throughput_") as tmp_name:
        tmp = Path(tmp_name)
        if (Path(args.data) / "manifest.csv").is_file():
            rows = split_rows(Path(args.data), "val")
            classes = load_prepared_classes(args.data)
            source = f"{args.data} (val)"
        else:
            height, width = (int(v) for v in args.size.lower().split("x"))
            rows = synthetic_rows(tmp, (height, width), args.images or 16)
            classes = load_prepared_classes(tmp / "prepared")
            source = f"synthetic set at {args.size} ({args.data} has no manifest)"
        if args.images:
            rows = rows.iloc[:args.images].reset_index(drop=True)
        n = len(rows)

        backbone = load_frozen_backbone("random", params, ROOT / "models/backbone.pt").to(device)
        torch.manual_seed(1)
        probe = nn.Linear(params.pretrain.backbone.dim, classes.num_classes)
        batches = list(labelled_batches(rows, batch_size))
        images = [b.image.to(device) for b in batches]
        size = tuple(images[0].shape[-2:])
        predictions_dir = tmp / "predictions"

        amp = autocast_for(device, args.amp)

        def evaluate():
            with amp:
                evaluate_segmentation(backbone, probe, rows, batch_size, device, predictions_dir, overlays,
                                      classes)

        @torch.no_grad()
        def bare():
            with amp:
                for x in images:
                    backbone(x)

        # Parts of the evaluate path, timed alone.
        def load():
            for _ in labelled_batches(rows, batch_size):
                pass

        predicted = []

        @torch.no_grad()
        def predict_only():
            predicted.clear()
            probe_d = probe.to(device)
            with amp:
                for x in images:
                    predicted.append(predict(backbone, probe_d, x).cpu())

        def confusion():
            acc = ConfusionAccumulator(classes.num_classes)
            for p, b in zip(predicted, batches):
                acc.update(p, b.mask)

        def encode_png():
            for p in predicted:
                for array in p.numpy().astype(np.uint8):
                    Image.fromarray(array).save(io.BytesIO(), format="png", compress_level=1)

        parts = {"load + normalise": load, "predict (bare + head)": predict_only, "confusion update": confusion,
                 "PNG encode (serial)": encode_png}

        measured = interleaved({"evaluate": evaluate, "bare": bare, **parts}, args.repeats, device)
        times = {name: measured.pop(name) for name in ("evaluate", "bare")}
        part_times = measured

    eval_s, bare_s = statistics.median(times["evaluate"]), statistics.median(times["bare"])
    print(f"device {device}, threads {torch.get_num_threads()}, {n} val images {size[0]}x{size[1]} from {source}, "
          f"batch {batch_size}, overlays {overlays}, backbone {params.pretrain.backbone.arch}/"
          f"{params.pretrain.backbone.encoder}, repeats {args.repeats} (interleaved, medians), "
          f"amp {args.amp}: {precision_name(device, args.amp)} (CPU native bf16: {native_cpu_bf16()})")
    print(f"{'':26} {'median s':>9} {'images/s':>9} {'of bare':>8}   samples")
    for name, label in (("evaluate", "evaluate_segmentation"), ("bare", "bare backbone forward")):
        median = statistics.median(times[name])
        print(f"{label:26} {median:9.3f} {n / median:9.2f} {median / bare_s:8.3f}   "
              + " ".join(f"{t:.3f}" for t in times[name]))
    paired = paired_ratio(times["evaluate"], times["bare"])
    print(f"{'ratio evaluate/bare':26} {paired:9.3f}   median of the paired ratios (each evaluate run / the bare "
          f"run right after it); ratio of medians {eval_s / bare_s:.3f}")
    print("evaluate's parts, timed alone (the PNG writes overlap the next batch in evaluate):")
    for name, samples in part_times.items():
        median = statistics.median(samples)
        print(f"  {name:24} {median:9.3f} {'':9} {median / bare_s:8.3f}")
    print(f"ratio {paired:.3f}")


if __name__ == "__main__":
    sys.exit(main())
