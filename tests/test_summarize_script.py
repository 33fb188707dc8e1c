"""experiments/summarize.py: the paired ablation table and the label-efficiency table, against
numbers worked out by hand."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def summarize_script():
    spec = importlib.util.spec_from_file_location("summarize_script", ROOT / "experiments/summarize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def runs(*rows):
    return pd.DataFrame(rows, columns=["setting", "seed", "gain", "knn_gain"])


def test_paired_table_differences_by_seed(summarize_script):
    frame = runs(("base", 0, 0.05, 0.04), ("base", 1, 0.07, 0.05), ("base", 1, 0.07, 0.05),  # a repeated row
                 ("other", 1, 0.06, 0.07), ("other", 0, 0.08, 0.04), ("other", 2, 0.50, 0.50))  # seed 2: no pair
    lines = summarize_script.paired_table(frame, "base")
    assert len(lines) == 3
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    # Probe: seed 1 -> -1.0, seed 0 -> +3.0 points: mean +1.0, std 2.83, t(0.975, 1) = 12.706.
    assert cells[0] == "other" and cells[1] == "1,0"
    assert cells[2] == "+1.0 ± 2.8 [-24.4, +26.4]"
    assert cells[3] == "+1.0 ± 1.4 [-11.7, +13.7]"  # kNN: +2.0 and 0.0
    assert cells[4] == "-1.0, +3.0"


def test_paired_table_needs_the_baseline(summarize_script):
    with pytest.raises(SystemExit, match="no rows of setting 'missing'"):
        summarize_script.paired_table(runs(("base", 0, 0.05, 0.04)), "missing")


def write_run(folder: Path, scores: dict[str, dict[str, float]] | None = None, summary: str | None = None) -> Path:
    folder.mkdir(parents=True)
    for backbone, values in (scores or {}).items():
        (folder / f"finetune_{backbone}.json").write_text(json.dumps(values))
    if summary is not None:
        (folder / "summary.md").write_text(summary)
    return folder


SUMMARY = """## Label efficiency (fine-tuned end to end, val mIoU)

|                                  |   pretrained |   random |   gain |
|:---------------------------------|-------------:|---------:|-------:|
| 5% of the labels (70 images)     |       0.2980 |   0.2561 | 0.0419 |
| 100% of the labels (1403 images) |       0.2984 |   0.2405 | 0.0579 |
"""


def test_finetune_scores_from_json_then_from_summary(summarize_script, tmp_path):
    from_json = write_run(tmp_path / "a", {"pretrained": {"miou_5pct": 0.3, "miou_100pct": 0.4, "steps": 20},
                                           "random": {"miou_5pct": 0.2, "miou_100pct": 0.25}}, summary="ignored")
    assert summarize_script.finetune_scores(from_json) == {5: (0.3, 0.2), 100: (0.4, 0.25)}
    from_text = write_run(tmp_path / "b", summary=SUMMARY)
    assert summarize_script.finetune_scores(from_text) == {5: (0.298, 0.2561), 100: (0.2984, 0.2405)}
    empty = write_run(tmp_path / "c", summary="# no table here\n")
    with pytest.raises(SystemExit, match="no label-efficiency table"):
        summarize_script.finetune_scores(empty)


def test_finetune_table_over_two_runs(summarize_script, tmp_path):
    first = write_run(tmp_path / "s0", {"pretrained": {"miou_5pct": 0.30, "miou_20pct": 0.5},
                                        "random": {"miou_5pct": 0.20, "miou_20pct": 0.5}})
    second = write_run(tmp_path / "s1", {"pretrained": {"miou_5pct": 0.34}, "random": {"miou_5pct": 0.20}})
    lines = summarize_script.finetune_table([first, second], [0, 1])
    assert len(lines) == 3  # 20% is in one run only: left out
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    # Gains +10 and +14 points: mean 12, std 2.83, half-width 12.706 * 2 = 25.4.
    assert cells == ["5%", "32.0 ± 2.8", "20.0 ± 0.0", "12.0 ± 2.8", "[-13.4, +37.4]", "+10.0, +14.0"]
