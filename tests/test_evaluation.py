"""Evaluation: pixel sampling, the feature bank, the probe, frozen backbones, segmentation scores,
retrieval, the report, and the whole DVC pipeline (plus an experiment) on a tiny config."""

from __future__ import annotations

import errno
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from pixpro.config import ProbeConfig
from pixpro.data.cityscapes import IGNORE, NUM_CLASSES
from pixpro.data.classes import load_class_table
from pixpro.errors import CheckpointError, ConfigError, DataError, PixproError
from pixpro.evaluate import BoundedWriter, check_same_size, evaluate_segmentation
from pixpro.features import (
    balanced_pixels,
    extract_bank,
    load_frozen_backbone,
    split_rows,
)
from pixpro.metrics import confusion_matrix
from pixpro.probe import class_weights, fit_probe, probe_from_state, probe_state
from pixpro.report import summary_markdown
from pixpro.retrieval import run_retrieval, stratified_queries
from tests.conftest import (git_commit, lock_stages, make_eval_params, run_checked, save_backbone_file,
                            tiny_pipeline_repo)

CPU = torch.device("cpu")
CITYSCAPES = load_class_table("cityscapes")


@pytest.fixture(scope="module")
def random_backbone(tmp_path_factory):
    return load_frozen_backbone("random", make_eval_params(), tmp_path_factory.mktemp("nothing") / "absent.pt")


# --- balanced_pixels ----------------------------------------------------------------------------


def three_class_mask() -> torch.Tensor:
    """10 x 10: class 3 has 60 pixels, class 7 has 25, class 12 has 5, 10 are ignored."""
    flat = torch.full((100,), 3, dtype=torch.int64)
    flat[60:85] = 7
    flat[85:90] = 12
    flat[90:] = IGNORE
    return flat[torch.randperm(100, generator=torch.Generator().manual_seed(5))].reshape(10, 10)


def class_counts(mask: torch.Tensor, picked: torch.Tensor) -> dict[int, int]:
    values, counts = mask.flatten()[picked].unique(return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))


def test_balanced_pixels_gives_equal_counts_when_every_class_has_enough():
    mask = three_class_mask()
    picked = balanced_pixels(mask, 15, torch.Generator().manual_seed(0), NUM_CLASSES)
    assert picked.dtype == torch.int64 and picked.unique().numel() == 15
    assert class_counts(mask, picked) == {3: 5, 7: 5, 12: 5}


def test_balanced_pixels_small_class_gives_all_and_the_rest_go_to_the_others():
    mask = three_class_mask()
    picked = balanced_pixels(mask, 30, torch.Generator().manual_seed(0), NUM_CLASSES)
    counts = class_counts(mask, picked)
    assert picked.unique().numel() == 30
    assert counts[12] == 5 and counts[3] + counts[7] == 25 and abs(counts[3] - counts[7]) <= 1
    # Asking for more than there is gives every labelled pixel once, never an ignored one.
    everything = balanced_pixels(mask, 1000, torch.Generator().manual_seed(0), NUM_CLASSES)
    assert sorted(everything.tolist()) == (mask.flatten() != IGNORE).nonzero().squeeze(1).tolist()


@pytest.mark.parametrize("count", [1, 7, 15, 30, 90])
def test_balanced_pixels_never_picks_ignored_pixels(count):
    mask = three_class_mask()
    for seed in range(3):
        picked = balanced_pixels(mask, count, torch.Generator().manual_seed(seed), NUM_CLASSES)
        assert len(picked) == count
        assert (mask.flatten()[picked] != IGNORE).all()


def test_balanced_pixels_of_an_all_ignored_mask_is_empty():
    mask = torch.full((4, 4), IGNORE, dtype=torch.int64)
    assert balanced_pixels(mask, 8, torch.Generator().manual_seed(0), NUM_CLASSES).numel() == 0


def test_balanced_pixels_depends_only_on_the_seed():
    mask = three_class_mask()
    first = balanced_pixels(mask, 15, torch.Generator().manual_seed(1), NUM_CLASSES)
    again = balanced_pixels(mask, 15, torch.Generator().manual_seed(1), NUM_CLASSES)
    other = balanced_pixels(mask, 15, torch.Generator().manual_seed(2), NUM_CLASSES)
    assert torch.equal(first, again)
    assert not torch.equal(first.sort().values, other.sort().values)


