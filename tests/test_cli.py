"""The `pixpro` console script and the DVC pipeline wiring of the prepare stage."""

from __future__ import annotations

import json
import os
import subprocess
from importlib.metadata import entry_points
from pathlib import Path

import yaml
from typer.testing import CliRunner

from tests.conftest import VENV_BIN, copy_repo, tiny_params
from stages.cli import app


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "DVC_NO_ANALYTICS": "1", **extra}


def _run(cmd: list[str], cwd: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_help_describes_the_commands():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "PixPro dense self-supervised pretraining" in result.output
    for command in ("prepare", "synthesize", "pretrain"):
        assert command in result.output


def test_prepare_help_describes_itself():
    result = CliRunner().invoke(app, ["prepare", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())  # Rich wraps the help text; compare word by word
    assert "Resize images, convert label values to train ids with the class table (data.classes)" in text
    for option in ("--params", "--out", "--metrics", "--plots"):
        assert option in text


def test_console_script_runs_the_typer_app():
    # stages.cli:main restarts itself with malloc tunables (tests/test_allocator.py), then runs app.
    (script,) = entry_points(group="console_scripts", name="pixpro")
    assert script.value == "stages.cli:main"
    result = subprocess.run([str(VENV_BIN / "pixpro"), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "pretrain" in result.stdout and "evaluate" in result.stdout


def test_dvc_repro_prepare_in_a_copy_of_the_repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_repo(repo)
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    git = ["git", "-c", "user.name=pixpro-tests", "-c", "user.email=tests@example.invalid",
           "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main"]
    _run([*git, "init", "-q"], cwd=repo)
    _run([*git, "add", "-A"], cwd=repo)
    _run([*git, "commit", "-q", "-m", "copy for the test"], cwd=repo)

    # PYTHONPATH: the stage runs this copy's code, not the editable install's
    env = {"PYTHONPATH": str(repo)}
    _run(["dvc", "repro", "prepare"], cwd=repo, timeout=240, **env)

    manifest = (repo / "data" / "prepared" / "manifest.csv").read_text().splitlines()
    assert manifest[0] == "split,city,stem,image,mask" and len(manifest) == 1 + 4 + 2
    assert all(",data/prepared/" in line for line in manifest[1:])
    metrics = json.loads((repo / "metrics" / "prepare.json").read_text())
    assert metrics["train"]["images"] == 4 and metrics["val"]["images"] == 2
    assert (repo / "plots" / "prepare" / "class_frequency_train.csv").is_file()
    assert (repo / "dvc.lock").is_file()

    status = _run(["dvc", "status", "--json", "prepare"], cwd=repo, timeout=120, **env)
    assert json.loads(status.stdout or "{}") == {}, status.stdout
