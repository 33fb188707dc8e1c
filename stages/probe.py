"""`pixpro probe`: logistic regression on a feature bank."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


from ._common import (BACKBONE_FOR_PATHS, PARAMS_OPTION, Backbone, err_console, layout_option, layout_path,
                      load, user_errors)


@user_errors("probe")
def main(
    backbone: Optional[Backbone] = BACKBONE_FOR_PATHS,
    bank: Optional[Path] = layout_option("bank", "Feature bank from `pixpro extract`."),
    params: Path = PARAMS_OPTION,
    out: Optional[Path] = layout_option("probe", "Probe file to write."),
    curve: Optional[Path] = layout_option("probe_curve", "CSV of the objective per L-BFGS evaluation (a DVC plot)."),
) -> None:
    """Fit a multinomial logistic regression (one linear layer) with full-batch L-BFGS."""
    import pandas as pd

    from pixpro.checkpoint import save_checkpoint
    from pixpro.features import load_bank
    from pixpro.io import stage_outputs
    from pixpro.probe import fit_probe, probe_state

    cfg = load(params)
    bank = layout_path(bank, "bank", backbone, "--bank")
    out = layout_path(out, "probe", backbone, "--out")
    curve = layout_path(curve, "probe_curve", backbone, "--curve")
    with stage_outputs() as outputs:
        out_tmp, curve_tmp = outputs.file(out), outputs.file(curve)
        features = load_bank(bank)
        fit = fit_probe(features.features, features.labels.long(), features.num_classes, cfg.probe)
        save_checkpoint(out_tmp, probe_state(fit))
        table = pd.DataFrame({"evaluation": range(len(fit.curve)), "objective": fit.curve})
        curve_tmp.write_text(table.to_csv(index=False))
    status = "converged" if fit.converged else f"stopped at probe.max_iter = {cfg.probe.max_iter}"
    err_console.print(f"probe {status}; objective {fit.curve[-1]:.4f} -> {out}")
