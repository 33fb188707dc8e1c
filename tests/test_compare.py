"""`pixpro compare`: the statistics against hand-computed values, the reading of `dvc exp show
--json`, the command's outputs and one-line errors, and (end to end) real queued experiments."""

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

from pixpro import compare as compare_module
from pixpro.compare import (
    compare_runs,
    format_value,
    markdown_report,
    parse_baseline,
    rows_from_exp_show,
    runs_frame,
    same_value,
    summarize,
    t_quantile,
    verdict,
)
from pixpro.errors import ConfigError, DataError
from stages.cli import app

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

@pytest.mark.parametrize("df, expected", [(1, 12.706204736174698), (2, T_975_DF2), (3, 3.182446305284263),
                                          (10, 2.2281388519649385), (30, 2.0422724563012373),
                                          (1000, 1.9623390808264078), (1e7, 1.959964)])
def test_t_quantile_matches_the_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, rel=1e-6)
    assert t_quantile(0.025, df) == pytest.approx(-expected, rel=1e-6)


def test_summarize_three_values_by_hand():
    summary = summarize([1.0, 2.0, 3.0])
    half = T_975_DF2 * 1.0 / math.sqrt(3)  # std (ddof 1) of 1, 2, 3 is 1
    assert summary.n == 3 and summary.mean == pytest.approx(2.0) and summary.std == pytest.approx(1.0)
    assert summary.low == pytest.approx(2.0 - half) and summary.high == pytest.approx(2.0 + half)


def test_summarize_one_value_has_no_spread_and_none_has_no_mean():
    one = summarize([0.4])
    assert one.n == 1 and one.mean == 0.4 and math.isnan(one.std) and math.isnan(one.low) and math.isnan(one.high)
    assert summarize([]).n == 0 and math.isnan(summarize([]).mean)


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
    assert f"| {WINDOW}=11 | 1 | 0 | 31.00 ± n/a | 20.00 ± n/a | +11.00 ± n/a | 1/1 | +1.00 ± n/a | 1 | unclear |" \
        in markdown
    assert "+10.00 ± 1.00 [+7.52, +12.48]" in markdown  # window 7's gain, points


def test_verdict_needs_an_interval_that_excludes_zero():
    assert verdict(summarize([0.04, 0.05, 0.06])) == "better"  # 0.05 ± 0.025
    assert verdict(summarize([-0.04, -0.05, -0.06])) == "worse"
    assert verdict(summarize([0.01, 0.02, 0.03])) == "unclear"  # 0.02 ± 0.025
    assert verdict(summarize([0.5])) == "unclear"  # one shared seed: no interval


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


# ------------------------------------------------------------------ reading dvc exp show --json

def _metrics(pretrained_miou: float, random_miou: float) -> dict:
    """The `metrics` part of one dvc exp show entry, all four files present."""
    return {
        "metrics/segmentation/pretrained.json": {"data": {"miou": pretrained_miou, "pixel_accuracy": 0.9}},
        "metrics/segmentation/random.json": {"data": {"miou": random_miou}},
        "metrics/retrieval/pretrained.json": {"data": {"knn_miou": pretrained_miou - 0.05, "precision@1": 0.6}},
        "metrics/retrieval/random.json": {"data": {"knn_miou": random_miou - 0.05, "precision@1": 0.5}},
    }


def _missing(path: str) -> dict:
    return {"error": {"type": "FileNotFoundError", "msg": f"[Errno 2] No such file or directory: '{path}'"}}


def _entry(rev: str, name: str | None, seed: int, window: int, metrics: dict) -> dict:
    params = {"seed": seed, "data": {"size": [32, 64]}, "pretrain": {"ppm": {"window": window}}}
    return {"rev": rev, "name": name, "error": None, "experiments": None,
            "data": {"rev": rev, "params": {"params.yaml": {"data": params}}, "metrics": metrics}}


def _experiment(entry: dict, state: str | None = "success") -> dict:
    executor = None if state is None else {"state": state, "name": "dvc-task", "local": {}}
    return {"revs": [entry], "executor": executor, "name": entry["name"]}


