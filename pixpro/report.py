"""The pretrained-vs-random summary: pandas tables rendered as Markdown."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple, Sequence

import pandas as pd

from pixpro.backbones import BACKBONES
from pixpro.errors import DataError


class Expected(NamedTuple):
    """What the summary reads from a metrics folder; checked up front, so a damaged file is named
    instead of crashing the tables."""

    stage: str  # the stage that writes the files, for the hint
    scalars: tuple[str, ...] = ()  # numbers
    per_class: tuple[str, ...] = ()  # {class: IoU or null}
    fractions: bool = False  # at least one miou_<percent>pct number


SEGMENTATION = Expected("evaluate", ("miou", "pixel_accuracy"), ("iou",))
RETRIEVAL = Expected("retrieval", ("precision@1", "precision@10", "knn_miou"), ("knn_iou",))
FINETUNE = Expected("finetune", fractions=True)


def is_fraction_key(key: str) -> bool:
    return key.startswith("miou_") and key.endswith("pct") and key[len("miou_"):-len("pct")].isdigit()


def read_metrics(folder: Path, expects: Expected = FINETUNE) -> dict[str, dict]:
    """{backbone: metrics} from `folder`/<backbone>.json; a file that is missing, not JSON (a
    truncated write) or lacks a key of `expects` raises DataError naming the file and key."""
    scores = {}
    for backbone in BACKBONES:
        path = Path(folder) / f"{backbone}.json"
        rerun = f"rerun `dvc repro {expects.stage}`"
        if not path.is_file():
            raise DataError(f"{path} not found: run `dvc repro` for the evaluation stages first")
        try:
            metrics = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataError(f"{path} is not valid JSON ({err}); {rerun}") from None
        if not isinstance(metrics, dict):
            raise DataError(f"{path} holds a {type(metrics).__name__}, not a metrics object; {rerun}")
        for key in expects.scalars + expects.per_class:
            if key not in metrics:
                raise DataError(f"{path} has no key {key!r}; {rerun}")
        numbers = list(expects.scalars) + [k for k in metrics if expects.fractions and is_fraction_key(k)]
        for key in numbers:
            if not isinstance(metrics[key], (int, float)) or isinstance(metrics[key], bool):
                raise DataError(f"{path}: {key!r} is {metrics[key]!r}, not a number; {rerun}")
        for key in expects.per_class:
            if not isinstance(metrics[key], dict):
                raise DataError(f"{path}: {key!r} is not a per-class object; {rerun}")
        if expects.fractions and not any(is_fraction_key(k) for k in metrics):
            raise DataError(f"{path} has no key 'miou_<percent>pct'; {rerun}")
        scores[backbone] = metrics
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


def finetune_table(finetune: dict[str, dict]) -> pd.DataFrame:
    """Fine-tuned mIoU per labelled fraction (rows, in the metrics' order) for both backbones."""
    keys = [k for k in finetune[BACKBONES[0]] if is_fraction_key(k)]
    rows = {}
    for key in keys:
        percent = key[len("miou_"):-len("pct")]
        images = finetune[BACKBONES[0]].get(f"labelled_images_{percent}pct")
        label = f"{percent}% of the labels" + (f" ({images} images)" if images is not None else "")
        rows[label] = {b: finetune[b].get(key, float("nan")) for b in BACKBONES}
    return with_gain(pd.DataFrame.from_dict(rows, orient="index", columns=list(BACKBONES)))


def finetune_curves(finetune: dict[str, dict]) -> dict[str, tuple[list[float], list[float]]]:
    """{backbone: (labelled fractions, mIoUs)} from the metrics' miou_<p>pct keys, p ascending."""
    curves = {}
    for backbone, metrics in finetune.items():
        points = sorted((int(k[len("miou_"):-len("pct")]) / 100, v) for k, v in metrics.items()
                        if is_fraction_key(k))
        curves[backbone] = ([p for p, _ in points], [v for _, v in points])
    return curves


class LabelsSaved(NamedTuple):
    """Where the pretrained fine-tuning curve first reaches the random network's score on the
    largest measured fraction. `bound` says how `fraction` was found: 'interpolated' (between two
    measured fractions), 'at_most' (reached already at the smallest one, so the saving is at least
    `factor`), 'never' (not reached at any measured fraction: no saving) or 'unconverged' (the
    random network scores no better with the most labels than with the fewest, so the budget
    cannot tell what labels are worth). fraction is nan for the last two."""

    fraction: float  # the labelled share the pretrained network needs
    bound: str
    target: float  # the random network's score at the largest fraction
    largest: float  # the largest measured fraction (1.0 for all labels)

    @property
    def factor(self) -> float:
        """How many times fewer labels than `largest` the pretrained network needs (nan: never)."""
        return self.largest / self.fraction

    def describe(self) -> str:
        if self.bound == "unconverged":
            return (f"not measurable at this budget: the random network scores no better with "
                    f"{100 * self.largest:g}% of the labels ({100 * self.target:.1f}) than with the fewest, "
                    f"so fine-tuning has not converged (raise `finetune.steps`)")
        reach = (f"the pretrained network reaches the random network's {100 * self.largest:g}%-label "
                 f"score ({100 * self.target:.1f})")
        if self.bound == "never":
            return f"{reach.replace('reaches', 'does not reach')} at any measured fraction: no labels saved"
        share = f"{100 * self.fraction:.3g}%"
        if self.bound == "at_most":
            return f"{reach} already at {share} of the labels: at least {self.factor:.3g}x fewer labels"
        return f"{reach} at {share} of the labels (interpolated on a log scale): {self.factor:.3g}x fewer labels"


def labels_saved(fractions: Sequence[float], pretrained: Sequence[float], random: Sequence[float]) -> LabelsSaved:
    """The labelled share at which the pretrained curve first reaches random's score on the
    largest fraction, linear in log(fraction) between the two measured fractions around it.

    fractions: ascending, in (0, 1]; pretrained, random: val mIoU at each fraction.
    """
    if not (len(fractions) == len(pretrained) == len(random)) or len(fractions) < 2:
        raise ValueError("labels_saved needs one pretrained and one random score per fraction, "
                         "at two fractions or more")
    if any(b <= a for a, b in zip(fractions, fractions[1:])) or fractions[0] <= 0:
        raise ValueError(f"fractions must be positive and ascending, got {list(fractions)}")
    target, largest = random[-1], fractions[-1]
    if random[-1] <= random[0]:
        return LabelsSaved(math.nan, "unconverged", target, largest)
    if pretrained[0] >= target:
        return LabelsSaved(fractions[0], "at_most", target, largest)
    for (f0, s0), (f1, s1) in zip(zip(fractions, pretrained), zip(fractions[1:], pretrained[1:])):
        if s1 >= target:  # s0 < target <= s1
            along = (target - s0) / (s1 - s0)
            return LabelsSaved(math.exp(math.log(f0) + along * (math.log(f1) - math.log(f0))),
                               "interpolated", target, largest)
    return LabelsSaved(math.nan, "never", target, largest)


def finetune_labels_saved(finetune: dict[str, dict]) -> LabelsSaved:
    """labels_saved of one run's metrics ({backbone: metrics}, as read_metrics returns)."""
    curves = finetune_curves(finetune)
    fractions, pretrained = curves["pretrained"]
    random_fractions, random = curves["random"]
    if random_fractions != fractions:
        raise DataError(f"the backbones' fine-tuning fractions differ: {fractions} against {random_fractions}")
    return labels_saved(fractions, pretrained, random)


def summary_markdown(segmentation_dir: Path, retrieval_dir: Path, finetune_dir: Path | None = None) -> str:
    segmentation, retrieval = read_metrics(segmentation_dir, SEGMENTATION), read_metrics(retrieval_dir, RETRIEVAL)
    overall = overall_table(segmentation, retrieval)
    per_class = per_class_table(segmentation, retrieval)
    finetune = []
    if finetune_dir is not None:
        scores = read_metrics(finetune_dir)
        finetune = [
            "## Label efficiency (fine-tuned end to end, val mIoU)",
            "",
            finetune_table(scores).to_markdown(floatfmt=".4f"),
            "",
        ]
        if len(finetune_curves(scores)["pretrained"][0]) > 1:
            finetune += [f"Labels saved: {finetune_labels_saved(scores).describe()}.", ""]
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
        *finetune,
    ])
