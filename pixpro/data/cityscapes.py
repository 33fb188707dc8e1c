"""Cityscapes layout discovery, labelIds -> trainIds lookup and per-image preparation.

Real Cityscapes and the synthetic generator's tree go through exactly this code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
from cityscapesscripts.helpers.labels import labels as CITYSCAPES_LABELS
from PIL import Image, UnidentifiedImageError

from pixpro.errors import DataError

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
MASK_SUFFIX = "_gtFine_trainIds.png"
LABELLED_SPLITS = ("train", "val")
EXTRA_SPLIT = "train_extra"
IGNORE = 255
NUM_CLASSES = 19


def label_lookup() -> tuple[np.ndarray, np.ndarray]:
    """Build (lut (256,) uint8 labelId -> trainId, known (256,) bool) from cityscapesscripts.

    Ids that the table maps to no train class (trainId 255 or -1) go to IGNORE; `known` marks
    the ids that exist in the table, so a stray value can be reported instead of ignored.
    """
    lut = np.full(256, IGNORE, dtype=np.uint8)
    known = np.zeros(256, dtype=bool)
    for label in CITYSCAPES_LABELS:
        if 0 <= label.id < 256:  # 'license plate' has id -1: it never occurs in labelIds PNGs
            known[label.id] = True
            lut[label.id] = label.trainId if 0 <= label.trainId < NUM_CLASSES else IGNORE
    return lut, known


LABEL_TO_TRAIN, KNOWN_LABEL_IDS = label_lookup()


class Sample(NamedTuple):
    split: str
    city: str
    stem: str  # e.g. aachen_000000_000019
    image: Path
    label: Optional[Path]  # None for unlabelled splits


def discover(root: Path, use_extra: bool = False) -> list[Sample]:
    """List train/val (and optionally train_extra) images under a Cityscapes root.

    Raises DataError when the layout is missing or when labelled images lack their labels.
    """
    root = Path(root)
    pattern = "leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>" + IMAGE_SUFFIX
    if not root.is_dir():
        raise DataError(f"data.root {root} does not exist; expected Cityscapes images at {root}/{pattern}")
    samples: list[Sample] = []
    for split in LABELLED_SPLITS:
        images = sorted((root / "leftImg8bit" / split).glob(f"*/*{IMAGE_SUFFIX}"))
        missing = []
        for image in images:
            city, stem = image.parent.name, image.name[: -len(IMAGE_SUFFIX)]
            label = root / "gtFine" / split / city / f"{stem}{LABEL_SUFFIX}"
            if not label.is_file():
                missing.append(label)
            samples.append(Sample(split, city, stem, image, label))
        if missing:
            shown = ", ".join(str(p.relative_to(root)) for p in missing[:3])
            raise DataError(f"{len(missing)} of {len(images)} {split} images have no label under "
                            f"{root}/gtFine, e.g. {shown}")
    for split in LABELLED_SPLITS:
        if not any(s.split == split for s in samples):
            found = sorted(p.name for p in root.iterdir())[:8] if any(root.iterdir()) else []
            raise DataError(f"no {split} images in data.root {root}: expected {pattern}; "
                            f"found {found or 'an empty directory'}")
    if use_extra:
        extra = sorted((root / "leftImg8bit" / EXTRA_SPLIT).glob(f"*/*{IMAGE_SUFFIX}"))
        if not extra:
            raise DataError(f"data.use_extra is true but {root}/leftImg8bit/{EXTRA_SPLIT}/<city>/"
                            f"*{IMAGE_SUFFIX} matched nothing")
        samples += [Sample(EXTRA_SPLIT, p.parent.name, p.name[: -len(IMAGE_SUFFIX)], p, None) for p in extra]
    return samples


@dataclass(frozen=True)
class PreparedPaths:
    image: Path
    mask: Optional[Path]


def prepared_paths(out_dir: Path, sample: Sample) -> PreparedPaths:
    folder = out_dir / sample.split / sample.city
    mask = folder / f"{sample.stem}{MASK_SUFFIX}" if sample.label is not None else None
    return PreparedPaths(folder / f"{sample.stem}{IMAGE_SUFFIX}", mask)


def read_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise DataError(f"cannot read image {path}: {err}") from None


def read_label_ids(path: Path) -> np.ndarray:
    """(H, W) uint8 labelIds; DataError for unreadable files or ids not in the Cityscapes table."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                raise DataError(f"label {path} has mode {img.mode}; expected a single-channel labelIds PNG")
            ids = np.asarray(img)
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise DataError(f"cannot read label {path}: {err}") from None
    if ids.min() < 0 or ids.max() > 255:
        bad = int(ids.max() if ids.max() > 255 else ids.min())
        raise DataError(f"label {path} has value {bad}, which is not a Cityscapes label id")
    ids = ids.astype(np.uint8)
    unknown = ~KNOWN_LABEL_IDS[ids]
    if unknown.any():
        raise DataError(f"label {path} has value {int(ids[unknown][0])}, which is not a Cityscapes label id")
    return ids


def prepare_sample(sample: Sample, out_dir: Path, size: tuple[int, int]) -> np.ndarray:
    """Resize one image (bilinear, antialiased) and its trainId mask (nearest) to size=(H, W).

    Writes under out_dir and returns the mask's class histogram (20,) int64: 19 classes + ignore.
    """
    height, width = size
    paths = prepared_paths(out_dir, sample)
    paths.image.parent.mkdir(parents=True, exist_ok=True)
    image = read_image(sample.image)
    # PIL's bilinear filter widens its support when shrinking, i.e. it averages like area filtering.
    image.resize((width, height), Image.BILINEAR).save(paths.image, compress_level=1)
    counts = np.zeros(NUM_CLASSES + 1, dtype=np.int64)
    if sample.label is not None:
        ids = read_label_ids(sample.label)
        if ids.shape != (image.height, image.width):
            raise DataError(f"label {sample.label} is {ids.shape[1]}x{ids.shape[0]} but its image is "
                            f"{image.width}x{image.height}")
        train_ids = Image.fromarray(LABEL_TO_TRAIN[ids]).resize((width, height), Image.NEAREST)
        train_ids.save(paths.mask, compress_level=1)
        hist = np.bincount(np.asarray(train_ids).ravel(), minlength=256)
        counts[:NUM_CLASSES] = hist[:NUM_CLASSES]
        counts[NUM_CLASSES] = hist[NUM_CLASSES:].sum()
    return counts
