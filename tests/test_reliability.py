"""Reliability: determinism, disk-full writes, corrupt checkpoints, mismatched features, params
validated before any work, a dying DDP peer, and the CLI's help texts."""

from __future__ import annotations

import errno
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

import pixpro.io
from pixpro.checkpoint import save_checkpoint
from pixpro.data.cityscapes import NUM_CLASSES
from pixpro.data.classes import load_class_table
from pixpro.errors import CheckpointError, PixproError
from pixpro.evaluate import evaluate_segmentation
from pixpro.features import extract_bank, load_frozen_backbone, split_rows
from pixpro.io import atomic_write_json
from pixpro.probe import fit_probe, probe_from_state
from pixpro.retrieval import run_retrieval
from pixpro.train import pretrain
from pixpro.stages.cli import app
from tests.conftest import REPO, TINY_EVAL, TINY_PRETRAIN, VENV_BIN, free_port, make_eval_params, tiny_params

CPU = torch.device("cpu")
CITYSCAPES = load_class_table("cityscapes")


def write_params(path: Path, **overrides) -> Path:
    path.write_text(yaml.safe_dump(tiny_params({**TINY_PRETRAIN, **TINY_EVAL, **overrides}), sort_keys=False))
    return path


@pytest.fixture(scope="module")
def two_pretrainings(prepared, tmp_path_factory):
    """The same tiny pretraining run twice from scratch, in-process."""
    root = tmp_path_factory.mktemp("twice")
    for name in ("a", "b"):
        folder = root / name
        pretrain(make_eval_params(**{"pretrain.epochs": 1}), prepared, folder / "backbone.pt", folder / "ckpt", folder / "live", log=lambda _: None)
    return root / "a", root / "b"


# --- determinism --------------------------------------------------------------------------------


def test_pretraining_twice_gives_identical_backbones(two_pretrainings):
    first, second = (torch.load(f / "backbone.pt", weights_only=False)["backbone"] for f in two_pretrainings)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def evaluation_metrics(params, prepared: Path, backbone_file: Path, folder: Path) -> dict:
    """extract -> probe -> evaluate -> retrieval in-process, as the stages chain them."""
    model = load_frozen_backbone("pretrained", params, backbone_file)
    train, val = split_rows(prepared, "train"), split_rows(prepared, "val")
    bank = extract_bank(model, train, params.extract, params.seed, CPU, NUM_CLASSES)
    fit = fit_probe(bank.features, bank.labels.long(), NUM_CLASSES, params.probe)
    evaluation = evaluate_segmentation(model, fit.probe, val, params.evaluate.batch_size, CPU, folder / "pred",
                                       params.evaluate.overlays, CITYSCAPES)
    retrieval = run_retrieval(model, bank, val, train, params.retrieval, params.seed, CPU,
                              params.evaluate.batch_size, CITYSCAPES)
    return {"segmentation": evaluation.scores.to_json_dict(), "curve": fit.curve,
            "precision": retrieval.precision, "knn": retrieval.knn.to_json_dict()}


def test_evaluating_twice_gives_identical_metrics(prepared, two_pretrainings, tmp_path):
    backbone_file = two_pretrainings[0] / "backbone.pt"
    first = evaluation_metrics(make_eval_params(), prepared, backbone_file, tmp_path / "first")
    second = evaluation_metrics(make_eval_params(), prepared, backbone_file, tmp_path / "second")
    assert first == second
    for png in (tmp_path / "first" / "pred").iterdir():
        assert png.read_bytes() == (tmp_path / "second" / "pred" / png.name).read_bytes(), png.name


