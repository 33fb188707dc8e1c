"""`pixpro export`: the pretrained backbone in the format of the library it came from (not a DVC stage)."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import err_console, user_errors


@user_errors("export")
def main(
    checkpoint: Path = typer.Option(Path("models/backbone.pt"), "--checkpoint",
                                    help="The pretrained backbone, written by `dvc repro pretrain`."),
    out: Path = typer.Option(..., "--out", help="Folder to write (replaced if it exists)."),
) -> None:
    """Write the pretrained backbone for use outside pixpro. smp_unet: a
    segmentation-models-pytorch `save_pretrained` folder, loadable with
    `segmentation_models_pytorch.from_pretrained(OUT)`, whose output is the per-pixel features
    (its segmentation head is the identity). unet: model.safetensors plus the constructor's
    arguments. Both record the input preprocessing in pixpro_backbone.json (RGB scaled to [0, 1],
    ImageNet mean and std, L2-normalised features); `pixpro.load_backbone(OUT)` reads either and
    applies it."""
    from pixpro.export import export_backbone_dir

    export_backbone_dir(checkpoint, out)
    err_console.print(f"wrote {out}")
