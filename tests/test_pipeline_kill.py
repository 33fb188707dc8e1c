"""`dvc repro` killed mid-pipeline (SIGKILL to its whole process group, as a crash or an OOM kill
would): the rerun recomputes only the stages that had not finished, and the killed stage leaves
nothing that DVC or a later stage would take for a finished output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil  # a DVC dependency, so always in the project's environment
import yaml
from PIL import Image

from tests.conftest import lock_stages, pipeline_env, run_checked, tiny_pipeline_repo

ALL_STAGES = {
    "synthesize", "prepare", "pretrain", "report",
    *(f"{stage}@{name}" for stage in ("extract", "probe", "evaluate", "retrieval", "finetune")
      for name in ("pretrained", "random")),
}
# Killed while this stage's command runs: its own inputs (prepare, pretrain, extract@ and
# probe@pretrained) are finished by then; it, the report and the retrieval stages are not.
KILLED = "evaluate@pretrained"
KILLED_COMMAND = ("pixpro", "evaluate", "--backbone", "pretrained")
REACH_TIMEOUT_S = 240  # ~35 s on 2 quiet cores
POLL_S = 0.2


def _stage_command_running(root: psutil.Process) -> bool:
    """Whether a descendant of `root` is running the killed stage's command."""
    try:
        children = root.children(recursive=True)
    except psutil.NoSuchProcess:
        return False
    for child in children:
        try:
            words = " ".join(child.cmdline())
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        if all(word in words for word in KILLED_COMMAND) and child.status() != psutil.STATUS_ZOMBIE:
            return True
    return False


def _live_members(pgid: int) -> list[psutil.Process]:
    """Processes of group `pgid` that are still running (zombies excluded)."""
    members = []
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(process)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=60)


def _output_mtimes(repo: Path, lock: dict, stages: set[str]) -> dict[str, int]:
    """mtime_ns of every file under the outputs that dvc.lock records for `stages`."""
    mtimes = {}
    for stage in stages:
        for out in lock[stage].get("outs", []):
            path = repo / out["path"]
            for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
                mtimes[str(file.relative_to(repo))] = file.stat().st_mtime_ns
    return mtimes


def _status(repo: Path) -> dict:
    return json.loads(run_checked(["dvc", "status", "--json"], repo, timeout=120).stdout or "{}")


def test_killed_repro_reruns_only_unfinished_stages_and_leaves_nothing_half_written(tmp_path):
    repo = tiny_pipeline_repo(tmp_path)
    assert set(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]) == {
        "synthesize", "prepare", "pretrain", "extract", "probe", "evaluate", "retrieval", "finetune", "report"}

    # 1. Start `dvc repro` in its own process group and SIGKILL the whole group (dvc, the shell
    #    and the stage's Python process) while the killed stage's command is running.
    log_path = tmp_path / "killed-repro.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(["dvc", "repro"], cwd=repo, env=pipeline_env(repo), stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        root = psutil.Process(process.pid)
        deadline = time.monotonic() + REACH_TIMEOUT_S
        while not _stage_command_running(root):
            assert process.poll() is None, (
                f"dvc repro exited ({process.returncode}) before {KILLED} ran:\n{log_path.read_text()}")
            assert time.monotonic() < deadline, (
                f"{KILLED} did not start within {REACH_TIMEOUT_S} s:\n{log_path.read_text()}")
            time.sleep(POLL_S)
        os.killpg(process.pid, signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
        # The stage's command dies with dvc: nothing keeps writing outputs behind the rerun's back.
        deadline = time.monotonic() + 30
        while _live_members(process.pid):
            assert time.monotonic() < deadline, f"still running after the kill: {_live_members(process.pid)}"
            time.sleep(POLL_S)
    finally:
        _kill_group(process)
    killed_log = log_path.read_text()
    assert f"Running stage '{KILLED}'" in killed_log, killed_log

    # 2. What the kill left. dvc.lock records exactly the stages that finished; it names at least
    #    the killed stage's inputs, and not the killed stage or anything after it.
    locked = lock_stages(repo)
    finished = set(locked)
    unfinished = ALL_STAGES - finished
    assert {"synthesize", "prepare", "pretrain", "extract@pretrained", "probe@pretrained"} <= finished, killed_log
    assert {KILLED, "report"} <= unfinished, killed_log
    assert finished <= ALL_STAGES, finished

    # DVC sees every unfinished stage as out of date, and every finished one as up to date (its
    # outputs are what dvc.lock recorded: none was touched by the killed stage).
    status = _status(repo)
    assert set(status) == unfinished, status
    finished_outputs = _output_mtimes(repo, locked, finished)
    assert "models/backbone.pt" in finished_outputs, finished_outputs

    # The killed stage's outputs are absent or complete; never a truncated file or a partial folder
    # under the final name (the stages write to a temporary sibling and rename).
    metrics = repo / "metrics" / "segmentation" / "pretrained.json"
    if metrics.exists():
        assert {"miou", "pixel_accuracy", "iou"} <= set(json.loads(metrics.read_text()))
    predictions = repo / "predictions" / "pretrained"
    if predictions.exists():
        pictures = sorted(predictions.glob("*.png"))
        assert len(pictures) == 4, pictures
        for picture in pictures:
            Image.open(picture).load()

    # 3. The rerun needs no clean-up first (DVC drops the killed process's entries from
    #    .dvc/tmp/rwlock itself, with a warning) and runs exactly the unfinished stages.
    rerun_started_ns = time.time_ns()
    rerun = run_checked(["dvc", "repro"], repo, timeout=600)
    rerun_log = rerun.stdout + rerun.stderr
    for stage in sorted(finished):
        assert f"Running stage '{stage}'" not in rerun_log, f"{stage} finished before the kill but reran:\n{rerun_log}"
        assert f"Stage '{stage}' didn't change, skipping" in rerun_log, rerun_log
    for stage in sorted(unfinished):
        assert f"Running stage '{stage}'" in rerun_log, f"{stage} was unfinished but not rerun:\n{rerun_log}"
    after = lock_stages(repo)
    assert set(after) == ALL_STAGES
    for stage in finished:
        assert after[stage] == locked[stage], stage  # same deps, params and output hashes as before the kill
    assert _output_mtimes(repo, after, finished) == finished_outputs  # not even rewritten
    # Every output of the unfinished stages is new, including the metrics the copy started with
    # (committed results of the full config, which no stage may take as its input).
    for path, mtime in _output_mtimes(repo, after, unfinished).items():
        assert mtime >= rerun_started_ns, f"{path} was not rewritten by the rerun"
    assert _status(repo) == {}
    for kind in ("segmentation", "retrieval"):
        for name in ("pretrained", "random"):
            assert json.loads((repo / "metrics" / kind / f"{name}.json").read_text()), (kind, name)
    assert "gain" in (repo / "reports" / "summary.md").read_text()