# --- disk full while writing --------------------------------------------------------------------


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def half_then_disk_full(method):
    """A Path.write_text / write_bytes that writes half the data, then hits a full disk."""

    def write(self, data, *args, **kwargs):
        method(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    return write


def only_file_left(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def write_json(path: Path, version: int) -> None:
    atomic_write_json(path, {"miou": 0.25 * version, "iou": list(range(100 * version))})


def write_checkpoint(path: Path, version: int) -> None:
    save_checkpoint(path, {"step": version, "weights": torch.arange(1000.0 * version)})


@pytest.mark.parametrize("where", ["write", "fsync"])
@pytest.mark.parametrize("name, write, method", [("scores.json", write_json, "write_text"),
                                                 ("last.pt", write_checkpoint, "write_bytes")])
def test_disk_full_keeps_the_previous_file(tmp_path, monkeypatch, where, name, write, method):
    path = tmp_path / "out" / name
    write(path, 1)
    before = path.read_bytes()
    if where == "write":
        monkeypatch.setattr(Path, method, half_then_disk_full(getattr(Path, method)))
    else:
        monkeypatch.setattr(pixpro.io.os, "fsync", disk_full)
    with pytest.raises(PixproError, match="No space left on device; the previous version is intact") as err:
        write(path, 2)
    assert str(path) in str(err.value)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert only_file_left(path) == [name]  # no temp file left behind


def test_disk_full_on_a_first_write_leaves_nothing_and_claims_no_previous_version(tmp_path, monkeypatch):
    path = tmp_path / "new.json"
    monkeypatch.setattr(Path, "write_text", half_then_disk_full(Path.write_text))
    with pytest.raises(PixproError, match="No space left on device") as err:
        atomic_write_json(path, {"miou": 0.75})
    assert str(path) in str(err.value) and "previous version" not in str(err.value)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


# --- corrupt checkpoints ------------------------------------------------------------------------


def test_truncated_resume_checkpoint_names_the_file_and_the_stage(prepared, two_pretrainings, tmp_path):
    checkpoint = tmp_path / "ckpt" / "last.pt"
    checkpoint.parent.mkdir()
    data = (two_pretrainings[0] / "ckpt" / "last.pt").read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"corrupt or truncated.*`dvc repro pretrain`") as err:
        pretrain(make_eval_params(), prepared, tmp_path / "backbone.pt", tmp_path / "ckpt", tmp_path / "live",
                 log=lambda _: None)
    assert str(checkpoint) in str(err.value)
    assert not (tmp_path / "backbone.pt").exists()


# --- features of the wrong dimension ------------------------------------------------------------


def invoke(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert not isinstance(result.exception, (AssertionError, TypeError, ValueError, RuntimeError)), result.output
    return result.exit_code, result.output


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "error:" in line]


def test_probe_for_other_features_is_rejected(tmp_path, prepared):
    probe_file = tmp_path / "probe.pt"
    save_checkpoint(probe_file, {"weight": torch.zeros(NUM_CLASSES, 16), "bias": torch.zeros(NUM_CLASSES),
                                 "curve": [1.0], "converged": True})
    with pytest.raises(CheckpointError, match="expects 16-dim features but the backbone gives 8"):
        probe_from_state(torch.load(probe_file, weights_only=False), 8, str(probe_file))

    params = write_params(tmp_path / "params.yaml")
    code, output = invoke("evaluate", "--backbone", "random", "--params", params, "--data", prepared,
                          "--probe", probe_file, "--metrics", tmp_path / "m.json", "--predictions", tmp_path / "pred",
                          "--plots", tmp_path / "plots")
    assert code == 1, output
    assert len(error_lines(output)) == 1, output
    assert "pixpro evaluate: error:" in output and "expects 16-dim features" in output
    assert "Traceback" not in output and not (tmp_path / "m.json").exists()


def test_bank_of_other_features_is_rejected_by_retrieval(tmp_path, prepared):
    bank_file = tmp_path / "bank.pt"
    n = 64
    save_checkpoint(bank_file, {"features": torch.nn.functional.normalize(torch.randn(n, 16)).half(),
                                "labels": torch.zeros(n, dtype=torch.uint8),
                                "image_index": torch.zeros(n, dtype=torch.int32),
                                "pixel_index": torch.arange(n), "num_classes": NUM_CLASSES})
    params = write_params(tmp_path / "params.yaml")
    code, output = invoke("retrieval", "--backbone", "random", "--params", params, "--data", prepared,
                          "--bank", bank_file, "--metrics", tmp_path / "m.json", "--plots", tmp_path / "plots")
    assert code == 1, output
    assert len(error_lines(output)) == 1, output
    assert "pixpro retrieval: error:" in output and "16-dim features" in output and "gives 8" in output
    assert not (tmp_path / "m.json").exists()


# --- every stage validates the whole params file first ------------------------------------------

# Each command gets a bad value in a section it does not use, so only up-front validation of the
# whole file can catch it. The paths do not exist: a command that did any work first would fail
# on them with another message.
BAD_PARAMS = {
    "prepare": ("retrieval.k", 5),
    "synthesize": ("probe.max_iter", 0),
    "pretrain": ("extract.pixels_per_image", 0),
    "extract": ("evaluate.batch_size", 0),
    "probe": ("pretrain.ppm.gamma", 0),
    "evaluate": ("data.size", [8, 8]),
    "retrieval": ("seed", -1),
    "show-pairs": ("probe.tolerance", 0),
    "finetune": ("retrieval.knn_k", 0),
    "params": ("evaluate.batch_size", 0),
    "scan-data": ("finetune.steps", 0),
    "predict": ("probe.max_iter", 0),
}


def stage_arguments(command: str, out: Path, params: Path) -> list:
    data = ["--data", out / "data"]
    return {
        "prepare": ["--out", out / "prepared", "--metrics", out / "m.json", "--plots", out / "plots"],
        "synthesize": [out / "raw"],
        "pretrain": [*data, "--out", out / "b.pt", "--checkpoints", out / "ckpt", "--live", out / "live"],
        "extract": ["--backbone", "random", *data, "--out", out / "bank.pt"],
        "probe": ["--bank", out / "bank.pt", "--out", out / "probe.pt", "--curve", out / "curve.csv"],
        "evaluate": ["--backbone", "random", *data, "--probe", out / "probe.pt", "--metrics", out / "m.json",
                     "--predictions", out / "pred", "--plots", out / "plots"],
        "retrieval": ["--backbone", "random", *data, "--bank", out / "bank.pt", "--metrics", out / "m.json",
                      "--plots", out / "plots"],
        "show-pairs": [*data, "--out", out / "pairs.png"],
        "finetune": ["--backbone", "random", *data, "--metrics", out / "m.json", "--curve", out / "c.csv",
                     "--resume", out / "r.json", "--model", out / "net.pt", "--live", out / "live"],
        "params": [],
        "scan-data": ["--write-classes", out / "classes.csv"],
        "predict": [out / "image.png", "--out", out / "predictions"],
    }[command] + ["--params", params]


# And one bad value per section in the section the command itself uses.
OWN_SECTION = [
    ("prepare", "data.size", [8, 8]),
    ("pretrain", "pretrain.epochs", 0),
    ("extract", "extract.pixels_per_image", 0),
    ("probe", "probe.class_weighting", "inverse"),
    ("evaluate", "evaluate.overlays", -1),
    ("retrieval", "retrieval.knn_stride", 0),
    ("finetune", "finetune.steps", 0),
]


def test_every_params_taking_command_is_checked():
    takes_params = {c.name for c in app.registered_commands
                    if "params" in inspect.signature(c.callback).parameters}
    assert takes_params == set(BAD_PARAMS)  # `report` reads only metrics files


@pytest.mark.parametrize("command, key, value", [(c, *BAD_PARAMS[c]) for c in sorted(BAD_PARAMS)] + OWN_SECTION,
                         ids=[f"{c}-unrelated" for c in sorted(BAD_PARAMS)] + [f"{c}-own" for c, *_ in OWN_SECTION])
def test_each_stage_validates_the_whole_params_file_before_working(tmp_path, command, key, value):
    params = write_params(tmp_path / "bad.yaml", **{key: value})
    out = tmp_path / "out"
    code, output = invoke(command, *stage_arguments(command, out, params))
    assert code == 1, output
    assert len(error_lines(output)) == 1 and f"pixpro {command}: error:" in output, output
    assert key in output, output
    assert not out.exists()


# --- a DDP peer that dies -----------------------------------------------------------------------

DDP_WORKER = """
import os, sys, time
from pathlib import Path
import dvclive, torch, yaml  # dvclive now: rank 0 imports it mid-run, keep the ranks in step
from pixpro import train
from pixpro.config import params_from_dict

params_file, prepared, out, fail = sys.argv[1:5]
torch.set_num_threads(1)
rank = int(os.environ["RANK"])
if rank == 1:
    real_step = train.train_step

    def failing_step(*args, **kwargs):
        if args[3] == 1:  # the step index: step 0 went through DDP, step 1 is where the peer goes
            print(f"rank 1: failing at {time.time()}", flush=True)
            if fail == "die":
                os._exit(1)
            while True:  # "hang": alive, but never joins the collective
                time.sleep(0.1)
        return real_step(*args, **kwargs)

    train.train_step = failing_step
out = Path(out)
try:
    train.pretrain(params_from_dict(yaml.safe_load(Path(params_file).read_text())), Path(prepared),
                   out / "backbone.pt", out / "ckpt", out / "live", log=lambda line: print(line, flush=True))
finally:
    print(f"rank {rank}: exiting at {time.time()}", flush=True)
"""


class FailingPeerRun:
    """2 gloo ranks of `pixpro.train.pretrain` (pretrain.ddp_timeout_s = 10) as subprocesses;
    rank 1 dies (os._exit) or hangs at step 1."""

    def __init__(self, folder: Path, prepared: Path, fail: str):
        folder.mkdir(parents=True)
        self.folder, self.fail = folder, fail
        script = folder / "worker.py"
        script.write_text(DDP_WORKER)
        # 4 train images, 2 per rank and step: one step per epoch, 3 epochs.
        params = write_params(folder / "params.yaml", **{"pretrain.nproc": 2, "pretrain.ddp_timeout_s": 10,
                                                         "pretrain.batch_size": 4, "pretrain.epochs": 3,
                                                         "pretrain.checkpoint_every": 1})
        port = free_port()
        self.started = time.monotonic()
        self.processes, self.logs = [], []
        for rank in range(2):
            env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
                   "RANK": str(rank), "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
                   "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
            self.logs.append(open(folder / f"rank{rank}.log", "w"))  # noqa: SIM115 (closed in close())
            self.processes.append(subprocess.Popen(
                [sys.executable, str(script), str(params), str(prepared), str(folder / "run"), fail],
                env=env, stdout=self.logs[-1], stderr=subprocess.STDOUT))

    def log(self, rank: int) -> str:
        return (self.folder / f"rank{rank}.log").read_text()

    def stamp(self, rank: int, what: str) -> float | None:
        """The wall-clock time a rank printed `rank N: <what> at T`, or None."""
        for line in self.log(rank).splitlines():
            if line.startswith(f"rank {rank}: {what} at "):
                return float(line.rsplit(" ", 1)[1])
        return None

    def seconds_until_rank0_exits(self, patience: float) -> float:
        """Seconds from rank 1's failure to rank 0's exit; fails the test (never hangs it) if
        rank 0 is still running `patience` seconds after its peer failed."""
        rank0, rank1 = self.processes
        while (failed := self.stamp(1, "failing")) is None:
            if rank0.poll() is not None or rank1.poll() is not None:
                if (failed := self.stamp(1, "failing")) is not None:
                    break
                pytest.fail("a rank exited before rank 1 reached step 1:\n" + self.log(0) + self.log(1))
            assert time.monotonic() - self.started < 180, "rank 1 never reached step 1\n" + self.log(1)
            time.sleep(0.05)
        try:
            rank0.wait(timeout=max(1.0, failed + patience - time.time()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"rank 0 still running {patience:.0f} s after its peer failed ({self.fail}):\n" + self.log(0))
        exited = self.stamp(0, "exiting")
        assert exited is not None, self.log(0)
        assert rank0.returncode != 0, self.log(0)
        assert not (self.folder / "run" / "backbone.pt").exists()
        return exited - failed

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
        for log in self.logs:
            log.close()


@pytest.fixture(scope="module")
def failing_peer_runs(prepared, tmp_path_factory):
    """Both scenarios start at once: their start-up (imports) and the 10 s timeout overlap."""
    root = tmp_path_factory.mktemp("ddp")
    runs = {fail: FailingPeerRun(root / fail, prepared, fail) for fail in ("die", "hang")}
    yield runs
    for run in runs.values():
        run.close()


def test_ddp_rank_stops_when_its_peer_dies(failing_peer_runs):
    run = failing_peer_runs["die"]
    waited = run.seconds_until_rank0_exits(patience=60)
    assert waited < 60, run.log(0)
    assert "a DDP peer failed or timed out" in run.log(0)  # DistributedFailure: the CLI prints one line
    # The last checkpoint is a complete one that a rerun can resume from.
    assert torch.load(run.folder / "run" / "ckpt" / "last.pt", weights_only=False)["step"] == 1


def test_ddp_rank_stops_after_ddp_timeout_when_its_peer_hangs(failing_peer_runs):
    # pretrain.ddp_timeout_s = 10: the collective gives up after about 10 s, not never.
    run = failing_peer_runs["hang"]
    waited = run.seconds_until_rank0_exits(patience=90)
    assert 5 < waited < 60, run.log(0)


# --- help texts ---------------------------------------------------------------------------------


def help_parts(output: str) -> tuple[str, str]:
    """`--help` output -> (the description between the usage line and the first panel, with
    whitespace collapsed; the panels: arguments, options, commands)."""
    lines = output.splitlines()
    usage = next(i for i, line in enumerate(lines) if "Usage:" in line)
    panel = next(i for i, line in enumerate(lines) if line.startswith("╭"))
    return " ".join(" ".join(lines[usage + 1:panel]).split()), "\n".join(lines[panel:])


def test_top_level_help_describes_the_tool_and_lists_every_command():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    description, panels = help_parts(result.output)
    assert description
    for command in app.registered_commands:
        assert command.name in panels


@pytest.mark.parametrize("command", [c.name for c in app.registered_commands])
def test_every_command_has_help_with_a_description_and_every_parameter_explained(command):
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    description, panels = help_parts(result.output)
    assert description, f"`pixpro {command} --help` has no description"
    parameters = typer.main.get_command(app).commands[command].params
    assert any(p.param_type_name == "option" for p in parameters)
    for parameter in parameters:
        names = parameter.opts if parameter.param_type_name == "option" else [parameter.name]
        assert all(name in panels for name in names), (command, names)
        assert parameter.help, (command, names)  # shown beside it


# --- every stage fails whole --------------------------------------------------------------------


def test_staged_outputs_move_in_together_and_replace_whole_folders(tmp_path):
    metrics, plots = tmp_path / "metrics" / "m.json", tmp_path / "plots"
    metrics.parent.mkdir()
    metrics.write_text("old")
    (plots / "stale.png").parent.mkdir()
    (plots / "stale.png").write_text("from an earlier run")
    with pixpro.io.stage_outputs() as outputs:
        metrics_tmp, plots_tmp = outputs.file(metrics), outputs.folder(plots)
        metrics_tmp.write_text("new")
        (plots_tmp / "fresh.png").write_text("new")
        assert metrics.read_text() == "old" and (plots / "stale.png").exists()  # nothing moves before the end
    assert metrics.read_text() == "new"
    assert sorted(p.name for p in plots.iterdir()) == ["fresh.png"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["fresh.png", "m.json", "metrics", "plots"]


def test_a_failed_stage_leaves_the_previous_outputs_and_no_new_folders(tmp_path):
    metrics, plots = tmp_path / "m.json", tmp_path / "new" / "deeper" / "plots"
    metrics.write_text("old")
    with pytest.raises(RuntimeError, match="late failure"):
        with pixpro.io.stage_outputs() as outputs:
            outputs.file(metrics).write_text("new")
            (outputs.folder(plots) / "a.png").write_text("new")
            raise RuntimeError("late failure")
    assert metrics.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]  # no temp file, no empty folder


def test_a_failed_move_into_place_puts_every_previous_output_back(tmp_path, monkeypatch):
    first, second = tmp_path / "a.json", tmp_path / "b"
    first.write_text("old a")
    second.mkdir()
    (second / "x.png").write_text("old b")
    real_replace = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".b.tmp-"):  # the second output's move into place fails
            raise OSError(errno.EIO, "Input/output error", str(src))
        return real_replace(src, dst)

    monkeypatch.setattr(pixpro.io.os, "replace", replace)
    with pytest.raises(PixproError, match="the previous outputs are intact"):
        with pixpro.io.stage_outputs() as outputs:
            outputs.file(first).write_text("new a")
            (outputs.folder(second) / "x.png").write_text("new b")
    assert first.read_text() == "old a" and (second / "x.png").read_text() == "old b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b"]


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_an_output_under_a_file_is_named_before_any_work(tmp_path, kind):
    blocker = tmp_path / "somefile"
    blocker.write_text("a file, not a folder")
    for output in (blocker / "x.json", blocker / "sub" / "x.json"):
        with pytest.raises(PixproError, match=f"cannot write {output}: {blocker} is a file, not a folder"):
            with pixpro.io.stage_outputs() as outputs:
                getattr(outputs, kind)(output)
                pytest.fail("the block ran")
    assert blocker.read_text() == "a file, not a folder"


