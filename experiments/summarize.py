"""Mean ± std over seeds from seed_gain.py's CSV (and its per-run folders), as Markdown tables.

    .venv/bin/python experiments/summarize.py experiments/results/synthetic_losses.csv
    .venv/bin/python experiments/summarize.py experiments/results/idd_lite.csv --per-class --stages
    .venv/bin/python experiments/summarize.py experiments/results/synthetic_ablation.csv --paired contrast_only
    .venv/bin/python experiments/summarize.py experiments/results/idd_lite.csv --finetune --setting contrast_only

Gains and mIoUs are in points (x 100); ± is the sample std over seeds, [low, high] the 95%
t-interval of the mean (pixpro.compare.summarize).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pixpro.compare import summarize  # noqa: E402

COLUMNS = [("gain", "probe mIoU gain"), ("knn_gain", "kNN mIoU gain"), ("p1_gain", "P@1 gain"),
           ("pretrained_miou", "pretrained mIoU"), ("random_miou", "random mIoU"), ("partner_gap", "partner_gap"),
           ("effective_rank", "effective rank"), ("seconds", "wall s / run")]


def cell(values: pd.Series, points: bool, digits: int) -> str:
    values = pd.to_numeric(values, errors="coerce") * (100 if points else 1)
    std = f"{values.std():.{digits}f}" if len(values) > 1 else "n/a"
    return f"{values.mean():.{digits}f} ± {std}"


def settings_table(frame: pd.DataFrame) -> list[str]:
    frame = frame.assign(p1_gain=frame["pretrained_p1"] - frame["random_p1"])
    header = ["setting", "seeds", *(title for _, title in COLUMNS), "min gain"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for setting, group in frame.groupby("setting", sort=False):
        cells = [setting, ",".join(str(s) for s in group["seed"])]
        for column, _ in COLUMNS:
            points = column.endswith("gain") or column.endswith("miou")
            digits = 0 if column == "seconds" else (1 if points or column == "effective_rank" else 3)
            cells.append(cell(group[column], points, digits))
        cells.append(f"{group['gain'].min() * 100:+.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def run_folders(csv: Path, frame: pd.DataFrame) -> list[Path]:
    base = csv.parent / f"{csv.stem}_curves"
    return [base / f"{row.setting}_seed{row.seed}" for row in frame.itertuples()]


def per_class_table(folders: list[Path]) -> list[str]:
    tables = {b: [pd.read_csv(f / f"{b}_per_class_iou.csv").set_index("class")["iou"] for f in folders]
              for b in ("pretrained", "random")}
    pretrained, random = pd.concat(tables["pretrained"], axis=1), pd.concat(tables["random"], axis=1)
    gain = pretrained - random
    lines = ["| class | pretrained IoU | random IoU | gain |", "|---|---|---|---|"]
    for name in pretrained.index:
        lines.append(f"| {name} | {cell(pretrained.loc[name], True, 1)} | {cell(random.loc[name], True, 1)} | "
                     f"{cell(gain.loc[name], True, 1)} |")
    return lines


def stages_table(folders: list[Path]) -> list[str]:
    times = pd.concat([pd.read_csv(f / "stage_seconds.csv").set_index("stage")["seconds"] for f in folders], axis=1)
    lines = ["| stage | wall s (median over runs) |", "|---|---|"]
    lines += [f"| {stage} | {times.loc[stage].median():.0f} |" for stage in times.index]
    lines.append(f"| total | {times.sum().median():.0f} |")
    return lines


def interval(values: pd.Series) -> str:
    """'mean ± std [low, high]' of points-scaled values, signed (gains and differences)."""
    summary = summarize(pd.to_numeric(values, errors="coerce") * 100)
    if summary.n < 2:
        return f"{summary.mean:+.1f} (1 seed)"
    return f"{summary.mean:+.1f} ± {summary.std:.1f} [{summary.low:+.1f}, {summary.high:+.1f}]"


def paired_table(frame: pd.DataFrame, baseline: str) -> list[str]:
    """Each setting's gain minus the baseline setting's gain of the same seed (probe and kNN)."""
    base = frame[frame["setting"] == baseline].drop_duplicates("seed").set_index("seed")
    if base.empty:
        raise SystemExit(f"--paired: no rows of setting {baseline!r}")
    lines = [f"| setting | seeds shared with {baseline} | Δ probe gain | Δ kNN gain | Δ per seed (probe) |",
             "|---|---|---|---|---|"]
    for setting, group in frame.groupby("setting", sort=False):
        if setting == baseline:
            continue
        group = group.drop_duplicates("seed").set_index("seed")
        seeds = [s for s in group.index if s in base.index]
        if not seeds:
            continue
        probe = group.loc[seeds, "gain"] - base.loc[seeds, "gain"]
        knn = group.loc[seeds, "knn_gain"] - base.loc[seeds, "knn_gain"]
        per_seed = ", ".join(f"{v * 100:+.1f}" for v in probe)
        lines.append(f"| {setting} | {','.join(str(s) for s in seeds)} | {interval(probe)} | {interval(knn)} | "
                     f"{per_seed} |")
    return lines


SCORE_KEY = re.compile(r"miou_(\d+)pct")  # metrics/finetune/<backbone>.json, one key per fraction
LABEL_ROW = re.compile(r"^\|\s*(\d+)% of the labels[^|]*\|\s*([-\d.]+)\s*\|\s*([-\d.]+)\s*\|")


def finetune_scores(folder: Path) -> dict[int, tuple[float, float]]:
    """{percent: (pretrained, random) val mIoU} of one run: from its finetune JSONs when
    seed_gain.py copied them, else from the label-efficiency table of its summary.md."""
    files = {b: folder / f"finetune_{b}.json" for b in ("pretrained", "random")}
    if all(f.is_file() for f in files.values()):
        scores = {b: json.loads(f.read_text()) for b, f in files.items()}
        percents = sorted(int(m[1]) for m in map(SCORE_KEY.fullmatch, scores["pretrained"]) if m)
        return {p: (scores["pretrained"][f"miou_{p}pct"], scores["random"][f"miou_{p}pct"]) for p in percents}
    rows = {}
    for line in (folder / "summary.md").read_text().splitlines():
        match = LABEL_ROW.match(line)
        if match:
            rows[int(match[1])] = (float(match[2]), float(match[3]))
    if not rows:
        raise SystemExit(f"{folder}: no finetune JSONs and no label-efficiency table in summary.md")
    return rows


def finetune_table(folders: list[Path], seeds: list[int]) -> list[str]:
    """Label efficiency over runs: per labelled share, mean ± std of both backbones and the gain."""
    runs = [finetune_scores(folder) for folder in folders]
    lines = ["| labels | pretrained | random | gain | gain 95% t-interval | gain per seed (" +
             ", ".join(str(s) for s in seeds) + ") |", "|---|---|---|---|---|---|"]
    for percent in sorted(set.intersection(*(set(run) for run in runs))):
        pretrained = pd.Series([run[percent][0] for run in runs])
        random = pd.Series([run[percent][1] for run in runs])
        difference = pretrained - random
        gain = summarize(difference * 100)
        spread = f"[{gain.low:+.1f}, {gain.high:+.1f}]" if gain.n > 1 else "n/a"
        per_seed = ", ".join(f"{v:+.1f}" for v in difference * 100)
        lines.append(f"| {percent}% | {cell(pretrained, True, 1)} | {cell(random, True, 1)} | "
                     f"{cell(difference, True, 1)} | {spread} | {per_seed} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path)
    parser.add_argument("--setting", help="per-class and stage tables for this setting (default: the first)")
    parser.add_argument("--per-class", action="store_true", help="per-class IoU, pretrained vs random")
    parser.add_argument("--stages", action="store_true", help="wall time per DVC stage")
    parser.add_argument("--finetune", action="store_true", help="label-efficiency table (finetune stage)")
    parser.add_argument("--paired", metavar="SETTING", help="gain differences to this setting, paired by seed")
    args = parser.parse_args()
    frame = pd.read_csv(args.csv)
    print("\n".join(settings_table(frame)))
    if args.paired:
        print("\n" + "\n".join(paired_table(frame, args.paired)))
    chosen = frame[frame["setting"] == (args.setting or frame["setting"].iloc[0])]
    if args.per_class:
        print("\n" + "\n".join(per_class_table(run_folders(args.csv, chosen))))
    if args.stages:
        print("\n" + "\n".join(stages_table(run_folders(args.csv, chosen))))
    if args.finetune:
        print("\n" + "\n".join(finetune_table(run_folders(args.csv, chosen), list(chosen["seed"]))))


if __name__ == "__main__":
    main()
