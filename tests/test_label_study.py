"""experiments/label_study.py: the params overlay, the rows it reads from `pixpro finetune`'s
resume files, and a whole study collected twice without duplicate rows."""

from __future__ import annotations

import json
import math
import sys

import pandas as pd
import pytest
import yaml

from tests.conftest import load_experiment


@pytest.fixture(scope="module")
def study():
    return load_experiment("label_study")


def resume_file(curves: dict[float, list[tuple[int, float, float]]], images: dict[float, int]) -> dict:
    """A `pixpro finetune --resume` file's content: one finished result per fraction."""
    return {"fingerprint": {"recipe": "any"},
            "results": {repr(f): {"fraction": f, "labelled_images": images[f], "miou": curve[-1][1],
                                  "pixel_accuracy": curve[-1][2], "final_loss": 0.5, "skipped_batches": 0,
                                  "val_curve": [list(row) for row in curve]}
                        for f, curve in curves.items()}}


def test_the_overlay_replaces_only_the_keys_it_names(study):
    params = {"seed": 2, "finetune": {"steps": 20, "batch_size": 8, "amp": "cuda"}, "probe": {"max_iter": 9}}
    merged = study.overlaid_params(params, {"finetune": {"steps": 1000, "amp": "auto"}})
    assert merged == {"seed": 2, "finetune": {"steps": 1000, "batch_size": 8, "amp": "auto"}, "probe": {"max_iter": 9}}
    assert params["finetune"]["steps"] == 20  # the run's own params are left alone
    with pytest.raises(SystemExit, match="'finetun' is no section"):
        study.overlaid_params(params, {"finetun": {"steps": 1}})


def test_rows_take_the_probe_from_step_0_and_the_score_after_the_last_step(study):
    # Out of order on purpose: rows come out by fraction. 1.0 has no step-0 pass (no probe head).
    resume = resume_file({1.0: [(200, 0.36, 0.7), (400, 0.39, 0.75)],
                          0.05: [(0, 0.21, 0.5), (200, 0.25, 0.6), (400, 0.27, 0.61)]}, {1.0: 100, 0.05: 5})
    rows = study.fraction_rows(resume, {"seed": 0, "backbone": "random"})
    assert [(r["fraction"], r["labelled_images"], r["finetuned_miou"]) for r in rows] == [(0.05, 5, 0.27), (1.0, 100, 0.39)]
    assert rows[0]["probe_miou"] == 0.21 and math.isnan(rows[1]["probe_miou"])
    assert all(r["seed"] == 0 and r["backbone"] == "random" for r in rows)
    curve = study.curve_frame(resume)
    assert list(curve.columns) == ["fraction", "step", "miou", "pixel_accuracy"]
    assert curve[["fraction", "step"]].values.tolist() == [[0.05, 0], [0.05, 200], [0.05, 400], [1.0, 200], [1.0, 400]]


