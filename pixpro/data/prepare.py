"""The prepare stage: a synthetic, Cityscapes or folder tree -> resized images, trainId masks, the
manifest and the class table (classes.csv) that every later stage reads."""

from __future__ import annotations

import functools
import multiprocessing
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
import pandas as pd
from PIL import Image

from pixpro.config import DataConfig, Params
from pixpro.data import synthetic
from pixpro.data.cityscapes import Layout, Sample, discover, prepare_sample, prepared_paths
from pixpro.data.classes import ClassTable, load_class_table, write_prepared_classes
from pixpro.data.manifest import MANIFEST_COLUMNS, MANIFEST_NAME, load_manifest  # noqa: F401 (re-exported)
from pixpro.io import atomic_directory, atomic_write_json
from pixpro.progress import progress_bar


T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class PrepareResult:
    manifest: pd.DataFrame
    class_counts: dict[str, np.ndarray]  # split -> (K + 1,) pixel counts: K classes + ignore
    classes: ClassTable


def num_workers(requested: int) -> int:
    return requested or os.cpu_count() or 1


def parallel_map(fn: Callable[[T], R], items: list[T], workers: int, description: str) -> Iterator[R]:
    """Yield fn(item) for every item, in order, across processes, behind a progress bar.

    A worker's exception is re-raised here and the pool is torn down.
    """
    with progress_bar() as progress:
        task = progress.add_task(description, total=len(items))
        if workers <= 1 or len(items) <= 1:
            results: Iterable[R] = map(fn, items)
            pool = None
        else:
            pool = multiprocessing.get_context("fork").Pool(workers)
            results = pool.imap(fn, items, chunksize=max(1, min(16, len(items) // (4 * workers))))
        try:
            for result in results:
                progress.advance(task)
                yield result
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()


def layout(data: DataConfig) -> Layout:
    """Where data.source's images and labels are; synthetic and cityscapes trees share one layout."""
    if data.source == "folder":
        return Layout(data.image_suffix, data.label_suffix, tuple(data.unlabelled), cityscapes=False)
    return Layout(unlabelled=tuple(data.unlabelled))


def run_prepare(params: Params, out_dir: Path, metrics_path: Path, plots_dir: Path) -> PrepareResult:
    """Write out_dir atomically (classes.csv, manifest last), then the frequency metrics and
    example pictures."""
    data = params.data
    workers = num_workers(data.workers)
    out_dir = Path(out_dir)
    classes = load_class_table(data.classes)  # a broken table fails before anything is written
    with atomic_directory(out_dir) as tmp:
        if data.source == "synthetic":
            root = tmp / "raw"
            syn = data.synthetic
            jobs = synthetic.scene_jobs(root, syn.train, syn.val, syn.cities, params.seed, syn.extra)
            write = functools.partial(synthetic.write_scene, size=tuple(syn.raw_size))
            for _ in parallel_map(write, jobs, workers, "generate synthetic scenes"):
                pass
        else:
            root = Path(data.root)
        samples = discover(root, use_extra=data.use_extra or data.source == "synthetic" and data.synthetic.extra > 0,
                           layout=layout(data))
        prepare = functools.partial(prepare_sample, out_dir=tmp, size=tuple(data.size), classes=classes)
        counts = list(parallel_map(prepare, samples, workers, f"prepare {len(samples)} images"))
        if data.source == "synthetic":
            shutil.rmtree(root)  # reproducible from the seed; only the prepared copy is kept
        manifest = build_manifest(samples, out_dir)
        write_prepared_classes(classes, tmp)
        manifest.to_csv(tmp / MANIFEST_NAME, index=False)
    class_counts = {}
    for split in manifest["split"].unique():
        rows = np.flatnonzero(manifest["split"].to_numpy() == split)
        class_counts[split] = np.sum([counts[i] for i in rows], axis=0)
    write_frequency_outputs(class_counts, manifest, metrics_path, plots_dir, classes)
    return PrepareResult(manifest, class_counts, classes)


def build_manifest(samples: list[Sample], out_dir: Path) -> pd.DataFrame:
    """One row per image; paths relative to the working directory (the repository root)."""
    rows = []
    for sample in samples:
        paths = prepared_paths(out_dir, sample)
        rows.append({
            "split": sample.split,
            "city": sample.city,
            "stem": sample.stem,
            "image": _relative(paths.image),
            "mask": _relative(paths.mask) if paths.mask is not None else "",
        })
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def _relative(path: Path) -> str:
    return os.path.relpath(path, Path.cwd()) if path.is_absolute() else str(path)


def write_frequency_outputs(class_counts: dict[str, np.ndarray], manifest: pd.DataFrame,
                            metrics_path: Path, plots_dir: Path, classes: ClassTable) -> None:
    """class_counts: split -> (K + 1,) pixel counts, K = classes.num_classes, the last is ignore."""
    names = list(classes.names)
    k = classes.num_classes
    metrics = {}
    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    for split, counts in class_counts.items():
        labelled = counts[:k].sum()
        entry = {"images": int((manifest["split"] == split).sum())}
        if labelled > 0:
            freq = counts[:k] / labelled
            entry["ignored_fraction"] = float(counts[k] / counts.sum())
            entry["class_frequency"] = {n: round(float(f), 6) for n, f in zip(names, freq)}
            pd.DataFrame({"class": names, "fraction": freq}).to_csv(
                plots_dir / f"class_frequency_{split}.csv", index=False)
        metrics[split] = entry
    atomic_write_json(metrics_path, metrics)
    _plot_examples(manifest, plots_dir / "examples.png", classes)


def _plot_examples(manifest: pd.DataFrame, path: Path, classes: ClassTable, count: int = 4) -> None:
    from pixpro.label_viz import plot_examples

    labelled = manifest[manifest["mask"] != ""].head(count)
    images = [np.asarray(Image.open(p)) for p in labelled["image"]]
    masks = [np.asarray(Image.open(p)) for p in labelled["mask"]]
    plot_examples(images, masks, path, colors=classes.colors, title="prepared images and trainId masks")
