"""The layouts people have (data.image_dir / data.label_dir, flat or one sub-folder deep, same
names in two trees, colour labels, EXIF-rotated photos, system files) and the files that must
stop with one line: undecodable images, names that are not UTF-8, suffixes that match nothing,
outputs that cannot be written. Also `pixpro scan-data`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from pixpro.config import load_params, params_from_dict
from pixpro.data.manifest import load_manifest
from pixpro.data.prepare import run_prepare
from pixpro.errors import DataError, PixproError
from pixpro.stages.cli import app
from tests.conftest import tiny_params

RAW = (40, 80)  # (H, W); labels come in 8x8 blocks so they survive the nearest resize to SIZE
SIZE = (32, 64)
VALUES = (0, 1, 2, 3)  # raw label values; 0 is void
COLOURS = {0: (0, 0, 0), 1: (128, 64, 128), 2: (0, 0, 142), 3: (70, 130, 180)}
TABLE = "value,train_id,name,color\n0,255,void,#000000\n1,0,road,#804080\n2,1,car,#00008e\n3,2,sky,#4682b4\n"


def _label(rng: np.random.Generator) -> np.ndarray:
    """(H, W) uint8 raw values in 8x8 blocks, every value present."""
    blocks = rng.choice(VALUES, size=(RAW[0] // 8, RAW[1] // 8))
    blocks.flat[: len(VALUES)] = VALUES
    return np.kron(blocks, np.ones((8, 8), np.int64)).astype(np.uint8)


def write_pairs(root: Path, image_dir: str = "leftImg8bit/{split}", label_dir: str = "gtFine/{split}",
                image_suffix: str = "_image.jpg", label_suffix: str = "_label.png", sub: str = "seq0",
                colour: bool = False, counts: dict[str, int] | None = None) -> Path:
    """A tree of images and labels under the given folders; sub='' puts files in the split folder."""
    rng = np.random.default_rng(0)
    for split, count in (counts or {"train": 3, "val": 2}).items():
        for i in range(count):
            label = _label(rng)
            image = np.stack([label * 60] * 3, -1).astype(np.uint8)  # (H, W, 3)
            images = root / image_dir.format(split=split) / sub
            labels = root / label_dir.format(split=split) / sub
            images.mkdir(parents=True, exist_ok=True)
            labels.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(images / f"{split}{i}{image_suffix}")
            saved = np.array([COLOURS[v] for v in range(4)], np.uint8)[label] if colour else label
            Image.fromarray(saved).save(labels / f"{split}{i}{label_suffix}")
    return root


def folder_params(root: Path, tmp_path: Path, **dotted) -> dict:
    table = tmp_path / "table.csv"
    table.write_text(TABLE)
    return tiny_params({"data.source": "folder", "data.root": str(root), "data.size": list(SIZE),
                        "data.image_suffix": "_image.jpg", "data.label_suffix": "_label.png",
                        "data.classes": str(table), **{k.replace("__", "."): v for k, v in dotted.items()}})


def prepare(root: Path, tmp_path: Path, **dotted):
    params = params_from_dict(folder_params(root, tmp_path, **dotted))
    return run_prepare(params, tmp_path / "prepared", tmp_path / "metrics" / "prepare.json", tmp_path / "plots")


def _masks_match_labels(result, root: Path, label_of) -> None:
    """Every prepared mask is its raw label through the table (values 1..3 -> 0..2, 0 ignored)."""
    lut = np.array([255, 0, 1, 2], np.uint8)
    labelled = result.manifest[result.manifest["mask"] != ""]
    assert len(labelled) == 5
    for row in labelled.itertuples():
        raw = Image.open(label_of(row))
        values = np.asarray(raw.resize((SIZE[1], SIZE[0]), Image.NEAREST))
        if values.ndim == 3:  # colour label: back to values
            values = np.argmax((values[..., None, :] == np.array(list(COLOURS.values()))).all(-1), -1)
        np.testing.assert_array_equal(np.asarray(Image.open(row.mask)), lut[values])


# --------------------------------------------------------------------------------------------
# Layouts that just work


@pytest.mark.parametrize(("dirs", "sub"), [
    ({}, "seq0"),  # the Cityscapes layout
    ({}, ""),  # flat: leftImg8bit/train/*.jpg
    ({"image_dir": "images/{split}", "label_dir": "annotations/{split}"}, ""),  # ADE20K
], ids=["cityscapes-like", "flat", "ade20k"])
def test_image_and_label_folders_are_params(dirs, sub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = write_pairs(tmp_path / "raw", sub=sub, **dirs)
    result = prepare(root, tmp_path, **{f"data__{k}": v for k, v in dirs.items()})
    assert result.manifest["split"].value_counts().to_dict() == {"train": 3, "val": 2}
    assert set(result.manifest["city"]) == {sub}
    label_dir = dirs.get("label_dir", "gtFine/{split}")
    _masks_match_labels(result, root, lambda row: root / label_dir.format(split=row.split) / row.city
                        / f"{row.stem}_label.png")


def test_same_names_in_two_trees(tmp_path, monkeypatch):
    # train/ + trainannot/ (CamVid, KITTI): one suffix, the folders tell images from labels
    monkeypatch.chdir(tmp_path)
    root = write_pairs(tmp_path / "raw", "{split}", "{split}annot", ".png", ".png", sub="")
    result = prepare(root, tmp_path, data__image_dir="{split}", data__label_dir="{split}annot",
                     data__image_suffix=".png", data__label_suffix=".png")
    _masks_match_labels(result, root, lambda row: root / f"{row.split}annot" / f"{row.stem}.png")


def test_images_and_labels_in_one_folder(tmp_path, monkeypatch):
    # `.png` images next to `_label.png` labels: the labels are not taken for images
    monkeypatch.chdir(tmp_path)
    root = write_pairs(tmp_path / "raw", "{split}", "{split}", ".png", "_label.png")
    result = prepare(root, tmp_path, data__image_dir="{split}", data__label_dir="{split}", data__image_suffix=".png")
    assert len(result.manifest) == 5 and not result.manifest["stem"].str.endswith("_label").any()


def test_hidden_and_system_files_are_skipped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = write_pairs(tmp_path / "raw")
    folder = root / "leftImg8bit" / "train" / "seq0"
    (folder / "._train0_image.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource fork
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / "leftImg8bit" / "train" / "._seq0").write_bytes(b"\x00\x05\x16\x07")
    (root / "gtFine" / "train" / "seq0" / "._train0_label.png").write_bytes(b"\x00\x05\x16\x07")
    result = prepare(root, tmp_path)
    assert sorted(result.manifest["stem"]) == ["train0", "train1", "train2", "val0", "val1"]


def test_colour_labels_map_through_the_table_colours(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = write_pairs(tmp_path / "raw", colour=True)
    result = prepare(root, tmp_path, data__label_mode="color")
    _masks_match_labels(result, root, lambda row: root / "gtFine" / row.split / row.city / f"{row.stem}_label.png")


def test_a_colour_not_in_the_table_names_file_colour_and_pixels(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = write_pairs(tmp_path / "raw", colour=True)
    label = root / "gtFine" / "val" / "seq0" / "val1_label.png"
    rgb = np.asarray(Image.open(label)).copy()
    rgb[:2, :3] = (1, 2, 3)
    Image.fromarray(rgb).save(label)
    with pytest.raises(DataError, match=r"label .*val1_label\.png has colour #010203 \(6 pixels\), which is not "
                                        r"in the color column of class table .*table\.csv"):
        prepare(root, tmp_path, data__label_mode="color")
    assert not (tmp_path / "prepared").exists()


def test_value_mode_on_colour_labels_points_to_label_mode(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = write_pairs(tmp_path / "raw", colour=True)
    with pytest.raises(DataError, match=r"has mode RGB; .*\(data\.label_mode: color reads colour labels\)"):
        prepare(root, tmp_path)


def test_exif_orientation_is_applied_as_viewers_show_it(tmp_path, monkeypatch):
    # A phone photo: stored landscape (W=40, H=80) with EXIF "rotate 90 CW to view" (6); its label
    # was drawn on the picture as viewers show it, portrait 80 x 40 -- here: the same as RAW.
    monkeypatch.chdir(tmp_path)
    root = write_pairs(tmp_path / "raw")
    image_path = root / "leftImg8bit" / "train" / "seq0" / "train0_image.jpg"
    shown = np.asarray(Image.open(image_path))  # (40, 80, 3), as viewers must show it
    stored = Image.fromarray(np.rot90(shown, 1).copy())  # (80, 40): turned back 90 degrees
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the viewer rotates 90 CW
    stored.save(image_path, exif=exif.tobytes(), quality=100)
    assert Image.open(image_path).size == (RAW[0], RAW[1])  # the raw pixels are portrait...
    result = prepare(root, tmp_path)  # ...yet the label (landscape) fits the shown image
    row = result.manifest.set_index("stem").loc["train0"]
    prepared = np.asarray(Image.open(row["image"])).astype(int)
    expected = np.asarray(Image.fromarray(shown).resize((SIZE[1], SIZE[0]), Image.BILINEAR)).astype(int)
    assert np.abs(prepared - expected).mean() < 8  # JPEG noise only; unrotated it would be far off


# --------------------------------------------------------------------------------------------
# Files that stop with one line, before any output


def _nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "prepared").exists() and not list(tmp_path.rglob("manifest.csv"))
    assert not (tmp_path / "metrics" / "prepare.json").exists()


def test_too_many_pixels_says_how_to_allow_big_images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = write_pairs(tmp_path / "raw")
    # 40 x 80 = 3200 pixels > 2 x 1000: Pillow refuses (above 1x it only warns)
    monkeypatch.setenv("PIXPRO_MAX_IMAGE_PIXELS", "1000")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    with pytest.raises(DataError, match=r"cannot read image .*train0_image\.jpg: Image size \(3200 pixels\) exceeds "
                                        r"limit of 2000 pixels, more than Pillow allows; to allow big images set "
                                        r"PIXPRO_MAX_IMAGE_PIXELS=<pixels> \(0 = no limit\)$"):
        prepare(root, tmp_path)
    _nothing_written(tmp_path)
    monkeypatch.setenv("PIXPRO_MAX_IMAGE_PIXELS", "0")
    assert len(prepare(root, tmp_path).manifest) == 5


def test_a_file_that_is_no_image_format_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = write_pairs(tmp_path / "raw")
    (root / "leftImg8bit" / "val" / "seq0" / "val1_image.jpg").write_bytes(b"%PDF-1.4 not a picture")
    with pytest.raises(DataError, match=r"cannot read image .*val1_image\.jpg: not an image format Pillow knows"):
        prepare(root, tmp_path)
    _nothing_written(tmp_path)


def test_a_name_that_is_not_utf8_is_refused_up_front(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = write_pairs(tmp_path / "raw")
    folder = root / "leftImg8bit" / "train" / "seq0"
    latin1 = os.fsencode(folder) + b"/stra\xdfe_image.jpg"  # 'straße' in Latin-1, as old archives leave it
    shutil.copyfile(folder / "train0_image.jpg", latin1)
    with pytest.raises(DataError, match=r".*seq0 holds a name that is not valid UTF-8 \(b'stra\\xdfe_image\.jpg'\): "
                                        r"rename it") as info:
        prepare(root, tmp_path)
    assert "\n" not in str(info.value)
    _nothing_written(tmp_path)


@pytest.mark.parametrize(("dotted", "pattern"), [
    # `.jpg` leaves '_image' in every name, so no label matches: the image suffix is at fault
    ({"data__image_suffix": ".jpg"}, r"no train image has a label: the image suffix '\.jpg' \(data\.image_suffix\) "
                                     r"leaves names that do not match; for image train0_image\.jpg prepare looked "
                                     r"for .*gtFine/train/seq0/train0_image_label\.png, "
                                     r"found e\.g\. train0_label\.png"),
    ({"data__label_suffix": "el.png"}, r"the label suffix 'el\.png' \(data\.label_suffix\) leaves names"),
    ({"data__image_suffix": "_img.jpg"}, r"image suffix '_img\.jpg' \(data\.image_suffix\) matches no file in "
                                         r".*leftImg8bit/train/\[<dir>/\]; looked for e\.g\. <name>_img\.jpg, "
                                         r"found e\.g\. train0_image\.jpg"),
    ({"data__label_suffix": "_gt.png"}, r"label suffix '_gt\.png' \(data\.label_suffix\) matches no file in .*"
                                        r"looked for e\.g\. .*seq0/train0_gt\.png, found e\.g\. train0_label\.png"),
], ids=["image-suffix-too-short", "label-suffix-too-short", "image-suffix-matches-nothing",
        "label-suffix-matches-nothing"])
def test_a_suffix_at_fault_is_named_with_an_example(dotted, pattern, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = write_pairs(tmp_path / "raw")
    with pytest.raises(DataError, match=pattern):
        prepare(root, tmp_path, **dotted)
    _nothing_written(tmp_path)


# --------------------------------------------------------------------------------------------
# Outputs: all or nothing, and a manifest that loads from anywhere


@pytest.mark.parametrize("broken", ["metrics", "plots", "metrics-parent"])
def test_an_unwritable_output_leaves_the_previous_preparation(broken, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = write_pairs(tmp_path / "raw")
    prepare(root, tmp_path)
    before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file() and "raw" not in p.parts}
    params = params_from_dict(folder_params(root, tmp_path, data__size=[16, 32]))  # a new run would differ
    metrics, plots = tmp_path / "metrics" / "prepare.json", tmp_path / "plots"
    if broken == "metrics":
        metrics = tmp_path / "plots"  # a folder where the metrics file should go
    elif broken == "plots":
        plots = tmp_path / "table.csv"  # a file where the plots folder should go
    else:
        metrics = tmp_path / "metrics" / "prepare.json" / "m.json"  # under a regular file
    with pytest.raises(PixproError, match=r"cannot write .*m\.json: .*prepare\.json is a file, not a folder|"
                                          r"cannot write the file .*plots: a folder of that name is in the way|"
                                          r"cannot write the folder .*table\.csv: a file of that name") as info:
        run_prepare(params, tmp_path / "prepared", metrics, plots)
    assert "\n" not in str(info.value)
    after = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file() and "raw" not in p.parts}
    assert after == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_late_failure_leaves_the_previous_outputs(tmp_path, monkeypatch):
    # The plots are written last; a failure there must not leave a fresh manifest or metrics.
    import pixpro.data.prepare as prepare_module

    monkeypatch.chdir(tmp_path)
    root = write_pairs(tmp_path / "raw")
    prepare(root, tmp_path)
    before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file() and "raw" not in p.parts}

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prepare_module, "_plot_examples", fail)
    with pytest.raises(OSError, match="No space left"):
        prepare(root, tmp_path, data__size=[16, 32])
    after = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file() and "raw" not in p.parts}
    assert after == before


def test_the_manifest_loads_from_another_folder(tmp_path, monkeypatch):
    # Prepared from the repository root (paths relative to it, the contract), read from elsewhere.
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    root = write_pairs(tmp_path / "raw")
    params = params_from_dict(folder_params(root, tmp_path))
    run_prepare(params, Path("data/prepared"), Path("m.json"), Path("plots"))
    written = pd.read_csv("data/prepared/manifest.csv", dtype=str, keep_default_na=False)
    assert written["image"].str.startswith("data/prepared/train/seq0/").sum() == 3
    monkeypatch.chdir(tmp_path)
    manifest = load_manifest(tmp_path / "repo" / "data" / "prepared")
    assert all(Path(p).is_file() for p in manifest["image"]) and all(Path(p).is_file() for p in manifest["mask"])
    assert manifest["image"].iloc[0] == str(tmp_path / "repo" / written["image"].iloc[0])


# --------------------------------------------------------------------------------------------
# params.yaml reading


def test_exponent_without_a_dot_is_a_number(tmp_path):
    path = tmp_path / "params.yaml"
    raw = tiny_params()
    raw["finetune"]["lr_head"] = "LR"
    path.write_text(json.dumps(raw).replace('"LR"', "1e-3"))  # JSON is YAML; the literal as people write it
    assert load_params(path).finetune.lr_head == pytest.approx(1e-3)


# --------------------------------------------------------------------------------------------
# pixpro scan-data


def test_scan_data_reports_counts_partners_values_and_writes_a_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = write_pairs(tmp_path / "raw", counts={"train": 3, "val": 2, "test": 1})
    (root / "gtFine" / "train" / "seq0" / "train2_label.png").unlink()
    val_labels = root / "gtFine" / "val" / "seq0"
    shutil.copyfile(val_labels / "val0_label.png", val_labels / "x_label.png")
    label = root / "gtFine" / "val" / "seq0" / "val1_label.png"
    values = np.asarray(Image.open(label)).copy()
    values[:4, :5] = 9  # 20 pixels of a value the table lacks
    Image.fromarray(values).save(label)
    raw = folder_params(root, tmp_path, data__unlabelled=["test"])
    raw["data"]["classes"] = str(tmp_path / "missing.csv")  # the table is what the user is writing
    (tmp_path / "p.yaml").write_text(json.dumps(raw))
    result = CliRunner().invoke(app, ["scan-data", "--params", "p.yaml", "--write-classes", "new.csv"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "train: 3 images, 2 labels" in out and "1 images without a label: seq0/train2_image.jpg" in out
    assert "val: 2 images, 3 labels" in out and "1 labels without an image: seq0/x_label.png" in out
    assert "test (unlabelled): 1 images" in out
    total = 5 * RAW[0] * RAW[1]  # 2 train labels, 3 val
    assert f"label values over {total} labelled pixels:" in out
    assert f"       9  {100 * 20 / total:6.2f}%  NOT IN THE CLASS TABLE" in out
    assert "the class table lacks 5: 0, 1, 2, 3, 9" in out
    table = pd.read_csv(tmp_path / "new.csv", dtype=str, keep_default_na=False)
    assert table["value"].tolist() == ["0", "1", "2", "3", "9"] and table["train_id"].tolist() == list("01234")
    # with the written table, the same tree (its stray files removed) prepares
    (root / "gtFine" / "val" / "seq0" / "x_label.png").unlink()
    (root / "leftImg8bit" / "train" / "seq0" / "train2_image.jpg").unlink()
    assert prepare(root, tmp_path, data__classes=str(tmp_path / "new.csv")).classes.num_classes == 5


def test_scan_data_reports_size_mismatches_and_unreadable_files_without_stopping(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = write_pairs(tmp_path / "raw")
    label = root / "gtFine" / "train" / "seq0" / "train1_label.png"
    Image.open(label).resize((RAW[1] // 2, RAW[0] // 2), Image.NEAREST).save(label)
    (root / "leftImg8bit" / "val" / "seq0" / "val0_image.jpg").write_bytes(b"not a picture")
    (tmp_path / "p.yaml").write_text(json.dumps(folder_params(root, tmp_path)))
    result = CliRunner().invoke(app, ["scan-data", "--params", "p.yaml"])
    assert result.exit_code == 0, result.output
    assert "1 labels of another size than their image: seq0/train1_label.png (40x20, image 80x40)" in result.stdout
    assert "1 files that cannot be read:\n    cannot read image " in result.stdout
    assert "val0_image.jpg: not an image format Pillow knows" in result.stdout


def test_scan_data_names_the_values_the_table_lacks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = write_pairs(tmp_path / "raw", colour=True)
    (tmp_path / "p.yaml").write_text(json.dumps(folder_params(root, tmp_path, data__label_mode="color")))
    result = CliRunner().invoke(app, ["scan-data", "--params", "p.yaml"])
    assert result.exit_code == 0, result.output
    assert " #804080" in result.stdout and "road" in result.stdout
    assert "the class table lists every value present" in result.stdout
