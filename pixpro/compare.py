"""Compare DVC experiments over seeds: per setting, mean ± std and a 95% t-interval of each
backbone's scores and of the paired gain pretrained − random; optionally each setting's gain
against a baseline setting, paired by seed.

Two halves, kept apart so the statistics can be tested without DVC:

- reading: `dvc exp show --json` -> `ExperimentRow`s -> `runs_frame` (one row per usable run);
- statistics: pure functions of that DataFrame (`compare_runs` and what it calls).

Scores stay fractions (0–1, as in the metrics files) in the DataFrame and the CSV; the tables
show points (× 100).
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import pandas as pd
import yaml

from pixpro.config import BACKBONES
from pixpro.errors import ConfigError, DataError

SEED = "seed"
NAME = "name"
PARAMS_FILE = "params.yaml"
# Metric column suffix -> (which metrics folder, key in `<folder>/<backbone>.json`, title).
METRICS: dict[str, tuple[str, str, str]] = {
    "miou": ("segmentation", "miou", "probe mIoU"),
    "knn_miou": ("retrieval", "knn_miou", "kNN mIoU"),
    "p1": ("retrieval", "precision@1", "P@1"),
}
# The run-level columns: pretrained_miou, random_miou, ... (the names experiments/seed_gain.py uses).
SCORE_COLUMNS = tuple(f"{backbone}_{metric}" for metric in METRICS for backbone in BACKBONES)
CONFIDENCE = 0.95
ALL_RUNS = "all runs"  # the group label when no parameter differs


# --------------------------------------------------------------------------------------------
# Student's t quantile (scipy is not a dependency; torch's StudentT has no icdf)
# --------------------------------------------------------------------------------------------

def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularised incomplete beta (modified Lentz, Numerical Recipes)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return result


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularised incomplete beta function, for 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    # The fraction converges fast only on this side of the mean; use the symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * regularized_beta(df / (df + t * t), df / 2.0, 0.5)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The `p` quantile of Student's t with `df` > 0 degrees of freedom (bisection on the CDF,
    to ~1e-12). t_quantile(0.975, 2) = 4.3027."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < p:  # the bracket grows to ~6e5 for df=1, p=0.9999995
        low, high = high, high * 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        if student_t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low < 1e-12 * max(1.0, high):
            break
    return (low + high) / 2.0


# --------------------------------------------------------------------------------------------
# Statistics: pure functions of numbers and DataFrames
# --------------------------------------------------------------------------------------------

class Summary(NamedTuple):
    """n values: their mean, sample std (ddof=1) and the two-sided t-interval of the mean.
    std, low and high are NaN when n < 2: one value says nothing about the spread."""

    n: int
    mean: float
    std: float
    low: float
    high: float


def summarize(values: Iterable[float], confidence: float = CONFIDENCE) -> Summary:
    """Mean, std (ddof=1) and the `confidence` t-interval mean ± t(n-1) · std / sqrt(n)."""
    data = [float(v) for v in values]
    n = len(data)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = sum(data) / n
    if n < 2:
        return Summary(n, mean, math.nan, math.nan, math.nan)
    std = math.sqrt(sum((v - mean) ** 2 for v in data) / (n - 1))
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def verdict(summary: Summary) -> str:
    """'better' / 'worse' when the interval excludes 0; 'unclear' when it includes 0 or there is
    no interval (fewer than 2 values): the seeds cannot tell the difference from noise."""
    if summary.n < 2 or math.isnan(summary.low):
        return "unclear"
    if summary.low > 0:
        return "better"
    if summary.high < 0:
        return "worse"
    return "unclear"


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


def same_value(value: Any, wanted: Any) -> bool:
    """Whether a run's parameter equals a value given on the command line (7 matches 7.0)."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes, list, tuple)):
        value = value.item()
    numbers = (int, float)
    if (isinstance(value, numbers) and isinstance(wanted, numbers)
            and not isinstance(value, bool) and not isinstance(wanted, bool)):
        return float(value) == float(wanted)
    return format_value(value) == format_value(wanted)


def param_columns(frame: pd.DataFrame) -> list[str]:
    """The parameter columns of a runs frame: all but the name, the scores and derived gains."""
    derived = {NAME, *SCORE_COLUMNS, *(gain_column(m) for m in METRICS)}
    return [column for column in frame.columns if column not in derived]


def gain_column(metric: str) -> str:
    return f"{metric}_gain"


