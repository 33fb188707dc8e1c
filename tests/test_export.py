"""`pixpro export` and `pixpro.load_backbone`: a pretrained backbone usable outside pixpro."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import pixpro
from pixpro.checkpoint import save_checkpoint
from pixpro.errors import CheckpointError
from pixpro.export import PIXPRO_CONFIG, WEIGHTS, export_backbone_dir
from pixpro.model.backbone import ClassicUNet
from pixpro.model.pixpro import PixPro
from pixpro.train import export_backbone
from stages.cli import app
from tests.conftest import make_params

SMP = {"pretrain.backbone.arch": "smp_unet", "pretrain.backbone.encoder": "resnet18",
       "pretrain.backbone.decoder_channels": [16, 16, 16, 16], "pretrain.backbone.dim": 8,
       "pretrain.views.size": [32, 64]}
UNET = {"pretrain.backbone.arch": "unet", "pretrain.backbone.widths": [4, 8], "pretrain.backbone.dim": 8}


def trained_checkpoint(tmp_path, overrides: dict, name: str = "backbone.pt"):
    """A backbone.pt as pretrain writes it, with weights and BN statistics moved off their init."""
    torch.manual_seed(0)
    params = make_params(**overrides)
    model = PixPro(params.pretrain)
    with torch.no_grad():
        for name, tensor in model.backbone.state_dict().items():
            if tensor.is_floating_point():
                tensor.add_(0.05 * torch.randn_like(tensor))
                if name.endswith("running_var"):
                    tensor.abs_()
    return save_checkpoint(tmp_path / name, export_backbone(model, params, step=7))


def test_smp_export_loads_with_smp_from_pretrained_and_gives_the_features(tmp_path):
    import segmentation_models_pytorch as smp

    checkpoint = trained_checkpoint(tmp_path, SMP)
    export_backbone_dir(checkpoint, tmp_path / "export")
    assert {"config.json", WEIGHTS, PIXPRO_CONFIG} <= {p.name for p in (tmp_path / "export").iterdir()}
    theirs = smp.from_pretrained(str(tmp_path / "export")).eval()
    ours = pixpro.load_backbone(checkpoint)
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = ours(images)
        assert expected.shape == (2, 8, 64, 96)
        assert (theirs(images) - expected).abs().max() <= 1e-5
        assert torch.equal(pixpro.load_backbone(tmp_path / "export")(images), expected)
    saved = json.loads((tmp_path / "export" / PIXPRO_CONFIG).read_text())
    assert saved["step"] == 7 and saved["backbone_config"]["arch"] == "smp_unet"


def test_classic_unet_export_is_safetensors_plus_its_constructor(tmp_path):
    from safetensors.torch import load_file

    checkpoint = trained_checkpoint(tmp_path, UNET)
    export_backbone_dir(checkpoint, tmp_path / "export")
    config = json.loads((tmp_path / "export" / PIXPRO_CONFIG).read_text())["backbone_config"]
    rebuilt = ClassicUNet(tuple(config["widths"]), config["dim"])  # the documented constructor
    rebuilt.load_state_dict(load_file(str(tmp_path / "export" / WEIGHTS)))
    images = torch.randn(2, 3, 16, 32)
    with torch.no_grad():
        expected = pixpro.load_backbone(checkpoint)(images)
        assert torch.equal(rebuilt.eval()(images), expected)
        assert torch.equal(pixpro.load_backbone(tmp_path / "export")(images), expected)


def test_load_backbone_returns_eval_mode(tmp_path):
    model = pixpro.load_backbone(trained_checkpoint(tmp_path, UNET))
    assert not model.training


def test_export_of_a_file_that_is_no_backbone_is_one_line_and_writes_nothing(tmp_path):
    probe = save_checkpoint(tmp_path / "probe.pt", {"weight": torch.zeros(3, 8), "bias": torch.zeros(3)})
    result = CliRunner().invoke(app, ["export", "--checkpoint", str(probe), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "is not a pretrained backbone" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_load_backbone_of_weights_from_another_architecture(tmp_path):
    state = torch.load(trained_checkpoint(tmp_path, UNET), weights_only=False)
    smp_config = torch.load(trained_checkpoint(tmp_path, SMP, "smp.pt"), weights_only=False)["backbone_config"]
    mislabelled = save_checkpoint(tmp_path / "mislabelled.pt", {**state, "backbone_config": smp_config})
    with pytest.raises(CheckpointError, match="another architecture"):
        pixpro.load_backbone(mislabelled)


def test_load_backbone_of_a_folder_that_is_no_export(tmp_path):
    with pytest.raises(CheckpointError, match="is not a pixpro export"):
        pixpro.load_backbone(tmp_path)


def test_export_of_smp_weights_that_do_not_fit_their_config(tmp_path):
    state = torch.load(trained_checkpoint(tmp_path, SMP), weights_only=False)
    unet_weights = torch.load(trained_checkpoint(tmp_path, UNET, "unet.pt"), weights_only=False)["backbone"]
    mislabelled = save_checkpoint(tmp_path / "mislabelled.pt", {**state, "backbone": unet_weights})
    with pytest.raises(CheckpointError, match="do not fit an smp Unet with its own config"):
        export_backbone_dir(mislabelled, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_load_backbone_of_a_config_pixpro_cannot_build(tmp_path):
    state = torch.load(trained_checkpoint(tmp_path, UNET), weights_only=False)
    broken = save_checkpoint(tmp_path / "broken.pt", {**state, "backbone_config": {"arch": "vit"}})
    with pytest.raises(CheckpointError, match="its backbone config is not one pixpro builds"):
        pixpro.load_backbone(broken)
