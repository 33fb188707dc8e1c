"""`pixpro compare`: DVC experiments grouped by setting and compared over seeds (not a DVC stage)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import err_console, user_errors


@user_errors("compare")
def main(
    repo: Path = typer.Option(Path("."), "--repo", help="DVC repository whose experiments to read."),
    by: list[str] = typer.Option([], "--by", metavar="KEY",
                                 help="Group by this params.yaml key (repeatable; dotted, e.g. pretrain.ppm.window). "
                                      "Default: every parameter but `seed` that differs between runs."),
    baseline: list[str] = typer.Option([], "--baseline", metavar="KEY=VALUE",
                                       help="The group to compare the others with, e.g. pretrain.ppm.window=7 "
                                            "(repeatable when one key does not single out a group)."),
    out_dir: Path = typer.Option(Path("reports"), "--out-dir",
                                 help="Where compare.md, compare.csv and compare.png go."),
    all_commits: bool = typer.Option(False, "--all-commits", "-A",
                                     help="Experiments of every first-parent commit, not only those of HEAD."),
    segmentation: str = typer.Option("metrics/segmentation", help="Segmentation metrics folder in the repo."),
    retrieval: str = typer.Option("metrics/retrieval", help="Retrieval metrics folder in the repo."),
    metric: list[str] = typer.Option([], "--metric", metavar="METRIC",
                                     help="What to compare (repeatable): miou, knn_miou, p1, or FOLDER.KEY of "
                                          "metrics/FOLDER/<backbone>.json, e.g. finetune.miou_5pct or "
                                          "segmentation.iou.road. Default: miou, knn_miou, p1."),
    results: Optional[Path] = typer.Option(None, "--results", metavar="CSV",
                                 help="Read the runs of a seed-sweep result file (experiments/results/*.csv and "
                                      "its *_curves/ folder) instead of DVC's experiments; grouped by `setting` "
                                      "unless --by says otherwise."),
) -> None:
    """Compare DVC experiments over seeds: the workspace, the HEAD commit and its experiments
    (`dvc exp show`), grouped by their parameters. Queued, running and failed experiments, and
    any run without all four metrics files, are listed and left out.

    One table per metric (by default probe mIoU, kNN mIoU, P@1; --metric finetune.miou_5pct
    for the fine-tuned label-efficiency scores), in points (x 100):

    group: the parameter values shared by the group's runs.
    n, seeds: how many runs, and their seeds.
    pretrained, random: each backbone's score: mean ± std (ddof 1) [95% t-interval of the mean];
    "± n/a" for a single run.
    gain: pretrained - random of the same run (paired), summarised the same way.
    gain > 0: how many of the runs gained, e.g. 3/3.
    Δ gain vs baseline (with --baseline): the group's gain minus the baseline group's, paired
    by seed over the seeds both have (shared seeds).
    verdict: better / worse when that interval excludes 0; unclear when it includes 0 or fewer
    than 2 seeds are shared: the seeds cannot tell the two settings apart.

    Writes OUT_DIR/compare.md, compare.csv (every number, as fractions 0-1 like the metrics
    files) and compare.png (the paired gain per group with its 95% interval); nothing on error.

    A seed sweep: dvc exp run --queue -S seed=0,1,2 -S pretrain.ppm.window=5,7, then
    dvc queue start (each run in its own workspace), then pixpro compare --baseline
    pretrain.ppm.window=7. --results CSV compares the sweeps recorded under experiments/results/.
    """
    import sys

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from pixpro.compare import compare_runs, display_table, markdown_report, parse_baseline
    from pixpro.compare_plot import gain_plot_png
    from pixpro.errors import DataError
    from pixpro.io import atomic_write, atomic_write_text
    from pixpro.runs import (DEFAULT_METRICS, SETTING, complete_runs, exp_show_rows, load_result_rows,
                             metric_sources, parse_metric, rows_from_exp_show, runs_frame)

    # A typo fails before DVC is even asked.
    metrics = [parse_metric(spec) for spec in metric] or list(DEFAULT_METRICS)
    wanted_baseline = parse_baseline(baseline)
    if results is not None:
        runs = complete_runs(load_result_rows(results), metrics)
        source = str(results)
        by = by or [SETTING]
    else:
        shown, params = exp_show_rows(repo, all_commits)
        if not shown:
            raise DataError(f"`dvc exp show` lists no commit or experiment in {repo}")
        sources = metric_sources(metrics, segmentation, retrieval)
        runs = runs_frame(rows_from_exp_show(shown, params, sources), list(sources))
        source = str(repo)
    left_out = ", ".join(f"{name} ({why})" for name, why in runs.left_out)
    if runs.frame.empty:
        raise DataError(f"no experiment in {source} has all its metrics (left out: {left_out or 'none'}); "
                        "run `dvc exp run` first")
    if left_out:
        err_console.print(f"[yellow]pixpro compare: warning:[/] left out {len(runs.left_out)} without "
                          f"complete metrics: {escape(left_out)}", soft_wrap=True)
    if runs.repeats:
        err_console.print("pixpro compare: counted once, same params and metrics: "
                          + escape(", ".join(f"{name} = {same}" for name, same in runs.repeats)), soft_wrap=True)

    comparison = compare_runs(runs.frame, by, wanted_baseline, metrics=metrics)
    # Everything is rendered before the first file is written, so an error leaves no outputs.
    markdown = markdown_report(comparison, runs.left_out)
    csv = comparison.table.to_csv(index=False)
    png = gain_plot_png(comparison)

    # Piped or redirected, rich would wrap at 80 columns; a file can be as wide as the table.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
    for chosen in comparison.metrics:
        cells = display_table(comparison, chosen, separator="\n")
        table = Table(title=f"{chosen.title} (points)", show_lines=True)
        for column in cells.columns:
            table.add_column(column, justify="left" if column in ("group", "seeds", "verdict") else "right")
        for line in cells.itertuples(index=False):
            table.add_row(*(escape(cell) for cell in line))
        console.print(table)

    atomic_write_text(out_dir / "compare.md", markdown)
    atomic_write_text(out_dir / "compare.csv", csv)
    atomic_write(out_dir / "compare.png", lambda tmp: tmp.write_bytes(png))
    err_console.print(f"wrote {out_dir / 'compare.md'}, {out_dir / 'compare.csv'} and {out_dir / 'compare.png'}")