def exp_show_fixture() -> list[dict]:
    """What DVC 3.x prints (shape checked against `dvc exp show --json` of a real repo): the
    workspace (here: the experiment `w7s0` applied), the commit `main` without metrics, and its
    experiments, some finished, one queued (showing stale metrics), one failed, one incomplete."""
    no_metrics = {path: _missing(path) for path in _metrics(0, 0)}
    incomplete = {**_metrics(0.5, 0.2), "metrics/retrieval/random.json": _missing("metrics/retrieval/random.json")}
    experiments = [
        _experiment(_entry("a" * 40, "w7s0", 0, 7, _metrics(0.30, 0.20))),
        _experiment(_entry("b" * 40, "w7s1", 1, 7, _metrics(0.32, 0.21))),
        _experiment(_entry("c" * 40, "w5s0", 0, 5, _metrics(0.35, 0.20))),
        _experiment(_entry("d" * 40, "w5s1", 1, 5, _metrics(0.38, 0.21))),
        _experiment(_entry("e" * 40, "queued-one", 2, 5, _metrics(0.30, 0.20)), state="queued"),
        {**_experiment(_entry("f" * 40, "failed-one", 2, 7, no_metrics), state="failed")},
        _experiment(_entry("9" * 40, "half-done", 3, 7, incomplete)),
    ]
    experiments[5]["revs"][0]["error"] = {"msg": "Experiment run failed", "type": ""}
    workspace = _entry("workspace", None, 0, 7, _metrics(0.30, 0.20))
    commit = {**_entry("1" * 40, "main", 0, 7, no_metrics), "experiments": experiments}
    return [workspace, commit]


def test_rows_leave_out_queued_failed_and_incomplete_runs_and_count_the_workspace_once():
    found = runs_frame(rows_from_exp_show(exp_show_fixture()))
    assert found.frame["name"].tolist() == ["w7s0", "w7s1", "w5s0", "w5s1"]
    assert dict(found.left_out) == {
        "main": "no metrics", "queued-one": "queued", "failed-one": "failed",
        "half-done": "missing metrics/retrieval/random.json:knn_miou, metrics/retrieval/random.json:precision@1"}
    assert found.repeats == [("workspace", "w7s0")]  # the applied experiment is one run, not two
    assert found.frame.loc[0, "pretrain.ppm.window"] == 7 and found.frame.loc[0, "data.size"] == (32, 64)
    assert found.frame.loc[3, "pretrained_knn_miou"] == pytest.approx(0.33)
    table = compare_runs(found.frame).table
    assert table["n"].tolist() == [2, 2] and table["seeds"].tolist() == ["0,1", "0,1"]


def test_every_run_without_metrics_leaves_nothing_to_compare():
    shown = exp_show_fixture()
    shown[1]["experiments"] = [e for e in shown[1]["experiments"] if e["executor"]["state"] != "success"]
    shown[0]["data"]["metrics"] = {}
    found = runs_frame(rows_from_exp_show(shown))
    assert found.frame.empty and len(found.left_out) == 4


# -------------------------------------------------------------------------------- the command

@pytest.fixture
def fake_dvc(monkeypatch):
    """Make `pixpro compare` read `shown[0]` instead of running DVC."""
    shown = [exp_show_fixture()]
    monkeypatch.setattr(compare_module, "exp_show_json", lambda repo, all_commits=False: shown[0])
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


@pytest.mark.parametrize("args, message", [
    (["--by", "pretrain.ppm.windw"], "--by pretrain.ppm.windw: no experiment has this parameter"),
    (["--baseline", "pretrain.ppm.window=8"], "--baseline pretrain.ppm.window=8: no group has it"),
    (["--baseline", "window"], "--baseline window: expected KEY=VALUE"),
])
def test_bad_options_are_one_line_errors_and_write_nothing(fake_dvc, tmp_path, args, message):
    out = tmp_path / "reports"
    result = CliRunner().invoke(app, ["compare", "--out-dir", str(out), *args])
    assert result.exit_code == 1
    assert f"pixpro compare: error: {message}" in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_no_run_with_metrics_is_an_error_that_names_the_runs(fake_dvc, tmp_path):
    shown = fake_dvc[0]
    shown[1]["experiments"] = [e for e in shown[1]["experiments"] if e["executor"]["state"] != "success"]
    shown[0]["data"]["metrics"] = {}
    out = tmp_path / "reports"
    result = CliRunner().invoke(app, ["compare", "--out-dir", str(out)])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "pixpro compare: error: no experiment in . has all its metrics (left out: workspace (no metrics), " \
           "main (no metrics), queued-one (queued)" in text, result.output
    assert not out.exists()


def test_a_folder_that_is_not_a_dvc_repository_is_an_error(tmp_path):
    result = CliRunner().invoke(app, ["compare", "--repo", str(tmp_path), "--out-dir", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "pixpro compare: error: `dvc exp show --json` failed in" in " ".join(result.output.split())
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
