"""How fast `pixpro prepare` converts full-size Cityscapes images (2048x1024).

Writes a synthetic Cityscapes tree at the real resolution, then times preparation to
data.size with 1 worker and with all cores. Last line: images per second with all cores and the
projected time for the 3,475 labelled Cityscapes images.

    python benchmarks/prepare_rate.py [--images 24] [--size 512 1024]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from pixpro.config import params_from_dict
from pixpro.data.prepare import run_prepare
from pixpro.data.synthetic import generate_tree

CITYSCAPES_LABELLED = 3475


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="train images (val gets a quarter)")
    parser.add_argument("--size", type=int, nargs=2, default=[512, 1024], help="prepared [H, W]")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cityscapes"
        n_val = max(1, args.images // 4)
        generate_tree(root, args.images, n_val, 2, (1024, 2048), seed=0, workers=cores)
        total = args.images + n_val
        print(f"{total} synthetic images at 2048x1024 -> {args.size[1]}x{args.size[0]}, {cores} cores")
        print(f"{'workers':>8} {'median s':>9} {'images/s':>9}")
        rates = {}
        times: dict[int, list[float]] = {1: [], cores: []}
        for _ in range(args.repeats):  # interleaved: 1 worker, all cores, 1 worker, ...
            for workers in times:
                params = params_from_dict({"data": {"source": "cityscapes", "root": str(root),
                                                    "size": args.size, "workers": workers}})
                start = time.perf_counter()
                run_prepare(params, Path(tmp) / "prepared", Path(tmp) / "m.json", Path(tmp) / "plots")
                times[workers].append(time.perf_counter() - start)
        for workers, samples in times.items():
            median = statistics.median(samples)
            rates[workers] = total / median
            print(f"{workers:>8} {median:>9.2f} {rates[workers]:>9.2f}")
        minutes = CITYSCAPES_LABELLED / rates[cores] / 60
        print(f"rate {rates[cores]:.2f} images/s on {cores} cores: {CITYSCAPES_LABELLED} Cityscapes images "
              f"in {minutes:.1f} min")


if __name__ == "__main__":
    main()
