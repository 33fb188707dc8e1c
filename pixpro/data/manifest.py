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
    """Read the manifest that `pixpro prepare` wrote; empty masks become ''.

    Its paths are relative to the folder prepare ran in (the repository root under DVC); read from
    any other folder, they are found under prepared_dir instead (see `_locate`).
    """
    path = Path(prepared_dir) / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"{path} not found: run `dvc repro prepare` (or `pixpro prepare`) first")
    manifest = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise DataError(f"{path} lacks columns {missing}: rerun `pixpro prepare`")
    return _locate(manifest, Path(prepared_dir))


def _locate(manifest: pd.DataFrame, prepared_dir: Path) -> pd.DataFrame:
    """Rebase the image and mask paths onto prepared_dir when they do not resolve from here.

    All rows share one prefix (prepare's --out as seen from where it ran), so the number of
    leading parts to drop is found once, on the first image.
    """
    if manifest.empty:
        return manifest
    first = Path(manifest["image"].iloc[0])
    if first.is_absolute() or first.exists():
        return manifest
    parts = first.parts
    drop = next((k for k in range(1, len(parts)) if prepared_dir.joinpath(*parts[k:]).exists()), None)
    if drop is None:
        raise DataError(f"{prepared_dir / MANIFEST_NAME} lists {first}, which exists neither from {Path.cwd()} "
                        f"nor under {prepared_dir}: rerun `pixpro prepare`")
    for column in ("image", "mask"):
        manifest[column] = [str(prepared_dir.joinpath(*Path(p).parts[drop:])) if p else ""
                            for p in manifest[column]]
    return manifest
