"""The data is a DVC dependency of `prepare` (`${data.root}` in dvc.yaml): an edited label, an
added or removed image makes the stage stale, and `dvc repro` reruns it. Checked for a folder
tree outside the repository and for a Cityscapes tree inside it, tracked with `dvc add`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import copy_repo, make_tree, run_checked, tiny_params
from tests.test_layouts import TABLE, write_pairs


@pytest.fixture
def repo(tmp_path) -> Path:
    """An uncommitted git copy of the working tree without its dvc.lock (DVC needs git, not a commit)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_repo(repo)
    (repo / "dvc.lock").unlink(missing_ok=True)
    run_checked(["git", "init", "-q"], repo, 30)
    return repo


def _params(repo: Path, **dotted) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params({"data.workers": 1, **dotted}), sort_keys=False))


def _status(repo: Path, *targets: str) -> dict:
    return json.loads(run_checked(["dvc", "status", "--json", *targets], repo, 120).stdout or "{}")


def _edit_label(label: Path, value: int) -> None:
    values = np.asarray(Image.open(label)).copy()
    values[:8, :8] = value
    Image.fromarray(values).save(label)


def test_a_folder_tree_outside_the_repository(repo, tmp_path):
    root = write_pairs(tmp_path / "raw")
    (tmp_path / "table.csv").write_text(TABLE)
    _params(repo, **{"data.source": "folder", "data.root": str(root), "data.image_suffix": "_image.jpg",
                     "data.label_suffix": "_label.png", "data.classes": str(tmp_path / "table.csv")})
    first = run_checked(["dvc", "repro", "prepare"], repo, 240)
    assert "Running stage 'synthesize'" not in first.stdout  # nothing reads the synthetic tree
    assert _status(repo, "prepare") == {}
    mask = repo / "data" / "prepared" / "val" / "seq0" / "val1_gtFine_trainIds.png"
    before = mask.read_bytes()

    _edit_label(root / "gtFine" / "val" / "seq0" / "val1_label.png", 3)
    assert _status(repo, "prepare") == {"prepare": [{"changed deps": {str(root): "modified"}}]}
    rerun = run_checked(["dvc", "repro", "prepare"], repo, 240)
    assert "Running stage 'prepare'" in rerun.stdout and mask.read_bytes() != before
    assert _status(repo, "prepare") == {}

    (root / "leftImg8bit" / "train" / "seq0" / "train2_image.jpg").unlink()
    (root / "gtFine" / "train" / "seq0" / "train2_label.png").unlink()
    assert _status(repo, "prepare") == {"prepare": [{"changed deps": {str(root): "modified"}}]}


def test_a_cityscapes_tree_tracked_with_dvc_add(repo):
    # Not under data/: git ignores that folder (pipeline outputs), and `dvc add` needs its .dvc file in git.
    make_tree(repo / "datasets" / "mytree")
    run_checked(["dvc", "add", "datasets/mytree"], repo, 120)
    _params(repo, **{"data.source": "cityscapes", "data.root": "datasets/mytree"})
    run_checked(["dvc", "repro", "prepare"], repo, 240)
    assert _status(repo, "prepare") == {}

    label = sorted((repo / "datasets" / "mytree" / "gtFine" / "train").rglob("*_labelIds.png"))[0]
    _edit_label(label, 7)  # road
    status = _status(repo)
    assert status["prepare"] == [{"changed deps": {"datasets/mytree": "modified"}}]
    assert status["datasets/mytree.dvc"] == [{"changed outs": {"datasets/mytree": "modified"}}]
    run_checked(["dvc", "add", "datasets/mytree"], repo, 120)  # the user records the new version
    rerun = run_checked(["dvc", "repro", "prepare"], repo, 240)
    assert "Running stage 'prepare'" in rerun.stdout
    assert "prepare" not in _status(repo)

    # Another tree at the same path is another dependency too.
    shutil.rmtree(repo / "datasets" / "mytree")
    make_tree(repo / "datasets" / "mytree", n_train=3)
    assert _status(repo, "prepare")["prepare"] == [{"changed deps": {"datasets/mytree": "modified"}}]

