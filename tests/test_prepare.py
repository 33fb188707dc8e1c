"""The prepare stage: discovery, the official labelIds -> trainIds mapping, resizing, the
manifest, metrics, and failures that name their culprit and leave no half-written output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cityscapesscripts.helpers.labels import id2label, labels
from PIL import Image
from typer.testing import CliRunner

import pixpro.data.prepare as prepare_module
from tests.conftest import RAW_SIZE, TINY_SIZE, VENV_BIN, synthesize, tiny_params
from pixpro.config import params_from_dict
from pixpro.data.cityscapes import KNOWN_LABEL_IDS, LABEL_TO_TRAIN, discover, label_lookup
from pixpro.data.prepare import MANIFEST_COLUMNS, load_manifest, run_prepare
from pixpro.data.synthetic import render_scene, scene_jobs
from pixpro.errors import DataError
from pixpro.data.classes import load_class_table
from pixpro.stages.cli import app

OUT = Path("prepared")  # relative: the tests chdir into tmp_path, like DVC runs from the repo root
METRICS = Path("metrics/prepare.json")
PLOTS = Path("plots/prepare")
H, W = TINY_SIZE
VALID_TRAIN = set(range(19)) | {255}


def _official_lut() -> np.ndarray:
    """labelId -> trainId straight from cityscapesscripts, independent of pixpro's lookup."""
    lut = np.full(256, 255, np.uint8)
    for label_id, label in id2label.items():
        if 0 <= label_id < 256 and label.trainId not in (255, -1):
            lut[label_id] = label.trainId
    return lut


OFFICIAL = _official_lut()


def _params(**dotted):
    return params_from_dict(tiny_params({k.replace("__", "."): v for k, v in dotted.items()}))


def _cityscapes(root: Path, **dotted):
    return _params(**{"data__source": "cityscapes", "data__root": str(root), **dotted})


def _run(params, out: Path = OUT):
    return run_prepare(params, out, METRICS, PLOTS)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _images(root: Path, split: str = "train") -> list[Path]:
    return sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))


def _labels(root: Path, split: str = "train") -> list[Path]:
    return sorted((root / "gtFine" / split).glob("*/*_gtFine_labelIds.png"))


def _all_ids_label() -> np.ndarray:
    """A raw-size labelIds map with every id of the table in 8x8 blocks (survive a 2x nearest)."""
    ids = np.array([label.id for label in labels if label.id >= 0], np.uint8)
    rows, cols = RAW_SIZE[0] // 8, RAW_SIZE[1] // 8
    blocks = ids[np.arange(rows * cols) % len(ids)].reshape(rows, cols)
    return np.kron(blocks, np.ones((8, 8), np.uint8))


# --------------------------------------------------------------------------------------------
# Label lookup and discovery


def test_label_lookup_agrees_with_cityscapesscripts_for_every_byte():
    lut, known = label_lookup()
    assert lut.dtype == np.uint8 and lut.shape == known.shape == (256,)
    for value in range(256):
        label = id2label.get(value)
        if label is None:
            assert not known[value], f"id {value} is not in the table but counted as known"
            assert lut[value] == 255
        else:
            assert known[value]
            expected = label.trainId if 0 <= label.trainId < 19 else 255  # 255 and -1 -> ignore
            assert lut[value] == expected, f"{label.name} (id {value})"
    # each of the 19 train classes is reachable, exactly as in the official table
    assert set(lut[known]) == VALID_TRAIN
    np.testing.assert_array_equal(LABEL_TO_TRAIN, OFFICIAL)
    assert KNOWN_LABEL_IDS.sum() == len({label.id for label in labels if label.id >= 0})


def test_discover_tiny_tree(tiny_tree):
    samples = discover(tiny_tree)
    assert [s.split for s in samples] == ["train"] * 4 + ["val"] * 2
    cities = {split: {s.city for s in samples if s.split == split} for split in ("train", "val")}
    assert len(cities["train"]) == len(cities["val"]) == 2
    assert not cities["train"] & cities["val"]
    for s in samples:
        assert s.image.is_file() and s.label.is_file()
        assert s.image.name == f"{s.stem}_leftImg8bit.png"
        assert s.label == tiny_tree / "gtFine" / s.split / s.city / f"{s.stem}_gtFine_labelIds.png"
        assert s.stem.startswith(f"{s.city}_")