# --- extract_bank -------------------------------------------------------------------------------


def test_extract_bank_is_deterministic_unit_norm_and_labelled(prepared, random_backbone):
    params = make_eval_params()
    rows = split_rows(prepared, "train")
    bank = extract_bank(random_backbone, rows, params.extract, params.seed, CPU, NUM_CLASSES)
    again = extract_bank(random_backbone, rows, params.extract, params.seed, CPU, NUM_CLASSES)
    for name, value in bank.to_dict().items():
        other = again.to_dict()[name]
        assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, name
    assert bank.num_classes == NUM_CLASSES

    assert bank.features.dtype == torch.float16 and bank.features.shape[1] == 8
    assert torch.allclose(bank.features.float().norm(dim=1), torch.ones(len(bank.labels)), atol=1e-2)
    assert bank.labels.dtype == torch.uint8 and int(bank.labels.max()) < NUM_CLASSES
    per_image = torch.bincount(bank.image_index.long(), minlength=len(rows))
    assert len(per_image) == len(rows) and (per_image <= params.extract.pixels_per_image).all()
    assert (per_image > 0).all()
    # Each label is the mask's value at the stored pixel.
    for i, row in rows.iterrows():
        mask = torch.from_numpy(np.asarray(Image.open(row["mask"]), dtype=np.int64)).flatten()
        mine = bank.image_index == i
        assert torch.equal(mask[bank.pixel_index[mine]], bank.labels[mine].long())


def test_extract_bank_does_not_depend_on_the_batch_size(prepared, random_backbone):
    params = make_eval_params()
    rows = split_rows(prepared, "train")
    one = extract_bank(random_backbone, rows, params.extract.__class__(16, 1), params.seed, CPU,
                       NUM_CLASSES)
    three = extract_bank(random_backbone, rows, params.extract.__class__(16, 3), params.seed, CPU,
                         NUM_CLASSES)
    assert torch.equal(one.labels, three.labels) and torch.equal(one.pixel_index, three.pixel_index)
    assert torch.equal(one.image_index, three.image_index)
    assert torch.allclose(one.features.float(), three.features.float(), atol=2e-3)


# --- probe --------------------------------------------------------------------------------------


def separable_features(per_class: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    classes = [0, 3, 7]
    centres = torch.eye(8)[:3] * 6.0
    features = torch.cat([centres[i] + 0.5 * torch.randn(per_class, 8, generator=generator) for i in range(3)])
    labels = torch.tensor(classes).repeat_interleave(per_class)
    return features, labels


def test_probe_separates_separable_features():
    features, labels = separable_features()
    fit = fit_probe(features, labels, NUM_CLASSES, ProbeConfig(max_iter=100))
    accuracy = (fit.probe(features).argmax(1) == labels).float().mean()
    assert accuracy >= 0.99
    assert fit.curve[0] == pytest.approx(math.log(NUM_CLASSES), rel=1e-5)  # zero init: uniform logits
    assert fit.curve[-1] < 0.05 * fit.curve[0]
    assert min(fit.curve) == pytest.approx(fit.curve[-1], abs=1e-4)


def test_probe_reports_convergence_only_when_it_converged():
    features, labels = separable_features()
    assert fit_probe(features, labels, NUM_CLASSES, ProbeConfig(max_iter=100)).converged
    # 3 iterations allow 3 evaluations: L-BFGS stops on that budget, which is not convergence.
    assert not fit_probe(features, labels, NUM_CLASSES, ProbeConfig(max_iter=3)).converged


def test_balanced_class_weights():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 3])
    weights = class_weights(labels, 5, "balanced")
    # N / (classes present * count): 7 / (3 * 4), 7 / (3 * 2), absent, 7 / (3 * 1), absent
    assert weights.tolist() == pytest.approx([7 / 12, 7 / 6, 0.0, 7 / 3, 0.0])
    assert class_weights(labels, 5, "none") is None
    features, toy = separable_features()
    fit = fit_probe(features, toy, NUM_CLASSES, ProbeConfig(class_weighting="balanced", max_iter=50))
    assert (fit.probe(features).argmax(1) == toy).float().mean() >= 0.99


