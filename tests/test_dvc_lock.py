"""dvc.lock belongs to the committed code: on a fresh clone, `dvc status` finds no stage whose code,
params or command differ from what the lock recorded. Outputs are not checked: a clone has no DVC
cache, so every cached output is missing there by design.

When this fails, the committed outputs came from other code: rerun the pipeline (`make refresh`)
and commit dvc.lock with the outputs it wrote."""

from __future__ import annotations

import json
import os
import subprocess

import yaml

from tests.conftest import VENV_BIN, copy_repo


def produced_paths(lock: dict) -> set[str]:
    """Every path a stage of the lock writes: missing from a clone, so not a mismatch as a dep."""
    return {out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


def lock_mismatches(status: dict, produced: set[str]) -> list[str]:
    """Lines `<stage>: <what differs>` from `dvc status --json`, leaving out changed outputs and
    deps that are other stages' outputs. Deps are hashed by DVC itself (files and folders)."""
    found = []
    for stage, changes in status.items():
        for change in changes:
            if change == "changed command":
                found.append(f"{stage}: command differs from the lock")
            elif isinstance(change, dict) and "changed deps" in change:
                for path, state in change["changed deps"].items():
                    if isinstance(state, dict):  # a params file: {key: new | modified | deleted}
                        found += [f"{stage}: {path} {key} {what}" for key, what in state.items()]
                    elif not (state == "deleted" and path in produced):
                        found.append(f"{stage}: {path} {state}")
    return found


def test_lock_matches_the_code_and_params_of_a_fresh_clone(tmp_path):
    clone = tmp_path / "clone"
    clone.mkdir()
    copy_repo(clone)  # tracked and not-ignored files: what a clone of the committed tree holds
    subprocess.run(["git", "init", "-q"], cwd=clone, check=True, timeout=30)  # dvc needs a git repository
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(["dvc", "status", "--json"], cwd=clone, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    lock = yaml.safe_load((clone / "dvc.lock").read_text())
    mismatches = lock_mismatches(json.loads(result.stdout or "{}"), produced_paths(lock))
    assert not mismatches, ("dvc.lock does not match the tree; rerun the pipeline (`make refresh`) and commit "
                            "its dvc.lock:\n" + "\n".join(mismatches))


def test_a_modified_code_dep_and_a_new_param_are_mismatches_but_missing_outputs_are_not():
    status = {
        "probe@random": [{"changed deps": {"features/random/bank.pt": "deleted", "pixpro/probe.py": "modified",
                                           "params.yaml": {"probe.layers": "new"}}},
                         {"changed outs": {"models/probe/random.pt": "not in cache"}}],
        "report": ["changed command"],
        "prepare": [{"changed deps": {"stages/gone.py": "deleted"}}],
    }
    assert lock_mismatches(status, {"features/random/bank.pt"}) == [
        "probe@random: pixpro/probe.py modified", "probe@random: params.yaml probe.layers new",
        "report: command differs from the lock", "prepare: stages/gone.py deleted"]
    assert lock_mismatches({"evaluate@random": [{"changed outs": {"predictions/random": "deleted"}}]}, set()) == []
