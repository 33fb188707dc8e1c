"""The prepare stage: a synthetic, Cityscapes or folder tree -> resized images, trainId masks, the
manifest and the class table (classes.csv) that every later stage reads.

All outputs (the prepared folder, the metrics file, the plots folder) are written to temporary
siblings and moved into place together once everything succeeded (pixpro.io.stage_outputs): a
failure at any point leaves the previous preparation as it was, never a fresh manifest next to a
failed metrics file."""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pixpro.config import Params
from pixpro.config_data import DataConfig
from pixpro.data.cityscapes import Layout, Sample, discover, prepare_sample, prepared_paths
from pixpro.data.classes import ClassTable, load_class_table, write_prepared_classes
from pixpro.data.manifest import MANIFEST_COLUMNS, MANIFEST_NAME, load_manifest  # noqa: F401 (re-exported)
from pixpro.data.parallel import num_workers, parallel_map  # noqa: F401 (re-exported)
from pixpro.data.synthetic import TREE_RECORD, tree_record
from pixpro.errors import DataError
from pixpro.io import stage_outputs


@dataclass(frozen=True)
class PrepareResult:
    manifest: pd.DataFrame
    class_counts: dict[str, np.ndarray]  # split -> (K + 1,) pixel counts: K classes + ignore
    classes: ClassTable


def layout(data: DataConfig) -> Layout:
    """Where data.source's images and labels are; synthetic and cityscapes trees share one layout."""
    if data.source == "folder":
        return Layout(data.image_suffix, data.label_suffix, data.image_dir, data.label_dir,
                      tuple(data.unlabelled), cityscapes=False)
    return Layout(unlabelled=tuple(data.unlabelled))


def check_synthetic_tree(params: Params) -> None:
    """data.source synthetic reads the tree `pixpro synthesize` wrote at data.root; it must have
    been written from these params, or the preparation would silently be of other scenes."""
    root = Path(params.data.root)
    record = root / TREE_RECORD
    hint = f"run `pixpro synthesize {root} --params ...` (the `synthesize` stage of `dvc repro` does)"
    if not record.is_file():
        raise DataError(f"data.source is synthetic but data.root {root} holds no synthetic tree (no {TREE_RECORD}): "
                        f"{hint}, or set data.source cityscapes or folder for a real tree")
    syn = params.data.synthetic
    expected = tree_record(syn.train, syn.val, syn.cities, syn.raw_size, params.seed, syn.extra)
    try:
        found = json.loads(record.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {record}: {err}; {hint}") from None
    if found != expected:
        changed = sorted(k for k in expected if found.get(k) != expected[k])
        raise DataError(f"the synthetic tree at {root} was written with other params ({', '.join(changed)}: "
                        f"{[found.get(k) for k in changed]}, params say {[expected[k] for k in changed]}): {hint}")


def run_prepare(params: Params, out_dir: Path, metrics_path: Path, plots_dir: Path) -> PrepareResult:
    """Prepare data.root into out_dir (classes.csv, manifest), with the frequency metrics and
    example pictures; the three outputs appear together or not at all."""
    data = params.data
    classes = load_class_table(data.classes)  # a broken table fails before anything is written
    if data.source == "synthetic":
        check_synthetic_tree(params)
    use_extra = data.use_extra or (data.source == "synthetic" and data.synthetic.extra > 0)
    samples = discover(Path(data.root), use_extra=use_extra, layout=layout(data))
    with stage_outputs() as outputs:  # registered first: an unwritable path fails before the work
        tmp, tmp_metrics = outputs.folder(out_dir), outputs.file(metrics_path)
        tmp_plots = outputs.folder(plots_dir)
        prepare = functools.partial(prepare_sample, out_dir=tmp, size=tuple(data.size), classes=classes,
                                    label_mode=data.label_mode)
        counts = list(parallel_map(prepare, samples, num_workers(data.workers), f"prepare {len(samples)} images"))
        manifest = build_manifest(samples, Path(out_dir))
        write_prepared_classes(classes, tmp)
        manifest.to_csv(tmp / MANIFEST_NAME, index=False)
        class_counts = {}
        for split in manifest["split"].unique():
            rows = np.flatnonzero(manifest["split"].to_numpy() == split)
            class_counts[split] = np.sum([counts[i] for i in rows], axis=0)
        write_frequency_outputs(class_counts, manifest, tmp_metrics, tmp_plots, classes)
        _plot_examples([prepared_paths(tmp, s) for s in samples if s.label is not None],
                       tmp_plots / "examples.png", classes)
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
    """class_counts: split -> (K + 1,) pixel counts, K = classes.num_classes, the last is ignore.

    The metrics keep a few counts per split that diff meaningfully between runs; the per-class
    frequencies (K numbers, many 0 on small data) go to plots_dir/class_frequency_<split>.csv.
    """
    names = list(classes.names)
    k = classes.num_classes
    metrics = {}
    for split, counts in class_counts.items():
        labelled = counts[:k].sum()
        entry = {"images": int((manifest["split"] == split).sum())}
        if labelled > 0:
            freq = counts[:k] / labelled
            entry["ignored_fraction"] = float(counts[k] / counts.sum())
            entry["classes_present"] = int((counts[:k] > 0).sum())
            pd.DataFrame({"class": names, "fraction": freq}).to_csv(
                Path(plots_dir) / f"class_frequency_{split}.csv", index=False)
        metrics[split] = entry
    Path(metrics_path).write_text(json.dumps(metrics, indent=2) + "\n")


def _plot_examples(paths: list, path: Path, classes: ClassTable, count: int = 4) -> None:
    """paths: PreparedPaths of labelled images; the first `count` are drawn."""
    from pixpro.label_viz import plot_examples

    images = [np.asarray(Image.open(p.image)) for p in paths[:count]]
    masks = [np.asarray(Image.open(p.mask)) for p in paths[:count]]
    plot_examples(images, masks, path, colors=classes.colors, title="prepared images and trainId masks",
                  names=list(classes.names))
