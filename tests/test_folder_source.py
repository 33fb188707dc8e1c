"""data.source=folder: any Cityscapes-like tree with its own suffixes and class table, from prepare
through the whole evaluation chain (run in-process through the Typer app)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from pixpro.config import params_from_dict
from pixpro.data.classes import load_class_table
from pixpro.data.prepare import run_prepare
from pixpro.errors import CheckpointError, ConfigError, DataError
from pixpro.evaluate import evaluate_segmentation
from pixpro.features import load_frozen_backbone, split_rows
from pixpro.train import pretraining_images
from pixpro.stages.cli import app
from tests.conftest import THREE_CLASSES_CSV, TINY_EVAL, TINY_PRETRAIN, save_backbone_file, tiny_params

RAW = (40, 80)  # raw (H, W); labels come in 8x8 blocks so they survive the nearest resize
SIZE = (32, 64)
COUNTS = {"train": 4, "val": 2, "test": 2}  # test: unlabelled, for pretraining only
THREE_VALUES = [0, 10, 20, 30, 40]  # THREE_CLASSES_CSV's raw values: 0 is void, 30 and 40 are both sky
SEVEN_VALUES = [0, 1, 2, 3, 4, 5, 6, 255]  # idd_lite, 255 = void


def write_tree(root: Path, values: list[int], counts: dict[str, int] = COUNTS) -> Path:
    """leftImg8bit/<split>/seq<i>/<id>_image.jpg and gtFine/<split>/seq<i>/<id>_label.png; every
    value occurs in every labelled image, and each value has its own colour (plus noise)."""
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, size=(256, 3))
    for split, count in counts.items():
        for i in range(count):
            folder = f"seq{i % 2}"
            blocks = rng.choice(values, size=(RAW[0] // 8, RAW[1] // 8))
            blocks.flat[: len(values)] = rng.permutation(values)
            label = np.kron(blocks, np.ones((8, 8), np.int64)).astype(np.uint8)  # (H, W)
            image = np.clip(colours[label] + rng.normal(0, 20, (*RAW, 3)), 0, 255).astype(np.uint8)
            (root / "leftImg8bit" / split / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "leftImg8bit" / split / folder / f"{i:04d}_image.jpg", quality=95)
            if split != "test":
                (root / "gtFine" / split / folder).mkdir(parents=True, exist_ok=True)
                Image.fromarray(label).save(root / "gtFine" / split / folder / f"{i:04d}_label.png")
    return root


@pytest.fixture
def three_tree(tmp_path) -> Path:
    return write_tree(tmp_path / "raw", THREE_VALUES)


@pytest.fixture
def three_csv(tmp_path) -> Path:
    path = tmp_path / "three.csv"
    path.write_text(THREE_CLASSES_CSV)
    return path


def folder_params(root: Path, classes: str, **dotted) -> dict:
    """Tiny params (as tests/test_evaluation.py uses) reading `root` as a folder tree."""
    return tiny_params({**TINY_PRETRAIN, **TINY_EVAL, "data.source": "folder", "data.root": str(root),
                        "data.image_suffix": "_image.jpg", "data.label_suffix": "_label.png",
                        "data.classes": classes, "data.unlabelled": ["test"], "data.size": list(SIZE),
                        **{k.replace("__", "."): v for k, v in dotted.items()}})


def prepare(tmp_path: Path, root: Path, classes: str, **dotted):
    return run_prepare(params_from_dict(folder_params(root, classes, **dotted)), tmp_path / "prepared",
                       tmp_path / "prepare.json", tmp_path / "plots")


# --------------------------------------------------------------------------------------------
# prepare


def test_prepare_folder_tree_with_a_three_class_table(three_tree, three_csv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = prepare(tmp_path, three_tree, str(three_csv))
    out = tmp_path / "prepared"
    manifest = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(manifest, result.manifest)
    # The unlabelled folder is pretraining data: split train_extra, no mask, its own folder on disk.
    assert manifest["split"].value_counts().to_dict() == {"train": 4, "val": 2, "train_extra": 2}
    extra = manifest[manifest["split"] == "train_extra"]
    assert (extra["mask"] == "").all() and all(p.startswith("prepared/test/seq") for p in extra["image"])
    assert set(extra["image"]) <= set(pretraining_images(out))
    lut = load_class_table(str(three_csv)).lut
    for row in manifest[manifest["mask"] != ""].itertuples():
        raw = Image.open(three_tree / "gtFine" / row.split / row.city / f"{row.stem}_label.png")
        mask = np.asarray(Image.open(row.mask))
        assert mask.shape == SIZE and Image.open(row.image).size == (SIZE[1], SIZE[0])
        np.testing.assert_array_equal(mask, lut[np.asarray(raw.resize((SIZE[1], SIZE[0]), Image.NEAREST))])
        assert set(np.unique(mask)) == {0, 1, 2, 255}
    assert (out / "classes.csv").read_text().splitlines() == [
        "train_id,name,color", "0,road,#804080", "1,car,#00008e",
        "2,sky,#" + "".join(f"{c:02x}" for c in result.classes.colors[2])]
    metrics = json.loads((tmp_path / "prepare.json").read_text())
    assert set(metrics) == {"train", "val", "train_extra"}
    for split in ("train", "val"):
        assert metrics[split]["classes_present"] == 3 and "class_frequency" not in metrics[split]
        freq = pd.read_csv(tmp_path / "plots" / f"class_frequency_{split}.csv")
        assert list(freq["class"]) == ["road", "car", "sky"] and freq["fraction"].sum() == pytest.approx(1)
        assert len(result.class_counts[split]) == 4  # 3 classes + ignore
    assert (tmp_path / "plots" / "examples.png").stat().st_size > 0


def test_prepare_folder_tree_with_the_seven_class_idd_lite_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = write_tree(tmp_path / "raw", SEVEN_VALUES, {"train": 2, "val": 1, "test": 1})
    result = prepare(tmp_path, root, "idd_lite")
    names = list(load_class_table("idd_lite").names)
    assert result.classes.num_classes == 7
    assert pd.read_csv(tmp_path / "prepared" / "classes.csv")["name"].tolist() == names
    masks = [np.asarray(Image.open(p)) for p in result.manifest["mask"] if p]
    assert set(np.unique(np.stack(masks))) == set(range(7)) | {255}
    assert list(pd.read_csv(tmp_path / "plots" / "class_frequency_train.csv")["class"]) == names


# --------------------------------------------------------------------------------------------
# Bad input: one line naming the culprit, raised before any output exists


def _unlisted_value(root, tmp_path):
    label = root / "gtFine" / "val" / "seq1" / "0001_label.png"
    values = np.asarray(Image.open(label)).copy()
    values[3, 5] = 25
    Image.fromarray(values).save(label)
    return {}, DataError, r"label .*val/seq1/0001_label\.png has value 25, which is not listed in class table"


def _image_suffix_matches_nothing(root, tmp_path):
    return ({"data__image_suffix": "_img.png"}, DataError,
            r"image suffix '_img\.png' \(data\.image_suffix\) matches no file in .*leftImg8bit/train/\[<dir>/\]; "
            r"looked for e\.g\. <name>_img\.png, found e\.g\. 0000_image\.jpg")


def _label_suffix_matches_nothing(root, tmp_path):
    return ({"data__label_suffix": "_gtFine.png"}, DataError,
            r"label suffix '_gtFine\.png' \(data\.label_suffix\) matches no file in .*gtFine/train/\[<dir>/\]; "
            r"looked for e\.g\. .*gtFine/train/seq0/0000_gtFine\.png, found e\.g\. 0000_label\.png")


def _image_without_label(root, tmp_path):
    (root / "gtFine" / "train" / "seq1" / "0003_label.png").unlink()
    return {}, DataError, r"1 of 4 train images have no label under .*raw, e\.g\. gtFine/train/seq1/0003_label\.png"


def _unlabelled_folder_missing(root, tmp_path):
    return ({"data__unlabelled": ["extra"]}, DataError,
            r"data\.unlabelled lists 'extra' but .*leftImg8bit/extra/\[<dir>/\]\*_image\.jpg matched nothing")


def _no_val_split(root, tmp_path):
    for tree in ("leftImg8bit", "gtFine"):
        for path in sorted((root / tree / "val").rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
    return {}, DataError, (r"no val images in data\.root .*: expected "
                           r"leftImg8bit/\{train,val\}/\[<dir>/\]<name>_image\.jpg")


def _table(text):
    def breakage(root, tmp_path):
        path = tmp_path / "bad.csv"
        path.write_text(text)
        return {"data__classes": str(path)}, ConfigError, None
    return breakage


def _duplicate_values(root, tmp_path):
    overrides, error, _ = _table("value,train_id,name\n0,255,void\n10,0,a\n10,1,b\n20,1,b\n30,2,c\n40,2,c\n")(
        root, tmp_path)
    return overrides, error, r"class table .*bad\.csv lists value 10 twice \(rows 3 and 4\)"


def _train_ids_with_a_gap(root, tmp_path):
    overrides, error, _ = _table("value,train_id,name\n0,255,void\n10,0,a\n20,1,b\n30,3,c\n40,3,c\n")(
        root, tmp_path)
    return overrides, error, r"train ids must be contiguous from 0; got \[0, 1, 3\], missing \[2\]"


def _table_without_name_column(root, tmp_path):
    overrides, error, _ = _table("value,train_id\n0,255\n10,0\n")(root, tmp_path)
    return overrides, error, r"class table .*bad\.csv lacks column name"


BREAKAGES = [_unlisted_value, _image_suffix_matches_nothing, _label_suffix_matches_nothing, _image_without_label,
             _unlabelled_folder_missing, _no_val_split, _duplicate_values, _train_ids_with_a_gap,
             _table_without_name_column]


@pytest.mark.parametrize("breakage", BREAKAGES, ids=[b.__name__.strip("_") for b in BREAKAGES])
def test_bad_input_is_one_line_and_writes_nothing(breakage, three_tree, three_csv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides, error, pattern = breakage(three_tree, tmp_path)
    classes = overrides.pop("data__classes", str(three_csv))
    with pytest.raises(error, match=pattern) as info:
        prepare(tmp_path, three_tree, classes, **overrides)
    assert "\n" not in str(info.value)
    written = [p.name for p in tmp_path.iterdir() if p.name not in ("raw", "three.csv", "bad.csv")]
    assert written == [], f"written despite the error: {written}"


@pytest.mark.parametrize(("overrides", "pattern"), [
    ({"data.unlabelled": ["train"]}, r"data\.unlabelled\[0\] = 'train' is a labelled split"),
    ({"data.unlabelled": ["test", "test"]}, r"data\.unlabelled lists a folder twice"),
    ({"data.unlabelled": ["a/b"]}, r"data\.unlabelled\[0\] = 'a/b' must be a split name"),
    ({"data.image_suffix": ""}, r"data\.image_suffix = '' must be a non-empty file-name ending"),
    ({"data.label_suffix": "_image.jpg", "data.label_dir": "leftImg8bit/{split}"},
     r"data\.label_dir must differ from data\.image_dir when data\.label_suffix equals data\.image_suffix"),
    ({"data.image_dir": "images"},
     r"data\.image_dir = 'images' must be a relative folder template containing \{split\}"),
    ({"data.image_dir": "{split}/{seq}"}, r"data\.image_dir = '\{split\}/\{seq\}' must be .* no other braces"),
    ({"data.label_dir": "../{split}"}, r"data\.label_dir = '\.\./\{split\}' must be a relative folder"),
    ({"data.label_mode": "rgb"}, r"data\.label_mode = 'rgb' is not one of 'value', 'color'"),
    ({"data.source": "synthetic"}, r"data\.unlabelled must be \[\] for data\.source synthetic"),
    ({"data.source": "folders"}, r"data\.source = 'folders' is not one of 'synthetic', 'cityscapes', 'folder'"),
])
def test_bad_folder_params_are_config_errors(overrides, pattern, tmp_path):
    with pytest.raises(ConfigError, match=pattern):
        params_from_dict(folder_params(tmp_path, "idd_lite", **overrides))


# --------------------------------------------------------------------------------------------
# The whole chain: prepare -> extract -> probe -> evaluate -> retrieval -> report


def reference_iou(predictions: Path, rows: pd.DataFrame, k: int) -> tuple[np.ndarray, float]:
    """Per-class IoU (NaN where undefined) and mIoU from the written PNGs, by a plain numpy count."""
    conf = np.zeros((k, k), np.int64)
    for row in rows.itertuples():
        truth = np.asarray(Image.open(row.mask)).ravel().astype(np.int64)
        predicted = np.asarray(Image.open(predictions / Path(row.image).name)).ravel().astype(np.int64)
        keep = truth != 255
        np.add.at(conf, (truth[keep], predicted[keep]), 1)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    return iou, float(np.nanmean(iou))


def invoke(*args: str) -> None:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"pixpro {' '.join(args)} failed:\n{result.output}"


@pytest.mark.parametrize("table", ["three", "idd_lite"])
def test_whole_chain_gives_metrics_with_the_table_classes(table, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if table == "three":
        root, spec = write_tree(tmp_path / "raw", THREE_VALUES), str(tmp_path / "three.csv")
        (tmp_path / "three.csv").write_text(THREE_CLASSES_CSV)
    else:
        root, spec = write_tree(tmp_path / "raw", SEVEN_VALUES), "idd_lite"
    names = list(load_class_table(spec).names)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(folder_params(root, spec), sort_keys=False))
    params = params_from_dict(folder_params(root, spec))
    save_backbone_file(tmp_path / "backbone.pt", params)
    common = ["--params", str(params_file), "--data", "prepared", "--checkpoint", "backbone.pt"]

    invoke("prepare", "--params", str(params_file), "--out", "prepared", "--metrics", "m/prepare.json",
           "--plots", "plots/prepare")
    for backbone in ("pretrained", "random"):
        invoke("extract", "--backbone", backbone, *common, "--out", f"features/{backbone}.pt")
        invoke("probe", "--params", str(params_file), "--bank", f"features/{backbone}.pt",
               "--out", f"probe/{backbone}.pt", "--curve", f"plots/probe_{backbone}.csv")
        invoke("evaluate", "--backbone", backbone, *common, "--probe", f"probe/{backbone}.pt",
               "--metrics", f"m/seg/{backbone}.json", "--predictions", f"pred/{backbone}",
               "--plots", f"plots/eval/{backbone}")
        invoke("retrieval", "--backbone", backbone, *common, "--bank", f"features/{backbone}.pt",
               "--metrics", f"m/ret/{backbone}.json", "--plots", f"plots/ret/{backbone}")
    invoke("report", "--segmentation", "m/seg", "--retrieval", "m/ret", "--out", "summary.md")

    val = split_rows(Path("prepared"), "val")
    for backbone in ("pretrained", "random"):
        seg = json.loads(Path(f"m/seg/{backbone}.json").read_text())
        assert list(seg["iou"]) == names
        iou, miou = reference_iou(Path(f"pred/{backbone}"), val, len(names))
        assert seg["miou"] == pytest.approx(miou, abs=1e-12)
        assert [v if v is not None else np.nan for v in seg["iou"].values()] == pytest.approx(iou, nan_ok=True)
        assert list(json.loads(Path(f"m/ret/{backbone}.json").read_text())["knn_iou"]) == names
        assert torch.load(f"probe/{backbone}.pt", weights_only=True)["weight"].shape[0] == len(names)
        per_class = pd.read_csv(f"plots/eval/{backbone}/per_class_iou.csv")
        assert set(per_class["class"]) <= set(names)
        assert Path(f"plots/eval/{backbone}/overlays.png").stat().st_size > 0
    summary = Path("summary.md").read_text()
    assert all(name in summary for name in names)


def test_probe_of_another_class_count_is_a_clear_error(three_tree, three_csv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prepare(tmp_path, three_tree, str(three_csv))
    params = params_from_dict(folder_params(three_tree, str(three_csv)))
    backbone = load_frozen_backbone("random", params, tmp_path / "absent.pt")
    with pytest.raises(CheckpointError, match=r"the probe predicts 19 classes but the prepared data has 3; "
                                              r"rerun `dvc repro extract probe`"):
        evaluate_segmentation(backbone, torch.nn.Linear(8, 19), split_rows(tmp_path / "prepared", "val"), 2,
                              torch.device("cpu"), tmp_path / "pred", 0, load_class_table(str(three_csv)))
