"""`pixpro pretrain`: data/prepared/ -> models/backbone.pt (resumable; torchrun for several GPUs or nodes)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from pixpro.errors import ConfigError
from ._common import PARAMS_OPTION, err_console, load, user_errors


@user_errors("pretrain")
def main(
    params: Path = PARAMS_OPTION,
    data: Path = typer.Option(Path("data/prepared"), help="Prepared dataset folder (from `pixpro prepare`)."),
    out: Path = typer.Option(Path("models/backbone.pt"), help="Where the pretrained backbone is written."),
    checkpoints: Path = typer.Option(Path("checkpoints/pretrain"), help="Resumable checkpoints (kept across runs)."),
    live: Path = typer.Option(Path("dvclive/pretrain"), help="dvclive folder for metrics and curves."),
    launch: bool = typer.Option(False, "--launch", help="Start this node's pretrain.nproc processes with torchrun "
                                "and wait for them: standalone for pretrain.nnodes 1, else the c10d rendezvous at "
                                "pretrain.rdzv_endpoint (run the same command on every node). dvc.yaml does this."),
) -> None:
    """Pretrain the UNet backbone with PixPro on positive pixel pairs and a local PPM.

    Rerunning after an interruption resumes from the last checkpoint. `--launch` runs it under
    torchrun on pretrain.nproc GPUs of each of pretrain.nnodes nodes (dvc.yaml does); without it,
    it runs as one process, or as one of the processes torchrun starts.
    """
    cfg = load(params)
    if launch:
        if os.environ.get("TORCHELASTIC_RUN_ID"):
            raise ConfigError("--launch starts torchrun itself: drop it when running under torchrun")
        from pixpro.launch import launch as launch_processes
        from pixpro.launch import worker_command

        command = worker_command(["pretrain", "--params", str(params), "--data", str(data), "--out", str(out),
                                  "--checkpoints", str(checkpoints), "--live", str(live)])
        code = launch_processes(cfg.pretrain, command, log=lambda line: err_console.print(line, markup=False))
        if code:
            raise typer.Exit(code)
        return

    from pixpro.train import pretrain

    pretrain(cfg, data, out, checkpoints, live, log=err_console.print)
