"""`pixpro compare`: groups and paired gains against hand-computed values, the reading of
`dvc.api.exp_show()` rows and of the result CSVs, the command's outputs and one-line errors, and
(end to end) real queued experiments. The statistics themselves: tests/test_stats.py."""

from __future__ import annotations

import copy
import json
import math
import re
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from pixpro import runs as runs_module
from pixpro.compare import compare_runs, markdown_report, parse_baseline, same_value
from pixpro.errors import ConfigError, DataError
from pixpro.runs import (complete_runs, flatten, format_value, load_result_rows, parse_metric,
                         rows_from_exp_show, runs_frame)
from pixpro.stages.cli import app

WINDOW = "pretrain.ppm.window"
T_975_DF2 = 4.302652729911275  # Student's t, 97.5% quantile, 2 degrees of freedom (tables)


def run_row(name: str, window, seed: int, pretrained: float, random: float, **params) -> dict:
    """One run as compare_runs takes it; kNN and P@1 follow the probe scores at fixed offsets."""
    return {"name": name, "seed": seed, WINDOW: window, "pretrain.epochs": 6, **params,
            "pretrained_miou": pretrained, "random_miou": random,
            "pretrained_knn_miou": pretrained - 0.05, "random_knn_miou": random - 0.05,
            "pretrained_p1": pretrained + 0.2, "random_p1": random + 0.2}


def runs(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows)


# Gains (pretrained − random) per seed 0, 1, 2: window 7 (the baseline) [0.10, 0.11, 0.09];
# window 5 [0.15, 0.17, 0.13] = baseline + [0.05, 0.06, 0.04]; window 9 [0.13, 0.15, 0.10] =
# baseline + [0.03, 0.04, 0.01]; window 3 [0.04, 0.04, 0.04] = baseline − [0.06, 0.07, 0.05];
# window 11: one run (seed 0), gain 0.11.
SEEDED = [
    run_row("w7s0", 7, 0, 0.30, 0.20), run_row("w7s1", 7, 1, 0.32, 0.21), run_row("w7s2", 7, 2, 0.34, 0.25),
    run_row("w5s0", 5, 0, 0.35, 0.20), run_row("w5s1", 5, 1, 0.38, 0.21), run_row("w5s2", 5, 2, 0.38, 0.25),
    run_row("w9s0", 9, 0, 0.33, 0.20), run_row("w9s1", 9, 1, 0.36, 0.21), run_row("w9s2", 9, 2, 0.35, 0.25),
    run_row("w3s0", 3, 0, 0.24, 0.20), run_row("w3s1", 3, 1, 0.25, 0.21), run_row("w3s2", 3, 2, 0.29, 0.25),
    run_row("w11s0", 11, 0, 0.31, 0.20),
]


def group(comparison, label: str) -> dict:
    table = comparison.table
    (row,) = table[table["group"] == label].to_dict("records")
    return row


# ------------------------------------------------------------------------------- statistics

def test_groups_are_the_parameter_that_differs_and_the_gain_is_paired():
    comparison = compare_runs(runs(SEEDED))
    assert comparison.keys == [WINDOW]  # seed and the constant pretrain.epochs are not group keys
    assert comparison.table["group"].tolist() == [f"{WINDOW}={w}" for w in (3, 5, 7, 9, 11)]  # numeric order
    row = group(comparison, f"{WINDOW}=7")
    assert row["n"] == 3 and row["seeds"] == "0,1,2" and row[WINDOW] == "7"
    assert row["pretrained_miou_mean"] == pytest.approx(0.32)
    assert row["pretrained_miou_std"] == pytest.approx(0.02)  # 0.30, 0.32, 0.34
    assert row["random_miou_mean"] == pytest.approx(0.22)
    # The gain is per run (0.10, 0.11, 0.09), not the difference of means with both spreads.
    half = T_975_DF2 * 0.01 / math.sqrt(3)
    assert row["miou_gain_mean"] == pytest.approx(0.10)
    assert row["miou_gain_std"] == pytest.approx(0.01)
    assert row["miou_gain_ci_low"] == pytest.approx(0.10 - half)
    assert row["miou_gain_ci_high"] == pytest.approx(0.10 + half)
    assert row["miou_gain_positive"] == 3
    assert row["p1_gain_mean"] == pytest.approx(0.10) and row["knn_miou_gain_mean"] == pytest.approx(0.10)