def test_probe_state_round_trip_and_dimension_mismatch():
    features, labels = separable_features(10)
    fit = fit_probe(features, labels, NUM_CLASSES, ProbeConfig(max_iter=20))
    rebuilt = probe_from_state(probe_state(fit), 8, "probe.pt")
    assert torch.equal(rebuilt.weight, fit.probe.weight) and torch.equal(rebuilt.bias, fit.probe.bias)
    with pytest.raises(CheckpointError, match=r"probe\.pt expects 8-dim features .* gives 16"):
        probe_from_state(probe_state(fit), 16, "probe.pt")
    with pytest.raises(CheckpointError, match="holds no probe"):
        probe_from_state({"features": 1}, 8, "probe.pt")


# --- load_frozen_backbone -----------------------------------------------------------------------


def test_missing_backbone_file_says_which_stage_makes_it(tmp_path):
    missing = tmp_path / "models" / "backbone.pt"
    with pytest.raises(CheckpointError, match="dvc repro pretrain") as err:
        load_frozen_backbone("pretrained", make_eval_params(), missing)
    assert str(missing) in str(err.value)


def test_truncated_backbone_file_is_a_clear_error(tmp_path):
    path = save_backbone_file(tmp_path / "backbone.pt", make_eval_params())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as err:
        load_frozen_backbone("pretrained", make_eval_params(), path)
    assert str(path) in str(err.value) and "dvc repro pretrain" in str(err.value)


def test_backbone_from_another_config_names_the_key_and_both_values(tmp_path):
    path = save_backbone_file(tmp_path / "backbone.pt", make_eval_params())
    with pytest.raises(CheckpointError, match=r"pretrain\.backbone\.dim = 8 but params\.yaml has 16"):
        load_frozen_backbone("pretrained", make_eval_params(**{"pretrain.backbone.dim": 16}), path)


def test_pretrained_backbone_loads_the_saved_weights_frozen(tmp_path):
    params = make_eval_params()
    path = save_backbone_file(tmp_path / "backbone.pt", params)
    saved = torch.load(path, weights_only=False)["backbone"]
    model = load_frozen_backbone("pretrained", params, path)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name]), name


def test_random_backbone_is_deterministic_from_the_seed(tmp_path):
    first = load_frozen_backbone("random", make_eval_params(), tmp_path / "unused.pt").state_dict()
    again = load_frozen_backbone("random", make_eval_params(), tmp_path / "unused.pt").state_dict()
    other = load_frozen_backbone("random", make_eval_params(seed=1), tmp_path / "unused.pt").state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())
    with pytest.raises(DataError, match="unknown backbone 'imagenet'"):
        load_frozen_backbone("imagenet", make_eval_params(), tmp_path / "unused.pt")


# --- evaluate_segmentation ----------------------------------------------------------------------


def test_evaluate_writes_predictions_that_match_the_confusion(prepared, random_backbone, tmp_path):
    rows = split_rows(prepared, "val")
    torch.manual_seed(0)
    probe = nn.Linear(8, NUM_CLASSES)
    result = evaluate_segmentation(random_backbone, probe, rows, 1, CPU, tmp_path / "pred", overlays=1,
                                   classes=CITYSCAPES)

    names = sorted(p.name for p in (tmp_path / "pred").iterdir())
    assert names == sorted(Path(p).name for p in rows["image"])
    expected = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
    for _, row in rows.iterrows():
        written = Image.open(tmp_path / "pred" / Path(row["image"]).name)
        mask = np.asarray(Image.open(row["mask"]))
        assert written.mode == "L" and written.size == (mask.shape[1], mask.shape[0])
        prediction = np.asarray(written)
        assert prediction.dtype == np.uint8 and prediction.max() < NUM_CLASSES
        expected += confusion_matrix(torch.from_numpy(prediction.astype(np.int64)),
                                     torch.from_numpy(mask.astype(np.int64)), NUM_CLASSES)
    assert torch.equal(result.confusion, expected)
    assert result.confusion.sum() > 0
    assert 0 <= result.scores.miou <= 1 and 0 <= result.scores.pixel_accuracy <= 1
    assert len(result.overlays) == 1 and result.overlays[0].prediction.shape == (32, 64)