def test_a_study_is_collected_once_however_often_it_runs(study, tmp_path, monkeypatch):
    folder = tmp_path / "run"
    (folder / "models").mkdir(parents=True)
    (folder / "data" / "prepared").mkdir(parents=True)
    (folder / "models" / "backbone.pt").write_bytes(b"")
    (folder / "params.yaml").write_text(yaml.safe_dump(
        {"seed": 1, "threads": 2, "finetune": {"steps": 20, "crop_size": [64, 128], "amp": "cuda"}}))
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"finetune": {"steps": 1000, "crop_size": [64, 96], "amp": "auto"}}))
    scores = {"pretrained": (0.30, 0.40), "random": (0.20, 0.35)}
    calls = []

    def fake_finetune(run, work, backbone, threads):
        calls.append((run, backbone, threads, yaml.safe_load((work / "params.yaml").read_text())["finetune"]["steps"]))
        path = work / f"resume_{backbone}.json"
        low, high = scores[backbone]
        path.write_text(json.dumps(resume_file({0.05: [(0, low - 0.05, 0.5), (1000, low, 0.6)],
                                                1.0: [(0, high - 0.05, 0.6), (1000, high, 0.7)]}, {0.05: 1, 1.0: 20})))
        return path

    monkeypatch.setattr(study, "finetune", fake_finetune)
    out = tmp_path / "results" / "study.csv"
    out.parent.mkdir()
    argv = ["label_study.py", "--folder", str(folder), "--data", "idd", "--setting", "stages", "--out", str(out),
            "--overlay", str(overlay), "--work", str(tmp_path / "work")]
    monkeypatch.setattr(sys, "argv", argv)
    study.main()
    study.main()  # a rerun (resumed or finished) adds no row twice
    assert [c[1:] for c in calls] == [("pretrained", 2, 1000), ("random", 2, 1000)] * 2
    rows = pd.read_csv(out)
    assert len(rows) == 4
    assert rows.set_index(["backbone", "fraction"])["finetuned_miou"].to_dict() == {
        ("pretrained", 0.05): 0.30, ("pretrained", 1.0): 0.40, ("random", 0.05): 0.20, ("random", 1.0): 0.35}
    assert set(rows["crop_size"]) == {"64x96"} and set(rows["amp"]) == {"auto"} and set(rows["seed"]) == {1}
    assert rows["probe_miou"].round(2).tolist() == [0.25, 0.35, 0.15, 0.30]
    curves = tmp_path / "results" / "study_curves" / "stages_1000steps_seed1"
    assert sorted(p.name for p in curves.iterdir()) == ["val_curve_pretrained.csv", "val_curve_random.csv"]
    assert rows["last_weights_miou"].equals(rows["finetuned_miou"]) and set(rows["ema_decay"]) == {0.0}

    # Another recipe of the same seed (a weight average, another crop order): rows of its own.
    overlay.write_text(yaml.safe_dump({"finetune": {"steps": 1000, "crop_size": [64, 96], "amp": "auto",
                                                    "ema_decay": 0.995, "crop_seed": 1}}))
    study.main()
    rows = pd.read_csv(out)
    assert len(rows) == 8 and rows.groupby(["ema_decay", "crop_seed"]).size().to_dict() == {(0.0, 0): 4, (0.995, 1): 4}
    assert (tmp_path / "results" / "study_curves" / "stages_1000steps_ema0.995_crops1_seed1").is_dir()
    balanced = {"steps": 1000, "crop_size": [64, 96], "amp": "auto", "ema_decay": 0.995, "crop_seed": 1,
                "class_weighting": "balanced"}
    overlay.write_text(yaml.safe_dump({"finetune": balanced}))
    study.main()
    rows = pd.read_csv(out)
    assert rows.groupby(["ema_decay", "class_weighting", "crop_seed"]).size().to_dict() == {
        (0.0, "none", 0): 4, (0.995, "none", 1): 4, (0.995, "balanced", 1): 4}
    assert (tmp_path / "results" / "study_curves" / "stages_1000steps_ema0.995_balanced_crops1_seed1").is_dir()
    # Another budget of the same recipe: rows of its own too.
    overlay.write_text(yaml.safe_dump({"finetune": {"steps": 2000, "crop_size": [64, 96], "amp": "auto"}}))
    study.main()
    rows = pd.read_csv(out)
    assert rows.groupby("steps").size().to_dict() == {1000: 12, 2000: 4}
    assert (tmp_path / "results" / "study_curves" / "stages_2000steps_seed1").is_dir()


def test_a_weight_averaged_run_keeps_the_last_weights_score_next_to_the_averages(study):
    resume = resume_file({1.0: [(0, 0.30, 0.6), (1000, 0.40, 0.7)]}, {1.0: 20})
    plain = study.fraction_rows(resume, {})
    resume["results"]["1.0"]["last_weights_miou"] = 0.37
    averaged = study.fraction_rows(resume, {})
    assert plain[0]["last_weights_miou"] == 0.40  # without an average the last weights are what was scored
    assert (averaged[0]["finetuned_miou"], averaged[0]["last_weights_miou"]) == (0.40, 0.37)


def test_a_folder_without_a_finished_run_is_a_one_line_error(study, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["label_study.py", "--folder", str(tmp_path), "--data", "idd", "--setting", "s",
                                      "--out", str(tmp_path / "o.csv"), "--work", str(tmp_path / "w")])
    with pytest.raises(SystemExit, match="params.yaml not found: --folder must be a finished pipeline folder"):
        study.main()


def test_a_result_csv_with_other_columns_is_refused_not_appended_to(tmp_path):
    from pixpro.runs import append_result_rows

    path = tmp_path / "rows.csv"
    append_result_rows(path, ["seed", "miou"], [{"seed": 0, "miou": 0.3}])
    append_result_rows(path, ["seed", "miou"], [{"seed": 1, "miou": 0.4}])
    with pytest.raises(SystemExit, match=r"has the columns \['seed', 'miou'\], not \['seed', 'weighting', 'miou'\]"):
        append_result_rows(path, ["seed", "weighting", "miou"], [{"seed": 2, "weighting": "none", "miou": 0.5}])
    assert path.read_text() == "seed,miou\n0,0.3\n1,0.4\n"


def test_rows_written_before_a_recipe_column_count_as_its_default():
    from pixpro.runs import with_recipe_columns

    old = pd.DataFrame({"seed": [0, 1], "finetuned_miou": [0.3, 0.4]})
    filled = with_recipe_columns(old)
    assert filled[["ema_decay", "class_weighting", "crop_seed"]].values.tolist() == [[0.0, "none", 0]] * 2
    mixed = pd.DataFrame({"seed": [0, 1], "class_weighting": [None, "balanced"]})
    assert with_recipe_columns(mixed)["class_weighting"].tolist() == ["none", "balanced"]