def test_positive_gains_are_counted():
    rows = [run_row("a", 7, 0, 0.30, 0.20), run_row("b", 7, 1, 0.20, 0.21), run_row("c", 7, 2, 0.25, 0.25)]
    row = compare_runs(runs(rows)).table.iloc[0]
    assert row["miou_gain_positive"] == 1  # +0.10, −0.01 and 0 (not a gain)


def test_baseline_difference_is_paired_by_seed_with_a_verdict():
    comparison = compare_runs(runs(SEEDED), baseline={WINDOW: 7})
    assert comparison.baseline == f"{WINDOW}=7"
    assert group(comparison, f"{WINDOW}=7")["miou_vs_baseline_verdict"] == "baseline"

    better = group(comparison, f"{WINDOW}=5")  # differences 0.05, 0.06, 0.04
    half = T_975_DF2 * 0.01 / math.sqrt(3)
    assert better["miou_vs_baseline_n"] == 3
    assert better["miou_vs_baseline_mean"] == pytest.approx(0.05)
    assert better["miou_vs_baseline_std"] == pytest.approx(0.01)
    assert better["miou_vs_baseline_ci_low"] == pytest.approx(0.05 - half)  # 0.025 > 0
    assert better["miou_vs_baseline_ci_high"] == pytest.approx(0.05 + half)
    assert better["miou_vs_baseline_verdict"] == "better"

    unclear = group(comparison, f"{WINDOW}=9")  # differences 0.03, 0.04, 0.01: interval includes 0
    std = math.sqrt(((0.03 - 0.08 / 3) ** 2 + (0.04 - 0.08 / 3) ** 2 + (0.01 - 0.08 / 3) ** 2) / 2)
    assert unclear["miou_vs_baseline_mean"] == pytest.approx(0.08 / 3)
    assert unclear["miou_vs_baseline_std"] == pytest.approx(std)
    assert unclear["miou_vs_baseline_ci_low"] == pytest.approx(0.08 / 3 - T_975_DF2 * std / math.sqrt(3))
    assert unclear["miou_vs_baseline_ci_low"] < 0 < unclear["miou_vs_baseline_ci_high"]
    assert unclear["miou_vs_baseline_verdict"] == "unclear"

    worse = group(comparison, f"{WINDOW}=3")  # differences −0.06, −0.07, −0.05
    assert worse["miou_vs_baseline_mean"] == pytest.approx(-0.06)
    assert worse["miou_vs_baseline_verdict"] == "worse"


def test_baseline_pairs_only_the_seeds_both_groups_have():
    rows = [run_row("b0", 7, 0, 0.30, 0.20), run_row("b1", 7, 1, 0.32, 0.21), run_row("b2", 7, 2, 0.34, 0.25),
            run_row("o1", 5, 1, 0.36, 0.21), run_row("o2", 5, 2, 0.37, 0.25), run_row("o3", 5, 3, 0.90, 0.10)]
    row = group(compare_runs(runs(rows), baseline={WINDOW: 7}), f"{WINDOW}=5")
    assert row["n"] == 3 and row["miou_vs_baseline_n"] == 2  # seeds 1 and 2; 0 and 3 have no partner
    assert row["miou_vs_baseline_mean"] == pytest.approx(((0.15 - 0.11) + (0.12 - 0.09)) / 2)


