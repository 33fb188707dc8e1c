"""What a data tree holds, read with the current params and without preparing anything:
`pixpro scan-data`. Images are opened for their headers only; labels are decoded once, for the
values (or colours) they contain."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pixpro.config_data import DataConfig
from pixpro.data.cityscapes import (EXTRA_SPLIT, IGNORE, LABELLED_SPLITS, ORIENTATION, Layout, open_checked, pair_split,
                                    read_label, split_files)
from pixpro.data.classes import ClassTable
from pixpro.data.parallel import num_workers, parallel_map
from pixpro.errors import DataError


@dataclass
class SplitScan:
    name: str  # the split folder, filling {split}
    labelled: bool
    images: int = 0
    labels: int = 0
    # Names relative to the split's image (or label) folder:
    without_label: list[str] = field(default_factory=list)
    without_image: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # images or labels Pillow refuses, with the reason
    other_size: list[str] = field(default_factory=list)  # labels whose size differs from their image's


@dataclass
class ScanResult:
    root: Path
    mode: str  # data.label_mode: the keys of `values` are label values, or colours as 0xRRGGBB
    splits: list[SplitScan]
    values: dict[int, int]  # label value (or colour) -> pixel count over every label read
    missing: list[int]  # the keys of `values` the class table does not list (all when there is no table)

    @property
    def pixels(self) -> int:
        return sum(self.values.values())


def _image_size(path: Path) -> tuple[int, int] | str:
    """(H, W) as viewers show the image (EXIF orientation applied), from its header; or the reason
    it cannot be read."""
    try:
        with open_checked(path, "image") as img:
            width, height = img.size
            # Orientations 5-8 turn the picture by 90 degrees (what exif_transpose does in prepare).
            return (width, height) if img.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8) else (height, width)
    except (OSError, SyntaxError, DataError) as err:
        return str(err)


def _label_values(path: Path, mode: str) -> tuple[dict[int, int], tuple[int, int]] | str:
    """(value or 0xRRGGBB colour -> pixel count, (H, W)) of one label file; or why it cannot be read."""
    try:
        raw = read_label(path, mode)
    except DataError as err:
        return str(err)
    if mode == "color":
        rgb = raw.astype(np.uint32)
        raw = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    values, counts = np.unique(raw, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist())), raw.shape[:2]


def scan_tree(data: DataConfig, layout: Layout, classes: ClassTable | None) -> ScanResult:
    """Walk data.root split by split: image headers and label values, over data.workers processes."""
    root = Path(data.root)
    if not root.is_dir():
        raise DataError(f"data.root {root} does not exist")
    workers = num_workers(data.workers)
    read = functools.partial(_label_values, mode=data.label_mode)
    splits, values = [], {}
    for split in LABELLED_SPLITS:
        images, labels = pair_split(root, split, layout)
        image_folder, label_folder = layout.images(root, split), layout.labels(root, split)
        scan = SplitScan(split, True, len(images), len(labels))
        scan.without_label = [_relative(p, image_folder) for k, p in images.items() if k not in labels]
        scan.without_image = [_relative(p, label_folder) for k, p in labels.items() if k not in images]
        sizes = dict(zip(images, parallel_map(_image_size, list(images.values()), workers,
                                              f"{split}: read {len(images)} image headers")))
        found = parallel_map(read, list(labels.values()), workers, f"{split}: read {len(labels)} labels")
        for key, result in zip(labels, found):
            if isinstance(result, str):
                scan.unreadable.append(result)
                continue
            counts, shape = result
            for value, count in counts.items():
                values[value] = values.get(value, 0) + count
            if isinstance(sizes.get(key), tuple) and sizes[key] != shape:
                (h, w), (ih, iw) = shape, sizes[key]
                scan.other_size.append(f"{_relative(labels[key], label_folder)} ({w}x{h}, image {iw}x{ih})")
        scan.unreadable += [reason for reason in sizes.values() if isinstance(reason, str)]
        splits.append(scan)
    for folder in dict.fromkeys(list(layout.unlabelled) + ([EXTRA_SPLIT] if data.use_extra else [])):
        images = split_files(layout.images(root, folder), layout.image_suffix)
        scan = SplitScan(folder, False, len(images))
        sizes = parallel_map(_image_size, list(images.values()), workers, f"{folder}: read {len(images)} headers")
        scan.unreadable = [reason for reason in sizes if isinstance(reason, str)]
        splits.append(scan)
    values = dict(sorted(values.items()))
    return ScanResult(root, data.label_mode, splits, values, _missing(values, data.label_mode, classes))


def _relative(path: Path, folder: Path) -> str:
    return str(path.relative_to(folder))


def _missing(values: dict[int, int], mode: str, classes: ClassTable | None) -> list[int]:
    if classes is None:
        return list(values)
    if mode == "color":
        listed = {color for color, _ in classes.label_colors}
        return [v for v in values if v not in listed]
    return [v for v in values if not (0 <= v < 256 and classes.known[v])]


def describe_value(value: int, mode: str) -> str:
    return f"#{value:06x}" if mode == "color" else str(value)


def class_of(value: int, mode: str, classes: ClassTable | None) -> str:
    """The table's class for a value present: its name, 'ignore', or '' when the table lacks it."""
    if classes is None:
        return ""
    if mode == "color":
        ids = {t for c, t in classes.label_colors if c == value}
        train_id = min(ids) if ids else None
    else:
        train_id = int(classes.lut[value]) if 0 <= value < 256 and classes.known[value] else None
    if train_id is None:
        return ""
    return "ignore" if train_id == IGNORE or train_id >= classes.num_classes else classes.names[train_id]


