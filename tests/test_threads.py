"""`threads` pins the CPU thread count, so the same params give the same numbers on any machine
with at least that many cores, whatever OMP_NUM_THREADS says."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from pixpro.config import params_from_dict
from pixpro.errors import ConfigError
from pixpro.runtime_info import resolved_threads
from pixpro.stages._common import _warn_idle_cores, pin_threads
from tests.conftest import TINY_PRETRAIN, VENV_BIN, tiny_params

# Steps that move the weights (no warm-up at lr 0) and convs wide enough that the thread count
# changes their float sums (checked below): otherwise both counts compute the same thing and the
# test could not fail.
PARAMS = tiny_params({**TINY_PRETRAIN, "pretrain.backbone.widths": [16, 32], "pretrain.backbone.dim": 16,
                      "pretrain.optim.warmup_epochs": 0.0})


def pretrain_then_extract(prepared: Path, folder: Path, threads: int, omp: int) -> dict[str, torch.Tensor]:
    """Runs the pretrain and extract commands as DVC does, with OMP/MKL_NUM_THREADS = omp;
    returns the backbone's weights and the feature bank."""
    folder.mkdir()
    params = folder / "params.yaml"
    params.write_text(yaml.safe_dump({**PARAMS, "threads": threads}, sort_keys=False))
    env = {**os.environ, "OMP_NUM_THREADS": str(omp), "MKL_NUM_THREADS": str(omp)}
    pixpro = str(VENV_BIN / "pixpro")
    for command in (
        [pixpro, "pretrain", "--params", str(params), "--data", str(prepared), "--out", str(folder / "backbone.pt"),
         "--checkpoints", str(folder / "ckpt"), "--live", str(folder / "live")],
        [pixpro, "extract", "--backbone", "pretrained", "--params", str(params), "--data", str(prepared),
         "--checkpoint", str(folder / "backbone.pt"), "--out", str(folder / "bank.pt")],
    ):
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    weights = torch.load(folder / "backbone.pt", weights_only=False)["backbone"]
    bank = torch.load(folder / "bank.pt", weights_only=False)
    tensors = {f"backbone.{k}": v for k, v in weights.items()}
    tensors.update({f"bank.{k}": v for k, v in bank.items() if isinstance(v, torch.Tensor)})
    return tensors


def differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    assert a.keys() == b.keys()
    return [name for name in a if not torch.equal(a[name], b[name])]


def test_the_param_not_the_environment_sets_the_numbers(prepared, tmp_path):
    one_core_env = pretrain_then_extract(prepared, tmp_path / "omp1", threads=2, omp=1)
    two_core_env = pretrain_then_extract(prepared, tmp_path / "omp2", threads=2, omp=2)
    assert differing(one_core_env, two_core_env) == []
    # The control: the count does change the numbers, so the equality above is the param's doing.
    one_thread = pretrain_then_extract(prepared, tmp_path / "threads1", threads=1, omp=2)
    assert differing(one_thread, two_core_env) != []


# `threads: auto`: the cores this process may use, not the machine's.


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads(), {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    _warn_idle_cores.cache_clear()
    yield
    torch.set_num_threads(before[0])
    for key, value in before[1].items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _warn_idle_cores.cache_clear()


def test_auto_is_the_affinity_mask_shared_among_the_nodes_processes(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert resolved_threads("auto") == 3
    assert resolved_threads(7) == 7  # a number is used as given, even above the cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun: two processes share the three cores
    assert resolved_threads("auto") == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert resolved_threads("auto") == 1


def test_pin_threads_sets_torch_and_warns_once_about_idle_cores(monkeypatch, capsys, restore_threads):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert pin_threads(1) == 1 and torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    pin_threads(1)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [warnings[0]] and "1 of the 4 CPU cores" in warnings[0]
    assert pin_threads("auto") == 4 and torch.get_num_threads() == 4
    assert "warning" not in capsys.readouterr().err  # every core in use: nothing to say


def test_threads_accepts_auto_and_rejects_other_words():
    assert params_from_dict({"threads": "auto"}).threads == "auto"
    with pytest.raises(ConfigError, match="threads = 'all' is not one of 'auto'"):
        params_from_dict({"threads": "all"})
    with pytest.raises(ConfigError, match="threads must be >= 1 or auto"):
        params_from_dict({"threads": 0})
