"""`pixpro probe`: logistic regression on a feature bank."""

from __future__ import annotations

from pathlib import Path

import typer

from stages._common import PARAMS_OPTION, err_console, load, user_errors


@user_errors("probe")
def main(
    bank: Path = typer.Option(..., help="Feature bank from `pixpro extract`."),
    params: Path = PARAMS_OPTION,
    out: Path = typer.Option(..., help="Probe file to write (models/probe/<backbone>.pt)."),
    curve: Path = typer.Option(..., help="CSV of the objective per L-BFGS evaluation (a DVC plot)."),
) -> None:
    """Fit a multinomial logistic regression (one linear layer) with full-batch L-BFGS."""
    import pandas as pd

    from pixpro.checkpoint import save_checkpoint
    from pixpro.features import load_bank
    from pixpro.io import atomic_write_text
    from pixpro.probe import fit_probe, probe_state

    cfg = load(params)
    features = load_bank(bank)
    fit = fit_probe(features.features, features.labels.long(), features.num_classes, cfg.probe)
    save_checkpoint(out, probe_state(fit))
    table = pd.DataFrame({"evaluation": range(len(fit.curve)), "objective": fit.curve})
    atomic_write_text(curve, table.to_csv(index=False))
    status = "converged" if fit.converged else f"stopped at probe.max_iter = {cfg.probe.max_iter}"
    err_console.print(f"probe {status}; objective {fit.curve[-1]:.4f} -> {out}")
