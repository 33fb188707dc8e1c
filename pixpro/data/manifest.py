"""The prepared data's manifest: what `pixpro prepare` writes and every later stage reads.

Its own module so that reading it does not import the preparation code (and make every stage
depend on it in dvc.yaml)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pixpro.errors import DataError

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ["split", "city", "stem", "image", "mask"]


def load_manifest(prepared_dir: Path) -> pd.DataFrame:
    """Read the manifest that `pixpro prepare` wrote; empty masks become ''."""
    path = Path(prepared_dir) / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"{path} not found: run `dvc repro prepare` (or `pixpro prepare`) first")
    manifest = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise DataError(f"{path} lacks columns {missing}: rerun `pixpro prepare`")
    return manifest
