"""Killing `pixpro pretrain` (SIGKILL or Ctrl-C) loses nothing: the rerun resumes bit-exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from pixpro.config import params_from_dict
from pixpro.data.prepare import run_prepare
from tests.conftest import TINY_PRETRAIN, VENV_BIN, synthesize, tiny_params

# Long enough (400 steps, ~45 s in all on 2 busy cores) that a kill lands mid-run. One thread:
# with the default 2, a core taken by other work made OpenMP's spinning threads over 6x slower
# (a 300 s timeout hit in a full suite next to another job).
OVERRIDES = {**TINY_PRETRAIN, "threads": 1, "pretrain.epochs": 200, "pretrain.checkpoint_every": 5,
             "pretrain.log_every": 5}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt")
    raw = tiny_params({**OVERRIDES, "data.root": str(root / "raw")})
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    synthesize(params_from_dict(raw), root / "raw")
    run_prepare(params_from_dict(raw), root / "data", root / "metrics.json", root / "plots")
    return root


def command(workspace: Path, name: str) -> list[str]:
    return [str(VENV_BIN / "pixpro"), "pretrain", "--params", str(workspace / "params.yaml"),
            "--data", str(workspace / "data"), "--out", str(workspace / name / "backbone.pt"),
            "--checkpoints", str(workspace / name / "ckpt"), "--live", str(workspace / name / "live")]


def environment() -> dict[str, str]:
    # Same thread count in every run, so CPU kernels sum in the same order.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}


def start_and_wait_for_checkpoint(workspace: Path, name: str) -> subprocess.Popen:
    checkpoint = workspace / name / "ckpt" / "last.pt"
    process = subprocess.Popen(command(workspace, name), env=environment(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not checkpoint.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)
    return process


def backbone(workspace: Path, name: str) -> dict:
    return torch.load(workspace / name / "backbone.pt", weights_only=False)["backbone"]


@pytest.fixture(scope="module")
def uninterrupted(workspace):
    subprocess.run(command(workspace, "straight"), env=environment(), check=True, capture_output=True, timeout=300)
    return backbone(workspace, "straight")


def test_sigkill_then_rerun_resumes_to_identical_weights(workspace, uninterrupted):
    process = start_and_wait_for_checkpoint(workspace, "killed")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    killed_at = torch.load(workspace / "killed" / "ckpt" / "last.pt", weights_only=False)["step"]
    assert not (workspace / "killed" / "backbone.pt").exists()
    rerun = subprocess.run(command(workspace, "killed"), env=environment(), capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"at step {killed_at} of 400" in rerun.stderr
    assert killed_at < 400
    resumed = backbone(workspace, "killed")
    for name in uninterrupted:
        assert torch.equal(uninterrupted[name], resumed[name]), name


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(workspace, uninterrupted):
    process = start_and_wait_for_checkpoint(workspace, "ctrl_c")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted at step" in stderr and "to resume" in stderr
    saved = torch.load(workspace / "ctrl_c" / "ckpt" / "last.pt", weights_only=False)
    assert f"interrupted at step {saved['step']}/400" in stderr
    rerun = subprocess.run(command(workspace, "ctrl_c"), env=environment(), capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    resumed = backbone(workspace, "ctrl_c")
    for name in uninterrupted:
        assert torch.equal(uninterrupted[name], resumed[name]), name
