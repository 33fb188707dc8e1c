"""Class tables: raw label values -> train ids, plus each class's name and colour.

`data.classes` names a built-in table (`cityscapes`, `idd_lite`) or a CSV with the header
`value,train_id,name` and an optional `color` column (`#rrggbb`). Each row maps one raw label
value (0-255) to a train id; train id 255 means "ignore". Train ids must run 0..K-1 without
gaps, and rows sharing a train id must agree on its name (and colour).

`prepare` writes the table of the prepared masks as `classes.csv` (train_id,name,color) next to
`manifest.csv`; every later stage reads K, the names and the colours from there, never from
params.yaml or a constant.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pixpro.errors import ConfigError, DataError

IGNORE = 255
BUILTIN_TABLES = ("cityscapes", "idd_lite")
PREPARED_CLASSES_NAME = "classes.csv"
CSV_COLUMNS = ("value", "train_id", "name")

# IDD Lite's level-1 classes (values 0..6 are already train ids; 255 = void).
_IDD_LITE = (
    ("drivable", (128, 64, 128)),
    ("non-drivable", (244, 35, 232)),
    ("living things", (220, 20, 60)),
    ("vehicles", (0, 0, 142)),
    ("roadside objects", (250, 170, 30)),
    ("far objects", (107, 142, 35)),
    ("sky", (70, 130, 180)),
)
_COLOR = re.compile(r"#[0-9a-fA-F]{6}")


@dataclass(frozen=True, eq=False)
class ClassTable:
    """One class table. Arrays are read-only.

    lut: (256,) uint8 raw value -> train id (IGNORE for ignored or unlisted values).
    known: (256,) bool, the values the table lists; any other value in a label is an error.
    names: K class names, indexed by train id.
    colors: (K, 3) uint8 RGB, indexed by train id.
    spec: where the table came from (a built-in name or a path), named in error messages.
    label_colors: (colour as 0xRRGGBB, train id) of every value the table gives a colour, ignored
        values included: how `data.label_mode: color` reads colour-coded label PNGs.
    """

    spec: str
    lut: np.ndarray
    known: np.ndarray
    names: tuple[str, ...]
    colors: np.ndarray
    label_colors: tuple[tuple[int, int], ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def describe_values(self) -> str:
        # Cityscapes keeps its historical wording: "... which is not a Cityscapes label id".
        return "a Cityscapes label id" if self.spec == "cityscapes" else f"listed in class table {self.spec}"

    def train_ids(self, values: np.ndarray, where: str | Path) -> np.ndarray:
        """(H, W) raw label values (any integer dtype) -> (H, W) uint8 train ids.

        Raises DataError naming `where` and the first value the table does not list.
        """
        values = np.asarray(values)
        if values.size and (values.min() < 0 or values.max() > 255):
            bad = int(values.max() if values.max() > 255 else values.min())
            raise DataError(f"label {where} has value {bad}, which is not {self.describe_values()}")
        values = values.astype(np.uint8)
        unknown = ~self.known[values]
        if unknown.any():
            raise DataError(f"label {where} has value {int(values[unknown][0])}, which is not "
                            f"{self.describe_values()}")
        return self.lut[values]

    def train_ids_from_colors(self, rgb: np.ndarray, where: str | Path) -> np.ndarray:
        """(H, W, 3) uint8 colour label -> (H, W) uint8 train ids through `label_colors`.

        Raises DataError naming `where`, the first colour the table lacks and its pixel count.
        """
        mapping: dict[int, int] = {}
        for color, train_id in self.label_colors:
            if mapping.setdefault(color, train_id) != train_id:
                raise DataError(f"class table {self.spec} gives colour {_hex(color)} to train ids "
                                f"{mapping[color]} and {train_id}: colour labels cannot be read with it")
        rgb = np.asarray(rgb, dtype=np.uint32)
        keys = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]  # (H, W)
        colors, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        ids = np.empty(len(colors), dtype=np.uint8)
        for i, color in enumerate(colors.tolist()):
            if color not in mapping:
                raise DataError(f"label {where} has colour {_hex(color)} ({counts[i]} pixels), which is "
                                f"not in the color column of class table {self.spec}")
            ids[i] = mapping[color]
        return ids[inverse.reshape(keys.shape)]

    def palette(self) -> np.ndarray:
        """(256, 3) uint8 train id -> colour; ignore and ids beyond K are black."""
        lut = np.zeros((256, 3), np.uint8)
        lut[: self.num_classes] = self.colors
        return lut


def _hex(color: int) -> str:
    return f"#{color:06x}"


def _rgb24(rgb) -> int:
    r, g, b = (int(c) for c in rgb)
    return (r << 16) | (g << 8) | b


def _freeze(*arrays: np.ndarray) -> None:
    for array in arrays:
        array.setflags(write=False)


def _table(spec: str, lut: np.ndarray, known: np.ndarray, names: list[str], colors: np.ndarray,
           label_colors: tuple[tuple[int, int], ...] | None = None) -> ClassTable:
    """label_colors: None = each class's own colour (the table names no other)."""
    colors = np.asarray(colors, dtype=np.uint8).reshape(len(names), 3)
    _freeze(lut, known, colors)
    if label_colors is None:
        label_colors = tuple((_rgb24(c), t) for t, c in enumerate(colors))
    return ClassTable(spec, lut, known, tuple(names), colors, label_colors)