def test_a_single_run_group_is_shown_without_an_interval():
    comparison = compare_runs(runs(SEEDED), baseline={WINDOW: 7})
    single = group(comparison, f"{WINDOW}=11")
    assert single["n"] == 1 and single["miou_gain_mean"] == pytest.approx(0.11)
    assert math.isnan(single["miou_gain_std"]) and math.isnan(single["miou_gain_ci_low"])
    assert single["miou_vs_baseline_n"] == 1 and single["miou_vs_baseline_verdict"] == "unclear"
    markdown = markdown_report(comparison)
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in markdown.splitlines()
             if line.startswith(f"| {WINDOW}=11 ")]
    assert len(cells) == 3  # one table per metric
    assert cells[0] == [f"{WINDOW}=11", "1", "0", "31.00 ± n/a", "20.00 ± n/a", "+11.00 ± n/a", "1/1",
                        "+1.00 ± n/a", "1", "unclear"]
    assert "+10.00 ± 1.00 [+7.52, +12.48]" in markdown  # window 7's gain, points


def test_by_names_the_groups_and_an_unknown_key_is_an_error():
    rows = [run_row("a", 7, 0, 0.30, 0.20, **{"pretrain.loss.contrast": 1.0}),
            run_row("b", 5, 0, 0.31, 0.20, **{"pretrain.loss.contrast": 0.0}),
            run_row("c", 7, 1, 0.32, 0.21, **{"pretrain.loss.contrast": 0.0})]
    assert compare_runs(runs(rows)).keys == [WINDOW, "pretrain.loss.contrast"]
    by_window = compare_runs(runs(rows), by=[WINDOW])
    assert by_window.table["group"].tolist() == [f"{WINDOW}=5", f"{WINDOW}=7"]
    assert by_window.table["n"].tolist() == [1, 2]
    with pytest.raises(ConfigError, match=r"--by pretrain\.ppm\.windw: no experiment has this parameter"):
        compare_runs(runs(rows), by=["pretrain.ppm.windw"])


def test_no_experiments_is_an_error():
    with pytest.raises(DataError, match="no experiments to compare"):
        compare_runs(pd.DataFrame())


def test_one_group_when_nothing_differs_and_lists_group_like_values():
    rows = [run_row("a", 7, 0, 0.30, 0.20, **{"data.size": (32, 64)}),
            run_row("b", 7, 1, 0.32, 0.21, **{"data.size": (32, 64)}),
            run_row("c", 7, 0, 0.31, 0.20, **{"data.size": (64, 128)})]
    assert compare_runs(runs(rows[:2])).table["group"].tolist() == ["all runs"]
    assert compare_runs(runs(rows)).table["group"].tolist() == ["data.size=[32, 64]", "data.size=[64, 128]"]


def test_baseline_option_parsing_and_matching():
    assert parse_baseline(["pretrain.ppm.window=7", "pretrain.optim.name=lars"]) == {
        WINDOW: 7, "pretrain.optim.name": "lars"}
    assert same_value(7, 7.0) and same_value((32, 64), [32, 64]) and not same_value(True, 1)
    assert format_value(None) == "null" and format_value(False) == "false"
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_baseline(["pretrain.ppm.window"])
    with pytest.raises(ConfigError, match=r"--baseline pretrain\.ppm\.window=8: no group has it"):
        compare_runs(runs(SEEDED), baseline={WINDOW: 8})
    with pytest.raises(ConfigError, match=r"--baseline pretrain\.epochs=6: matches 5 groups"):
        compare_runs(runs(SEEDED), baseline={"pretrain.epochs": 6})
    with pytest.raises(ConfigError, match=r"--baseline nope: no experiment has this parameter"):
        compare_runs(runs(SEEDED), baseline={"nope": 1})


# ------------------------------------------------------------------ reading dvc.api.exp_show()

PARAMS = {"seed": 0, "data": {"size": [32, 64]}, "pretrain": {"ppm": {"window": 7}, "optim": {"name": "adamw"}}}
SOURCES = {
    "miou": ("metrics/segmentation/{}.json:miou", 0.0),
    "knn_miou": ("metrics/retrieval/{}.json:knn_miou", -0.05),
    "p1": ("metrics/retrieval/{}.json:precision@1", 0.2),
}


