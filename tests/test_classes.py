"""Class tables: built-ins, CSV tables and their errors, the prepared copy, colours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import trainId2label

from pixpro.data.classes import (IGNORE, default_colors, load_class_table, load_prepared_classes,
                                 write_prepared_classes)
from pixpro.errors import ConfigError, DataError
from pixpro.label_viz import colorize_train_ids
from tests.conftest import THREE_CLASSES_CSV



def write_table(tmp_path: Path, text: str, name: str = "classes.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_cityscapes_table_is_cityscapesscripts():
    table = load_class_table("cityscapes")
    assert table.num_classes == 19
    assert list(table.names) == [trainId2label[t].name for t in range(19)]
    assert [tuple(c) for c in table.colors] == [trainId2label[t].color for t in range(19)]
    assert table.lut[7] == 0 and table.lut[26] == 13 and table.lut[0] == IGNORE  # road, car, unlabeled
    assert table.known[0] and not table.known[200]


def test_idd_lite_table_has_seven_classes_and_void():
    table = load_class_table("idd_lite")
    assert table.num_classes == 7
    assert table.names == ("drivable", "non-drivable", "living things", "vehicles", "roadside objects",
                           "far objects", "sky")
    np.testing.assert_array_equal(table.lut[:7], np.arange(7))
    assert table.known[255] and table.lut[255] == IGNORE and not table.known[7]
    assert len({tuple(c) for c in table.colors}) == 7  # distinct colours


def test_csv_table_maps_values_names_and_colours(tmp_path):
    table = load_class_table(str(write_table(tmp_path, THREE_CLASSES_CSV)))
    assert table.num_classes == 3 and table.names == ("road", "car", "sky")
    assert table.lut[[0, 10, 20, 30, 40]].tolist() == [IGNORE, 0, 1, 2, 2]  # several values, one class
    assert tuple(table.colors[0]) == (128, 64, 128) and tuple(table.colors[1]) == (0, 0, 142)
    assert tuple(table.colors[2]) == tuple(default_colors(3)[2])  # no colour given: a default one
    labels = np.array([[0, 10], [30, 40]], np.uint8)
    np.testing.assert_array_equal(table.train_ids(labels, "x.png"), [[IGNORE, 0], [2, 2]])


def test_csv_table_without_color_column_gets_distinct_colours(tmp_path):
    rows = "\n".join(f"{v},{v},class {v}" for v in range(7))
    table = load_class_table(str(write_table(tmp_path, "value,train_id,name\n" + rows + "\n")))
    assert table.num_classes == 7
    assert len({tuple(c) for c in table.colors}) == 7


def test_label_value_missing_from_the_table_names_the_file_and_value(tmp_path):
    table = load_class_table(str(write_table(tmp_path, THREE_CLASSES_CSV)))
    with pytest.raises(DataError, match=r"label .*a_label\.png has value 25, which is not listed in class "
                                         r"table .*classes\.csv"):
        table.train_ids(np.array([[10, 25]], np.uint8), tmp_path / "a_label.png")


BAD_TABLES = {
    "duplicate value": ("value,train_id,name\n1,0,a\n2,1,b\n1,1,b\n",
                        r"class table .*bad\.csv lists value 1 twice \(rows 2 and 4\)"),
    "train ids with a gap": ("value,train_id,name\n1,0,a\n2,2,c\n",
                             r"class table .*bad\.csv: train ids must be contiguous from 0; got \[0, 2\], "
                             r"missing \[1\]"),
    "train ids not from 0": ("value,train_id,name\n1,1,a\n2,2,b\n",
                             r"train ids must be contiguous from 0; got \[1, 2\], missing \[0\]"),
    "missing column": ("value,name\n1,a\n", r"class table .*bad\.csv lacks column train_id: expected the "
                                            r"header value,train_id,name\[,color\]"),
    "bad colour": ("value,train_id,name,color\n1,0,a,red\n", r"row 2: color = 'red' is not #rrggbb"),
    "value out of range": ("value,train_id,name\n256,0,a\n", r"row 2: value = '256' is not an integer in 0\.\.255"),
    "one train id, two names": ("value,train_id,name\n1,0,a\n2,0,b\n", r"row 3: train id 0 is already 'a'"),
    "one name, two train ids": ("value,train_id,name\n1,0,a\n2,1,a\n", r"name 'a' is given to more than one"),
    "only ignore": ("value,train_id,name\n1,255,void\n", r"has no class: every row has train_id 255"),
    "no rows": ("value,train_id,name\n", r"class table .*bad\.csv has no rows"),
}


@pytest.mark.parametrize("case", BAD_TABLES, ids=list(BAD_TABLES))
def test_bad_table_is_a_one_line_config_error(case, tmp_path):
    text, pattern = BAD_TABLES[case]
    with pytest.raises(ConfigError, match=pattern) as info:
        load_class_table(str(write_table(tmp_path, text, "bad.csv")))
    assert "\n" not in str(info.value)


def test_unknown_table_name_lists_the_built_ins(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.classes = 'mapillary' is neither a built-in table "
                                          r"\(cityscapes, idd_lite\) nor an existing CSV file"):
        load_class_table("mapillary")


def test_prepared_table_round_trips_names_and_colours(tmp_path):
    table = load_class_table(str(write_table(tmp_path, THREE_CLASSES_CSV)))
    written = write_prepared_classes(table, tmp_path)
    assert written.read_text().splitlines()[0] == "train_id,name,color"
    prepared = load_prepared_classes(tmp_path)
    assert prepared.names == table.names
    np.testing.assert_array_equal(prepared.colors, table.colors)
    # The prepared masks hold train ids: they map to themselves, 255 stays ignore, 3 is unknown.
    np.testing.assert_array_equal(prepared.train_ids(np.array([0, 1, 2, 255], np.uint8), "m"), [0, 1, 2, 255])
    with pytest.raises(DataError, match="has value 3"):
        prepared.train_ids(np.array([3], np.uint8), "m")


def test_missing_prepared_table_says_to_rerun_prepare(tmp_path):
    with pytest.raises(DataError, match=r"classes\.csv not found: rerun `pixpro prepare`"):
        load_prepared_classes(tmp_path)


def test_colorize_uses_the_table_colours():
    table = load_class_table("idd_lite")
    rgb = colorize_train_ids(np.array([[0, 6], [255, 7]], np.uint8), table.colors)
    assert tuple(rgb[0, 0]) == tuple(table.colors[0]) and tuple(rgb[0, 1]) == tuple(table.colors[6])
    assert tuple(rgb[1, 0]) == (0, 0, 0) and tuple(rgb[1, 1]) == (0, 0, 0)  # ignore, beyond K
