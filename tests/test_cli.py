"""The `pixpro` console script: its packaging, commands and options, and the DVC wiring of prepare."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import entry_points, version
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pixpro.backbones import BACKBONES
from pixpro.config import load_params
from pixpro.config_base import to_dict
from pixpro.config_eval import RetrievalConfig
from pixpro.errors import PixproError
from pixpro.launch import worker_command
from pixpro.stages._common import LAYOUT, Backbone, layout_path
from pixpro.stages.cli import app
from tests.conftest import REPO, VENV_BIN, copy_repo, tiny_params


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "DVC_NO_ANALYTICS": "1", **extra}


def _run(cmd: list[str], cwd: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


# What `--help` shows for the tool and each command: tests/test_reliability.py.


def test_console_script_runs_the_typer_app():
    # pixpro.stages.cli:main restarts itself with malloc tunables (tests/test_allocator.py), then runs app.
    (script,) = entry_points(group="console_scripts", name="pixpro")
    assert script.value == "pixpro.stages.cli:main"
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


# --- packaging -----------------------------------------------------------------------------------


def test_the_stages_install_as_pixpro_stages_and_every_package_is_listed():
    import tomllib

    from setuptools import find_packages

    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert tool["package-dir"] == {"pixpro.stages": "stages"}
    assert set(tool["packages"]) == {*find_packages(str(REPO), include=["pixpro", "pixpro.*"]), "pixpro.stages"}


def test_no_top_level_stages_import_and_a_copy_runs_its_own_stages(tmp_path):
    copy = tmp_path / "copy"
    for part in ("pixpro", "stages", "pyproject.toml"):
        (shutil.copytree if (REPO / part).is_dir() else shutil.copy)(REPO / part, copy / part)
    code = ("import importlib.util, pixpro.stages.cli as cli, pixpro.config as config; "
            "print(importlib.util.find_spec('stages') is None, cli.__file__, config.__file__)")
    python = str(VENV_BIN / "python")
    alone = subprocess.run([python, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert alone.returncode == 0, alone.stderr
    assert alone.stdout.split() == ["True", str(REPO / "stages" / "cli.py"), str(REPO / "pixpro" / "config.py")]
    # A copy first on PYTHONPATH (tests, benchmarks/pipeline.py) runs its stages with its own pixpro.
    copied = subprocess.run([python, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(copy)})
    assert copied.returncode == 0, copied.stderr
    assert copied.stdout.split()[1:] == [str(copy / "stages" / "cli.py"), str(copy / "pixpro" / "config.py")]


# --- the commands people expect ------------------------------------------------------------------


def test_version_comes_from_the_package_metadata():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"pixpro {version('pixpro')}\n"


def test_params_prints_the_validated_params_with_defaults_filled_in(tmp_path):
    raw = tiny_params()
    del raw["retrieval"]["knn_k"]  # left out: the default is printed
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    result = CliRunner().invoke(app, ["params", "--params", str(path)])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output) == to_dict(load_params(path))
    assert yaml.safe_load(result.output)["retrieval"]["knn_k"] == RetrievalConfig().knn_k


def test_params_gives_the_one_line_error_of_a_bad_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params({"probe.max_iter": 0}), sort_keys=False))
    result = CliRunner().invoke(app, ["params", "--params", str(path)])
    assert result.exit_code == 1
    assert [line for line in result.output.splitlines() if line.strip()] == [
        line for line in result.output.splitlines() if "pixpro params: error:" in line and "probe.max_iter" in line]


def test_backbone_is_a_choice():
    assert tuple(b.value for b in Backbone) == BACKBONES
    result = CliRunner().invoke(app, ["evaluate", "--backbone", "pretrianed"])
    assert result.exit_code == 2
    assert "'pretrianed' is not one of 'pretrained', 'random'" in " ".join(result.output.replace("│", " ").split())


def dvc_yaml_paths() -> dict[str, dict[str, str]]:
    """{stage: {option: path}} of dvc.yaml's per-backbone commands, `${key}` as `{backbone}`."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    found = {}
    for name, stage in stages.items():
        if "foreach" in stage:
            words = stage["do"]["cmd"].split()
            found[name] = {word[2:]: value.replace("${key}", "{backbone}")
                           for word, value in zip(words, words[1:]) if word.startswith("--") and "${key}" in value}
    return found


def test_path_options_default_to_where_dvc_yaml_puts_them():
    commands = {c.name: c.callback for c in app.registered_commands}
    paths = dvc_yaml_paths()
    assert set(paths) == {"extract", "probe", "evaluate", "retrieval", "finetune"}
    for stage, options in paths.items():
        parameters = inspect.signature(commands[stage]).parameters
        for option, path in options.items():
            if option == "backbone":
                continue
            assert path in LAYOUT.values(), (stage, option, path)
            default = parameters[option].default
            assert default.default is None, (stage, option)  # optional: the layout fills it in
            assert f"Default: {path.format(backbone='<backbone>')}." in default.help, (stage, option)


def test_left_out_paths_follow_the_backbone_and_without_it_are_named():
    assert layout_path(None, "probe", Backbone.random, "--out") == Path("models/probe/random.pt")
    assert layout_path(Path("mine.pt"), "probe", Backbone.random, "--out") == Path("mine.pt")
    with pytest.raises(PixproError, match=r"--bank not given: pass it, or --backbone pretrained\|random for "
                                          r"features/<backbone>/bank.pt"):
        layout_path(None, "bank", None, "--bank")


def test_top_level_help_gives_one_line_per_command():
    result = CliRunner().invoke(app, ["--help"], terminal_width=80)
    assert result.exit_code == 0
    lines = result.output.splitlines()
    for command in app.registered_commands:
        assert command.short_help and "\n" not in command.short_help, command.name
        (line,) = [line for line in lines if line.strip("│ ").startswith(command.name + " ")]
        assert command.short_help in line, (command.name, line)
    panel = lines[next(i for i, line in enumerate(lines) if "Commands" in line) + 1:]
    assert len([line for line in panel if line.startswith("│")]) == len(app.registered_commands)


def test_pretrain_launch_starts_its_workers_with_this_interpreter(tmp_path, monkeypatch):
    import pixpro.launch

    started = []
    monkeypatch.setattr(pixpro.launch, "launch", lambda cfg, command, log: started.append(command) or 0)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    result = CliRunner().invoke(app, ["pretrain", "--launch", "--params", str(path)])
    assert result.exit_code == 0, result.output
    (command,) = started
    assert command[:4] == [sys.executable, "-m", "pixpro.stages.cli", "pretrain"]
    # ... which runs pixpro with no PATH at all (a virtual environment's bin need not be on it).
    alone = subprocess.run(worker_command(["--version"]), env={"PYTHONPATH": os.environ.get("PYTHONPATH", "")},
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert alone.returncode == 0 and alone.stdout == f"pixpro {version('pixpro')}\n", alone.stderr
