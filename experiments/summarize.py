"""Mean ± std over seeds from seed_gain.py's CSV (and its per-run folders), as Markdown tables.

    .venv/bin/python experiments/summarize.py experiments/results/synthetic_losses.csv
    .venv/bin/python experiments/summarize.py experiments/results/idd_lite.csv --per-class --stages

Gains and mIoUs are in points (x 100); ± is the sample std over seeds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path)
    parser.add_argument("--setting", help="per-class and stage tables for this setting (default: the first)")
    parser.add_argument("--per-class", action="store_true", help="per-class IoU, pretrained vs random")
    parser.add_argument("--stages", action="store_true", help="wall time per DVC stage")
    args = parser.parse_args()
    frame = pd.read_csv(args.csv)
    print("\n".join(settings_table(frame)))
    chosen = frame[frame["setting"] == (args.setting or frame["setting"].iloc[0])]
    if args.per_class:
        print("\n" + "\n".join(per_class_table(run_folders(args.csv, chosen))))
    if args.stages:
        print("\n" + "\n".join(stages_table(run_folders(args.csv, chosen))))


if __name__ == "__main__":
    main()