def _row(rev: str, name: str | None, seed: int, window: int, scores: tuple[float, float] | None,
         typ: str = "branch_commit", state: str | None = None) -> dict:
    """One row as dvc.api.exp_show() returns it (shape checked against DVC 3.67 on a real repo):
    numbers as floats, lists as text, '!' for a metric it could not read, None for none."""
    row = {"Experiment": name, "rev": rev, "typ": typ, "Created": "02:32 AM", "parent": None, "State": state,
           "Executor": "Dvc-task" if state else None, "seed": float(seed), "data.size": "[32, 64]",
           "pretrain.ppm.window": float(window), "pretrain.optim.name": "adamw", "pixpro/train.py": "9ce76f7f"}
    for backbone, score in zip(("pretrained", "random"), scores or (None, None)):
        for path, offset in SOURCES.values():
            row[path.format(backbone)] = "!" if score is None else score + offset
    return row


def exp_show_fixture() -> list[dict]:
    """The workspace (here: the experiment `w7s0` applied), the commit `main` without metrics,
    and its experiments: some finished, one queued (showing stale metrics), one failed, one
    incomplete."""
    half_done = _row("9999999", "half-done", 3, 7, (0.5, 0.2))
    half_done["metrics/retrieval/random.json:knn_miou"] = "!"
    half_done["metrics/retrieval/random.json:precision@1"] = None
    return [
        _row("workspace", None, 0, 7, (0.30, 0.20), typ="baseline"),
        _row("main", None, 0, 7, None, typ="baseline"),
        _row("aaaaaaa", "w7s0", 0, 7, (0.30, 0.20)),
        _row("bbbbbbb", "w7s1", 1, 7, (0.32, 0.21)),
        _row("ccccccc", "w5s0", 0, 5, (0.35, 0.20)),
        _row("ddddddd", "w5s1", 1, 5, (0.38, 0.21)),
        _row("eeeeeee", "queued-one", 2, 5, (0.30, 0.20), typ="branch_base", state="Queued"),
        _row("fffffff", "failed-one", 2, 7, None, state="Failed"),
        half_done,
    ]


def test_rows_leave_out_queued_failed_and_incomplete_runs_and_count_the_workspace_once():
    found = runs_frame(rows_from_exp_show(exp_show_fixture(), flatten(PARAMS)))
    assert found.frame["name"].tolist() == ["w7s0", "w7s1", "w5s0", "w5s1"]
    assert dict(found.left_out) == {
        "main": "no metrics", "queued-one": "queued", "failed-one": "failed",
        "half-done": "missing metrics/retrieval/random.json:knn_miou, metrics/retrieval/random.json:precision@1"}
    assert found.repeats == [("workspace", "w7s0")]  # the applied experiment is one run, not two
    # Back to params.yaml's types: 7.0 -> 7, '[32, 64]' -> (32, 64); the dep column is no parameter.
    assert found.frame.loc[0, "pretrain.ppm.window"] == 7 and type(found.frame.loc[0, "seed"]) is int
    assert found.frame.loc[0, "data.size"] == (32, 64) and found.frame.loc[0, "pretrain.optim.name"] == "adamw"
    assert "pixpro/train.py" not in found.frame
    assert found.frame.loc[3, "pretrained_knn_miou"] == pytest.approx(0.33)
    table = compare_runs(found.frame).table
    assert table["group"].tolist() == ["pretrain.ppm.window=5", "pretrain.ppm.window=7"]
    assert table["n"].tolist() == [2, 2] and table["seeds"].tolist() == ["0,1", "0,1"]


def test_a_parameter_dvc_prefixes_with_its_file_is_still_read():
    row = _row("aaaaaaa", "w7s0", 0, 7, (0.30, 0.20))
    row["params.yaml:seed"] = row.pop("seed")  # what DVC writes when a metric is also called `seed`
    (found,) = rows_from_exp_show([row], flatten(PARAMS))
    assert found.params["seed"] == 0


