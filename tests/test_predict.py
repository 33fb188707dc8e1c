"""`pixpro predict`: label maps for new street images of any size, with a finished run of a
folder source built here."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from pixpro.config import params_from_dict
from pixpro.errors import DataError
from pixpro.features import split_rows
from pixpro.predict import OVERLAYS, find_images
from pixpro.stages.cli import app
from tests.conftest import THREE_CLASSES_CSV, save_backbone_file
from tests.test_folder_source import RAW, SIZE, THREE_VALUES, folder_params, write_tree

K = 3  # classes of THREE_CLASSES_CSV
# Enough backbone and probe that the untrained run's label maps are not one class (so a wrong
# preprocessing shows), and two decoder stages for the probe, as probe.layers allows.
RUN = {"pretrain__backbone__widths": [8, 16], "pretrain__backbone__dim": 16, "probe__layers": [-2, -1],
       "extract__pixels_per_image": 256, "probe__max_iter": 300}


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def _finished_run(tmp_path_factory) -> Path:
    """prepare, a (random-weight) backbone.pt, extract and probe for the pretrained backbone, and
    evaluate's predictions, laid out as dvc.yaml lays them out (paths relative to the run)."""
    run = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(run)
        (run / "three.csv").write_text(THREE_CLASSES_CSV)
        raw = folder_params(write_tree(run / "raw", THREE_VALUES), str(run / "three.csv"), **RUN)
        Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        save_backbone_file(Path("models/backbone.pt"), params_from_dict(raw))
        for args in (["prepare", "--out", "data/prepared", "--metrics", "m.json", "--plots", "plots/prepare"],
                     ["extract", "--backbone", "pretrained", "--out", "features/pretrained/bank.pt"],
                     ["probe", "--backbone", "pretrained", "--bank", "features/pretrained/bank.pt",
                      "--out", "models/probe/pretrained.pt", "--curve", "plots/probe.csv"],
                     ["evaluate", "--backbone", "pretrained", "--metrics", "seg.json", "--predictions", "evaluated",
                      "--plots", "plots/evaluate"]):
            result = invoke(*args)
            assert result.exit_code == 0, f"pixpro {' '.join(args)}:\n{result.output}"
    return run