@functools.lru_cache(maxsize=None)  # read-only, so one shared instance is safe
def _cityscapes() -> ClassTable:
    """labelId -> trainId, names and colours from cityscapesscripts (19 classes)."""
    from cityscapesscripts.helpers.labels import labels, trainId2label

    train_ids = sorted(t for t in trainId2label if 0 <= t < IGNORE)
    k = len(train_ids)
    lut = np.full(256, IGNORE, dtype=np.uint8)
    known = np.zeros(256, dtype=bool)
    for label in labels:
        if 0 <= label.id < 256:  # 'license plate' has id -1: it never occurs in labelIds PNGs
            known[label.id] = True
            lut[label.id] = label.trainId if 0 <= label.trainId < k else IGNORE
    names = [trainId2label[t].name for t in train_ids]
    colors = np.array([trainId2label[t].color for t in train_ids])
    # Every label id has a colour in gtFine_color.png; the ignored ones (black, dark red, ...) too.
    label_colors = tuple(sorted({(_rgb24(label.color), int(lut[label.id])) for label in labels if 0 <= label.id < 256}))
    return _table("cityscapes", lut, known, names, colors, label_colors)


@functools.lru_cache(maxsize=None)
def _idd_lite() -> ClassTable:
    k = len(_IDD_LITE)
    lut = np.full(256, IGNORE, dtype=np.uint8)
    known = np.zeros(256, dtype=bool)
    lut[:k] = np.arange(k)
    known[:k] = True
    known[IGNORE] = True  # void
    return _table("idd_lite", lut, known, [n for n, _ in _IDD_LITE], np.array([c for _, c in _IDD_LITE]))


def default_colors(k: int) -> np.ndarray:
    """(k, 3) uint8 distinct colours: hues spread by the golden ratio, two brightness levels."""
    hue = (np.arange(k) * 0.618033988749895) % 1.0
    value = np.where(np.arange(k) % 2 == 0, 0.95, 0.65)
    saturation = 0.75
    # HSV -> RGB, vectorised.
    i = np.floor(hue * 6).astype(int) % 6
    f = hue * 6 - np.floor(hue * 6)
    p, q, t = value * (1 - saturation), value * (1 - f * saturation), value * (1 - (1 - f) * saturation)
    rgb = np.select([i[:, None] == j for j in range(6)],
                    [np.stack(c, 1) for c in ((value, t, p), (q, value, p), (p, value, t),
                                              (p, q, value), (t, p, value), (value, p, q))])
    return np.round(rgb * 255).astype(np.uint8)


def _parse_int(text: str, column: str, row: int, spec: str, high: int) -> int:
    if not re.fullmatch(r"\s*\d+\s*", text) or not 0 <= int(text) <= high:
        raise ConfigError(f"class table {spec} row {row}: {column} = {text!r} is not an integer in 0..{high}")
    return int(text)