def test_booleans_nulls_and_whole_numbers_get_params_yaml_types_back():
    row = _row("aaaaaaa", "w7s0", 0, 7, (0.30, 0.20))
    row.update({"pretrain.amp": "True", "pretrain.init": "None", "pretrain.ppm.window": 9.0})
    params = flatten({**PARAMS, "pretrain": {"amp": False, "init": None, "ppm": {"window": None}}})
    (found,) = rows_from_exp_show([row], params)
    assert found.params["pretrain.amp"] is True and found.params["pretrain.init"] is None
    assert found.params["pretrain.ppm.window"] == 9 and type(found.params["pretrain.ppm.window"]) is int
    assert format_value(found.params["pretrain.init"]) == "null"


def test_every_run_without_metrics_leaves_nothing_to_compare():
    shown = [row for row in exp_show_fixture() if row["State"] or row["typ"] == "baseline"]
    shown[0] = _row("workspace", None, 0, 7, None, typ="baseline")
    found = runs_frame(rows_from_exp_show(shown, flatten(PARAMS)))
    assert found.frame.empty and len(found.left_out) == 4


def test_a_finetune_metric_reads_its_own_files():
    metric = parse_metric("finetune.miou_5pct")
    assert metric.folder == "finetune" and metric.key == "miou_5pct"
    row = _row("aaaaaaa", "w7s0", 0, 7, (0.30, 0.20))
    row.update({"metrics/finetune/pretrained.json:miou_5pct": 0.28, "metrics/finetune/random.json:miou_5pct": 0.25})
    found = runs_frame(rows_from_exp_show([row], flatten(PARAMS), runs_module.metric_sources([metric])),
                       ["pretrained_finetune.miou_5pct", "random_finetune.miou_5pct"])
    comparison = compare_runs(found.frame, metrics=[metric])
    assert comparison.table.loc[0, "finetune.miou_5pct_gain_mean"] == pytest.approx(0.03)
    assert "## finetune.miou_5pct" in markdown_report(comparison)


def test_a_metric_that_is_neither_a_default_nor_folder_key_is_an_error():
    with pytest.raises(ConfigError, match=r"--metric miou_5pct: expected one of miou, knn_miou, p1 or FOLDER\.KEY"):
        parse_metric("miou_5pct")


# --------------------------------------------------------------------- the result CSVs

CSV_COLUMNS = ["setting", "seed", "pretrained_miou", "random_miou", "gain", "pretrained_knn_miou", "random_knn_miou",
               "knn_gain", "pretrained_p1", "random_p1", "partner_gap", "seconds"]


def write_results(folder: Path) -> Path:
    """A seed-sweep result file: setting `base` seeds 0, 1 and `other` seeds 0, 1; the per-run
    folders hold finetune JSONs (base seed 0), a summary.md table (other seed 1), a per-class
    IoU table (base seed 0), or nothing."""
    rows = [("base", 0, 0.30, 0.20), ("base", 1, 0.32, 0.21), ("other", 0, 0.35, 0.20), ("other", 1, 0.38, 0.21)]
    lines = [",".join(CSV_COLUMNS)]
    for setting, seed, pretrained, random in rows:
        lines.append(f"{setting},{seed},{pretrained},{random},{pretrained - random},{pretrained - 0.05},"
                     f"{random - 0.05},{pretrained - random},{pretrained + 0.2},{random + 0.2},0.7,100.0")
    csv = folder / "study.csv"
    csv.write_text("\n".join(lines) + "\n")
    runs = folder / "study_curves"
    (runs / "base_seed0").mkdir(parents=True)
    for backbone, score in (("pretrained", 0.28), ("random", 0.25)):
        (runs / "base_seed0" / f"finetune_{backbone}.json").write_text(
            json.dumps({"miou_5pct": score, "labelled_images_5pct": 10}))
        (runs / "base_seed0" / f"{backbone}_per_class_iou.csv").write_text(f"class,iou\nroad,{score + 0.5}\n")
    (runs / "base_seed1").mkdir()
    (runs / "other_seed1").mkdir()
    (runs / "other_seed1" / "summary.md").write_text(
        "## Label efficiency\n\n|  | pretrained | random | gain |\n|:--|--:|--:|--:|\n"
        "| 5% of the labels (70 images) | 0.2980 | 0.2561 | 0.0419 |\n")
    return csv


