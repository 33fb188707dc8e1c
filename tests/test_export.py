"""`pixpro export` and `pixpro.load_backbone`: a pretrained backbone usable outside pixpro."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

import pixpro
import pixpro.export as pixpro_export
from pixpro.backbone_file import Preprocessing
from pixpro.checkpoint import save_checkpoint
from pixpro.data.classes import load_prepared_classes
from pixpro.data.views import IMAGENET_MEAN, IMAGENET_STD
from pixpro.errors import CheckpointError
from pixpro.export import PIXPRO_CONFIG, WEIGHTS, export_backbone_dir
from pixpro.features import LabelledImages, embed, extract_bank, frozen_backbone_on_device, split_rows
from pixpro.model.backbone import ClassicUNet
from pixpro.model.pixpro import PixPro
from pixpro.train import export_backbone
from pixpro.stages.cli import app
from tests.conftest import REPO, make_params

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
    ours = pixpro.load_backbone(checkpoint).module
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = ours(images)
        assert expected.shape == (2, 8, 64, 96)
        assert (theirs(images) - expected).abs().max() <= 1e-5
        assert torch.equal(pixpro.load_backbone(tmp_path / "export").module(images), expected)
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
        expected = pixpro.load_backbone(checkpoint).module(images)
        assert torch.equal(rebuilt.eval()(images), expected)
        assert torch.equal(pixpro.load_backbone(tmp_path / "export").module(images), expected)


def test_load_backbone_returns_eval_mode(tmp_path):
    model = pixpro.load_backbone(trained_checkpoint(tmp_path, UNET)).module
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
    with pytest.raises(CheckpointError, match="written by another architecture than its config"):
        export_backbone_dir(mislabelled, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_load_backbone_of_a_config_pixpro_cannot_build(tmp_path):
    state = torch.load(trained_checkpoint(tmp_path, UNET), weights_only=False)
    broken = save_checkpoint(tmp_path / "broken.pt", {**state, "backbone_config": {"arch": "vit"}})
    with pytest.raises(CheckpointError, match="its backbone config is not one pixpro builds"):
        pixpro.load_backbone(broken)


def test_export_records_the_preprocessing_training_used(tmp_path):
    export_backbone_dir(trained_checkpoint(tmp_path, SMP), tmp_path / "export")
    saved = json.loads((tmp_path / "export" / PIXPRO_CONFIG).read_text())["preprocessing"]
    assert saved == {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "input_range": [0.0, 1.0],
                     "input_space": "RGB", "l2_normalize": True}
    assert pixpro.load_backbone(tmp_path / "export").preprocessing == Preprocessing()


def documented_snippet() -> str:
    """The usage lines of pixpro/export.py's docstring, which the README shows."""
    return pixpro_export.__doc__.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("exported", [False, True], ids=["backbone.pt", "export folder"])
def test_the_documented_lines_give_the_features_extract_computes(tmp_path, prepared, exported):
    checkpoint = trained_checkpoint(tmp_path, SMP)
    source = export_backbone_dir(checkpoint, tmp_path / "export") if exported else checkpoint
    params = make_params(**SMP)
    rows = split_rows(prepared, "train")
    model, device = frozen_backbone_on_device("pretrained", params, checkpoint)
    bank = extract_bank(model, rows, params.extract, params.seed, device, load_prepared_classes(prepared).num_classes)
    with torch.no_grad():
        expected = embed(model, LabelledImages(rows)[0].image[None])  # (1, C, H, W): extract's image 0

    snippet = documented_snippet()
    assert '"models/backbone.pt"' in snippet and '"frame.png"' in snippet
    namespace: dict = {}
    exec(snippet.replace('"models/backbone.pt"', repr(str(source))).replace('"frame.png"', repr(rows["image"][0])),
         namespace)
    features = namespace["features"]
    assert features.shape == expected.shape == (1, 8, *prepared_size(rows))
    assert (features - expected).abs().max() <= 1e-5
    # and the bank's float16 features of image 0's sampled pixels
    mine = bank.image_index == 0
    sampled = features[0].flatten(1)[:, bank.pixel_index[mine]].T  # (n, C)
    assert mine.any() and (sampled - bank.features[mine].float()).abs().max() <= 1e-3


def prepared_size(rows) -> tuple[int, int]:
    from PIL import Image

    width, height = Image.open(rows["image"][0]).size
    return height, width


def test_raw_0_255_inputs_give_other_features(tmp_path, prepared):
    """Why the preprocessing is recorded: skipping it changes the features."""
    backbone = pixpro.load_backbone(trained_checkpoint(tmp_path, SMP))
    image = np.asarray(Image.open(split_rows(prepared, "train")["image"][0]).convert("RGB"))
    right = backbone.features(backbone.preprocess(image))
    raw = backbone.features(torch.tensor(image).permute(2, 0, 1)[None].float())
    assert (right - raw).abs().max() > 0.1


def test_features_need_a_divisible_size(tmp_path):
    backbone = pixpro.load_backbone(trained_checkpoint(tmp_path, SMP))
    with pytest.raises(ValueError, match="not divisible by 32"):
        backbone.features(torch.zeros(1, 3, 40, 64))


def test_export_before_pretraining_says_to_run_the_pipeline(tmp_path):
    result = CliRunner().invoke(app, ["export", "--checkpoint", str(tmp_path / "models" / "backbone.pt"),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "not found: run `dvc repro pretrain` first" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_export_help_names_only_its_options():
    result = CliRunner().invoke(app, ["export", "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "--checkpoint" in result.output and "--out" in result.output and "--backbone" not in result.output


def test_dvc_yaml_registers_the_backbone_as_a_model_artifact():
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    artifact = spec["artifacts"]["backbone"]
    assert artifact["type"] == "model" and artifact["desc"] and artifact["labels"]
    outs = [out if isinstance(out, str) else next(iter(out)) for out in spec["stages"]["pretrain"]["outs"]]
    assert artifact["path"] in outs  # the file pretrain writes, through the same ${backbone_file}