def test_a_failed_prediction_write_fails_the_evaluation(prepared, random_backbone, tmp_path, monkeypatch):
    # PNGs are written in threads; a disk-full there must not be lost with the thread.
    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    with pytest.raises(PixproError, match=r"could not write .*\.png: No space left on device"):
        evaluate_segmentation(random_backbone, nn.Linear(8, NUM_CLASSES), split_rows(prepared, "val"), 2, CPU,
                              tmp_path / "pred", overlays=0, classes=CITYSCAPES)


def test_prediction_of_another_size_than_its_label_is_a_data_error():
    with pytest.raises(DataError, match=r"\(32, 64\).*\(16, 64\)"):
        check_same_size(torch.zeros(32, 64), torch.zeros(16, 64), "val/x.png")


# --- retrieval ----------------------------------------------------------------------------------


def test_stratified_queries_take_about_the_same_number_per_class():
    masks = [np.full((8, 8), 0, dtype=np.uint8), np.full((8, 8), 0, dtype=np.uint8)]
    masks[0][0, :3] = 1  # class 1: 3 pixels
    masks[1][2:4, :] = 2  # class 2: 16 pixels
    masks[1][7, :] = IGNORE
    image, pixel = stratified_queries(masks, 15, torch.Generator().manual_seed(0), NUM_CLASSES)  # 5 per class
    labels = [int(masks[i].flatten()[p]) for i, p in zip(image.tolist(), pixel.tolist())]
    assert sorted(labels) == [0] * 5 + [1] * 3 + [2] * 5
    assert image.tolist() == sorted(image.tolist())
    assert len(set(zip(image.tolist(), pixel.tolist()))) == len(labels)
    again = stratified_queries(masks, 15, torch.Generator().manual_seed(0), NUM_CLASSES)
    assert torch.equal(again[0], image) and torch.equal(again[1], pixel)


def test_run_retrieval_on_the_tiny_set(prepared, random_backbone):
    params = make_eval_params()
    train, val = split_rows(prepared, "train"), split_rows(prepared, "val")
    bank = extract_bank(random_backbone, train, params.extract, params.seed, CPU, NUM_CLASSES)
    result = run_retrieval(random_backbone, bank, val, train, params.retrieval, params.seed, CPU, 2, CITYSCAPES)
    assert set(result.precision) == {1, 10}
    assert all(0.0 <= p <= 1.0 for p in result.precision.values())
    assert 0.0 <= result.knn.miou <= 1.0 and 0 < result.query_count <= params.retrieval.queries
    assert len(result.examples) == 1 and len(result.examples[0].retrieved) == params.retrieval.k


def test_retrieval_with_a_bank_smaller_than_k_is_a_clear_error(prepared, random_backbone):
    params = make_eval_params()
    train, val = split_rows(prepared, "train"), split_rows(prepared, "val")
    bank = extract_bank(random_backbone, train, params.extract.__class__(2, 4), params.seed, CPU,
                        NUM_CLASSES)  # 8 pixels
    with pytest.raises(ConfigError, match=r"retrieval\.k = 10 .* 8 pixels.*extract\.pixels_per_image"):
        run_retrieval(random_backbone, bank, val, train, params.retrieval, params.seed, CPU, 2, CITYSCAPES)


# --- report -------------------------------------------------------------------------------------


def write_metrics(root: Path) -> tuple[Path, Path]:
    segmentation, retrieval = root / "segmentation", root / "retrieval"
    segmentation.mkdir()
    retrieval.mkdir()
    for name, miou, acc, p1, p10, knn in [("pretrained", 0.5, 0.8, 0.6, 0.55, 0.4),
                                          ("random", 0.2, 0.6, 0.3, 0.25, 0.1)]:
        (segmentation / f"{name}.json").write_text(json.dumps(
            {"miou": miou, "pixel_accuracy": acc, "iou": {"road": miou + 0.1, "sidewalk": miou - 0.1, "train": None}}))
        (retrieval / f"{name}.json").write_text(json.dumps(
            {"precision@1": p1, "precision@10": p10, "knn_miou": knn, "queries": 40,
             "knn_iou": {"road": knn, "sidewalk": knn, "train": None}}))
    return segmentation, retrieval


