"""experiments/stage_diagnostics.py: the per-class rows against a confusion matrix worked out by hand."""

from __future__ import annotations

import argparse
import csv

import pytest
import torch

from pixpro.metrics import ConfusionAccumulator
from tests.conftest import load_experiment


@pytest.fixture(scope="module")
def diagnostics():
    return load_experiment("stage_diagnostics")


def test_per_class_rows_hold_each_stages_iou_and_leave_an_absent_class_empty(diagnostics, tmp_path):
    accumulator = ConfusionAccumulator(3)
    # Class 0: 3 right, 1 called class 1 -> IoU 3 / 4; class 1: 1 right + that 1 -> 1 / 2; class 2 absent.
    accumulator.update(torch.tensor([[0, 0, 0, 1, 1]]), torch.tensor([[0, 0, 0, 0, 1]]))
    args = argparse.Namespace(data="syn", setting="default")
    out = tmp_path / "per_class.csv"
    for backbone in ("pretrained", "random"):  # the header once, rows appended
        diagnostics.write_per_class(out, args, 0, backbone, "as_saved", ("road", "car", "sky"), {-5: accumulator})
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6
    assert [(r["backbone"], r["stage"], r["class_name"]) for r in rows[:3]] == [
        ("pretrained", "-5", "road"), ("pretrained", "-5", "car"), ("pretrained", "-5", "sky")]
    assert float(rows[0]["iou"]) == pytest.approx(0.75)
    assert float(rows[1]["iou"]) == pytest.approx(0.5)
    assert rows[2]["iou"] == ""


def test_the_diagnostics_share_one_command_line():
    from pixpro.runs import measurement_parser

    args = measurement_parser("test").parse_args(["--folder", "/tmp/run", "--data", "idd", "--setting", "default",
                                                  "--out", "rows.csv"])
    assert (str(args.folder), args.data, args.setting, str(args.out)) == ("/tmp/run", "idd", "default", "rows.csv")
    assert args.backbones == ["pretrained", "random"]
    with pytest.raises(SystemExit):
        measurement_parser("test").parse_args(["--folder", "x", "--data", "d", "--setting", "s", "--out", "o",
                                               "--backbones", "imagenet"])