def grouping_keys(frame: pd.DataFrame, by: Sequence[str] = ()) -> list[str]:
    """The parameters that define a group: `by` when given (each must be a parameter of the
    runs), else every parameter except the seed whose value differs between runs."""
    params = param_columns(frame)
    if by:
        unknown = [key for key in by if key not in params]
        if unknown:
            raise ConfigError(f"--by {unknown[0]}: no experiment has this parameter "
                              f"(known: {', '.join(sorted(p for p in params if p != SEED))})")
        return list(dict.fromkeys(by))
    return [key for key in params
            if key != SEED and frame[key].map(format_value).nunique() > 1]


def group_label(values: Mapping[str, Any]) -> str:
    """'pretrain.ppm.window=5, pretrain.loss.contrast=0.0': one group's label; ALL_RUNS without keys."""
    return ", ".join(f"{key}={format_value(value)}" for key, value in values.items()) or ALL_RUNS


def _sort_key(values: Sequence[Any]) -> tuple:
    # Numbers in numeric order (window 11 after 7), everything else by its spelling.
    key = []
    for value in values:
        if hasattr(value, "item") and not isinstance(value, (str, bytes, tuple, list)):
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value):
            key.append((0, float(value), ""))
        else:
            key.append((1, 0.0, format_value(value)))
    return tuple(key)


def with_gains(frame: pd.DataFrame) -> pd.DataFrame:
    """The runs frame plus `<metric>_gain` = pretrained − random of the same run (paired)."""
    frame = frame.copy()
    for metric in METRICS:
        frame[gain_column(metric)] = frame[f"pretrained_{metric}"] - frame[f"random_{metric}"]
    return frame


def split_groups(frame: pd.DataFrame, keys: Sequence[str]) -> list[tuple[str, dict[str, Any], pd.DataFrame]]:
    """(label, {key: value}, runs) per group, in parameter order. Grouped on the values'
    spelling, so lists ([32, 64]) and missing values (null) group like any other value."""
    if frame.empty:
        return []
    spelled = frame[list(keys)].map(format_value) if keys else pd.DataFrame(index=frame.index)
    labels = spelled.apply(lambda row: group_label(dict(zip(keys, row))), axis=1) if keys else \
        pd.Series(ALL_RUNS, index=frame.index)
    groups = []
    for label in labels.unique():
        runs = frame[labels == label]
        values = {key: runs[key].iloc[0] for key in keys}
        groups.append((label, values, runs))
    return sorted(groups, key=lambda group: _sort_key(list(group[1].values())))


def _summary_columns(prefix: str, summary: Summary) -> dict[str, float]:
    return {f"{prefix}_mean": summary.mean, f"{prefix}_std": summary.std,
            f"{prefix}_ci_low": summary.low, f"{prefix}_ci_high": summary.high}


def _seeds(runs: pd.DataFrame) -> str:
    if SEED not in runs:
        return ""
    return ",".join(format_value(s) for s in sorted(runs[SEED].tolist(), key=lambda s: _sort_key([s])))


def gain_by_seed(runs: pd.DataFrame, metric: str) -> pd.Series:
    """The paired gain per seed; runs repeated with the same seed are averaged."""
    if SEED not in runs:
        raise ConfigError(f"the runs have no `{SEED}` parameter, so they cannot be paired by seed")
    return runs.dropna(subset=[SEED]).groupby(SEED)[gain_column(metric)].mean()


class Comparison(NamedTuple):
    """The result: one row per group (what compare.csv holds), its grouping keys, the baseline
    group's label (None without --baseline) and each run's gains (for the plot)."""

    table: pd.DataFrame
    keys: list[str]
    baseline: str | None
    runs: pd.DataFrame


