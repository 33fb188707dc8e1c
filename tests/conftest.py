"""Shared fixtures: a tiny raw Cityscapes tree and tiny params files built from the repo's own."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

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