def test_result_rows_carry_the_csv_the_finetune_scores_and_per_class_iou(tmp_path):
    frame = load_result_rows(write_results(tmp_path))
    assert frame["name"].tolist() == ["base_seed0", "base_seed1", "other_seed0", "other_seed1"]
    assert frame["partner_gap"].tolist() == [0.7] * 4
    assert frame["pretrained_finetune.miou_5pct"].tolist()[0] == 0.28
    assert frame["random_finetune.miou_5pct"].tolist()[3] == 0.2561  # from summary.md
    assert frame["pretrained_finetune.miou_5pct"].isna().tolist() == [False, True, True, False]
    assert frame.loc[0, "pretrained_segmentation.iou.road"] == pytest.approx(0.78)
    assert "labelled_images_5pct" not in " ".join(frame.columns)


def test_result_rows_pair_by_seed_within_settings(tmp_path):
    frame = load_result_rows(write_results(tmp_path))
    comparison = compare_runs(frame, by=["setting"], baseline={"setting": "base"})
    other = group(comparison, "setting=other")  # gains 0.15, 0.17 against 0.10, 0.11
    assert other["miou_gain_mean"] == pytest.approx(0.16)
    assert other["miou_vs_baseline_n"] == 2 and other["miou_vs_baseline_mean"] == pytest.approx(0.055)
    finetune = [parse_metric("finetune.miou_5pct")]
    complete = complete_runs(frame, finetune)
    assert complete.frame["name"].tolist() == ["base_seed0", "other_seed1"]
    assert [name for name, _ in complete.left_out] == ["base_seed1", "other_seed0"]
    table = compare_runs(complete.frame, by=["setting"], metrics=finetune).table
    assert table["finetune.miou_5pct_gain_mean"].tolist() == pytest.approx([0.03, 0.2980 - 0.2561])


def test_a_file_that_is_no_result_file_is_an_error(tmp_path):
    (tmp_path / "other.csv").write_text("label,miou\na,0.1\n")
    with pytest.raises(DataError, match="other.csv: not a seed-sweep result file"):
        load_result_rows(tmp_path / "other.csv")
    with pytest.raises(DataError, match="missing.csv: no such result file"):
        load_result_rows(tmp_path / "missing.csv")
    with pytest.raises(ConfigError, match="--metric: no run has the score pretrained_finetune.miou_50pct"):
        complete_runs(load_result_rows(write_results(tmp_path)), [parse_metric("finetune.miou_50pct")])


# -------------------------------------------------------------------------------- the command

@pytest.fixture
def fake_dvc(monkeypatch):
    """Make `pixpro compare` read `shown[0]` instead of asking DVC."""
    shown = [exp_show_fixture()]
    monkeypatch.setattr(runs_module, "exp_show_rows", lambda repo, all_commits=False: (shown[0], flatten(PARAMS)))
    return shown


