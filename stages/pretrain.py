"""`pixpro pretrain`: data/prepared/ -> models/backbone.pt (resumable; torchrun for several GPUs)."""

from __future__ import annotations

from pathlib import Path

import typer

from stages._common import PARAMS_OPTION, err_console, load, user_errors


@user_errors("pretrain")
def main(
    params: Path = PARAMS_OPTION,
    data: Path = typer.Option(Path("data/prepared"), help="Prepared dataset folder (from `pixpro prepare`)."),
    out: Path = typer.Option(Path("models/backbone.pt"), help="Where the pretrained backbone is written."),
    checkpoints: Path = typer.Option(Path("checkpoints/pretrain"), help="Resumable checkpoints (kept across runs)."),
    live: Path = typer.Option(Path("dvclive/pretrain"), help="dvclive folder for metrics and curves."),
) -> None:
    """Pretrain the UNet backbone with PixPro on positive pixel pairs and a local PPM.

    Rerunning after an interruption resumes from the last checkpoint. For several GPUs run it
    under `torchrun --nproc_per_node=<pretrain.nproc> --no-python pixpro pretrain` (dvc.yaml does).
    """
    from pixpro.train import pretrain

    cfg = load(params)
    pretrain(cfg, data, out, checkpoints, live, log=err_console.print)
