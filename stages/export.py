"""`pixpro export`: the pretrained backbone in the format of the library it came from (not a DVC stage)."""

from __future__ import annotations

from pathlib import Path

import typer

from stages._common import CHECKPOINT_OPTION, err_console, user_errors


@user_errors("export")
def main(
    checkpoint: Path = CHECKPOINT_OPTION,
    out: Path = typer.Option(..., "--out", help="Folder to write (replaced if it exists)."),
) -> None:
    """Write the pretrained backbone for use outside pixpro. smp_unet: a
    segmentation-models-pytorch `save_pretrained` folder, loadable with
    `segmentation_models_pytorch.from_pretrained(OUT)`, whose output is the per-pixel features
    (its segmentation head is the identity). unet: model.safetensors plus pixpro_backbone.json
    with the constructor's arguments. `pixpro.load_backbone(OUT)` reads either."""
    from pixpro.export import export_backbone_dir

    export_backbone_dir(checkpoint, out)
    err_console.print(f"wrote {out}")
