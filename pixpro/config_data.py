"""The params.yaml `data` section: where the images come from (`DataConfig`) and how the
synthetic tree is made (`SyntheticConfig`, `data.synthetic`).

Apart from pixpro/config.py, like pixpro/config_eval.py, so that DVC can tell it apart: a
stage lists this module in its `deps` only when its `params` read `data`
(tests/test_dvc_deps.py), so a data range check reruns those stages (synthesize, prepare,
pretrain) and leaves the ones that read only the prepared folder up to date.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pixpro.errors import require as _require


@dataclass(frozen=True)
class SyntheticConfig:
    train: int = 200
    val: int = 50
    extra: int = 0
    cities: int = 4
    raw_size: tuple[int, int] = (256, 512)

    def validate(self, key: str) -> None:
        _require(self.train >= 1 and self.val >= 1, f"{key}.train/val", "must be >= 1")
        _require(self.extra >= 0, f"{key}.extra", "must be >= 0")
        _require(self.cities >= 1, f"{key}.cities", "must be >= 1")
        # Cities are disjoint between splits and drawn from the generator's fixed list of names.
        from pixpro.data.cities import CITY_NAMES

        splits = 3 if self.extra > 0 else 2
        _require(self.cities * splits <= len(CITY_NAMES), f"{key}.cities",
                 f"= {self.cities} is too many: at most {len(CITY_NAMES) // splits} per split "
                 f"for {splits} splits ({len(CITY_NAMES)} city names)")
        _require(min(self.raw_size) >= 16, f"{key}.raw_size", "must be at least 16 pixels")


@dataclass(frozen=True)
class DataConfig:
    source: Literal["synthetic", "cityscapes", "folder"] = "synthetic"
    root: str = "data/synthetic"  # the synthesize stage's output, read like any Cityscapes tree
    size: tuple[int, int] = (128, 256)
    use_extra: bool = False
    workers: int = 0
    # data.source=folder only; cityscapes and synthetic trees always use the Cityscapes layout.
    image_suffix: str = "_leftImg8bit.png"
    label_suffix: str = "_gtFine_labelIds.png"
    image_dir: str = "leftImg8bit/{split}"  # where a split's images are; {split} = train, val, ...
    label_dir: str = "gtFine/{split}"
    label_mode: Literal["value", "color"] = "value"  # color: RGB labels through the table's colours
    classes: str = "cityscapes"  # a built-in table (cityscapes, idd_lite) or a CSV path
    unlabelled: tuple[str, ...] = ()  # split folders used only for pretraining, e.g. [test]
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def validate(self, key: str) -> None:
        _require(min(self.size) >= 16, f"{key}.size", "must be [H, W] with both >= 16")
        _require(bool(self.classes.strip()), f"{key}.classes", "must name a built-in table "
                 "(cityscapes, idd_lite) or a CSV file value,train_id,name[,color]")
        for name in ("image_suffix", "label_suffix"):
            suffix = getattr(self, name)
            _require(bool(suffix) and "/" not in suffix and "*" not in suffix, f"{key}.{name}",
                     f"= {suffix!r} must be a non-empty file-name ending without '/' or '*'")
        for name in ("image_dir", "label_dir"):
            template = getattr(self, name)
            parts = template.replace("\\", "/").split("/")
            try:  # `{split}` is the one field; any other brace would fail at str.format in discovery
                filled = template.format(split="train") != template.replace("{split}", "train")
            except (KeyError, IndexError, ValueError):
                filled = True
            _require("{split}" in template and not filled and not template.startswith("/") and ".." not in parts
                     and "*" not in template, f"{key}.{name}", f"= {template!r} must be a relative folder "
                     "template containing {split} (and no other braces), e.g. leftImg8bit/{split}")
        # Equal suffixes are fine (KITTI-style same names) as long as the folders tell them apart.
        _require(self.source != "folder" or self.image_suffix != self.label_suffix
                 or self.image_dir != self.label_dir, f"{key}.label_dir",
                 "must differ from data.image_dir when data.label_suffix equals data.image_suffix")
        for i, folder in enumerate(self.unlabelled):
            _require(bool(folder) and "/" not in folder and folder not in (".", ".."), f"{key}.unlabelled[{i}]",
                     f"= {folder!r} must be a split name (it fills {{split}} in data.image_dir)")
            _require(folder not in ("train", "val"), f"{key}.unlabelled[{i}]",
                     f"= {folder!r} is a labelled split; list only pretraining-only folders")
        _require(len(set(self.unlabelled)) == len(self.unlabelled), f"{key}.unlabelled", "lists a folder twice")
        # The synthetic tree has only train/val (and train_extra through data.synthetic.extra).
        _require(not (self.unlabelled and self.source == "synthetic"), f"{key}.unlabelled",
                 "must be [] for data.source synthetic (use data.synthetic.extra)")
        _require(self.workers >= 0, f"{key}.workers", "must be >= 0 (0 = all cores)")
        self.synthetic.validate(f"{key}.synthetic")
        # Otherwise discover() fails later naming a temporary folder the user never sees.
        _require(not (self.use_extra and self.source == "synthetic" and self.synthetic.extra == 0),
                 f"{key}.use_extra", f"is true but {key}.synthetic.extra is 0: set "
                 f"{key}.synthetic.extra > 0 or {key}.use_extra false")
