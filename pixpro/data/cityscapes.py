"""Cityscapes layout discovery and per-image preparation.

Real Cityscapes, the synthetic generator's tree and `data.source: folder` go through exactly
this code: a folder tree is the Cityscapes layout (`leftImg8bit/<split>/<dir>/<name><image
suffix>`, labels under `gtFine/` with the label suffix) with its own suffixes and class table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

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


# Written by file managers and archivers, never data: skipped wherever a tree is listed.
SYSTEM_NAMES = frozenset({"Thumbs.db", "desktop.ini", "__MACOSX"})


@dataclass(frozen=True)
class Layout:
    """How to find images and labels under a root.

    image_dir, label_dir: a split's folders relative to the root, `{split}` = train, val, ...;
        images sit in them directly or one sub-folder down (a city, a sequence).
    unlabelled: split folders whose images are used only for pretraining (no labels read).
    cityscapes: whether error messages describe Cityscapes names (`<city>_<seq>_<frame>`).
    """

    image_suffix: str = IMAGE_SUFFIX
    label_suffix: str = LABEL_SUFFIX
    image_dir: str = "leftImg8bit/{split}"
    label_dir: str = "gtFine/{split}"
    unlabelled: tuple[str, ...] = ()
    cityscapes: bool = True

    def images(self, root: Path, split: str) -> Path:
        return Path(root) / self.image_dir.format(split=split)

    def labels(self, root: Path, split: str) -> Path:
        return Path(root) / self.label_dir.format(split=split)

    def pattern(self) -> str:
        name = "<city>/<city>_<seq>_<frame>" if self.cityscapes else "[<dir>/]<name>"
        return self.image_dir.format(split="{train,val}") + "/" + name + self.image_suffix


class Sample(NamedTuple):
    split: str  # train, val, or train_extra for every unlabelled (pretraining-only) folder
    city: str  # the sub-folder under the split folder ('' when files sit in it directly)
    stem: str  # e.g. aachen_000000_000019
    image: Path
    label: Optional[Path]  # None for unlabelled splits
    folder: Optional[str] = None  # the split folder on disk when it differs from `split`


Key = tuple[str, str]  # (sub-folder or '', name without suffix): how an image finds its label


def _entries(folder: Path) -> list[Path]:
    """Visible entries of `folder`, sorted; [] if it is missing. Hidden (`.DS_Store`, macOS `._*`)
    and system files are skipped; a name that is not UTF-8 stops here, before any work."""
    try:
        entries = sorted(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as err:
        raise DataError(f"cannot list {folder}: {err.strerror or err}") from None
    visible = [e for e in entries if not e.name.startswith(".") and e.name not in SYSTEM_NAMES]
    for entry in visible:
        try:
            entry.name.encode("utf-8")
        except UnicodeEncodeError:  # os.listdir's surrogate escapes: the manifest could not hold it
            raise DataError(f"{folder} holds a name that is not valid UTF-8 ({os.fsencode(entry.name)!r}): "
                            f"rename it, e.g. with `convmv -r -f latin1 -t utf8 --notest {folder}`") from None
    return visible


def split_files(folder: Path, suffix: str, skip: str = "") -> dict[Key, Path]:
    """Files named <name><suffix> in `folder` or one sub-folder down, by (sub-folder, name).

    skip: a longer suffix whose files are not meant (a label suffix ending like the image suffix,
    both in one folder).
    """
    found: dict[Key, Path] = {}

    def take(path: Path, sub: str) -> None:
        name = path.name
        if name.endswith(suffix) and len(name) > len(suffix) and not (skip and name.endswith(skip)):
            found[(sub, name[: -len(suffix)])] = path

    for entry in _entries(folder):
        if entry.is_dir():
            for path in _entries(entry):
                if path.is_file():
                    take(path, entry.name)
        elif entry.is_file():
            take(entry, "")
    return found


def _examples(folder: Path, limit: int = 3) -> list[str]:
    """Up to `limit` visible file names in `folder` or one sub-folder down."""
    names = []
    for entry in _entries(folder):
        for path in _entries(entry) if entry.is_dir() else [entry]:
            if path.is_file():
                names.append(path.name)
            if len(names) == limit:
                return names
    return names


def _skip(longer: str, shorter: str, same_folder: bool) -> str:
    return longer if same_folder and len(longer) > len(shorter) and longer.endswith(shorter) else ""


def pair_split(root: Path, split: str, layout: Layout) -> tuple[dict[Key, Path], dict[Key, Path]]:
    """(images, labels) of one split, each by (sub-folder, name)."""
    image_folder, label_folder = layout.images(root, split), layout.labels(root, split)
    same = image_folder == label_folder
    images = split_files(image_folder, layout.image_suffix, _skip(layout.label_suffix, layout.image_suffix, same))
    labels = split_files(label_folder, layout.label_suffix, _skip(layout.image_suffix, layout.label_suffix, same))
    return images, labels


def _where(folder: Path, key: Key, suffix: str) -> str:
    return str(folder.joinpath(*filter(None, key[:1]), key[1] + suffix))


def _no_pair_error(root: Path, split: str, layout: Layout, images: dict[Key, Path],
                   labels: dict[Key, Path]) -> DataError:
    """No image of the split has its label: say which suffix is at fault, by example."""
    label_folder = layout.labels(root, split)
    if not labels:
        wanted = _where(label_folder, min(images), layout.label_suffix)
        return DataError(f"label suffix {layout.label_suffix!r} (data.label_suffix) matches no file in "
                         f"{label_folder}/[<dir>/]; looked for e.g. {wanted}, found e.g. "
                         f"{', '.join(_examples(label_folder))}")
    (sub, image_name), (_, label_name) = min(images), min(labels)
    if image_name.startswith(label_name):  # the image suffix leaves part of itself in the name
        culprit = f"image suffix {layout.image_suffix!r} (data.image_suffix)"
    elif label_name.startswith(image_name):
        culprit = f"label suffix {layout.label_suffix!r} (data.label_suffix)"
    else:
        culprit = f"data.image_suffix {layout.image_suffix!r} or data.label_suffix {layout.label_suffix!r}"
    return DataError(f"no {split} image has a label: the {culprit} leaves names that do not match; for "
                     f"image {images[min(images)].name} prepare looked for "
                     f"{_where(label_folder, (sub, image_name), layout.label_suffix)}, found e.g. "
                     f"{labels[min(labels)].name}")


def _labelled(root: Path, split: str, layout: Layout) -> list[Sample]:
    folder = layout.images(root, split)
    images, labels = pair_split(root, split, layout)
    if not images and _examples(folder):
        raise DataError(f"image suffix {layout.image_suffix!r} (data.image_suffix) matches no file in "
                        f"{folder}/[<dir>/]; looked for e.g. <name>{layout.image_suffix}, found e.g. "
                        f"{', '.join(_examples(folder))}")
    missing = [key for key in images if key not in labels]
    if images and len(missing) == len(images) and _examples(layout.labels(root, split)):
        raise _no_pair_error(root, split, layout, images, labels)
    if missing:
        label_folder = layout.labels(root, split)
        shown = ", ".join(os.path.relpath(_where(label_folder, k, layout.label_suffix), root) for k in missing[:3])
        raise DataError(f"{len(missing)} of {len(images)} {split} images have no label under {root}, e.g. {shown}")
    return [Sample(split, sub, name, path, labels[(sub, name)]) for (sub, name), path in images.items()]


def _unlabelled(root: Path, folder: str, split: str, layout: Layout) -> list[Sample]:
    found = split_files(layout.images(root, folder), layout.image_suffix)
    return [Sample(split, sub, name, path, None, None if folder == split else folder)
            for (sub, name), path in found.items()]


def discover(root: Path, use_extra: bool = False, layout: Layout = Layout()) -> list[Sample]:
    """List train/val (and the unlabelled, e.g. train_extra) images under a root.

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
            found = [p.name for p in _entries(root)][:8]
            raise DataError(f"no {split} images in data.root {root}: expected {pattern}; "
                            f"found {found or 'an empty directory'}")
    if use_extra:
        extra = _unlabelled(root, EXTRA_SPLIT, EXTRA_SPLIT, layout)
        if not extra:
            raise DataError(f"data.use_extra is true but {layout.images(root, EXTRA_SPLIT)}/[<dir>/]"
                            f"*{layout.image_suffix} matched nothing")
        samples += extra
    for folder in layout.unlabelled:
        if use_extra and folder == EXTRA_SPLIT:
            continue
        # Pretraining reads the `train_extra` rows of the manifest; the folder keeps its name on disk.
        found = _unlabelled(root, folder, EXTRA_SPLIT, layout)
        if not found:
            raise DataError(f"data.unlabelled lists {folder!r} but {layout.images(root, folder)}/[<dir>/]"
                            f"*{layout.image_suffix} matched nothing")
        samples += found
    return samples


