"""A small prepared synthetic dataset for the benchmarks, made by the stage commands themselves
(`pixpro synthesize`, then `pixpro prepare`), so it is exactly what the pipeline would read."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from pipeline import deep_merge  # benchmarks/pipeline.py

ROOT = Path(__file__).resolve().parent.parent


def pixpro_command() -> str:
    """The `pixpro` console script of this interpreter's environment."""
    return str(Path(sys.executable).parent / "pixpro")


def prepared_synthetic(folder: Path, size: tuple[int, int], train: int, val: int,
                       base: dict | None = None) -> tuple[Path, dict]:
    """Synthesize and prepare `train` + `val` scenes at `size` (generated at twice it) under
    `folder` (run from there: manifest paths are relative to it). Returns (the prepared folder,
    the params dict used: `base`, default params.yaml, with these data settings)."""
    folder.mkdir(parents=True, exist_ok=True)
    base = base if base is not None else yaml.safe_load((ROOT / "params.yaml").read_text())
    raw = deep_merge(base, {"data": {"source": "synthetic", "root": "synthetic", "size": list(size), "workers": 1,
                                     "synthetic": {"train": train, "val": val, "cities": 1, "extra": 0,
                                                   "raw_size": [2 * size[0], 2 * size[1]]}}})
    params = folder / "data_params.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    for command in (["synthesize", "synthetic", "--params", params.name],
                    ["prepare", "--params", params.name, "--out", "prepared", "--metrics", "prepare.json",
                     "--plots", "prepare_plots"]):
        proc = subprocess.run([pixpro_command(), *command], cwd=folder, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"pixpro {command[0]} failed:\n{proc.stderr[-2000:]}")
    return folder / "prepared", raw
