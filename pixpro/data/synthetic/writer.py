"""One scene rendered from its seed, and the raw Cityscapes tree of scenes written to disk."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pixpro.data.cities import CITY_NAMES
from pixpro.data.synthetic.background import _draw_background, _draw_sky, _Street
from pixpro.data.synthetic.objects import _draw_ego_vehicle, _draw_objects
from pixpro.data.synthetic.scene import _finish, _Scene

SPLITS = ("train", "val")
EXTRA_SPLIT = "train_extra"  # unlabelled: images only, like Cityscapes' coarse extra set
_SPLIT_INDEX = {"train": 0, "val": 1, EXTRA_SPLIT: 2}

_FRAME = 19  # Cityscapes' annotated frame number in every sequence


@dataclass(frozen=True)
class SceneJob:
    """Everything needed to render and write one image, independently of all others."""

    split: str
    city: str
    stem: str  # "{city}_{seq:06d}_{frame:06d}"
    image_path: Path
    label_path: Path | None  # None for the unlabelled train_extra split
    seed: tuple[int, ...]


def render_scene(seed: tuple[int, ...] | int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Render one scene of size (H, W).

    Returns (image (H, W, 3) uint8 RGB, label (H, W) uint8 of Cityscapes labelIds).
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    h, w = (int(v) for v in size)
    sc = _Scene(rng, h, w)
    _draw_sky(sc)
    street = _Street(sc)
    _draw_background(sc, street)
    _draw_objects(sc, street)
    if rng.random() < 0.3:
        _draw_ego_vehicle(sc)
    return _finish(sc), sc.label


def scene_jobs(root: Path, n_train: int, n_val: int, n_cities: int, seed: int,
               n_extra: int = 0) -> list[SceneJob]:
    """One job per image, in split order. Cities are disjoint between splits (like Cityscapes)
    and images go round-robin over a split's `n_cities` cities; each job's seed is derived with
    SeedSequence from (seed, split index, image index), so jobs render in any process and order."""
    root = Path(root)
    counts = {"train": n_train, "val": n_val, EXTRA_SPLIT: n_extra}
    active = [split for split, n in counts.items() if n > 0]
    if n_cities < 1:
        raise ValueError(f"n_cities must be >= 1, got {n_cities}")
    # split k always takes names [k * n_cities, (k + 1) * n_cities): fixed whatever the counts
    slots = max((_SPLIT_INDEX[split] + 1 for split in active), default=0)
    if n_cities * slots > len(CITY_NAMES):
        raise ValueError(f"{n_cities} cities per split for {slots} splits need "
                         f"{n_cities * slots} names, only {len(CITY_NAMES)} exist")
    jobs = []
    for split in active:
        k = _SPLIT_INDEX[split]
        cities = CITY_NAMES[k * n_cities:(k + 1) * n_cities]
        for i in range(counts[split]):
            city, seq = cities[i % n_cities], i // n_cities
            stem = f"{city}_{seq:06d}_{_FRAME:06d}"
            image = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
            label = (None if split == EXTRA_SPLIT
                     else root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
            state = np.random.SeedSequence([seed, _SPLIT_INDEX[split], i]).generate_state(4)
            jobs.append(SceneJob(split, city, stem, image, label, tuple(int(s) for s in state)))
    return jobs


def write_scene(job: SceneJob, size: tuple[int, int]) -> None:
    """Render job's scene at size (H, W) and write its image (and labelIds PNG if labelled)."""
    image, label = render_scene(job.seed, size)
    job.image_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(job.image_path, compress_level=1)
    if job.label_path is not None:
        job.label_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(label).save(job.label_path)


TREE_RECORD = "synthetic.json"  # what the tree was generated from, so prepare can refuse a stale one


def tree_record(n_train: int, n_val: int, n_cities: int, size, seed: int, n_extra: int = 0) -> dict:
    """Everything the tree's bytes depend on (not the worker count)."""
    return {"seed": int(seed), "train": int(n_train), "val": int(n_val), "extra": int(n_extra),
            "cities": int(n_cities), "raw_size": [int(size[0]), int(size[1])]}


def generate_tree(root: Path, n_train: int, n_val: int, n_cities: int, size: tuple[int, int],
                  seed: int, n_extra: int = 0, workers: int = 1) -> list[SceneJob]:
    """Write the whole tree under root over `workers` processes; returns the jobs.

    The one writer of the tree: `pixpro synthesize` (the synthesize stage) and the tests call it.
    Every job renders from its own seed, so the bytes do not depend on `workers`.
    """
    from pixpro.data.parallel import parallel_map  # the progress bar: not needed to render one scene

    jobs = scene_jobs(root, n_train, n_val, n_cities, seed, n_extra)
    write = functools.partial(write_scene, size=(int(size[0]), int(size[1])))
    for _ in parallel_map(write, jobs, workers, f"generate {len(jobs)} synthetic scenes"):
        pass
    record = tree_record(n_train, n_val, n_cities, size, seed, n_extra)
    (Path(root) / TREE_RECORD).write_text(json.dumps(record) + "\n")
    return jobs