@dataclass(frozen=True)
class PreparedPaths:
    image: Path
    mask: Optional[Path]


def prepared_paths(out_dir: Path, sample: Sample) -> PreparedPaths:
    folder = out_dir / (sample.folder or sample.split) / sample.city
    mask = folder / f"{sample.stem}{MASK_SUFFIX}" if sample.label is not None else None
    return PreparedPaths(folder / f"{sample.stem}{IMAGE_SUFFIX}", mask)


MAX_PIXELS_ENV = "PIXPRO_MAX_IMAGE_PIXELS"


def open_checked(path: Path, what: str) -> Image.Image:
    """Image.open under the pixel limit the user allows (env PIXPRO_MAX_IMAGE_PIXELS, 0 = none)."""
    limit = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if limit:
        if not limit.isdigit():
            raise DataError(f"{MAX_PIXELS_ENV}={limit!r} must be a pixel count (0 = no limit)")
        Image.MAX_IMAGE_PIXELS = int(limit) or None
    try:
        return Image.open(path)
    except Image.DecompressionBombError as err:
        raise DataError(f"cannot read {what} {path}: {err.args[0].split(', could be')[0]}, more than Pillow "
                        f"allows; to allow big images set {MAX_PIXELS_ENV}=<pixels> (0 = no limit)") from None
    except UnidentifiedImageError:
        raise DataError(f"cannot read {what} {path}: not an image format Pillow knows") from None