def test_command_writes_the_table_markdown_csv_and_plot(fake_dvc, tmp_path):
    out = tmp_path / "reports"
    result = CliRunner().invoke(app, ["compare", "--out-dir", str(out), "--baseline", "pretrain.ppm.window=7"])
    assert result.exit_code == 0, result.output
    assert "warning" in result.output and "queued-one (queued)" in result.output and "failed-one (failed)" in result.output
    assert "probe mIoU (points)" in result.output and "verdict" in result.output
    csv = pd.read_csv(out / "compare.csv")
    assert csv["group"].tolist() == ["pretrain.ppm.window=5", "pretrain.ppm.window=7"]
    assert csv["miou_gain_mean"].tolist() == pytest.approx([(0.15 + 0.17) / 2, (0.10 + 0.11) / 2])
    assert csv["miou_vs_baseline_verdict"].tolist() == ["unclear", "baseline"]
    assert "## probe mIoU" in (out / "compare.md").read_text()
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_command_compares_a_result_file_on_a_finetune_metric(tmp_path):
    out = tmp_path / "reports"
    result = CliRunner().invoke(app, ["compare", "--results", str(write_results(tmp_path)), "--out-dir", str(out),
                                      "--metric", "finetune.miou_5pct"])
    assert result.exit_code == 0, result.output
    assert "left out 2 without complete metrics: base_seed1" in " ".join(result.output.split())
    csv = pd.read_csv(out / "compare.csv")
    assert csv["group"].tolist() == ["setting=base", "setting=other"]
    assert csv["finetune.miou_5pct_gain_mean"].tolist() == pytest.approx([0.03, 0.2980 - 0.2561])
    assert "## finetune.miou_5pct" in (out / "compare.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--by", "pretrain.ppm.windw"], "--by pretrain.ppm.windw: no experiment has this parameter"),
    (["--baseline", "pretrain.ppm.window=8"], "--baseline pretrain.ppm.window=8: no group has it"),
    (["--baseline", "window"], "--baseline window: expected KEY=VALUE"),
    (["--metric", "finetune"], "--metric finetune: expected one of miou, knn_miou, p1 or FOLDER.KEY"),
])
def test_bad_options_are_one_line_errors_and_write_nothing(fake_dvc, tmp_path, args, message):
    out = tmp_path / "reports"
    result = CliRunner().invoke(app, ["compare", "--out-dir", str(out), *args])
    assert result.exit_code == 1
    assert f"pixpro compare: error: {message}" in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_no_run_with_metrics_is_an_error_that_names_the_runs(fake_dvc, tmp_path):
    fake_dvc[0] = [row for row in fake_dvc[0] if row["State"] or row["typ"] == "baseline"]
    fake_dvc[0][0] = _row("workspace", None, 0, 7, None, typ="baseline")
    out = tmp_path / "reports"
    result = CliRunner().invoke(app, ["compare", "--out-dir", str(out)])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "pixpro compare: error: no experiment in . has all its metrics (left out: workspace (no metrics), " \
           "main (no metrics), queued-one (queued)" in text, result.output
    assert not out.exists()


