"""`pixpro extract`: frozen backbone features of sampled labelled train pixels -> a bank."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


from ._common import (BACKBONE_OPTION, CHECKPOINT_OPTION, DATA_OPTION, PARAMS_OPTION, Backbone, err_console,
                      layout_option, layout_path, load, user_errors)


@user_errors("extract")
def main(
    backbone: Backbone = BACKBONE_OPTION,
    params: Path = PARAMS_OPTION,
    data: Path = DATA_OPTION,
    checkpoint: Path = CHECKPOINT_OPTION,
    out: Optional[Path] = layout_option("bank", "Feature bank file to write."),
) -> None:
    """Sample extract.pixels_per_image class-balanced labelled pixels per train image and store
    their L2-normalised features (float16) with labels."""
    from pixpro.checkpoint import save_checkpoint
    from pixpro.data.classes import load_prepared_classes
    from pixpro.features import extract_bank, frozen_backbone_on_device, split_rows
    from pixpro.io import stage_outputs

    cfg = load(params)
    out = layout_path(out, "bank", backbone, "--out")
    name = backbone.value
    with stage_outputs() as outputs:
        out_tmp = outputs.file(out)
        classes = load_prepared_classes(data)
        model, device = frozen_backbone_on_device(name, cfg, checkpoint)
        bank = extract_bank(model, split_rows(data, "train"), cfg.extract, cfg.seed, device, classes.num_classes)
        save_checkpoint(out_tmp, bank.to_dict())
    err_console.print(f"{name}: {len(bank.labels)} pixels x {bank.features.shape[1]} dims -> {out}")
