"""Shared fixtures and helpers: a tiny raw Cityscapes tree, tiny params (files and validated
objects) built from the repo's own, the tiny data prepared, and a copy of the working tree."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from pixpro.config import Params, params_from_dict
from pixpro.data.synthetic import generate_tree

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"

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
    run_prepare(make_params(), root / "data", root / "metrics.json", root / "plots")
    return root / "data"


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