def starter_classes(result: ScanResult, classes: ClassTable | None) -> str:
    """A class CSV (value,train_id,name,color) listing every value present: 255 ignored, the others
    train ids 0.. in value order, named from the current table where it knows them."""
    rows = ["value,train_id,name,color"]
    train_id = 0
    for index, value in enumerate(result.values):
        name = class_of(value, result.mode, classes)
        if result.mode == "color":  # colour labels: the value column is only a row key
            rows.append(f"{index},{train_id},{name if name and name != 'ignore' else f'class_{index}'},#{value:06x}")
            train_id += 1
        elif value == IGNORE or name == "ignore":
            rows.append(f"{value},255,void,")
        else:
            rows.append(f"{value},{train_id},{name or f'class_{value}'},")
            train_id += 1
    return "\n".join(rows) + "\n"


def format_report(result: ScanResult, classes: ClassTable | None, spec: str, shown: int = 5) -> str:
    """The text `pixpro scan-data` prints."""
    lines = [f"data.root {result.root} (label_mode {result.mode}, classes {spec})"]
    for split in result.splits:
        if split.labelled:
            lines.append(f"{split.name}: {split.images} images, {split.labels} labels")
        else:
            lines.append(f"{split.name} (unlabelled): {split.images} images")
        for what, names in (("images without a label", split.without_label),
                            ("labels without an image", split.without_image),
                            ("labels of another size than their image", split.other_size)):
            if names:
                more = f", ... ({len(names) - shown} more)" if len(names) > shown else ""
                lines.append(f"  {len(names)} {what}: {', '.join(names[:shown])}{more}")
        if split.unreadable:  # the reasons name their files
            lines.append(f"  {len(split.unreadable)} files that cannot be read:")
            lines += [f"    {reason}" for reason in split.unreadable[:shown]]
    total = result.pixels
    lines.append(f"label {'colours' if result.mode == 'color' else 'values'} over {total} labelled pixels:")
    for value, count in result.values.items():
        name = class_of(value, result.mode, classes) or "NOT IN THE CLASS TABLE"
        lines.append(f"  {describe_value(value, result.mode):>8}  {100 * count / total:6.2f}%  {name}")
    if result.missing:
        lines.append(f"the class table lacks {len(result.missing)}: "
                     f"{', '.join(describe_value(v, result.mode) for v in result.missing)}")
    elif result.values:
        lines.append("the class table lists every value present")
    return "\n".join(lines)