ORIENTATION = 0x0112  # the EXIF tag; 1 = as stored, 2-8 = flips and turns a viewer applies


def _oriented(img: Image.Image) -> Image.Image:
    """As image viewers show it; the image itself (no copy) when it has no EXIF rotation."""
    return ImageOps.exif_transpose(img) if img.getexif().get(ORIENTATION, 1) != 1 else img


def read_image(path: Path, orient: bool = False) -> Image.Image:
    """RGB image; orient: apply its EXIF orientation, as image viewers show it (raw data)."""
    try:
        with open_checked(path, "image") as img:
            return (_oriented(img) if orient else img).convert("RGB")
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image {path}: {err}") from None


def read_label(path: Path, mode: str = "value") -> np.ndarray:
    """Raw label values (H, W) for label_mode value, or colours (H, W, 3) uint8 for color."""
    try:
        with open_checked(path, "label") as img:
            img = _oriented(img)  # like its image
            if mode == "color":
                if img.mode not in ("RGB", "RGBA", "P"):
                    raise DataError(f"label {path} has mode {img.mode}; data.label_mode color expects "
                                    f"colour (RGB or palette) PNGs")
                return np.asarray(img.convert("RGB"))
            if img.mode not in ("L", "P", "I", "I;16"):
                hint = " (data.label_mode: color reads colour labels)" if img.mode in ("RGB", "RGBA") else ""
                raise DataError(f"label {path} has mode {img.mode}; expected a single-channel labelIds PNG{hint}")
            return np.asarray(img)
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read label {path}: {err}") from None


def read_train_ids(path: Path, classes: ClassTable, mode: str = "value") -> np.ndarray:
    """(H, W) uint8 train ids of a label PNG; DataError for unreadable files, unlisted values or colours."""
    raw = read_label(path, mode)
    return classes.train_ids_from_colors(raw, path) if mode == "color" else classes.train_ids(raw, path)


def prepare_sample(sample: Sample, out_dir: Path, size: tuple[int, int], classes: ClassTable,
                   label_mode: str = "value") -> np.ndarray:
    """Resize one image (bilinear, antialiased) and its trainId mask (nearest) to size=(H, W).

    Writes under out_dir and returns the mask's class histogram (K + 1,) int64: K classes + ignore.
    """
    height, width = size
    k = classes.num_classes
    paths = prepared_paths(out_dir, sample)
    paths.image.parent.mkdir(parents=True, exist_ok=True)
    image = read_image(sample.image, orient=True)
    # PIL's bilinear filter widens its support when shrinking, i.e. it averages like area filtering.
    image.resize((width, height), Image.BILINEAR).save(paths.image, compress_level=1)
    counts = np.zeros(k + 1, dtype=np.int64)
    if sample.label is not None:
        train = read_train_ids(sample.label, classes, label_mode)
        if train.shape != (image.height, image.width):
            raise DataError(f"label {sample.label} is {train.shape[1]}x{train.shape[0]} but its image is "
                            f"{image.width}x{image.height}")
        train_ids = Image.fromarray(train).resize((width, height), Image.NEAREST)
        train_ids.save(paths.mask, compress_level=1)
        hist = np.bincount(np.asarray(train_ids).ravel(), minlength=256)
        counts[:k] = hist[:k]
        counts[k] = hist[k:].sum()
    return counts
