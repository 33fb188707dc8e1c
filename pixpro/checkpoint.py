"""Checkpoint files: atomic saves, provenance, and load errors that say what to do."""

from __future__ import annotations

import io
import pickle
import random
import subprocess
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.distributed as dist

from pixpro.errors import CheckpointError
from pixpro.io import atomic_write
from pixpro.runtime import Runtime


def git_revision() -> str:
    """HEAD's commit (with '-dirty' for uncommitted changes), or 'unknown' outside git."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("-dirty" if dirty else "")


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """torch.save to a temp file, then rename: a kill mid-write leaves the previous file intact."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def load_checkpoint(path: str | Path, made_by: str) -> dict[str, Any]:
    """Load a checkpoint on CPU; `made_by` names the stage that writes it, for the error message."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found: run `dvc repro {made_by}` first")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is corrupt or truncated ({type(err).__name__}); delete it and rerun "
                              f"`dvc repro {made_by}`") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} is not a pixpro checkpoint; rerun `dvc repro {made_by}`")
    return payload


def first_difference(saved: Any, current: Any, key: str = "") -> str | None:
    """Dotted key of the first difference between two nested dicts/lists, or None."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for name in sorted(set(saved) | set(current)):
            sub = f"{key}.{name}" if key else str(name)
            if name not in saved or name not in current:
                return sub
            found = first_difference(saved[name], current[name], sub)
            if found:
                return found
        return None
    if isinstance(saved, (list, tuple)) and isinstance(current, (list, tuple)):
        if len(saved) != len(current):
            return key
        for i, (a, b) in enumerate(zip(saved, current)):
            found = first_difference(a, b, f"{key}[{i}]")
            if found:
                return found
        return None
    return None if saved == current else key


def lookup(tree: Any, dotted: str) -> Any:
    node = tree
    for part in dotted.replace("]", "").replace("[", ".").split("."):
        if isinstance(node, dict):
            node = node.get(part, "<missing>")
        elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return "<missing>"
    return node


def resumable_state(path: Path, identity: dict, runtime: Runtime, log: Callable[[str], None]) -> Optional[dict]:
    """The checkpoint at `path` if it was trained under `identity` (run_config), else None.

    Under DDP only rank 0 reads it and broadcasts it, so every rank on every node resumes the
    same step even where its own view of the file is missing or stale (a node-local folder, a
    network filesystem's cache)."""
    found: Optional[dict] | CheckpointError = None
    if runtime.is_main and path.is_file():
        try:
            found = load_checkpoint(path, "pretrain")
        except CheckpointError as err:
            found = err  # sent on, so the other ranks stop with it instead of waiting for the broadcast
        else:
            changed = first_difference(found.get("config"), identity)
            if changed:
                log(f"not resuming {path}: it was trained with {changed} = {lookup(found.get('config'), changed)!r}, "
                    f"params.yaml has {lookup(identity, changed)!r}; starting from step 0")
                found = None
    if runtime.distributed:
        box = [found]
        dist.broadcast_object_list(box, src=0)
        found = box[0]
    if isinstance(found, CheckpointError):
        raise found
    return found


def capture_rng() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