def test_a_folder_that_is_not_a_dvc_repository_is_an_error(tmp_path):
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    result = CliRunner().invoke(app, ["compare", "--repo", str(tmp_path), "--out-dir", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert f"pixpro compare: error: cannot read the DVC experiments of {tmp_path}" in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------- end to end, real experiments

# The tiniest pipeline that still runs every stage: 4 + 2 images, one pretraining step (at full
# lr, no warm-up, so that the PPM window changes the backbone), as few pictures as allowed.
E2E_PARAMS = {
    "data.synthetic.train": 4,
    "data.synthetic.val": 2,
    "pretrain.optim.warmup_epochs": 0.0,
    "extract.pixels_per_image": 8,
    "probe.max_iter": 20,
    "evaluate.overlays": 0,
    "retrieval.queries": 20,
    "retrieval.examples": 1,  # 0 would leave no plots/retrieval folder, an output DVC requires
}


def _git_json(repo: Path, rev: str, path: str) -> dict:
    """A file of an experiment's commit, read with git: what the run wrote, not what DVC reports."""
    shown = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=repo, capture_output=True, text=True, check=True)
    return yaml.safe_load(shown.stdout) if path.endswith(".yaml") else json.loads(shown.stdout)


def test_two_settings_by_two_seeds_queued_match_their_metrics_files(tmp_path):
    # The README's recipe at tiny scale: 2 settings x 2 seeds queued with `dvc exp run --queue`,
    # run by `dvc queue start -j 2`. Each queued experiment runs in a fresh temporary workspace,
    # so every stage runs. The queue's workers keep the stdout they are given: a file here, so
    # that `dvc queue start` returns at once and the test polls `dvc queue status`.
    from tests.conftest import PIPELINE_PARAMS, copy_repo, git_commit, pipeline_env, run_checked, tiny_params

    repo = tmp_path / "repo"
    repo.mkdir()
    copy_repo(repo)
    # The main checkout's lock and metrics (kept in git) describe its own params, not these.
    (repo / "dvc.lock").unlink(missing_ok=True)
    for metrics in (repo / "metrics").rglob("*.json"):
        metrics.unlink()
    params = tiny_params({**PIPELINE_PARAMS, **E2E_PARAMS})
    (repo / "params.yaml").write_text(yaml.safe_dump(copy.deepcopy(params), sort_keys=False))
    git_commit(repo, "copy for the test")
    run_checked(["dvc", "exp", "run", "--queue", "-S", "seed=0,1", "-S", "pretrain.ppm.window=3,5"], repo,
                timeout=300)
    log = tmp_path / "queue.log"
    with open(log, "w") as handle:
        subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=repo, env=pipeline_env(repo), stdout=handle,
                       stderr=subprocess.STDOUT, check=True, timeout=120)
    deadline = time.monotonic() + 900
    while True:
        status = run_checked(["dvc", "queue", "status"], repo, timeout=120).stdout
        if not re.search(r" (Queued|Running)\s*$", status, re.MULTILINE):
            break
        assert time.monotonic() < deadline, f"queue still busy after 15 min:\n{status}\n{log.read_text()}"
        time.sleep(5)
    assert len(re.findall(r" Success\s*$", status, re.MULTILINE)) == 4, f"{status}\n{log.read_text()}"

    out = tmp_path / "reports"
    result = run_checked(["pixpro", "compare", "--out-dir", str(out), "--baseline", "pretrain.ppm.window=3"], repo,
                         timeout=300)
    # Nothing ran in the workspace or on main: both are listed as left out, the 4 runs are not.
    assert "workspace (no metrics)" in result.stderr and "main (no metrics)" in result.stderr, result.stderr

    # The experiments' own files, read from their commits with git.
    shown = json.loads(run_checked(["dvc", "exp", "show", "--json"], repo, timeout=120).stdout)
    experiments = [exp for commit in shown for exp in commit.get("experiments") or []]
    assert len(experiments) == 4, experiments
    expected: dict[int, list[dict]] = {3: [], 5: []}
    for exp in experiments:
        rev = exp["revs"][0]["rev"]
        run_params = _git_json(repo, rev, "params.yaml")
        scores = {b: {**_git_json(repo, rev, f"metrics/segmentation/{b}.json"),
                      **_git_json(repo, rev, f"metrics/retrieval/{b}.json")} for b in ("pretrained", "random")}
        expected[run_params["pretrain"]["ppm"]["window"]].append({"seed": run_params["seed"], **scores})

    csv = pd.read_csv(out / "compare.csv").set_index("pretrain.ppm.window")
    assert sorted(csv.index) == [3, 5]
    for window, runs_of_window in expected.items():
        row = csv.loc[window]
        assert row["n"] == 2 and sorted(r["seed"] for r in runs_of_window) == [0, 1]
        assert row["seeds"] == "0,1"
        for metric, key in (("miou", "miou"), ("knn_miou", "knn_miou"), ("p1", "precision@1")):
            pretrained = [r["pretrained"][key] for r in runs_of_window]
            random = [r["random"][key] for r in runs_of_window]
            gains = [p - r for p, r in zip(pretrained, random)]
            assert row[f"pretrained_{metric}_mean"] == pytest.approx(sum(pretrained) / 2)
            assert row[f"random_{metric}_mean"] == pytest.approx(sum(random) / 2)
            assert row[f"{metric}_gain_mean"] == pytest.approx(sum(gains) / 2)
            assert row[f"{metric}_gain_std"] == pytest.approx(abs(gains[0] - gains[1]) / math.sqrt(2))
            assert row[f"{metric}_gain_positive"] == sum(g > 0 for g in gains)
    assert csv.loc[3, "miou_vs_baseline_verdict"] == "baseline"
    assert csv.loc[5, "miou_vs_baseline_n"] == 2
    assert (out / "compare.md").is_file() and (out / "compare.png").is_file()