def test_an_output_os_error_is_restated_for_the_output(tmp_path):
    metrics = tmp_path / "m.json"
    with pytest.raises(PixproError, match=f"could not write {metrics}: No space left on device; nothing was"):
        with pixpro.io.stage_outputs() as outputs:
            tmp = outputs.file(metrics)
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert list(tmp_path.iterdir()) == []


# Each per-backbone stage, run through the CLI for the random backbone into one folder; `report`
# reads the random metrics twice (as both backbones).
STAGE_OUTPUTS = {
    "extract": ["bank.pt"],
    "probe": ["probe.pt", "probe.csv"],
    "evaluate": ["predictions", "evaluate_plots", "segmentation/random.json"],
    "retrieval": ["retrieval_plots", "retrieval/random.json"],
    "finetune": ["finetune.csv", "finetune_model.pt", "finetune_live", "finetune/random.json"],
    "report": ["summary.md", "report_plots"],
}


def run_stage(command: str, run: Path, prepared: Path, **paths: Path) -> list:
    """The command line of `command` on `run`'s files; `paths` replaces output options."""
    params = ["--params", run / "params.yaml"]
    options = {
        "extract": {"out": run / "bank.pt"},
        "probe": {"bank": run / "bank.pt", "out": run / "probe.pt", "curve": run / "probe.csv"},
        "evaluate": {"probe": run / "probe.pt", "predictions": run / "predictions", "plots": run / "evaluate_plots",
                     "metrics": run / "segmentation" / "random.json"},
        "retrieval": {"bank": run / "bank.pt", "plots": run / "retrieval_plots",
                      "metrics": run / "retrieval" / "random.json"},
        "finetune": {"curve": run / "finetune.csv", "resume": run / "resume.json", "model": run / "finetune_model.pt",
                     "live": run / "finetune_live", "metrics": run / "finetune" / "random.json"},
        "report": {"segmentation": run / "segmentation", "retrieval": run / "retrieval",
                   "finetune": run / "finetune", "out": run / "summary.md", "plots": run / "report_plots"},
    }[command]
    fixed = {"report": [], "probe": params}.get(command, ["--backbone", "random", *params, "--data", prepared])
    return [command, *fixed, *(a for key, value in {**options, **paths}.items() for a in (f"--{key}", value))]