def table_rows(markdown: str, heading: str) -> list[list[str]]:
    section = markdown.split(heading, 1)[1].strip().split("\n\n")[0]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in section.splitlines()]


def test_summary_has_pretrained_random_and_gain(tmp_path):
    text = summary_markdown(*write_metrics(tmp_path))
    overall = table_rows(text, "## Overall")
    assert overall[0][1:] == ["pretrained", "random", "gain"]
    by_name = {row[0]: row[1:] for row in overall[2:]}
    assert by_name["mIoU (linear probe)"] == ["0.5000", "0.2000", "0.3000"]
    assert by_name["precision@10 (retrieval)"] == ["0.5500", "0.2500", "0.3000"]
    assert by_name["kNN mIoU (retrieval)"] == ["0.4000", "0.1000", "0.3000"]
    per_class = table_rows(text, "## IoU per class (val)")
    assert per_class[0][1:4] == ["pretrained", "random", "gain"]
    classes = [row[0] for row in per_class[2:]]
    assert classes == ["road", "sidewalk"]  # "train" has no IoU for either backbone: dropped


@pytest.mark.parametrize("random_full, says", [(0.40, "at 10% of the labels (interpolated on a log scale): 10x fewer"),
                                                (0.20, "not measurable at this budget")])
def test_summary_states_the_labels_saved(tmp_path, random_full, says):
    finetune = tmp_path / "finetune"
    finetune.mkdir()
    for name, scores in (("pretrained", (0.30, 0.50, 0.55)), ("random", (0.20, 0.30, random_full))):
        (finetune / f"{name}.json").write_text(json.dumps(dict(zip(("miou_5pct", "miou_20pct", "miou_100pct"), scores))))
    text = summary_markdown(*write_metrics(tmp_path), finetune)
    assert line_starting_with(text, "Labels saved:").count(says) == 1


def line_starting_with(text: str, start: str) -> str:
    found = [line for line in text.splitlines() if line.startswith(start)]
    assert len(found) == 1, found
    return found[0]


def test_summary_with_a_missing_metrics_file_is_a_data_error(tmp_path):
    segmentation, retrieval = write_metrics(tmp_path)
    (retrieval / "random.json").unlink()
    with pytest.raises(DataError, match=r"retrieval/random\.json not found"):
        summary_markdown(segmentation, retrieval)


# --- the whole DVC pipeline ---------------------------------------------------------------------

RANDOM_STAGES = ("extract@random", "probe@random", "evaluate@random", "retrieval@random", "finetune@random")
PRETRAINED_STAGES = ("extract@pretrained", "probe@pretrained", "evaluate@pretrained", "retrieval@pretrained",
                     "finetune@pretrained")


def _find_key(tree, key: str) -> list:
    """Every value stored under `key` anywhere in a JSON tree."""
    found = []
    if isinstance(tree, dict):
        for name, value in tree.items():
            if name == key:
                found.append(value)
            found += _find_key(value, key)
    elif isinstance(tree, list):
        for value in tree:
            found += _find_key(value, key)
    return found


