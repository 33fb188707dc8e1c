"""Mean ± std over seeds of each setting's gains, from seed_gain.py's CSV, as a Markdown table.

    .venv/bin/python experiments/summarize.py experiments/results/synthetic_losses.csv
"""

from __future__ import annotations

import argparse

import pandas as pd

COLUMNS = [("gain", "probe mIoU gain"), ("knn_gain", "kNN mIoU gain"), ("pretrained_miou", "pretrained mIoU"),
           ("random_miou", "random mIoU"), ("partner_gap", "partner_gap"), ("effective_rank", "effective rank"),
           ("seconds", "wall s / run")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    args = parser.parse_args()
    frame = pd.read_csv(args.csv)
    header = ["setting", "seeds", *(title for _, title in COLUMNS), "min gain"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for setting, group in frame.groupby("setting", sort=False):
        cells = [setting, ",".join(str(s) for s in group["seed"])]
        for column, _ in COLUMNS:
            values = pd.to_numeric(group[column], errors="coerce")
            scale = 100 if column.endswith("gain") or column.endswith("miou") else 1
            digits = 0 if column == "seconds" else (1 if scale == 100 else 3)
            std = values.std() * scale if len(values) > 1 else float("nan")
            cells.append(f"{values.mean() * scale:.{digits}f} ± {std:.{digits}f}")
        cells.append(f"{group['gain'].min() * 100:+.1f}")
        print("| " + " | ".join(cells) + " |")
    print("\nGains and mIoUs in points (x100); ± is the sample std over seeds.")


if __name__ == "__main__":
    main()
