"""Shared fixtures and helpers: a tiny raw Cityscapes tree, tiny params (files and validated
objects) built from the repo's own, the tiny data prepared, and a copy of the working tree."""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import socket
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import pytest
import yaml

from pixpro.config import Params, params_from_dict
from pixpro.data.synthetic import generate_tree

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"


def load_experiment(name: str) -> ModuleType:
    """experiments/<name>.py as a module: the scripts are run by path, not installed."""
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Small enough for milliseconds per image; the raw tree is 2x data.size so prepare really resizes.
TINY_SIZE = (32, 64)
RAW_SIZE = (64, 128)
TINY_OVERRIDES: dict[str, Any] = {
    "data.size": list(TINY_SIZE),
    "data.workers": 1,
    "data.synthetic.train": 4,
    "data.synthetic.val": 2,
    "data.synthetic.cities": 2,
    "data.synthetic.raw_size": list(RAW_SIZE),
}


def set_dotted(tree: dict, key: str, value: Any) -> None:
    """tree['a']['b'] = value for key 'a.b', creating sections on the way."""
    *parents, leaf = key.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def tiny_params(overrides: dict[str, Any] | None = None) -> dict:
    """The repo's params.yaml with the tiny sizes and then `overrides` (dotted keys) applied."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in {**TINY_OVERRIDES, **(overrides or {})}.items():
        set_dotted(raw, key, copy.deepcopy(value))
    return raw


@pytest.fixture
def write_params(tmp_path) -> Callable[..., Path]:
    """write_params({'data.source': 'cityscapes'}, name='p.yaml') -> path of a tiny params file."""

    def write(overrides: dict[str, Any] | None = None, name: str = "params.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(tiny_params(overrides), sort_keys=False))
        return path

    return write


# Pretraining and evaluation sections small enough for milliseconds per step on CPU.
TINY_PRETRAIN: dict[str, Any] = {
    "pretrain.epochs": 2,
    "pretrain.batch_size": 2,
    "pretrain.workers": 0,
    "pretrain.log_every": 1,
    "pretrain.checkpoint_every": 100,
    "pretrain.backbone.arch": "unet",
    "pretrain.backbone.widths": [4, 8],
    "pretrain.loss.stage_layers": [-2],  # the default's stage term on the one coarser stage a 2-level UNet has
    "pretrain.backbone.dim": 8,
    "pretrain.views.size": [16, 32],
    "pretrain.pairs.candidates": 64,
    "pretrain.pairs.neighbours": 2,
    "pretrain.pairs.num": 32,
    "pretrain.ppm.window": 3,
    "pretrain.projector.hidden": 16,
    "pretrain.projector.out": 8,
}
TINY_EVAL: dict[str, Any] = {
    "extract.pixels_per_image": 16,
    "extract.batch_size": 4,
    "probe.max_iter": 50,
    "evaluate.batch_size": 4,
    "evaluate.overlays": 1,
    "retrieval.queries": 40,
    "retrieval.k": 10,
    "retrieval.knn_k": 5,
    "retrieval.knn_stride": 2,
    "retrieval.examples": 1,
    # 4 train images: 0.5 and 1.0 select 2 and 4 (the default 0.05 would select none)
    "finetune.label_fractions": [0.5, 1.0],
    "finetune.steps": 3,
    "finetune.batch_size": 2,
    "finetune.crop_size": [16, 32],
    "finetune.warmup_steps": 1,
}


def make_params(**overrides: Any) -> Params:
    """Validated tiny params with TINY_PRETRAIN and then `overrides` (dotted keys) applied."""
    return params_from_dict(tiny_params({**TINY_PRETRAIN, **overrides}))


def make_eval_params(**overrides: Any) -> Params:
    """make_params with TINY_EVAL too, for the extract / probe / evaluate / retrieval tests."""
    return make_params(**{**TINY_EVAL, **overrides})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """The tiny data section prepared: 4 train + 2 val images of 32 x 64, once per test module."""
    from pixpro.data.prepare import run_prepare  # here: a slow import most test files never need

    root = tmp_path_factory.mktemp("prepared")
    params = make_params(**{"data.root": str(synthesize(make_params(), root / "raw"))})
    run_prepare(params, root / "data", root / "metrics.json", root / "plots")
    return root / "data"


def synthesize(params: Params, root: Path) -> Path:
    """The synthetic tree of `params` (data.synthetic, seed) at root, as `pixpro synthesize` writes
    it; data.source synthetic prepares it from data.root."""
    syn = params.data.synthetic
    generate_tree(root, syn.train, syn.val, syn.cities, syn.raw_size, params.seed, syn.extra)
    return root


def copy_repo(dest: Path) -> None:
    """The working tree as git sees it: tracked files plus untracked files that are not ignored."""
    listed = []
    for extra in ([], ["--others", "--exclude-standard"]):
        out = subprocess.run(["git", "ls-files", "-z", *extra], cwd=REPO, capture_output=True,
                             check=True, timeout=30).stdout.decode()
        listed += [name for name in out.split("\0") if name]
    for name in listed:
        src = REPO / name
        if src.is_file():  # tracked but deleted in the working tree: skip
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def make_tree(root: Path, n_train: int = 4, n_val: int = 2, n_extra: int = 0) -> Path:
    generate_tree(root, n_train=n_train, n_val=n_val, n_cities=2, size=RAW_SIZE, seed=0,
                  n_extra=n_extra, workers=1)
    return root


@pytest.fixture(scope="session")
def _tree_templates(tmp_path_factory) -> dict[str, Path]:
    # Generated once; tests get their own copy because many of them break it on purpose.
    base = tmp_path_factory.mktemp("raw-trees")
    return {"plain": make_tree(base / "plain"), "extra": make_tree(base / "extra", n_extra=2)}


@pytest.fixture
def tiny_tree(tmp_path, _tree_templates) -> Path:
    """A raw Cityscapes tree: 4 train + 2 val images, 2 cities per split, labelIds PNGs."""
    return Path(shutil.copytree(_tree_templates["plain"], tmp_path / "cityscapes"))


@pytest.fixture
def tiny_tree_extra(tmp_path, _tree_templates) -> Path:
    """tiny_tree plus 2 unlabelled leftImg8bit/train_extra images."""
    return Path(shutil.copytree(_tree_templates["extra"], tmp_path / "cityscapes"))


# --- helpers shared by several test modules ------------------------------------------------------

# A three-class table in the CSV form `data.classes` accepts: two ids map to sky, one is ignored.
THREE_CLASSES_CSV = """value,train_id,name,color
0,255,void,
10,0,road,#804080
20,1,car,#00008e
30,2,sky,
40,2,sky,
"""


def tiny_pretrain_config(window: int = 3, **overrides: Any):
    """A PretrainConfig of a 2-level classic UNet on 8 x 12 views, for model and loss unit tests."""
    from pixpro.config import (BackboneConfig, LossConfig, PairsConfig, PPMConfig, PretrainConfig, ProjectorConfig,
                               ViewsConfig)

    # The output's terms alone: unit tests call the model with pixel pairs only (no per-stage pairs).
    overrides.setdefault("loss", LossConfig(stages=0.0))
    return PretrainConfig(backbone=BackboneConfig(arch="unet", widths=(8, 16), dim=8), views=ViewsConfig(size=(8, 12)),
                          pairs=PairsConfig(candidates=32, neighbours=2, num=24),
                          ppm=PPMConfig(window=window), projector=ProjectorConfig(hidden=16, out=8), **overrides)


def run_pretrain(params: Params, prepared: Path, folder: Path, **kwargs: Any):
    """pixpro.train.pretrain writing into `folder`; returns (its result, the log lines)."""
    from pixpro import train

    logs: list[str] = []
    result = train.pretrain(params, prepared, folder / "backbone.pt", folder / "ckpt", folder / "live",
                            log=logs.append, **kwargs)
    return result, logs


def backbone_state(folder: Path) -> dict:
    """The backbone weights of `folder`/backbone.pt."""
    import torch

    return torch.load(folder / "backbone.pt", weights_only=False)["backbone"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def save_backbone_file(path: Path, params: Params) -> Path:
    """A backbone file in the format `pixpro pretrain` writes (untrained weights)."""
    import torch

    from pixpro.checkpoint import save_checkpoint
    from pixpro.model.pixpro import PixPro
    from pixpro.train import export_backbone

    torch.manual_seed(123)
    save_checkpoint(path, export_backbone(PixPro(params.pretrain), params, step=0))
    return path


# The whole DVC pipeline in a temporary git copy of the repository, on tiny params.
PIPELINE_PARAMS = {
    "data.size": [32, 64],
    "data.synthetic.train": 8,
    "data.synthetic.val": 4,
    "data.synthetic.cities": 2,
    "data.synthetic.raw_size": [64, 128],
    **TINY_PRETRAIN,
    "pretrain.epochs": 1,
    "pretrain.batch_size": 4,
    "pretrain.log_every": 5,
    "pretrain.views.size": [32, 64],
    **TINY_EVAL,
}


def pipeline_env(repo: Path) -> dict[str, str]:
    # PYTHONPATH: the stages run this copy's code, not the editable install's.
    return {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1",
            "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}


def run_checked(cmd: list[str], repo: Path, timeout: float) -> subprocess.CompletedProcess:
    """`cmd` in `repo` with pipeline_env; fails the test, with its output, unless it exits 0."""
    proc = subprocess.run(cmd, check=False, cwd=repo, env=pipeline_env(repo), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def git_commit(repo: Path, message: str) -> None:
    """Commit everything in `repo` (made a git repository first if it is not one)."""
    git = ["git", "-c", "user.name=pixpro-tests", "-c", "user.email=tests@example.invalid",
           "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main"]
    if not (repo / ".git").exists():
        run_checked([*git, "init", "-q"], repo, 30)
    run_checked([*git, "add", "-A"], repo, 30)
    run_checked([*git, "commit", "-q", "--allow-empty", "-m", message], repo, 30)


def lock_stages(repo: Path) -> dict:
    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"]


def tiny_pipeline_repo(tmp_path: Path) -> Path:
    """A committed git copy of the working tree, with the tiny pipeline params and no dvc.lock."""
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_repo(repo)
    (repo / "dvc.lock").unlink(missing_ok=True)  # the main checkout's lock describes its own params
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params(PIPELINE_PARAMS), sort_keys=False))
    git_commit(repo, "copy for the test")
    return repo