def parse_baseline(items: Sequence[str]) -> dict[str, Any]:
    """['pretrain.ppm.window=7'] -> {'pretrain.ppm.window': 7} (values read as YAML)."""
    baseline = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--baseline {item}: expected KEY=VALUE, e.g. pretrain.ppm.window=7")
        baseline[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return baseline


def find_baseline(groups: Sequence[tuple[str, dict[str, Any], pd.DataFrame]], frame: pd.DataFrame,
                  baseline: Mapping[str, Any]) -> str:
    """The label of the one group whose runs all have every KEY=VALUE of `baseline`."""
    params = param_columns(frame)
    for key in baseline:
        if key not in params:
            raise ConfigError(f"--baseline {key}: no experiment has this parameter")
    matching = [label for label, _, runs in groups
                if all(runs[key].map(lambda v, w=wanted: same_value(v, w)).all() for key, wanted in baseline.items())]
    wanted = ", ".join(f"{k}={format_value(v)}" for k, v in baseline.items())
    if not matching:
        raise ConfigError(f"--baseline {wanted}: no group has it (groups: {'; '.join(g[0] for g in groups)})")
    if len(matching) > 1:
        raise ConfigError(f"--baseline {wanted}: matches {len(matching)} groups ({'; '.join(matching)}); "
                          f"add --baseline KEY=VALUE for another grouping parameter")
    return matching[0]


def compare_runs(frame: pd.DataFrame, by: Sequence[str] = (), baseline: Mapping[str, Any] | None = None,
                 confidence: float = CONFIDENCE) -> Comparison:
    """Group the runs (one row each: name, params incl. seed, the six scores) and summarise.

    Per group: n, seeds, each backbone's score and the paired gain (mean, std, interval) and how
    many runs gained (> 0). With `baseline`: per other group and metric, the difference of the
    paired gain to the baseline group's, over the seeds both have (`<metric>_vs_baseline_*`),
    and the verdict better / worse / unclear.
    """
    if frame.empty:
        raise DataError("no experiments to compare")
    keys = grouping_keys(frame, by)
    runs = with_gains(frame)
    groups = split_groups(runs, keys)
    baseline_label = find_baseline(groups, runs, baseline) if baseline else None
    baseline_runs = next((g[2] for g in groups if g[0] == baseline_label), None)

    rows = []
    for label, values, group in groups:
        row: dict[str, Any] = {"group": label, **{key: format_value(v) for key, v in values.items()},
                               "n": len(group), "seeds": _seeds(group)}
        for metric in METRICS:
            for backbone in BACKBONES:
                column = f"{backbone}_{metric}"
                row.update(_summary_columns(column, summarize(group[column], confidence)))
            gains = group[gain_column(metric)]
            row.update(_summary_columns(gain_column(metric), summarize(gains, confidence)))
            row[f"{gain_column(metric)}_positive"] = int((gains > 0).sum())
        if baseline_runs is not None:
            for metric in METRICS:
                prefix = f"{metric}_vs_baseline"
                if label == baseline_label:
                    row.update({f"{prefix}_n": None, **_summary_columns(prefix, Summary(0, *[math.nan] * 4)),
                                f"{prefix}_verdict": "baseline"})
                    continue
                ours, theirs = gain_by_seed(group, metric), gain_by_seed(baseline_runs, metric)
                shared = ours.index.intersection(theirs.index)
                difference = summarize(ours[shared] - theirs[shared], confidence)
                row.update({f"{prefix}_n": difference.n, **_summary_columns(prefix, difference),
                            f"{prefix}_verdict": verdict(difference)})
        rows.append(row)
    table = pd.DataFrame(rows)
    for metric in METRICS if baseline_runs is not None else ():
        table[f"{metric}_vs_baseline_n"] = table[f"{metric}_vs_baseline_n"].astype("Int64")  # blank for the baseline
    return Comparison(table, keys, baseline_label, runs)


# --------------------------------------------------------------------------------------------
# Rendering: Markdown, cells for the terminal table, the plot
# --------------------------------------------------------------------------------------------

def format_summary(mean: float, std: float, low: float, high: float, sign: bool = False,
                   separator: str = " ") -> str:
    """'17.45 ± 0.40 [16.45, 18.45]' in points (× 100); '17.45 ± n/a' without an interval."""
    if math.isnan(mean):
        return "n/a"
    spec = "+.2f" if sign else ".2f"
    if math.isnan(std):
        return f"{mean * 100:{spec}} ± n/a"
    return f"{mean * 100:{spec}} ± {std * 100:.2f}{separator}[{low * 100:{spec}}, {high * 100:{spec}}]"


def _cell(row: Mapping[str, Any], prefix: str, sign: bool = False, separator: str = " ") -> str:
    return format_summary(row[f"{prefix}_mean"], row[f"{prefix}_std"], row[f"{prefix}_ci_low"],
                          row[f"{prefix}_ci_high"], sign, separator)


def display_rows(comparison: Comparison, metric: str, separator: str = " ") -> tuple[list[str], list[list[str]]]:
    """Header and cells of one metric's table (points), as the terminal and Markdown show them."""
    header = ["group", "n", "seeds", "pretrained", "random", "gain", "gain > 0"]
    if comparison.baseline is not None:
        header += ["Δ gain vs baseline", "shared seeds", "verdict"]
    cells = []
    for row in comparison.table.to_dict("records"):
        line = [row["group"] + (f"{separator}(baseline)" if row["group"] == comparison.baseline else ""),
                str(row["n"]), row["seeds"],
                _cell(row, f"pretrained_{metric}", separator=separator),
                _cell(row, f"random_{metric}", separator=separator),
                _cell(row, gain_column(metric), sign=True, separator=separator),
                f"{row[f'{gain_column(metric)}_positive']}/{row['n']}"]
        if comparison.baseline is not None:
            prefix = f"{metric}_vs_baseline"
            is_baseline = row["group"] == comparison.baseline
            line += ["—" if is_baseline else _cell(row, prefix, sign=True, separator=separator),
                     "—" if is_baseline else str(int(row[f"{prefix}_n"])),
                     row[f"{prefix}_verdict"]]
        cells.append(line)
    return header, cells


def markdown_report(comparison: Comparison, left_out: Sequence[tuple[str, str]] = (),
                    confidence: float = CONFIDENCE) -> str:
    """reports/compare.md: one table per metric, with how to read it."""
    level = f"{confidence * 100:g}%"
    grouped = ", ".join(f"`{k}`" for k in comparison.keys) or "nothing (one group)"
    lines = [
        "# Experiments compared over seeds",
        "",
        f"Grouped by {grouped}. Scores in points (× 100): mean ± std (ddof 1) [{level} t-interval of the "
        "mean]; `± n/a` for a single run. `gain` is pretrained − random of the same run (paired), "
        "`gain > 0` how many runs gained.",
    ]
    if comparison.baseline is not None:
        lines += ["", f"`Δ gain vs baseline`: the group's gain minus the gain of **{comparison.baseline}**, "
                      "paired by seed over the seeds both have; `unclear` when its interval includes 0 "
                      "(or fewer than 2 shared seeds): the seeds do not tell the settings apart."]
    if left_out:
        lines += ["", "Left out (no complete metrics): " + ", ".join(f"{n} ({why})" for n, why in left_out) + "."]
    for metric, (_, _, title) in METRICS.items():
        header, cells = display_rows(comparison, metric)
        lines += ["", f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in cells]
    return "\n".join(lines) + "\n"


def gain_plot_png(comparison: Comparison, confidence: float = CONFIDENCE) -> bytes:
    """PNG bytes: per metric, each group's paired gain (mean, error bar = the t-interval) and its
    runs as dots. Rendered in memory so nothing is written unless every output is ready."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table, labels = comparison.table, comparison.table["group"].tolist()
    width = max(4.0, 0.9 * len(labels) + 2.0)
    fig = Figure(figsize=(3 * width, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(METRICS))
    groups = {label: runs for label, _, runs in split_groups(comparison.runs, comparison.keys)}
    for ax, (metric, (_, _, title)) in zip(axes, METRICS.items()):
        prefix = gain_column(metric)
        means = table[f"{prefix}_mean"] * 100
        below = (table[f"{prefix}_mean"] - table[f"{prefix}_ci_low"]).fillna(0) * 100
        above = (table[f"{prefix}_ci_high"] - table[f"{prefix}_mean"]).fillna(0) * 100
        x = list(range(len(labels)))
        ax.axhline(0.0, color="grey", linewidth=0.8)
        for i, label in enumerate(labels):
            gains = groups[label][prefix] * 100
            ax.plot([i] * len(gains), gains, "o", color="silver", markersize=4, zorder=1)
        ax.errorbar(x, means, yerr=[below, above], fmt="o", color="tab:blue", capsize=4, zorder=2)
        ax.set_xticks(x, [f"{lab}\n(baseline)" if lab == comparison.baseline else lab for lab in labels],
                      rotation=20 if len(labels) > 3 else 0, ha="right" if len(labels) > 3 else "center",
                      fontsize=8)
        ax.set_xlim(-0.5, len(labels) - 0.5)  # keep the outer groups' bars off the frame
        ax.set_title(f"{title} gain (pretrained − random)", fontsize=10)
        ax.set_ylabel("points")
    fig.suptitle(f"Paired gain per group: mean and {confidence * 100:g}% t-interval; dots = runs", fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Reading DVC experiments
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExperimentRow:
    """One row of `dvc exp show`: the workspace, a commit or an experiment. `problem` says why
    it cannot be compared (queued, failed, missing metrics); None when it can."""

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
        elif isinstance(value, list):
            flat[dotted] = tuple(value)
        else:
            flat[dotted] = value
    return flat


def metric_sources(segmentation_dir: str = "metrics/segmentation",
                   retrieval_dir: str = "metrics/retrieval") -> dict[str, tuple[str, str]]:
    """Score column -> (metrics file as DVC names it, JSON key)."""
    folders = {"segmentation": segmentation_dir, "retrieval": retrieval_dir}
    return {f"{backbone}_{metric}": (str(PurePosixPath(folders[folder]) / f"{backbone}.json"), key)
            for metric, (folder, key, _) in METRICS.items() for backbone in BACKBONES}


def _row(entry: Mapping[str, Any], name: str, kind: str, state: str | None,
         sources: Mapping[str, tuple[str, str]]) -> ExperimentRow:
    data = entry.get("data") or {}
    params = flatten(((data.get("params") or {}).get(PARAMS_FILE) or {}).get("data") or {})
    metrics = data.get("metrics") or {}
    scores, missing = {}, []
    for column, (path, key) in sources.items():
        value = ((metrics.get(path) or {}).get("data") or {}).get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            scores[column] = float(value)
        else:
            missing.append(f"{path}:{key}")
    problem = None
    if state in ("queued", "running", "failed"):
        # A queued or running experiment may show its baseline's metrics files: never use them.
        problem = state
    elif entry.get("error"):
        problem = f"dvc error: {(entry['error'] or {}).get('msg', entry['error'])}"
    elif len(missing) == len(sources):
        problem = "no metrics"
    elif missing:
        problem = "missing " + ", ".join(missing)
    return ExperimentRow(name, params, scores, problem, kind)


def rows_from_exp_show(shown: Sequence[Mapping[str, Any]],
                       sources: Mapping[str, tuple[str, str]] | None = None) -> list[ExperimentRow]:
    """The rows of `dvc exp show --json` (DVC 3.x): each commit (the first is the workspace) and
    the experiments derived from it; an experiment's newest revision stands for it."""
    sources = sources or metric_sources()
    rows = []
    for commit in shown:
        rev = str(commit.get("rev", ""))
        kind = "workspace" if rev == "workspace" else "commit"
        name = commit.get("name") or (rev if kind == "workspace" else rev[:7])
        rows.append(_row(commit, name, kind, None, sources))
        for experiment in commit.get("experiments") or []:
            revs = experiment.get("revs") or []
            if not revs:
                continue
            latest = revs[0]
            state = (experiment.get("executor") or {}).get("state")
            name = experiment.get("name") or latest.get("name") or str(latest.get("rev", ""))[:7]
            rows.append(_row(latest, name, "experiment", state, sources))
    return rows


class Runs(NamedTuple):
    """The usable runs as a frame, the rows left out (name, why) and the rows counted once
    because they repeat another row exactly (name, the row they repeat)."""

    frame: pd.DataFrame
    left_out: list[tuple[str, str]]
    repeats: list[tuple[str, str]]


def runs_frame(rows: Sequence[ExperimentRow]) -> Runs:
    """One DataFrame row per complete experiment: name, every params.yaml key (dotted), scores.

    The workspace and a commit often are the very run an experiment recorded (after `dvc exp
    run` in the workspace, or `dvc exp apply` + commit): a row whose params and scores equal an
    earlier one's is counted once, experiments first, so no seed is counted twice."""
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
    kept_rows = [row for _, row in sorted(kept, key=lambda item: item[0])]  # back to dvc's order
    names = pd.DataFrame({NAME: [row.name for row in kept_rows]})
    params = pd.DataFrame([row.params for row in kept_rows], dtype=object)  # object: 7 stays 7, not 7.0
    scores = pd.DataFrame([row.scores for row in kept_rows], columns=list(SCORE_COLUMNS), dtype=float)
    left_out_names = [(name, why) for _, name, why in sorted(left_out)]
    return Runs(pd.concat([names, params, scores], axis=1), left_out_names, repeats)


def exp_show_json(repo: Path, all_commits: bool = False) -> list[dict]:
    """`dvc exp show --json` in `repo`, run with this interpreter's DVC (a pixpro dependency)."""
    if not Path(repo).is_dir():
        raise DataError(f"--repo {repo}: no such folder")
    command = [sys.executable, "-m", "dvc", "exp", "show", "--json", *(["--all-commits"] if all_commits else [])]
    proc = subprocess.run(command, cwd=repo, capture_output=True, text=True, check=False,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    if proc.returncode != 0:
        reason = next((line.strip() for line in reversed(proc.stderr.splitlines()) if line.strip()),
                      f"exit code {proc.returncode}")
        raise DataError(f"`dvc exp show --json` failed in {repo}: {reason}")
    try:
        shown = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError as err:
        raise DataError(f"`dvc exp show --json` in {repo} printed something that is not JSON ({err})") from None
    if not isinstance(shown, list):
        raise DataError(f"`dvc exp show --json` in {repo}: expected a list of commits, got {type(shown).__name__}")
    return shown