def test_whole_pipeline_and_an_experiment_in_a_copy_of_the_repo(tmp_path):
    repo = tiny_pipeline_repo(tmp_path)

    run_checked(["dvc", "repro"], repo, timeout=600)
    for name in ("pretrained", "random"):
        segmentation = json.loads((repo / "metrics" / "segmentation" / f"{name}.json").read_text())
        assert {"miou", "pixel_accuracy", "iou"} <= set(segmentation)
        assert 0 <= segmentation["miou"] <= 1
        retrieval = json.loads((repo / "metrics" / "retrieval" / f"{name}.json").read_text())
        assert {"precision@1", "precision@10", "knn_miou"} <= set(retrieval)
        predictions = sorted((repo / "predictions" / name).glob("*.png"))
        assert len(predictions) == 4
        assert Image.open(predictions[0]).mode == "L" and Image.open(predictions[0]).size == (64, 32)
        finetune = json.loads((repo / "metrics" / "finetune" / f"{name}.json").read_text())
        assert {"miou_50pct", "miou_100pct"} <= set(finetune) and 0 <= finetune["miou_50pct"] <= 1
    summary = (repo / "reports" / "summary.md").read_text()
    assert "pretrained" in summary and "gain" in summary and "50% of the labels (4 images)" in summary
    git_commit(repo, "baseline results")
    before = lock_stages(repo)

    # An experiment on a pretraining parameter reruns pretraining and the pretrained branch only.
    exp = run_checked(["dvc", "exp", "run", "-S", "pretrain.ppm.window=5"], repo, timeout=600)
    log = exp.stdout + exp.stderr
    assert "Running stage 'pretrain'" in log, log
    for stage in PRETRAINED_STAGES:
        assert f"Running stage '{stage}'" in log, log
    for stage in RANDOM_STAGES:
        assert f"Running stage '{stage}'" not in log, log
    after = lock_stages(repo)
    for stage in RANDOM_STAGES:
        assert after[stage] == before[stage], stage
    assert after["pretrain"] != before["pretrain"]

    shown = json.loads(run_checked(["dvc", "exp", "show", "--json"], repo, timeout=120).stdout)
    mious = [v for v in _find_key(shown, "miou") if isinstance(v, (int, float))]
    assert len(mious) >= 4, shown  # baseline and experiment, both backbones

    # The page a user opens: training curves, per-class IoU bars and the evaluation pictures.
    run_checked(["dvc", "plots", "show", "-o", str(tmp_path / "plots_html")], repo, timeout=120)
    page = (tmp_path / "plots_html" / "index.html").read_text()
    for expected in ("plots/metrics/train/loss.tsv", "Per-class IoU", "Class frequency (train)", "Label efficiency",
                     "plots/evaluate/pretrained/confusion.png", "plots/retrieval/random/query_0.png"):
        assert expected in page, expected

    # A dry run after changing another pretraining parameter plans pretraining, and neither
    # prepare nor the random branch. (A dry run cannot know whether the new backbone file will
    # differ, so it lists the @pretrained stages as unchanged; the experiment above reran them.)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["pretrain"]["ppm"]["gamma"] = 1.0
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dry = run_checked(["dvc", "repro", "--dry"], repo, timeout=120)
    planned = dry.stdout + dry.stderr
    assert "Running stage 'pretrain'" in planned, planned
    for stage in (*RANDOM_STAGES, "prepare"):
        assert f"Running stage '{stage}'" not in planned and f"Stage '{stage}' didn't change" in planned, planned


def test_predict_equals_the_probe_on_normalised_features():
    # predict() folds the L2 normalisation into the probe; it must give the same labels as the
    # literal probe(normalize(features)), including for all-zero feature vectors.
    from torch.nn import functional as F

    from pixpro.evaluate import predict

    torch.manual_seed(0)
    backbone = torch.nn.Conv2d(3, 8, 3, padding=1)
    probe = torch.nn.Linear(8, 19)
    images = torch.randn(2, 3, 16, 24)
    images[0, :, :4] = 0.0
    with torch.no_grad():
        backbone.bias.zero_()  # zero input rows give exactly zero features there
        expected = probe(F.normalize(backbone(images), dim=1).permute(0, 2, 3, 1)).argmax(-1)
        assert torch.equal(predict(backbone, probe, images), expected)


def test_bounded_writer_never_holds_more_than_its_limit_and_reraises_failures():
    import threading
    import time

    lock, state = threading.Lock(), {"open": 0, "most": 0}

    def slow_write(_):
        time.sleep(0.01)
        with lock:
            state["open"] -= 1

    with BoundedWriter(threads=2, limit=3) as writer:
        for i in range(20):
            with lock:  # counted before submit: queued or running, not yet finished
                state["open"] += 1
                state["most"] = max(state["most"], state["open"])
            writer.submit(slow_write, i)
        writer.wait()
    assert state["open"] == 0
    assert state["most"] <= 3 + 1  # the limit, plus the one being submitted

    def failing(_):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"), BoundedWriter(threads=1, limit=2) as writer:
        for i in range(5):
            writer.submit(failing, i)
        writer.wait()
