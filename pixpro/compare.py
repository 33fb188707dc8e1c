"""Runs over seeds, grouped by setting: per group, mean ± std and a 95% t-interval of each
backbone's score and of the paired gain pretrained − random; optionally each group's gain
against a baseline group, paired by seed.

The runs frame comes from pixpro.runs (DVC experiments or the result CSVs), the statistics
from pixpro.stats, the picture from pixpro.compare_plot. Scores stay fractions (0–1) in the
frames and in compare.csv; the tables show points (× 100).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple, Sequence

import pandas as pd
import yaml

from pixpro.backbones import BACKBONES
from pixpro.errors import ConfigError, DataError
from pixpro.runs import DEFAULT_METRICS, NAME, SEED, Metric, format_value, score_column
from pixpro.stats import CONFIDENCE, Summary, format_summary, paired_differences, summarize, verdict

ALL_RUNS = "all runs"  # the group label when no parameter differs


def gain_column(metric: Metric) -> str:
    return f"{metric.name}_gain"


# --------------------------------------------------------------------------------------------
# Parameter values and groups
# --------------------------------------------------------------------------------------------

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
    """The parameter columns of a runs frame: all but the name, scores and gains."""
    scores = tuple(f"{backbone}_" for backbone in BACKBONES)
    return [column for column in frame.columns
            if column != NAME and not column.startswith(scores) and not column.endswith("_gain")]


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


def split_groups(frame: pd.DataFrame, keys: Sequence[str]) -> list[tuple[str, dict[str, Any], pd.DataFrame]]:
    """(label, {key: value}, runs) per group, in parameter order. Grouped on the values'
    spelling, so lists ([32, 64]) and missing values (null) group like any other value."""
    if frame.empty:
        return []
    labels = frame[list(keys)].map(format_value).apply(lambda row: group_label(dict(zip(keys, row))), axis=1) \
        if keys else pd.Series(ALL_RUNS, index=frame.index)
    groups = []
    for label in labels.unique():
        runs = frame[labels == label]
        groups.append((label, {key: runs[key].iloc[0] for key in keys}, runs))
    return sorted(groups, key=lambda group: _sort_key(list(group[1].values())))


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


# --------------------------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------------------------

class Comparison(NamedTuple):
    """The result: one row per group (what compare.csv holds), its grouping keys, the baseline
    group's label (None without --baseline), each run with its gains (for the plot) and the
    metrics compared."""

    table: pd.DataFrame
    keys: list[str]
    baseline: str | None
    runs: pd.DataFrame
    metrics: tuple[Metric, ...] = DEFAULT_METRICS


def _summary_columns(prefix: str, summary: Summary) -> dict[str, float]:
    return {f"{prefix}_mean": summary.mean, f"{prefix}_std": summary.std,
            f"{prefix}_ci_low": summary.low, f"{prefix}_ci_high": summary.high}


def _seeds(runs: pd.DataFrame) -> str:
    if SEED not in runs:
        return ""
    return ",".join(format_value(s) for s in sorted(runs[SEED].tolist(), key=lambda s: _sort_key([s])))


def gain_by_seed(runs: pd.DataFrame, metric: Metric) -> pd.Series:
    """The paired gain indexed by seed (a seed run twice appears twice; pixpro.stats averages)."""
    if SEED not in runs:
        raise ConfigError(f"the runs have no `{SEED}` parameter, so they cannot be paired by seed")
    runs = runs.dropna(subset=[SEED])
    return pd.Series(runs[gain_column(metric)].to_numpy(), index=runs[SEED].to_numpy())


def compare_runs(frame: pd.DataFrame, by: Sequence[str] = (), baseline: Mapping[str, Any] | None = None,
                 confidence: float = CONFIDENCE, metrics: Sequence[Metric] = DEFAULT_METRICS) -> Comparison:
    """Group the runs (one row each: name, params incl. seed, `<backbone>_<metric>` scores) and summarise.

    Per group: n, seeds, each backbone's score and the paired gain (mean, std, interval) and how
    many runs gained (> 0). With `baseline`: per other group and metric, the difference of the
    paired gain to the baseline group's, over the seeds both have (`<metric>_vs_baseline_*`),
    and the verdict better / worse / unclear.
    """
    if frame.empty:
        raise DataError("no experiments to compare")
    metrics = tuple(metrics)
    keys = grouping_keys(frame, by)
    runs = frame.copy()
    for metric in metrics:  # paired: pretrained − random of the same run
        runs[gain_column(metric)] = runs[score_column("pretrained", metric)] - runs[score_column("random", metric)]
    groups = split_groups(runs, keys)
    baseline_label = find_baseline(groups, runs, baseline) if baseline else None
    baseline_runs = next((g[2] for g in groups if g[0] == baseline_label), None)

    rows = []
    for label, values, group in groups:
        row: dict[str, Any] = {"group": label, **{key: format_value(v) for key, v in values.items()},
                               "n": len(group), "seeds": _seeds(group)}
        for metric in metrics:
            for backbone in BACKBONES:
                column = score_column(backbone, metric)
                row.update(_summary_columns(column, summarize(group[column], confidence)))
            gains = group[gain_column(metric)]
            row.update(_summary_columns(gain_column(metric), summarize(gains, confidence)))
            row[f"{gain_column(metric)}_positive"] = int((gains > 0).sum())
        if baseline_runs is not None:
            for metric in metrics:
                prefix = f"{metric.name}_vs_baseline"
                if label == baseline_label:
                    row.update({f"{prefix}_n": None, **_summary_columns(prefix, Summary(0, *[math.nan] * 4)),
                                f"{prefix}_verdict": "baseline"})
                    continue
                difference = summarize(paired_differences(gain_by_seed(group, metric),
                                                          gain_by_seed(baseline_runs, metric)), confidence)
                row.update({f"{prefix}_n": difference.n, **_summary_columns(prefix, difference),
                            f"{prefix}_verdict": verdict(difference)})
        rows.append(row)
    table = pd.DataFrame(rows)
    for metric in metrics if baseline_runs is not None else ():
        table[f"{metric.name}_vs_baseline_n"] = table[f"{metric.name}_vs_baseline_n"].astype("Int64")  # blank: baseline
    return Comparison(table, keys, baseline_label, runs, metrics)


# --------------------------------------------------------------------------------------------
# Tables (points): the terminal's and Markdown's
# --------------------------------------------------------------------------------------------

def _cell(row: Mapping[str, Any], prefix: str, sign: bool = False, separator: str = " ") -> str:
    summary = Summary(1, row[f"{prefix}_mean"], row[f"{prefix}_std"], row[f"{prefix}_ci_low"], row[f"{prefix}_ci_high"])
    return format_summary(summary, sign=sign, separator=separator)


def display_table(comparison: Comparison, metric: Metric, separator: str = " ") -> pd.DataFrame:
    """One metric's table as strings (points), one row per group, as the terminal and
    Markdown show it."""
    lines = []
    for row in comparison.table.to_dict("records"):
        is_baseline = row["group"] == comparison.baseline
        line = {"group": row["group"] + (f"{separator}(baseline)" if is_baseline else ""),
                "n": str(row["n"]), "seeds": row["seeds"],
                "pretrained": _cell(row, score_column("pretrained", metric), separator=separator),
                "random": _cell(row, score_column("random", metric), separator=separator),
                "gain": _cell(row, gain_column(metric), sign=True, separator=separator),
                "gain > 0": f"{row[f'{gain_column(metric)}_positive']}/{row['n']}"}
        if comparison.baseline is not None:
            prefix = f"{metric.name}_vs_baseline"
            line["Δ gain vs baseline"] = "—" if is_baseline else _cell(row, prefix, sign=True, separator=separator)
            line["shared seeds"] = "—" if is_baseline else str(int(row[f"{prefix}_n"]))
            line["verdict"] = row[f"{prefix}_verdict"]
        lines.append(line)
    return pd.DataFrame(lines, dtype=str)


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
    for metric in comparison.metrics:
        table = display_table(comparison, metric).map(lambda cell: cell.replace("|", "\\|"))
        lines += ["", f"## {metric.title}", "", table.to_markdown(index=False, disable_numparse=True)]
    return "\n".join(lines) + "\n"