def test_discover_extra_only_when_asked(tiny_tree_extra):
    assert all(s.split != "train_extra" for s in discover(tiny_tree_extra))
    extra = [s for s in discover(tiny_tree_extra, use_extra=True) if s.split == "train_extra"]
    assert len(extra) == 2 and all(s.label is None and s.image.is_file() for s in extra)


# --------------------------------------------------------------------------------------------
# Successful runs


def test_prepare_cityscapes_matches_the_official_table(tiny_tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # one label with every id of the table, so every class and every ignored id goes through
    Image.fromarray(_all_ids_label()).save(_labels(tiny_tree)[0])
    result = _run(_cityscapes(tiny_tree))

    manifest = pd.read_csv(OUT / "manifest.csv", dtype=str, keep_default_na=False)
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert manifest["split"].tolist() == ["train"] * 4 + ["val"] * 2
    pd.testing.assert_frame_equal(manifest, result.manifest)
    seen = set()
    for row in manifest.itertuples():
        for rel in (row.image, row.mask):
            assert not os.path.isabs(rel) and rel.startswith(f"{OUT}/{row.split}/{row.city}/")
            assert Path(rel).is_file()
        raw_image = tiny_tree / "leftImg8bit" / row.split / row.city / f"{row.stem}_leftImg8bit.png"
        raw_label = tiny_tree / "gtFine" / row.split / row.city / f"{row.stem}_gtFine_labelIds.png"

        with Image.open(row.image) as img:
            assert img.mode == "RGB" and img.size == (W, H)
            expected_image = Image.open(raw_image).convert("RGB").resize((W, H), Image.BILINEAR)
            np.testing.assert_array_equal(np.asarray(img), np.asarray(expected_image))
        with Image.open(row.mask) as img:
            assert img.mode == "L" and img.size == (W, H)
            mask = np.asarray(img)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= VALID_TRAIN
        raw_ids = Image.open(raw_label)
        expected = OFFICIAL[np.asarray(raw_ids.resize((W, H), Image.NEAREST))]
        np.testing.assert_array_equal(mask, expected, err_msg=row.mask)
        seen |= set(np.unique(mask).tolist())
    assert seen == VALID_TRAIN


def test_prepare_metrics_and_plots(tiny_tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _run(_cityscapes(tiny_tree))
    metrics = json.loads(METRICS.read_text())
    assert set(metrics) == {"train", "val"}
    names = list(load_class_table("cityscapes").names)
    manifest = load_manifest(OUT)
    for split, entry in metrics.items():
        # a few counts that diff meaningfully; the 19 frequencies live in the plots folder
        assert set(entry) == {"images", "ignored_fraction", "classes_present"}
        assert entry["images"] == (4 if split == "train" else 2)
        # recount from the prepared masks themselves
        masks = np.stack([np.asarray(Image.open(p)) for p in manifest.loc[manifest["split"] == split, "mask"]])
        hist = np.bincount(masks.ravel(), minlength=256)
        assert entry["ignored_fraction"] == pytest.approx(hist[255] / masks.size)
        assert entry["classes_present"] == int((hist[:19] > 0).sum())
        np.testing.assert_array_equal(result.class_counts[split][:19], hist[:19])
        table = pd.read_csv(PLOTS / f"class_frequency_{split}.csv")
        assert table["class"].tolist() == names
        assert table["fraction"].tolist() == pytest.approx(hist[:19] / hist[:19].sum())
    assert (PLOTS / "examples.png").stat().st_size > 0


def _synthetic(root: Path, **dotted):
    """Params of data.source synthetic reading the tree `pixpro synthesize` writes at root."""
    params = _params(data__root=str(root), **dotted)
    return params if root.exists() else _params(data__root=str(synthesize(params, root)), **dotted)


def test_prepare_synthetic_is_deterministic(tmp_path, monkeypatch):
    runs = []
    for name in ("a", "b"):  # each its own synthesized tree: the same bytes from the same seed
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        params = _synthetic(tmp_path / name / "raw", data__workers=1 if name == "a" else 2)
        result = _run(params)
        assert result.manifest["split"].value_counts().to_dict() == {"train": 4, "val": 2}
        runs.append(_tree_bytes(tmp_path / name / OUT))
    assert runs[0] == runs[1]
    assert len(runs[0]) == 2 + 4 * 2 + 2 * 2  # manifest, classes.csv + image and mask per labelled image
    # Each scene re-renders from its job's seed: same checks as for real Cityscapes (official
    # table after a nearest resize, RGB images at data.size).
    manifest = pd.read_csv(tmp_path / "a" / OUT / "manifest.csv", dtype=str, keep_default_na=False)
    assert list(manifest.columns) == MANIFEST_COLUMNS
    jobs = {(j.split, j.stem): j for j in scene_jobs(Path("raw"), 4, 2, 2, seed=params.seed)}
    for row in manifest.itertuples():
        assert row.mask.startswith(f"{OUT}/{row.split}/{row.city}/")
        image, label_ids = render_scene(jobs[(row.split, row.stem)].seed, RAW_SIZE)
        with Image.open(tmp_path / "a" / row.image) as img:
            assert img.mode == "RGB" and img.size == (W, H)
        mask = np.asarray(Image.open(tmp_path / "a" / row.mask))
        expected = OFFICIAL[np.asarray(Image.fromarray(label_ids).resize((W, H), Image.NEAREST))]
        np.testing.assert_array_equal(mask, expected, err_msg=row.mask)


def test_prepare_synthetic_extra_scenes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    manifest = _run(_synthetic(tmp_path / "raw", data__synthetic__extra=2)).manifest
    assert (manifest["split"] == "train_extra").sum() == 2


@pytest.mark.parametrize(("change", "pattern"), [
    (None, r"data\.root .*nothing holds no synthetic tree \(no synthetic\.json\): run `pixpro synthesize"),
    ({"data__synthetic__train": 5}, r"synthetic tree at .*raw was written with other params \(train: \[4\], "
                                    r"params say \[5\]\): run `pixpro synthesize"),
    ({"seed": 3}, r"other params \(seed: \[0\], params say \[3\]\)"),
])
def test_prepare_synthetic_refuses_a_missing_or_stale_tree(change, pattern, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if change is None:
        (tmp_path / "nothing").mkdir()
        params = _params(data__root=str(tmp_path / "nothing"))
    else:
        _synthetic(tmp_path / "raw")
        params = _params(data__root=str(tmp_path / "raw"), **change)
    with pytest.raises(DataError, match=pattern):
        _run(params)
    _assert_left_clean(tmp_path, None)


def test_prepare_use_extra_has_empty_masks(tiny_tree_extra, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _run(_cityscapes(tiny_tree_extra, data__use_extra=True))
    manifest = load_manifest(OUT)
    extra = manifest[manifest["split"] == "train_extra"]
    assert len(extra) == 2 and (extra["mask"] == "").all()
    assert (manifest.loc[manifest["split"] != "train_extra", "mask"] != "").all()
    for image in extra["image"]:
        assert Image.open(image).size == (W, H)
    assert not list((OUT / "train_extra").rglob("*_trainIds.png"))
    metrics = json.loads(METRICS.read_text())
    assert metrics["train_extra"] == {"images": 2}  # no labels, so no frequencies
    assert not (PLOTS / "class_frequency_train_extra.csv").exists()


def test_prepare_without_use_extra_skips_extra(tiny_tree_extra, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    manifest = _run(_cityscapes(tiny_tree_extra)).manifest
    assert set(manifest["split"]) == {"train", "val"}


def test_absolute_out_dir_still_gives_cwd_relative_paths(tiny_tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    manifest = _run(_cityscapes(tiny_tree), out=tmp_path / "prepared").manifest
    assert all(p.startswith("prepared/") for p in manifest["image"])


def test_stale_temp_dir_from_a_killed_run_is_dropped(tiny_tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stale = tmp_path / ".prepared.tmp-99999"  # pixpro.io's temporary name, from another process
    stale.mkdir()
    (stale / "junk.txt").write_text("half written")
    _run(_cityscapes(tiny_tree))
    assert not stale.exists() and not (OUT / "junk.txt").exists()
    assert (OUT / "manifest.csv").is_file()


def test_load_manifest_missing(tmp_path):
    with pytest.raises(DataError, match=r"manifest\.csv not found: run `dvc repro prepare`"):
        load_manifest(tmp_path / "prepared")


# --------------------------------------------------------------------------------------------
# Failures: one-line message naming the culprit, nothing half-written, previous output intact


def _missing_root(root, tmp_path):
    return {"data__root": str(tmp_path / "nope")}, DataError, (
        r"data\.root .*nope does not exist; expected Cityscapes images at .*nope/leftImg8bit/"
        r"\{train,val\}/<city>/<city>_<seq>_<frame>_leftImg8bit\.png")


def _empty_root(root, tmp_path):
    shutil.rmtree(root)
    root.mkdir()
    return {}, DataError, (r"no train images in data\.root .*: expected leftImg8bit/\{train,val\}/"
                           r"<city>/.*_leftImg8bit\.png; found an empty directory")


def _wrong_layout(root, tmp_path):
    shutil.rmtree(root)
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "images" / "a.png")
    return {}, DataError, r"no train images in data\.root .*; found \['images'\]"


def _no_val(root, tmp_path):
    shutil.rmtree(root / "leftImg8bit" / "val")
    return {}, DataError, r"no val images in data\.root .*found \['gtFine', 'leftImg8bit'"


def _images_without_labels(root, tmp_path):
    gone = _labels(root)[:3]
    for label in gone:
        label.unlink()
    names = ".*".join(str(p.relative_to(root)).replace(".", r"\.") for p in gone)
    return {}, DataError, rf"3 of 4 train images have no label under .*cityscapes, e\.g\. {names}"


def _corrupt_image(root, tmp_path):
    image = _images(root)[1]
    image.write_bytes(b"this is not a png")
    return {}, DataError, rf"cannot read image .*{image.name}"


def _truncated_image(root, tmp_path):
    image = _images(root, "val")[0]
    image.write_bytes(image.read_bytes()[:200])
    return {}, DataError, rf"cannot read image .*{image.name}"


def _corrupt_label(root, tmp_path):
    label = _labels(root)[2]
    label.write_bytes(os.urandom(64))
    return {}, DataError, rf"cannot read label .*{label.name}"


def _unknown_label_value(root, tmp_path):
    label = _labels(root, "val")[1]
    ids = np.asarray(Image.open(label)).copy()
    ids[5, 7] = 200
    Image.fromarray(ids).save(label)
    return {}, DataError, rf"label .*{label.name} has value 200, which is not a Cityscapes label id"


def _rgb_label(root, tmp_path):
    label = _labels(root)[0]
    Image.open(label).convert("RGB").save(label)
    return {}, DataError, rf"label .*{label.name} has mode RGB; expected a single-channel"


def _label_size_mismatch(root, tmp_path):
    label = _labels(root)[0]
    Image.open(label).resize((RAW_SIZE[1] // 2, RAW_SIZE[0] // 2), Image.NEAREST).save(label)
    return {}, DataError, (rf"label .*{label.name} is {RAW_SIZE[1] // 2}x{RAW_SIZE[0] // 2} "
                           rf"but its image is {RAW_SIZE[1]}x{RAW_SIZE[0]}")


def _use_extra_without_extra(root, tmp_path):
    return {"data__use_extra": True}, DataError, r"data\.use_extra is true but .*train_extra.* matched nothing"


BREAKAGES = [_missing_root, _empty_root, _wrong_layout, _no_val, _images_without_labels,
             _corrupt_image, _truncated_image, _corrupt_label, _unknown_label_value, _rgb_label,
             _label_size_mismatch, _use_extra_without_extra]


def _fake_previous_output(tmp_path: Path) -> dict[str, bytes]:
    """Stand-in for a good earlier run: a manifest, a prepared file and the metrics."""
    (tmp_path / OUT / "train").mkdir(parents=True)
    (tmp_path / OUT / "manifest.csv").write_text("split,city,stem,image,mask\n")
    (tmp_path / OUT / "train" / "x_leftImg8bit.png").write_bytes(b"previous")
    (tmp_path / METRICS).parent.mkdir(parents=True)
    (tmp_path / METRICS).write_text('{"previous": true}\n')
    return _tree_bytes(tmp_path)


def _assert_left_clean(tmp_path: Path, before: dict[str, bytes] | None) -> None:
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".prepared")]
    assert not leftovers, f"temporary output left behind: {leftovers}"
    if before is None:
        assert not (tmp_path / OUT).exists()
        assert not (tmp_path / METRICS).exists()
    else:
        after = {k: v for k, v in _tree_bytes(tmp_path).items() if k.startswith((str(OUT), str(METRICS)))}
        assert after == {k: v for k, v in before.items() if k.startswith((str(OUT), str(METRICS)))}


@pytest.mark.parametrize("previous", [False, True], ids=["fresh", "over-previous"])
@pytest.mark.parametrize("breakage", BREAKAGES, ids=[b.__name__.strip("_") for b in BREAKAGES])
def test_failure_names_culprit_and_leaves_no_output(breakage, previous, tiny_tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides, error, pattern = breakage(tiny_tree, tmp_path)
    before = _fake_previous_output(tmp_path) if previous else None
    with pytest.raises(error, match=pattern) as info:
        _run(_cityscapes(tiny_tree, **overrides))
    assert "\n" not in str(info.value)
    _assert_left_clean(tmp_path, before)


def test_worker_errors_surface_from_the_pool(tiny_tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, error, pattern = _corrupt_image(tiny_tree, tmp_path)
    with pytest.raises(error, match=pattern):
        _run(_cityscapes(tiny_tree, data__workers=2))
    _assert_left_clean(tmp_path, None)


def test_config_error_before_any_output(tmp_path, monkeypatch, write_params):
    monkeypatch.chdir(tmp_path)
    path = write_params({"data.sizee": [32, 64]})
    runner = CliRunner()
    result = runner.invoke(app, ["prepare", "--params", str(path)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("pixpro prepare: error: unknown key data.sizee (known under data: ")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("failure", [DataError("boom in the middle"), KeyboardInterrupt()],
                         ids=["error", "ctrl-c"])
def test_interrupted_run_keeps_previous_output(failure, tiny_tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = _cityscapes(tiny_tree)
    _run(params)
    before = _tree_bytes(tmp_path)
    real = prepare_module.prepare_sample
    calls = []

    def flaky(sample, **kwargs):
        calls.append(sample)
        if len(calls) == 3:  # after two images were already written into the temp folder
            raise failure
        return real(sample, **kwargs)

    monkeypatch.setattr(prepare_module, "prepare_sample", flaky)
    with pytest.raises(type(failure)):
        _run(params)
    assert len(calls) == 3
    _assert_left_clean(tmp_path, before)


def test_interrupted_first_run_leaves_no_manifest(tiny_tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def fail(sample, **kwargs):
        raise DataError("first image fails")

    monkeypatch.setattr(prepare_module, "prepare_sample", fail)
    with pytest.raises(DataError, match="first image fails"):
        _run(_cityscapes(tiny_tree))
    assert not list(tmp_path.rglob("manifest.csv"))
    _assert_left_clean(tmp_path, None)


# --------------------------------------------------------------------------------------------
# Through the command line


def test_cli_prepare_succeeds(tiny_tree, tmp_path, monkeypatch, write_params):
    monkeypatch.chdir(tmp_path)
    path = write_params({"data.source": "cityscapes", "data.root": str(tiny_tree)})
    result = CliRunner().invoke(app, ["prepare", "--params", str(path), "--out", str(OUT),
                                      "--metrics", str(METRICS), "--plots", str(PLOTS)])
    assert result.exit_code == 0, result.output
    assert "prepared 6 images" in result.stderr
    assert len(load_manifest(OUT)) == 6
    assert METRICS.is_file() and (PLOTS / "class_frequency_val.csv").is_file()


def test_cli_prepare_data_error_is_one_line(tiny_tree, tmp_path, monkeypatch, write_params):
    monkeypatch.chdir(tmp_path)
    _, _, pattern = _corrupt_label(tiny_tree, tmp_path)
    path = write_params({"data.source": "cityscapes", "data.root": str(tiny_tree)})
    result = CliRunner().invoke(app, ["prepare", "--params", str(path), "--out", str(OUT)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pixpro prepare: error: cannot read label ")
    assert "Traceback" not in result.output
    assert not (tmp_path / OUT).exists()


@pytest.mark.parametrize("root", ["nope/[red]x", "nope/[/x]"])
def test_cli_error_message_is_printed_verbatim(root, tmp_path, monkeypatch, write_params):
    monkeypatch.chdir(tmp_path)
    path = write_params({"data.source": "cityscapes", "data.root": root})
    result = CliRunner().invoke(app, ["prepare", "--params", str(path)])
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert f"data.root {root} does not exist" in result.stderr


def test_subprocess_prepare_error(tmp_path, write_params):
    """The real console script: exit code 1, one `error:` line on stderr, no traceback."""
    path = write_params({"data.source": "cityscapes", "data.root": str(tmp_path / "missing")})
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["pixpro", "prepare", "--params", str(path), "--out", "prepared"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("pixpro prepare: error: data.root ") and "missing does not exist" in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not list(tmp_path.rglob("manifest.csv")) and not list(tmp_path.glob(".prepared*"))
