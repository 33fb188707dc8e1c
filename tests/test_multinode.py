"""Pretraining over several nodes on torchrun's c10d rendezvous. Each "node" is one torchrun agent
on localhost with its own output folders (so a test sees which node wrote), gloo on CPU."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch
import torch.multiprocessing as mp
import yaml
from typer.testing import CliRunner

from pixpro import runtime as runtime_module
from pixpro.errors import ConfigError
from pixpro.launch import torchrun_arguments
from pixpro.model.pixpro import PixPro
from pixpro.stages.cli import app
from tests.conftest import REPO, TINY_PRETRAIN, VENV_BIN, backbone_state, free_port, make_params, run_pretrain, tiny_params

# 4 train images, 2 per process in a world of 2: one step per epoch. One thread per process.
MULTINODE = {"threads": 1, "pretrain.batch_size": 4, "pretrain.epochs": 3, "pretrain.ddp_timeout_s": 60}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
DIED = ("a DDP peer failed or timed out", "lost, or never reached, torchrun's rendezvous store")


def write_params(path: Path, **overrides) -> Path:
    path.write_text(yaml.safe_dump(tiny_params({**TINY_PRETRAIN, **MULTINODE, **overrides}), sort_keys=False))
    return path


def two_nodes(port: int, **overrides) -> dict:
    return {"pretrain.nnodes": 2, "pretrain.nproc": 1, "pretrain.rdzv_endpoint": f"localhost:{port}", **overrides}


def outputs(folder: Path) -> list[str]:
    return ["--out", str(folder / "backbone.pt"), "--checkpoints", str(folder / "ckpt"), "--live", str(folder / "live")]


def stage_command(params: Path, prepared: Path, folder: Path) -> list[str]:
    """What dvc.yaml runs on node 0, and the README on every other node."""
    return [str(VENV_BIN / "pixpro"), "pretrain", "--launch", "--params", str(params), "--data", str(prepared),
            *outputs(folder)]


class Node:
    """One machine: a torchrun agent and the processes it starts, which torchrun puts in sessions
    of their own, so the whole tree is tracked (and killed) from the agent's pid."""

    def __init__(self, name: str, command: list[str], root: Path):
        self.folder = root / name  # created by the run only if this node writes
        self.log_path = root / f"{name}.log"
        with open(self.log_path, "w") as log:
            # From the repository root, as DVC runs it: the manifest's image paths are relative to it.
            self.process = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text()

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.folder.name} still running after {timeout:.0f} s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL the agent and its processes at once, as a machine that goes away."""
        try:
            agent = psutil.Process(self.process.pid)
            tree = [*agent.children(recursive=True), agent]
        except psutil.NoSuchProcess:
            tree = []
        for process in tree:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        self.process.wait(timeout=30)


@pytest.fixture
def nodes():
    """Started nodes; any still running when the test ends are killed with their processes."""
    started: list[Node] = []
    yield started
    for node in started:
        node.kill()


def wrote(node: Node) -> bool:
    return (node.folder / "ckpt" / "last.pt").is_file()


# --- the launcher and the process counts -------------------------------------------------------


def test_one_node_is_standalone_and_several_meet_at_the_endpoint():
    command = ["pixpro", "pretrain", "--params", "params.yaml"]
    one = torchrun_arguments(make_params(**{"pretrain.nproc": 2}).pretrain, command)
    assert one == ["--standalone", "--nproc-per-node", "2", "--no-python", *command]  # a free port: no clash
    several = torchrun_arguments(make_params(**two_nodes(29400, **{"pretrain.ddp_timeout_s": 30})).pretrain, command)
    assert several == ["--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:29400",
                       "--rdzv-conf", "join_timeout=30", "--nproc-per-node", "1", "--no-python", *command]


@pytest.mark.parametrize("env, nnodes, nproc, message", [
    ({"WORLD_SIZE": "2"}, 2, 2, r"pretrain\.nnodes = 2 x pretrain\.nproc = 2 needs 4 process\(es\) but WORLD_SIZE = 2"),
    ({"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4"}, 2, 2,
     r"pretrain\.nproc = 2 but 4 process\(es\) were started on this node"),
    ({"WORLD_SIZE": "3", "LOCAL_WORLD_SIZE": "1"}, 3, 1, r"batch_size = 4 is not divisible by the 3 processes"),
], ids=["world", "per-node", "batch"])
def test_process_counts_must_match_nodes_times_processes(monkeypatch, env, nnodes, nproc, message):
    for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"RANK": "1", "LOCAL_RANK": "0", **env}.items():
        monkeypatch.setenv(name, value)
    cfg = make_params(**MULTINODE, **two_nodes(29400, **{"pretrain.nnodes": nnodes, "pretrain.nproc": nproc}))
    with pytest.raises(ConfigError, match=message):
        runtime_module.setup_runtime(cfg.pretrain)


def test_launch_is_refused_under_torchrun(tmp_path):
    params = write_params(tmp_path / "params.yaml")
    result = CliRunner().invoke(app, ["pretrain", "--launch", "--params", str(params)],
                                env={"TORCHELASTIC_RUN_ID": "x"})
    assert result.exit_code == 1
    assert "--launch starts torchrun itself" in result.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_means_the_gpu_of_the_local_rank():
    assert runtime_module.select_device("cuda", 1) == torch.device("cuda:1")
    assert runtime_module.select_device("auto", 1) == torch.device("cuda:1")


# --- two nodes train what one node with two processes trains ----------------------------------


def test_two_nodes_match_one_node_with_two_processes(prepared, tmp_path, nodes):
    # Node a runs the stage's command, node b the torchrun line the README gives for the other nodes.
    port = free_port()
    multi = write_params(tmp_path / "multi.yaml", **two_nodes(port))
    single = write_params(tmp_path / "single.yaml", **{"pretrain.nproc": 2})
    torchrun = [str(VENV_BIN / "torchrun"), "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                "--rdzv-endpoint", f"localhost:{port}", "--no-python", "pixpro", "pretrain", "--params", str(multi),
                "--data", str(prepared)]
    nodes += [Node("a", stage_command(multi, prepared, tmp_path / "a"), tmp_path),
              Node("b", torchrun + outputs(tmp_path / "b"), tmp_path),
              Node("single", stage_command(single, prepared, tmp_path / "single"), tmp_path)]
    for node in nodes:
        assert node.wait(timeout=170) == 0, node.log()
    a, b, one = nodes
    # Global rank 0, on whichever node c10d ranked first, wrote everything; the other node nothing.
    (writer,) = [node for node in (a, b) if wrote(node)]
    (other,) = {a, b} - {writer}
    assert (writer.folder / "backbone.pt").is_file() and (writer.folder / "live" / "metrics.json").is_file()
    assert not other.folder.exists()

    params = make_params(**MULTINODE)
    torch.manual_seed(params.seed)
    initial = PixPro(params.pretrain).backbone.state_dict()
    expected, actual = backbone_state(one.folder), backbone_state(writer.folder)
    assert any(not torch.allclose(expected[k], initial[k]) for k in initial if initial[k].is_floating_point())
    for key in expected:
        assert torch.allclose(actual[key].float(), expected[key].float(), atol=1e-6), key


# --- nodes that never come or go away ---------------------------------------------------------


def test_a_node_that_never_joins_stops_the_first_within_the_rendezvous_timeout(prepared, tmp_path, nodes):
    params = write_params(tmp_path / "params.yaml", **two_nodes(free_port(), **{"pretrain.ddp_timeout_s": 10}))
    started = time.monotonic()
    nodes.append(Node("a", stage_command(params, prepared, tmp_path / "a"), tmp_path))
    code = nodes[0].wait(timeout=120)
    waited, output = time.monotonic() - started, nodes[0].log()
    assert code == 1 and 10 <= waited < 120, output
    assert "pixpro pretrain: error: not all pretrain.nnodes = 2 nodes joined the rendezvous" in output
    assert "within 10 s" in output and "Traceback" not in output
    assert not nodes[0].folder.exists()


@pytest.mark.parametrize("victim", ["rank0", "other"])
def test_a_node_that_dies_mid_run_stops_the_other(prepared, tmp_path, nodes, victim):
    # Enough epochs (one step each) to be sure the run is still going when a node is killed.
    params = write_params(tmp_path / "params.yaml", **two_nodes(free_port(), **{"pretrain.epochs": 1000}))
    nodes += [Node(name, stage_command(params, prepared, tmp_path / name), tmp_path) for name in ("a", "b")]
    deadline = time.monotonic() + 170
    while not any(wrote(node) for node in nodes):  # rank 0 checkpoints every step (every epoch end)
        for node in nodes:
            assert node.process.poll() is None, node.log()
        assert time.monotonic() < deadline, "no checkpoint within 170 s\n" + nodes[0].log() + nodes[1].log()
        time.sleep(0.1)
    (rank0,) = [node for node in nodes if wrote(node)]
    dead = rank0 if victim == "rank0" else next(node for node in nodes if node is not rank0)
    (survivor,) = [node for node in nodes if node is not dead]
    dead.kill()
    killed = time.monotonic()
    code = survivor.wait(timeout=90)
    output = survivor.log()
    assert code != 0 and time.monotonic() - killed < 60, output
    # One line from pixpro, whichever process noticed first: the survivor's rank (a collective
    # failed) or its agent (the node that died hosted the rendezvous store).
    assert "pixpro pretrain: error:" in output and any(message in output for message in DIED), output
    assert "Traceback" not in output
    assert not (rank0.folder / "backbone.pt").exists()
    step = torch.load(rank0.folder / "ckpt" / "last.pt", weights_only=False)["step"]
    assert 1 <= step < 1000


# --- resuming on every node from rank 0's checkpoint --------------------------------------------


def _resume_worker(rank: int, ports: list[int], prepared: str, root: str) -> None:
    """Global rank `rank` of two one-process nodes (LOCAL_RANK 0 on both), each with its own folders:
    one straight run, then one stopped after step 1 and rerun."""
    os.environ.update(MASTER_ADDR="127.0.0.1", WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    torch.set_num_threads(1)
    params = make_params(**MULTINODE, **two_nodes(ports[0]))
    results = []
    for port, name, stop_after in zip(ports, ("straight", "resumed", "resumed"), (None, 1, None)):
        os.environ["MASTER_PORT"] = str(port)
        results.append(run_pretrain(params, Path(prepared), Path(root) / name / f"node{rank}", stop_after=stop_after)[0])
    torch.save(results, Path(root) / f"results{rank}.pt")


def test_every_node_resumes_from_rank_0s_checkpoint(prepared, tmp_path):
    # Node 1 has no checkpoint of its own (a node-local folder): it resumes the step rank 0 read,
    # with rank 0's weights, and the result equals the run that was never stopped.
    mp.start_processes(_resume_worker, args=([free_port() for _ in range(3)], str(prepared), str(tmp_path)),
                       nprocs=2, start_method="spawn")
    for rank in (0, 1):
        stopped, resumed = torch.load(tmp_path / f"results{rank}.pt", weights_only=False)[1:]
        assert stopped.steps == 1 and resumed.resumed_from == 1 and resumed.completed, rank
    assert not (tmp_path / "resumed" / "node1").exists()
    expected = backbone_state(tmp_path / "straight" / "node0")
    actual = backbone_state(tmp_path / "resumed" / "node0")
    for key in expected:
        assert torch.allclose(actual[key].float(), expected[key].float(), atol=1e-6), key
