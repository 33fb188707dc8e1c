"""The pretrained-vs-random summary: pandas tables rendered as Markdown."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pixpro.errors import DataError
from pixpro.config import BACKBONES


def read_metrics(folder: Path) -> dict[str, dict]:
    scores = {}
    for backbone in BACKBONES:
        path = Path(folder) / f"{backbone}.json"
        if not path.is_file():
            raise DataError(f"{path} not found: run `dvc repro` for the evaluation stages first")
        scores[backbone] = json.loads(path.read_text())
    return scores


def with_gain(table: pd.DataFrame) -> pd.DataFrame:
    table = table.copy()
    table["gain"] = table["pretrained"] - table["random"]
    return table


def overall_table(segmentation: dict[str, dict], retrieval: dict[str, dict]) -> pd.DataFrame:
    rows = {
        "mIoU (linear probe)": {b: segmentation[b]["miou"] for b in BACKBONES},
        "pixel accuracy (linear probe)": {b: segmentation[b]["pixel_accuracy"] for b in BACKBONES},
        "precision@1 (retrieval)": {b: retrieval[b]["precision@1"] for b in BACKBONES},
        "precision@10 (retrieval)": {b: retrieval[b]["precision@10"] for b in BACKBONES},
        "kNN mIoU (retrieval)": {b: retrieval[b]["knn_miou"] for b in BACKBONES},
    }
    return with_gain(pd.DataFrame.from_dict(rows, orient="index"))


def per_class_table(segmentation: dict[str, dict], retrieval: dict[str, dict]) -> pd.DataFrame:
    """IoU per class; classes absent from val (None for both backbones) are dropped."""
    columns = {}
    for b in BACKBONES:
        columns[b] = pd.Series(segmentation[b]["iou"], dtype="float64")
        columns[f"{b} kNN"] = pd.Series(retrieval[b]["knn_iou"], dtype="float64")
    table = pd.DataFrame(columns).dropna(how="all")
    table["gain"] = table["pretrained"] - table["random"]
    return table[["pretrained", "random", "gain", "pretrained kNN", "random kNN"]]


def summary_markdown(segmentation_dir: Path, retrieval_dir: Path) -> str:
    segmentation, retrieval = read_metrics(segmentation_dir), read_metrics(retrieval_dir)
    overall = overall_table(segmentation, retrieval)
    per_class = per_class_table(segmentation, retrieval)
    return "\n".join([
        "# Pretrained vs random initialisation",
        "",
        "Same backbone architecture and evaluation; `random` is the untrained backbone from `seed`.",
        "",
        "## Overall",
        "",
        overall.to_markdown(floatfmt=".4f"),
        "",
        "## IoU per class (val)",
        "",
        per_class.to_markdown(floatfmt=".4f"),
        "",
    ])
