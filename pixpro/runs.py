"""Runs to compare, as one frame: one row per run with `name`, its parameters (dotted
params.yaml keys) and `<backbone>_<metric>` scores (fractions, as in the metrics files).

Two sources give the same frame:

- DVC experiments, read with `dvc.api.exp_show()` (`exp_show_rows` -> `rows_from_exp_show` ->
  `runs_frame`): each run is one `dvc exp run`; seeds are swept with
  `dvc exp run --queue -S seed=0,1,2` (README, "Experiments");
- the CSVs under experiments/results/ (`load_result_rows`), written by the seed sweeps of
  earlier sessions, with their per-run folders (finetune scores, per-class IoU).

The diagnostics under experiments/ append their rows with `append_result_rows`.

pixpro.compare groups and summarises the frame.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, NamedTuple, Sequence

import pandas as pd
import yaml

from pixpro.backbones import BACKBONES
from pixpro.errors import ConfigError, DataError

SEED = "seed"
NAME = "name"
SETTING = "setting"  # the group key of the result CSVs
PARAMS_FILE = "params.yaml"


class Metric(NamedTuple):
    """One score compared between backbones: `<folder>/<backbone>.json`'s `key` (nested keys
    dotted, as DVC flattens them: `iou.road`). `name` is the column suffix."""

    name: str
    folder: str
    key: str
    title: str


DEFAULT_METRICS = (
    Metric("miou", "segmentation", "miou", "probe mIoU"),
    Metric("knn_miou", "retrieval", "knn_miou", "kNN mIoU"),
    Metric("p1", "retrieval", "precision@1", "P@1"),
)


def parse_metric(spec: str) -> Metric:
    """'miou' | 'knn_miou' | 'p1' (the defaults) or FOLDER.KEY of metrics/FOLDER/<backbone>.json,
    e.g. 'finetune.miou_5pct' or 'segmentation.iou.road'."""
    known = {metric.name: metric for metric in DEFAULT_METRICS}
    if spec in known:
        return known[spec]
    folder, dot, key = spec.partition(".")
    if not dot or not folder or not key:
        raise ConfigError(f"--metric {spec}: expected one of {', '.join(known)} or FOLDER.KEY, "
                          "e.g. finetune.miou_5pct (metrics/finetune/<backbone>.json, key miou_5pct)")
    return Metric(spec, folder, key, spec)


def score_column(backbone: str, metric: Metric) -> str:
    return f"{backbone}_{metric.name}"


def format_value(value: Any) -> str:
    """A parameter value as params.yaml would spell it: 7, 0.5, true, null, [32, 64], adamw."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalars from pandas columns
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "null"  # a missing parameter reads as null too
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class ExperimentRow(NamedTuple):
    """One run as DVC lists it: the workspace, a commit or an experiment. `problem` says why it
    cannot be compared (queued, failed, missing metrics); None when it can."""

    name: str
    params: dict[str, Any]
    scores: dict[str, float]
    problem: str | None
    kind: str  # "experiment" | "commit" | "workspace"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'pretrain': {'ppm': {'window': 7}}} -> {'pretrain.ppm.window': 7}; lists become tuples
    (hashable, so groups can be compared)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = tuple(value) if isinstance(value, list) else value
    return flat


def metric_sources(metrics: Sequence[Metric] = DEFAULT_METRICS, segmentation_dir: str = "metrics/segmentation",
                   retrieval_dir: str = "metrics/retrieval") -> dict[str, str]:
    """Score column -> DVC's column for it, `<metrics file>:<key>`."""
    folders = {"segmentation": segmentation_dir, "retrieval": retrieval_dir}
    return {score_column(backbone, metric):
            f"{PurePosixPath(folders.get(metric.folder, f'metrics/{metric.folder}')) / backbone}.json:{metric.key}"
            for metric in metrics for backbone in BACKBONES}


def _typed(value: Any, like: Any) -> Any:
    """DVC's flat rows hold numbers as floats and everything else as text ('[32, 64]', 'True'):
    back to the type the value has in params.yaml, so 7 groups as 7, not 7.0."""
    if isinstance(value, str) and not isinstance(like, str):
        try:
            value = None if value == "None" else yaml.safe_load(value)  # "None": Python's spelling of null
        except yaml.YAMLError:
            pass  # text that is not YAML stays text
    if isinstance(value, list):
        return tuple(value)
    # An int in params.yaml, or null there (window: null) with a whole number in the run.
    whole = isinstance(value, float) and value.is_integer()
    if whole and (like is None or isinstance(like, int) and not isinstance(like, bool)):
        return int(value)
    return value