def read_class_csv(path: str | Path) -> ClassTable:
    """A CSV table `value,train_id,name[,color]` -> ClassTable; ConfigError on any malformed row."""
    spec = str(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot read class table {spec}: {reason}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in CSV_COLUMNS if c not in frame.columns]
    if missing:
        raise ConfigError(f"class table {spec} lacks column {', '.join(missing)}: expected the header "
                          f"value,train_id,name[,color], got {','.join(frame.columns)}")
    if frame.empty:
        raise ConfigError(f"class table {spec} has no rows")
    lut = np.full(256, IGNORE, dtype=np.uint8)
    known = np.zeros(256, dtype=bool)
    first_row: dict[int, int] = {}
    names: dict[int, str] = {}
    colors: dict[int, tuple[int, int, int] | None] = {}
    label_colors: list[tuple[int, int]] = []
    for index, record in enumerate(frame.to_dict("records")):
        row = index + 2  # the header is line 1
        value = _parse_int(record["value"], "value", row, spec, 255)
        train_id = _parse_int(record["train_id"], "train_id", row, spec, 255)
        name = record["name"].strip()
        if value in first_row:
            raise ConfigError(f"class table {spec} lists value {value} twice (rows {first_row[value]} and {row})")
        first_row[value] = row
        known[value] = True
        lut[value] = train_id
        color = None
        text = str(record.get("color", "")).strip()
        if text:
            if not _COLOR.fullmatch(text):
                raise ConfigError(f"class table {spec} row {row}: color = {text!r} is not #rrggbb")
            color = tuple(int(text[i:i + 2], 16) for i in (1, 3, 5))
            label_colors.append((_rgb24(color), train_id))
        if train_id == IGNORE:
            continue
        if not name:
            raise ConfigError(f"class table {spec} row {row}: train id {train_id} has an empty name")
        if train_id in names:
            if names[train_id] != name or (color is not None and colors[train_id] not in (None, color)):
                raise ConfigError(f"class table {spec} row {row}: train id {train_id} is already "
                                  f"{names[train_id]!r} with another colour or name")
            colors[train_id] = colors[train_id] or color
            continue
        names[train_id] = name
        colors[train_id] = color
    k = len(names)
    if k == 0:
        raise ConfigError(f"class table {spec} has no class: every row has train_id 255 (ignore)")
    if sorted(names) != list(range(k)):
        gaps = sorted(set(range(max(names) + 1)) - set(names))
        raise ConfigError(f"class table {spec}: train ids must be contiguous from 0; got "
                          f"{sorted(names)}, missing {gaps}")
    ordered = [names[t] for t in range(k)]
    twice = sorted({n for n in ordered if ordered.count(n) > 1})
    if twice:
        raise ConfigError(f"class table {spec}: name {twice[0]!r} is given to more than one train id")
    fallback = default_colors(k)
    rgb = np.array([colors[t] if colors[t] is not None else fallback[t] for t in range(k)])
    return _table(spec, lut, known, ordered, rgb, tuple(label_colors))


def load_class_table(spec: str) -> ClassTable:
    """A built-in table by name (`cityscapes`, `idd_lite`) or a CSV file at path `spec`."""
    if spec == "cityscapes":
        return _cityscapes()
    if spec == "idd_lite":
        return _idd_lite()
    if not Path(spec).is_file():
        raise ConfigError(f"data.classes = {spec!r} is neither a built-in table "
                          f"({', '.join(BUILTIN_TABLES)}) nor an existing CSV file")
    return read_class_csv(spec)


# --------------------------------------------------------------------------------------------
# The prepared data's own table: train ids are its values
# --------------------------------------------------------------------------------------------


def write_prepared_classes(table: ClassTable, folder: Path) -> Path:
    """Write folder/classes.csv: train_id,name,color (one row per class)."""
    path = Path(folder) / PREPARED_CLASSES_NAME
    frame = pd.DataFrame({
        "train_id": range(table.num_classes),
        "name": list(table.names),
        "color": ["#{:02x}{:02x}{:02x}".format(*map(int, c)) for c in table.colors],
    })
    frame.to_csv(path, index=False)
    return path


def load_prepared_classes(prepared_dir: str | Path) -> ClassTable:
    """The class table of prepared masks: train ids 0..K-1 map to themselves, 255 is ignore."""
    path = Path(prepared_dir) / PREPARED_CLASSES_NAME
    if not path.is_file():
        raise DataError(f"{path} not found: rerun `pixpro prepare` (or `dvc repro prepare`)")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(frame.columns) != ["train_id", "name", "color"] or frame.empty:
        raise DataError(f"{path} is not a prepared class table (train_id,name,color): rerun `pixpro prepare`")
    k = len(frame)
    if frame["train_id"].tolist() != [str(t) for t in range(k)]:
        raise DataError(f"{path} must list train ids 0..{k - 1} in order: rerun `pixpro prepare`")
    lut = np.full(256, IGNORE, dtype=np.uint8)
    lut[:k] = np.arange(k)
    known = np.zeros(256, dtype=bool)
    known[:k] = True
    known[IGNORE] = True
    if not all(_COLOR.fullmatch(c) for c in frame["color"]):
        raise DataError(f"{path} has a colour that is not #rrggbb: rerun `pixpro prepare`")
    colors = np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in frame["color"]])
    return _table(str(path), lut, known, frame["name"].tolist(), colors)