def as_both_backbones(run: Path) -> None:
    for folder in ("segmentation", "retrieval", "finetune"):
        (run / folder / "pretrained.json").write_bytes((run / folder / "random.json").read_bytes())


@pytest.fixture(scope="module")
def finished_run(prepared, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    write_params(run / "params.yaml")
    for command in STAGE_OUTPUTS:
        if command == "report":
            as_both_backbones(run)
        code, output = invoke(*run_stage(command, run, prepared))
        assert code == 0, output
    return run


def snapshot(run: Path) -> dict[str, bytes]:
    """Every file under `run` (relative path -> bytes)."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def leftovers(run: Path) -> list[str]:
    return [str(p) for p in run.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]


def test_the_finished_run_has_every_stage_output(finished_run):
    for outputs in STAGE_OUTPUTS.values():
        for output in outputs:
            assert (finished_run / output).exists(), output
    assert sorted(p.name for p in (finished_run / "evaluate_plots").iterdir()) == [
        "confusion.png", "overlays.png", "per_class_iou.csv"]
    assert leftovers(finished_run) == []


def disk_full_for(monkeypatch, output: str) -> None:
    """Every later open for writing of `output`'s temporary file (or a file in its temporary
    folder) hits a full disk."""
    real_open = open
    marker = f".{Path(output).name}.tmp-"

    def full_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and marker in str(file) and set(mode) & set("wxa"):
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full_open)
    monkeypatch.setattr("io.open", full_open)


@pytest.mark.parametrize("command", list(STAGE_OUTPUTS))
def test_a_stage_whose_last_write_fails_keeps_all_its_previous_outputs(finished_run, prepared, tmp_path, monkeypatch,
                                                                      command):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = snapshot(run)
    last = STAGE_OUTPUTS[command][-1]
    disk_full_for(monkeypatch, last)
    code, output = invoke(*run_stage(command, run, prepared))
    monkeypatch.undo()
    assert code == 1, output
    assert len(error_lines(output)) == 1 and f"pixpro {command}: error:" in output, output
    assert f"could not write {run / last}" in output and "No space left on device" in output, output
    assert "the previous version is intact" in output and "Traceback" not in output, output
    assert snapshot(run) == before  # not one output replaced, added or removed
    assert leftovers(run) == []


@pytest.mark.parametrize("command", list(STAGE_OUTPUTS))
def test_a_stage_output_under_a_file_is_one_line_before_any_work(finished_run, prepared, tmp_path, command):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = snapshot(run)
    blocker = run / "probe.csv"  # a regular file, used as a folder below
    option = {"extract": "out", "probe": "curve", "report": "plots"}.get(command, "metrics")
    output = blocker / "sub" / "x.json"
    code, text = invoke(*run_stage(command, run, prepared, **{option: output}))
    assert code == 1, text
    assert len(error_lines(text)) == 1 and f"pixpro {command}: error:" in text, text
    assert f"cannot write {output}: {blocker} is a file, not a folder" in " ".join(text.split()), text
    assert snapshot(run) == before and leftovers(run) == []


def test_left_out_paths_are_the_stage_layout_of_the_backbone(finished_run, tmp_path, monkeypatch):
    (tmp_path / "features" / "random").mkdir(parents=True)
    shutil.copy(finished_run / "bank.pt", tmp_path / "features" / "random" / "bank.pt")
    monkeypatch.chdir(tmp_path)
    code, output = invoke("probe", "--backbone", "random", "--params", finished_run / "params.yaml")
    assert code == 0, output
    assert (tmp_path / "models" / "probe" / "random.pt").read_bytes() == (finished_run / "probe.pt").read_bytes()
    assert (tmp_path / "plots" / "probe" / "random.csv").is_file()


def test_show_pairs_fails_whole(prepared, tmp_path, monkeypatch):
    params, out = write_params(tmp_path / "params.yaml"), tmp_path / "pairs.png"
    command = ["show-pairs", "--params", params, "--data", prepared, "--out", out]
    code, output = invoke(*command)
    assert code == 0, output
    before = out.read_bytes()
    disk_full_for(monkeypatch, "pairs.png")
    code, output = invoke(*command)
    monkeypatch.undo()
    assert code == 1 and len(error_lines(output)) == 1, output
    assert f"could not write {out}: No space left on device; the previous version is intact" in output, output
    assert out.read_bytes() == before and leftovers(tmp_path) == []
    code, output = invoke(*command[:-1], params / "pairs.png")
    assert code == 1 and f"{params} is a file, not a folder" in " ".join(output.split()), output


# --- damaged inputs ------------------------------------------------------------------------------


@pytest.fixture
def damaged(tmp_path) -> Path:
    """A freshly prepared copy of the tiny data, for a test to damage."""
    from pixpro.data.prepare import run_prepare
    from tests.conftest import make_params, synthesize

    params = make_params(**{"data.root": str(synthesize(make_params(), tmp_path / "raw"))})
    run_prepare(params, tmp_path / "data", tmp_path / "metrics.json", tmp_path / "plots")
    return tmp_path / "data"


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


@pytest.mark.parametrize("damage", ["truncated image", "truncated mask", "deleted mask"])
@pytest.mark.parametrize("command, split", [("evaluate", "val"), ("retrieval", "val"), ("extract", "train"),
                                            ("finetune", "train")])
def test_damaged_prepared_data_names_the_file(finished_run, damaged, tmp_path, command, split, damage):
    row = split_rows(damaged, split).iloc[-1]
    path = Path(row["image" if damage == "truncated image" else "mask"])
    truncate(path) if damage.startswith("truncated") else path.unlink()
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = snapshot(run)
    code, output = invoke(*run_stage(command, run, damaged))
    assert code == 1, output
    assert len(error_lines(output)) == 1 and f"pixpro {command}: error:" in output, output
    assert str(path) in " ".join(output.split()) and "rerun `pixpro prepare`" in output, output
    assert "Traceback" not in output
    # finetune's resume file and curves are progressive by design: fractions finished before the
    # damage are kept
    after = snapshot(run)
    if command == "finetune":
        for files in (before, after):
            for name in [name for name in files if name == "resume.json" or name.startswith("finetune_live/")]:
                files.pop(name)
    assert after == before and leftovers(run) == []


@pytest.mark.parametrize("damage, message", [
    ("truncated", r"is not valid JSON"),
    ("no miou", r"has no key 'miou'"),
    ("a string", r"'miou' is 'high', not a number"),
    ("a list", r"holds a list, not a metrics object"),
])
def test_report_names_a_damaged_metrics_file_and_key(finished_run, tmp_path, damage, message):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = snapshot(run)
    path = run / "segmentation" / "random.json"
    metrics = json.loads(path.read_text())
    if damage == "truncated":
        truncate(path)
    else:
        changed = [1, 2] if damage == "a list" else {**metrics, "miou": "high"} if damage == "a string" else {
            k: v for k, v in metrics.items() if k != "miou"}
        path.write_text(json.dumps(changed))
    before[str(path.relative_to(run))] = path.read_bytes()
    code, output = invoke(*run_stage("report", run, run))
    assert code == 1, output
    assert len(error_lines(output)) == 1 and "pixpro report: error:" in output, output
    assert re.search(message, output) and str(path) in " ".join(output.split()), output
    assert "rerun `dvc repro evaluate`" in output and "Traceback" not in output
    assert snapshot(run) == before and leftovers(run) == []


def test_report_names_finetune_metrics_without_fractions(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    path = run / "finetune" / "pretrained.json"
    path.write_text(json.dumps({"labelled_images_100pct": 4}))
    code, output = invoke(*run_stage("report", run, run))
    assert code == 1 and f"{path} has no key 'miou_<percent>pct'" in " ".join(output.split()), output
