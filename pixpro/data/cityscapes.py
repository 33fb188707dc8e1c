"""Cityscapes layout discovery and per-image preparation.

Real Cityscapes, the synthetic generator's tree and `data.source: folder` go through exactly
this code: a folder tree is the Cityscapes layout (`leftImg8bit/<split>/<dir>/<name><image
suffix>`, labels under `gtFine/` with the label suffix) with its own suffixes and class table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from pixpro.data.classes import IGNORE, ClassTable, load_class_table
from pixpro.errors import DataError

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
MASK_SUFFIX = "_gtFine_trainIds.png"
LABELLED_SPLITS = ("train", "val")
EXTRA_SPLIT = "train_extra"
__all__ = ["IGNORE", "NUM_CLASSES", "Layout", "Sample", "discover", "label_lookup", "prepare_sample"]


def label_lookup() -> tuple[np.ndarray, np.ndarray]:
    """(lut (256,) uint8 labelId -> trainId, known (256,) bool) of the built-in Cityscapes table."""
    table = load_class_table("cityscapes")
    return table.lut.copy(), table.known.copy()


LABEL_TO_TRAIN, KNOWN_LABEL_IDS = label_lookup()
# The Cityscapes table's K (19), for Cityscapes-only code such as benchmarks and tests; the
# pipeline takes K from the prepared data's class table.
NUM_CLASSES = load_class_table("cityscapes").num_classes


@dataclass(frozen=True)
class Layout:
    """How to find images and labels under a root.

    unlabelled: split folders whose images are used only for pretraining (no labels read).
    cityscapes: whether error messages describe Cityscapes names (`<city>_<seq>_<frame>`).
    """

    image_suffix: str = IMAGE_SUFFIX
    label_suffix: str = LABEL_SUFFIX
    unlabelled: tuple[str, ...] = ()
    cityscapes: bool = True

    def pattern(self) -> str:
        name = "<city>/<city>_<seq>_<frame>" if self.cityscapes else "<dir>/<name>"
        return "leftImg8bit/{train,val}/" + name + self.image_suffix


class Sample(NamedTuple):
    split: str  # train, val, or train_extra for every unlabelled (pretraining-only) folder
    city: str  # the folder under the split (a city for Cityscapes, any name otherwise)
    stem: str  # e.g. aachen_000000_000019
    image: Path
    label: Optional[Path]  # None for unlabelled splits
    folder: Optional[str] = None  # the split folder on disk when it differs from `split`


def _found(folder: Path, limit: int = 3) -> str:
    names = sorted(p.name for p in folder.glob("*/*") if p.is_file())[:limit]
    return ", ".join(names) if names else "no file"


def _labelled(root: Path, split: str, layout: Layout) -> list[Sample]:
    folder = root / "leftImg8bit" / split
    images = sorted(folder.glob(f"*/*{layout.image_suffix}"))
    if not images and any(p.is_file() for p in folder.glob("*/*")):
        raise DataError(f"image suffix {layout.image_suffix!r} (data.image_suffix) matches no file in "
                        f"{folder}/<dir>/; found e.g. {_found(folder)}")
    samples, missing = [], []
    for image in images:
        city, stem = image.parent.name, image.name[: -len(layout.image_suffix)]
        label = root / "gtFine" / split / city / f"{stem}{layout.label_suffix}"
        if not label.is_file():
            missing.append(label)
        samples.append(Sample(split, city, stem, image, label))
    labels = root / "gtFine" / split
    if images and len(missing) == len(images) and any(p.is_file() for p in labels.glob("*/*")):
        raise DataError(f"label suffix {layout.label_suffix!r} (data.label_suffix) matches no file in "
                        f"{labels}/<dir>/; found e.g. {_found(labels)}")
    if missing:
        shown = ", ".join(str(p.relative_to(root)) for p in missing[:3])
        raise DataError(f"{len(missing)} of {len(images)} {split} images have no label under "
                        f"{root}/gtFine, e.g. {shown}")
    return samples


def discover(root: Path, use_extra: bool = False, layout: Layout = Layout()) -> list[Sample]:
    """List train/val (and the unlabelled, e.g. train_extra) images under a Cityscapes-layout root.

    Raises DataError when the layout is missing, a suffix matches nothing, or labelled images
    lack their labels.
    """
    root = Path(root)
    pattern = layout.pattern()
    if not root.is_dir():
        what = "Cityscapes images" if layout.cityscapes else "images"
        raise DataError(f"data.root {root} does not exist; expected {what} at {root}/{pattern}")
    samples: list[Sample] = []
    for split in LABELLED_SPLITS:
        samples += _labelled(root, split, layout)
    for split in LABELLED_SPLITS:
        if not any(s.split == split for s in samples):
            found = sorted(p.name for p in root.iterdir())[:8] if any(root.iterdir()) else []
            raise DataError(f"no {split} images in data.root {root}: expected {pattern}; "
                            f"found {found or 'an empty directory'}")
    if use_extra:
        extra = sorted((root / "leftImg8bit" / EXTRA_SPLIT).glob(f"*/*{layout.image_suffix}"))
        if not extra:
            raise DataError(f"data.use_extra is true but {root}/leftImg8bit/{EXTRA_SPLIT}/<city>/"
                            f"*{layout.image_suffix} matched nothing")
        samples += [Sample(EXTRA_SPLIT, p.parent.name, p.name[: -len(layout.image_suffix)], p, None)
                    for p in extra]
    for folder in layout.unlabelled:
        if use_extra and folder == EXTRA_SPLIT:
            continue
        found = sorted((root / "leftImg8bit" / folder).glob(f"*/*{layout.image_suffix}"))
        if not found:
            raise DataError(f"data.unlabelled lists {folder!r} but {root}/leftImg8bit/{folder}/<dir>/"
                            f"*{layout.image_suffix} matched nothing")
        # Pretraining reads the `train_extra` rows of the manifest; the folder keeps its name on disk.
        samples += [Sample(EXTRA_SPLIT, p.parent.name, p.name[: -len(layout.image_suffix)], p, None, folder)
                    for p in found]
    return samples


@dataclass(frozen=True)
class PreparedPaths:
    image: Path
    mask: Optional[Path]


def prepared_paths(out_dir: Path, sample: Sample) -> PreparedPaths:
    folder = out_dir / (sample.folder or sample.split) / sample.city
    mask = folder / f"{sample.stem}{MASK_SUFFIX}" if sample.label is not None else None
    return PreparedPaths(folder / f"{sample.stem}{IMAGE_SUFFIX}", mask)


def read_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise DataError(f"cannot read image {path}: {err}") from None


def read_train_ids(path: Path, classes: ClassTable) -> np.ndarray:
    """(H, W) uint8 train ids of a label PNG; DataError for unreadable files or unlisted values."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                raise DataError(f"label {path} has mode {img.mode}; expected a single-channel labelIds PNG")
            ids = np.asarray(img)
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise DataError(f"cannot read label {path}: {err}") from None
    return classes.train_ids(ids, path)