def working_copy(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of a module-scoped `run` for one test, as the working directory (tests write into it)."""
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    monkeypatch.chdir(copy)
    return copy


@pytest.fixture
def finished_run(_finished_run, tmp_path, monkeypatch) -> Path:
    return working_copy(_finished_run, tmp_path, monkeypatch)


def street_frames(run: Path) -> dict[str, tuple[int, int]]:
    """The run's held-out (unlabelled, never prepared) frames at their raw size and resized to other
    sizes than data.size, in frames/ (nested, as a Cityscapes split is) -> {stem: (H, W)}."""
    sizes = {}
    for i, source in enumerate(sorted((run / "raw" / "leftImg8bit" / "test").rglob("*.jpg"))):
        for height, width in (RAW, (45, 70), (120, 150)):
            stem = f"frame{i}_{height}x{width}"
            (run / "frames" / f"seq{i}").mkdir(parents=True, exist_ok=True)
            Image.open(source).resize((width, height)).save(run / "frames" / f"seq{i}" / f"{stem}.png")
            sizes[stem] = (height, width)
    assert SIZE not in sizes.values() and len(sizes) == 6
    return sizes


def test_one_label_map_per_image_at_its_own_size(finished_run):
    sizes = street_frames(finished_run)
    result = invoke("predict", "frames", "--out", "out")
    assert result.exit_code == 0, result.output
    written = sorted(p.stem for p in Path("out").glob("*.png"))
    assert written == sorted(sizes)
    for stem, (height, width) in sizes.items():
        labels = Image.open(f"out/{stem}.png")
        assert labels.mode == "L" and labels.size == (width, height)
        assert set(np.unique(np.asarray(labels))) <= set(range(K))
        overlay = Image.open(f"out/{OVERLAYS}/{stem}.png")
        assert overlay.size[0] > 0
    assert "pretrained: 6 label maps -> out" in result.output


def test_prepared_val_images_get_evaluates_predictions(finished_run):
    """At data.size there is nothing to resize, so predict must give exactly what evaluate wrote:
    the same normalisation, probe.layers stages and L2-normalised features."""
    val = list(split_rows(Path("data/prepared"), "val")["image"])
    result = invoke("predict", *val, "--out", "out", "--no-overlays")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in Path("evaluated").glob("*.png")) == sorted(Path(image).name for image in val)
    assert not Path(f"out/{OVERLAYS}").exists()
    assert len(np.unique(np.asarray(Image.open(Path("evaluated") / Path(val[0]).name)))) > 1
    for image in val:
        name = Path(image).name  # evaluate names its PNGs after the prepared image, predict after its stem
        mine = np.asarray(Image.open(Path("out") / f"{Path(name).stem}.png"))
        assert np.array_equal(mine, np.asarray(Image.open(Path("evaluated") / name))), name


def test_an_unreadable_image_is_one_line_and_the_rest_are_written(finished_run):
    sizes = street_frames(finished_run)
    Path("frames/seq0/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    result = invoke("predict", "frames", "--out", "out", "--no-overlays")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len([line for line in lines if "broken.png" in line]) == 1
    assert any(line.startswith("pixpro predict: cannot read image frames/seq0/broken.png") for line in lines)
    assert lines[-1] == "pixpro predict: error: 1 of 7 images could not be read (see above); the others were written"
    assert sorted(p.stem for p in Path("out").glob("*.png")) == sorted(sizes)


def test_the_random_backbone_uses_its_own_probe(finished_run):
    street_frames(finished_run)
    result = invoke("predict", "frames", "--out", "out", "--backbone", "random")
    assert result.exit_code == 1
    assert "models/probe/random.pt not found: run `dvc repro probe` first" in result.output


@pytest.fixture(scope="module")
def _finetuned_run(_finished_run, tmp_path_factory) -> Path:
    """The finished run plus `pixpro finetune` for the pretrained backbone (fractions 0.5 and 1.0 of
    the 4 train images, 3 steps each), with the paths left to default as dvc.yaml lays them out."""
    run = Path(shutil.copytree(_finished_run, tmp_path_factory.mktemp("finetuned") / "run"))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(run)
        result = invoke("finetune", "--backbone", "pretrained")
        assert result.exit_code == 0, result.output
    assert (run / "models" / "finetune" / "pretrained.pt").is_file()
    return run


@pytest.fixture
def finetuned_run(_finetuned_run, tmp_path, monkeypatch) -> Path:
    return working_copy(_finetuned_run, tmp_path, monkeypatch)


def test_the_fine_tuned_network_writes_a_label_map_per_image_at_its_own_size(finetuned_run):
    sizes = street_frames(finetuned_run)
    result = invoke("predict", "frames", "--out", "out", "--head", "finetune-100pct")
    assert result.exit_code == 0, result.output
    assert sorted(p.stem for p in Path("out").glob("*.png")) == sorted(sizes)
    for stem, (height, width) in sizes.items():
        labels = Image.open(f"out/{stem}.png")
        assert labels.mode == "L" and labels.size == (width, height)
        assert set(np.unique(np.asarray(labels))) <= set(range(K))
        assert Image.open(f"out/{OVERLAYS}/{stem}.png").size[0] > 0
    assert "pretrained finetune-100pct: 6 label maps -> out" in result.output


def test_the_fine_tuned_network_predicts_what_its_val_scoring_predicted(finetuned_run):
    """At data.size, predict must label a val image exactly as fine-tuning's val scoring
    (score_segmenter: prepared images, the network's argmax) did."""
    import torch

    from pixpro.features import labelled_batches
    from pixpro.finetuned_file import read_finetuned

    rows = split_rows(Path("data/prepared"), "val")
    result = invoke("predict", *rows["image"], "--out", "out", "--no-overlays", "--head", "finetune-100pct")
    assert result.exit_code == 0, result.output
    network = read_finetuned(Path("models/finetune/pretrained.pt"))
    with torch.no_grad():
        scored = torch.cat([network.model(batch.image).argmax(1) for batch in labelled_batches(rows, 2)])
    for image, expected in zip(rows["image"], scored.numpy()):
        mine = np.asarray(Image.open(Path("out") / f"{Path(image).stem}.png"))
        assert np.array_equal(mine, expected.astype(np.uint8)), image
    assert len(np.unique(scored.numpy())) > 1  # a trained network, not a constant map


def test_a_network_fine_tuned_on_part_of_the_labels_names_the_missing_fraction(finetuned_run):
    import torch

    street_frames(finetuned_run)
    path = Path("models/finetune/pretrained.pt")
    saved = torch.load(path, weights_only=False)
    torch.save({**saved, "fraction": 0.5}, path)  # what finetune keeps when label_fractions has no 1.0
    result = invoke("predict", "frames", "--out", "out", "--head", "finetune-100pct")
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert ("holds the network fine-tuned on 50% of the labels, not 100%: finetune.label_fractions had no 1.0"
            in result.output)


def test_the_fine_tuned_head_of_a_run_without_one_says_what_to_run(finished_run):
    street_frames(finished_run)
    result = invoke("predict", "frames", "--out", "out", "--head", "finetune-100pct", "--backbone", "random")
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "models/finetune/random.pt not found: run `dvc repro finetune` first" in result.output


def test_inputs_named_alike_or_missing(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / folder / "x.png")
    with pytest.raises(DataError, match=r"a/x\.png and .*b/x\.png would both be written as x\.png"):
        find_images([tmp_path])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no images \(\.png, .*\) under .*empty"):
        find_images([tmp_path / "empty"])
    with pytest.raises(DataError, match=r"absent not found"):
        find_images([tmp_path / "absent"])
    shutil.rmtree(tmp_path / "b")
    assert find_images([tmp_path / "a", tmp_path / "a" / "x.png"]) == [tmp_path / "a" / "x.png"]


def test_an_output_folder_that_is_a_file(finished_run):
    Path("taken").write_text("")
    for out in ("taken", "taken/out"):
        result = invoke("predict", "raw/leftImg8bit/test", "--out", out)
        assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
        assert "taken" in result.output and "is a file, not a folder" in result.output