def rows_from_exp_show(shown: Sequence[Mapping[str, Any]], params: Mapping[str, Any],
                       sources: Mapping[str, str] | None = None) -> list[ExperimentRow]:
    """ExperimentRows of `dvc.api.exp_show()`'s flat rows. `params` is params.yaml flattened:
    its keys say which columns are parameters (DVC writes `params.yaml:KEY` when KEY is also a
    metric's name) and its values their types. A missing or unreadable metric is None or '!'."""
    sources = sources or metric_sources()
    rows = []
    for shown_row in shown:
        rev = str(shown_row.get("rev") or "")
        kind = "workspace" if rev == "workspace" else "commit" if shown_row.get("typ") == "baseline" else "experiment"
        name = shown_row.get("Experiment") or rev
        values = {key: shown_row.get(key, shown_row.get(f"{PARAMS_FILE}:{key}")) for key in params}
        run_params = {key: _typed(value, params[key]) for key, value in values.items()}
        scores = {column: shown_row.get(source) for column, source in sources.items()}
        scores = {c: float(v) for c, v in scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        missing = [source for column, source in sources.items() if column not in scores]
        state = str(shown_row.get("State") or "").lower()
        problem = None
        if state in ("queued", "running", "failed"):
            problem = state  # a queued or running experiment may show its baseline's metrics: never use them
        elif len(missing) == len(sources):
            problem = "no metrics"
        elif missing:
            problem = "missing " + ", ".join(missing)
        rows.append(ExperimentRow(name, run_params, scores, problem, kind))
    return rows


class Runs(NamedTuple):
    """The usable runs as a frame, the rows left out (name, why) and the rows counted once
    because they repeat another row exactly (name, the row they repeat)."""

    frame: pd.DataFrame
    left_out: list[tuple[str, str]]
    repeats: list[tuple[str, str]]


def runs_frame(rows: Sequence[ExperimentRow], score_columns: Sequence[str] | None = None) -> Runs:
    """One DataFrame row per complete run: name, every params.yaml key (dotted), scores.

    The workspace and a commit often are the very run an experiment recorded (after `dvc exp
    run` in the workspace, or `dvc exp apply` + commit): a row whose params and scores equal an
    earlier one's is counted once, experiments first, so no seed is counted twice."""
    score_columns = list(score_columns or metric_sources())
    priority = {"experiment": 0, "commit": 1, "workspace": 2}
    kept: list[tuple[int, ExperimentRow]] = []
    left_out: list[tuple[int, str, str]] = []
    repeats: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for index, row in sorted(enumerate(rows), key=lambda item: priority.get(item[1].kind, 3)):
        if row.problem:
            left_out.append((index, row.name, row.problem))
            continue
        fingerprint = json.dumps([sorted((k, format_value(v)) for k, v in row.params.items()),
                                  sorted(row.scores.items())])
        if fingerprint in seen:
            repeats.append((row.name, seen[fingerprint]))
            continue
        seen[fingerprint] = row.name
        kept.append((index, row))
    kept_rows = [row for _, row in sorted(kept, key=lambda item: item[0])]  # back to DVC's order
    names = pd.DataFrame({NAME: [row.name for row in kept_rows]})
    params = pd.DataFrame([row.params for row in kept_rows], dtype=object)  # object: 7 stays 7, not 7.0
    scores = pd.DataFrame([row.scores for row in kept_rows], columns=score_columns, dtype=float)
    return Runs(pd.concat([names, params, scores], axis=1), [(n, why) for _, n, why in sorted(left_out)], repeats)


def exp_show_rows(repo: Path, all_commits: bool = False) -> tuple[list[dict], dict[str, Any]]:
    """`dvc.api.exp_show()` of `repo` (HEAD's experiments, or those of every first-parent commit)
    and its params.yaml, flattened."""
    import dvc.api
    from dvc.exceptions import DvcException

    if not Path(repo).is_dir():
        raise DataError(f"--repo {repo}: no such folder")
    params_file = Path(repo) / PARAMS_FILE
    if not params_file.is_file():
        raise DataError(f"--repo {repo}: no {PARAMS_FILE}, so no parameters to group the runs by")
    try:
        shown = dvc.api.exp_show(repo=str(repo), num=-1 if all_commits else 1)
    except DvcException as err:
        raise DataError(f"cannot read the DVC experiments of {repo}: {err}") from None
    return shown, flatten(yaml.safe_load(params_file.read_text()) or {})


# --------------------------------------------------------------------------------------------
# Reading runs: experiments/results/*.csv
# --------------------------------------------------------------------------------------------

def _finetune_scores(folder: Path) -> dict[str, float]:
    """`<backbone>_finetune.miou_<p>pct` of one result run: from its finetune JSONs if the sweep
    copied them, else from the label-efficiency table of its summary.md."""
    scores: dict[str, float] = {}
    for backbone in BACKBONES:
        path = folder / f"finetune_{backbone}.json"
        if path.is_file():
            scores.update({score_column(backbone, parse_metric(f"finetune.{key}")): float(value)
                           for key, value in json.loads(path.read_text()).items() if key.startswith("miou_")})
    summary = folder / "summary.md"
    if scores or not summary.is_file():
        return scores
    for line in summary.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and "% of the labels" in cells[0]:  # '| 5% of the labels (70 images) | 0.29 | 0.25 |'
            key = f"finetune.miou_{cells[0].split('%')[0]}pct"
            for backbone, cell in zip(BACKBONES, cells[1:3]):
                scores[score_column(backbone, parse_metric(key))] = float(cell)
    return scores


def _per_class_scores(folder: Path) -> dict[str, float]:
    """`<backbone>_segmentation.iou.<class>` of one result run, from `<backbone>_per_class_iou.csv`."""
    scores = {}
    for backbone in BACKBONES:
        path = folder / f"{backbone}_per_class_iou.csv"
        if path.is_file():
            for name, iou in pd.read_csv(path).set_index("class")["iou"].items():
                scores[score_column(backbone, parse_metric(f"segmentation.iou.{name}"))] = float(iou)
    return scores


def load_result_rows(csv: str | Path) -> pd.DataFrame:
    """A result CSV of experiments/results/ as a runs frame for `compare_runs(frame, by=["setting"])`.

    One row per (setting, seed) run, with the CSV's own columns (`setting`, `seed`, the
    `<backbone>_miou` / `_knn_miou` / `_p1` scores as fractions, and the training diagnostics
    `partner_gap`, `feature_std`, `effective_rank`, `target_drift`, `loss`, `seconds`), plus
    `name` = `<setting>_seed<seed>` and what the run's folder `<csv stem>_curves/<name>/` holds:
    `<backbone>_finetune.miou_<p>pct` (metric `finetune.miou_<p>pct`) and
    `<backbone>_segmentation.iou.<class>` (metric `segmentation.iou.<class>`), NaN where absent.
    Group by `setting`: the diagnostics differ between runs and would split every group.

        frame = load_result_rows("experiments/results/idd_lite.csv")
        compare_runs(frame, by=["setting"], baseline={"setting": "contrast_only"},
                     metrics=[parse_metric("miou"), parse_metric("finetune.miou_5pct")]).table
    """
    csv = Path(csv)
    if not csv.is_file():
        raise DataError(f"{csv}: no such result file")
    frame = pd.read_csv(csv)
    missing = [c for c in (SETTING, SEED, *metric_sources()) if c not in frame.columns]
    if missing:
        raise DataError(f"{csv}: not a seed-sweep result file (no column {missing[0]})")
    frame.insert(0, NAME, [f"{setting}_seed{seed}" for setting, seed in zip(frame[SETTING], frame[SEED])])
    folders = csv.parent / f"{csv.stem}_curves"
    extra = pd.DataFrame([{**_finetune_scores(folders / name), **_per_class_scores(folders / name)}
                          for name in frame[NAME]], index=frame.index, dtype=float)
    return pd.concat([frame, extra], axis=1)


def complete_runs(frame: pd.DataFrame, metrics: Sequence[Metric]) -> Runs:
    """The runs of a result frame that have every score of `metrics`, and those left out."""
    columns = [score_column(backbone, metric) for metric in metrics for backbone in BACKBONES]
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise ConfigError(f"--metric: no run has the score {absent[0]}")
    complete = frame[columns].notna().all(axis=1)
    left_out = [(name, "missing " + ", ".join(c for c in columns if pd.isna(row[c])))
                for name, (_, row) in zip(frame.loc[~complete, NAME], frame[~complete].iterrows())]
    return Runs(frame[complete].reset_index(drop=True), left_out, [])



def finetune_by_fraction(frame: pd.DataFrame) -> tuple[list[float], pd.DataFrame, pd.DataFrame]:
    """(fractions ascending, pretrained, random) of a runs frame: each run's fine-tuned mIoU
    (rows, the frame's order) at each labelled fraction (columns) that every run has for both
    backbones, from the `<backbone>_finetune.miou_<p>pct` columns."""
    shares = []
    for column in frame.columns:
        found = re.fullmatch(r"pretrained_finetune\.miou_(\d+)pct", column)  # score_column's spelling
        if found:
            twin = score_column("random", parse_metric(f"finetune.miou_{found[1]}pct"))
            if twin in frame and frame[[column, twin]].notna().all().all():
                shares.append((int(found[1]) / 100, column, twin))
    shares.sort()
    fractions = [fraction for fraction, _, _ in shares]
    return (fractions, frame[[p for _, p, _ in shares]].set_axis(fractions, axis=1),
            frame[[r for _, _, r in shares]].set_axis(fractions, axis=1))

# The fine-tuning recipe's columns of experiments/label_study.py rows, with the value that rows
# written before a column existed were made with (no weight average, plain cross-entropy, crop order 0).
RECIPE_DEFAULTS = {"ema_decay": 0.0, "class_weighting": "none", "crop_seed": 0}
# The columns that make one fine-tuning recipe (a table or a curve of its own); crop_seed repeats a recipe.
RECIPE_KEYS = ("steps", "ema_decay", "class_weighting")


def with_recipe_columns(rows: pd.DataFrame) -> pd.DataFrame:
    """experiments/label_study.py rows with every RECIPE_DEFAULTS column, filled for rows written
    before it existed."""
    return rows.assign(**{column: rows[column].fillna(default) if column in rows else default
                          for column, default in RECIPE_DEFAULTS.items()})


def label_study_by_fraction(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """(fine-tuned, frozen probe) val mIoU of experiments/label_study.py rows of one data and
    setting: seeds (rows, ascending) by (backbone, fraction) columns, for the seeds with both
    backbones at every fraction (a seed still running is left out; there may be none). None when
    a backbone has no row at all."""
    tuned = rows.pivot_table(index="seed", columns=["backbone", "fraction"], values="finetuned_miou")
    if not set(BACKBONES) <= set(tuned.columns.get_level_values(0)):
        return None
    tuned = tuned.dropna()
    probe = rows.pivot_table(index="seed", columns=["backbone", "fraction"], values="probe_miou").loc[tuned.index]
    return tuned, probe


def append_result_rows(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """Appends rows to a result CSV as they are measured (an interrupted script keeps what it
    finished), with the header first when the file is new; plain newlines. A file whose header
    names other columns is refused: appended rows would land under the wrong names."""
    path = Path(path)
    new_file = not path.is_file()
    if not new_file:
        with open(path, newline="") as handle:
            header = next(csv.reader(handle), None)
        if header is not None and header != list(columns):
            raise SystemExit(f"{path} has the columns {header}, not {list(columns)}: "
                             f"rewrite it with the new columns before appending")
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), lineterminator="\n")
        if new_file:
            writer.writeheader()
        writer.writerows(rows)


def measurement_parser(description: str) -> argparse.ArgumentParser:
    """The command line every per-measurement diagnostic under experiments/ shares: the finished
    pipeline folder it reads, the names its rows carry (data, setting), the CSV it appends to and
    the backbones it measures; a script adds its own options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--folder", type=Path, required=True, help="a finished pipeline folder")
    parser.add_argument("--data", required=True, help="a name for the dataset, e.g. synthetic or idd")
    parser.add_argument("--setting", required=True, help="a name for the run's params, e.g. default")
    parser.add_argument("--out", type=Path, required=True, help="the CSV to append rows to")
    parser.add_argument("--backbones", nargs="+", choices=BACKBONES, default=list(BACKBONES),
                        help="random: the same for every setting of a seed, so measure it once")
    return parser