def prepare_sample(sample: Sample, out_dir: Path, size: tuple[int, int], classes: ClassTable) -> np.ndarray:
    """Resize one image (bilinear, antialiased) and its trainId mask (nearest) to size=(H, W).

    Writes under out_dir and returns the mask's class histogram (K + 1,) int64: K classes + ignore.
    """
    height, width = size
    k = classes.num_classes
    paths = prepared_paths(out_dir, sample)
    paths.image.parent.mkdir(parents=True, exist_ok=True)
    image = read_image(sample.image)
    # PIL's bilinear filter widens its support when shrinking, i.e. it averages like area filtering.
    image.resize((width, height), Image.BILINEAR).save(paths.image, compress_level=1)
    counts = np.zeros(k + 1, dtype=np.int64)
    if sample.label is not None:
        train = read_train_ids(sample.label, classes)
        if train.shape != (image.height, image.width):
            raise DataError(f"label {sample.label} is {train.shape[1]}x{train.shape[0]} but its image is "
                            f"{image.width}x{image.height}")
        train_ids = Image.fromarray(train).resize((width, height), Image.NEAREST)
        train_ids.save(paths.mask, compress_level=1)
        hist = np.bincount(np.asarray(train_ids).ravel(), minlength=256)
        counts[:k] = hist[:k]
        counts[k] = hist[k:].sum()
    return counts
