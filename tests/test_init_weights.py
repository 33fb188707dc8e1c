"""pretrain.init: pretraining starts from weights the user has (made here: nothing is downloaded)."""

from __future__ import annotations

import pytest
import torch
import torchvision

from pixpro.checkpoint import save_checkpoint
from pixpro.errors import CheckpointError, ConfigError
from pixpro.export import export_backbone_dir
from pixpro.features import init_backbone
from pixpro.model.backbone import SmpUNet
from pixpro.model.init_weights import load_init_weights
from pixpro.model.pixpro import PixPro
from pixpro.train import export_backbone
from tests.conftest import backbone_state, make_params, run_pretrain

SMP = {"pretrain.backbone.arch": "smp_unet", "pretrain.backbone.encoder": "resnet18",
       "pretrain.backbone.decoder_channels": [16, 16, 16, 16], "pretrain.backbone.dim": 8,
       "pretrain.views.size": [32, 64]}


def torchvision_resnet18(tmp_path, seed: int = 5) -> tuple[dict, str]:
    """A torchvision ResNet-18 classifier's state dict, moved off its init, saved with torch.save."""
    torch.manual_seed(seed)
    state = torchvision.models.resnet18(weights=None).state_dict()
    for name, tensor in state.items():
        if tensor.is_floating_point():
            tensor.add_(0.1 * torch.randn_like(tensor))
            if name.endswith("running_var"):
                tensor.abs_()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    return state, str(path)


def assert_holds(module: torch.nn.Module, weights: dict) -> None:
    own = module.state_dict()
    for name, tensor in weights.items():
        if not name.startswith("fc."):
            assert torch.equal(own[name], tensor), name


def test_pretraining_starts_from_a_torchvision_resnet18_state_dict(tmp_path, prepared):
    weights, path = torchvision_resnet18(tmp_path)
    params = make_params(**SMP, **{"pretrain.init": path, "pretrain.epochs": 1})
    model = PixPro(params.pretrain)
    assert_holds(model.backbone.encoder, weights)  # step 0: the online network ...
    assert_holds(model.target_backbone.encoder, weights)  # ... and the target copied from it

    result, _ = run_pretrain(params, prepared, tmp_path / "run")
    trained = {k[len("encoder."):]: v for k, v in backbone_state(tmp_path / "run").items() if k.startswith("encoder.")}
    random_init = SmpUNet("resnet18", (16, 16, 16, 16), 8).encoder.state_dict()
    convs = [k for k, v in weights.items() if k in trained and v.dim() == 4]
    moved = sum((trained[k] - weights[k]).norm() ** 2 for k in convs) ** 0.5
    to_random = sum((random_init[k] - weights[k]).norm() ** 2 for k in convs) ** 0.5
    assert 0 < moved < 0.05 * to_random  # trained a little, from the given weights


def test_no_init_keeps_the_random_init():
    params = make_params(**SMP)
    torch.manual_seed(0)
    expected = SmpUNet("resnet18", (16, 16, 16, 16), 8).state_dict()
    torch.manual_seed(0)
    got = PixPro(params.pretrain).backbone.state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items())


def test_the_random_baseline_stays_random(tmp_path):
    weights, path = torchvision_resnet18(tmp_path)
    params = make_params(**SMP, **{"pretrain.init": path})
    random = init_backbone("random", params, tmp_path / "unused.pt")
    assert not torch.equal(random.encoder.conv1.weight, weights["conv1.weight"])


def test_an_smp_encoder_state_dict(tmp_path):
    torch.manual_seed(1)
    encoder = SmpUNet("resnet18", (16, 16, 16, 16), 8).encoder.state_dict()
    torch.save(encoder, tmp_path / "encoder.pt")
    backbone = SmpUNet("resnet18", (16, 16, 16, 16), 8)
    load_init_weights(backbone, str(tmp_path / "encoder.pt"), make_params(**SMP).pretrain.backbone)
    assert_holds(backbone.encoder, encoder)


def test_a_safetensors_state_dict_nested_as_training_scripts_save_it(tmp_path):
    weights, _ = torchvision_resnet18(tmp_path)
    torch.save({"epoch": 3, "state_dict": weights}, tmp_path / "checkpoint.pth")
    backbone = SmpUNet("resnet18", (16, 16, 16, 16), 8)
    load_init_weights(backbone, str(tmp_path / "checkpoint.pth"), make_params(**SMP).pretrain.backbone)
    assert_holds(backbone.encoder, weights)

    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp_path / "resnet18.safetensors"))
    backbone = SmpUNet("resnet18", (16, 16, 16, 16), 8)
    load_init_weights(backbone, str(tmp_path / "resnet18.safetensors"), make_params(**SMP).pretrain.backbone)
    assert_holds(backbone.encoder, weights)


@pytest.mark.parametrize("exported", [False, True], ids=["backbone.pt", "export folder"])
def test_a_pixpro_backbone_or_its_export(tmp_path, exported):
    params = make_params(**SMP)
    torch.manual_seed(2)
    source = save_checkpoint(tmp_path / "backbone.pt", export_backbone(PixPro(params.pretrain), params, step=3))
    if exported:
        source = export_backbone_dir(source, tmp_path / "export")
    expected = backbone_state(tmp_path)
    model = PixPro(make_params(**SMP, **{"pretrain.init": str(source)}).pretrain)
    assert all(torch.equal(model.backbone.state_dict()[k], v) for k, v in expected.items())


def test_a_pixpro_backbone_of_another_config(tmp_path):
    params = make_params(**SMP)
    source = save_checkpoint(tmp_path / "backbone.pt", export_backbone(PixPro(params.pretrain), params, step=3))
    wider = make_params(**{**SMP, "pretrain.backbone.dim": 16, "pretrain.init": str(source)})
    with pytest.raises(CheckpointError, match=r"trained with pretrain\.backbone\.dim = 8 but params\.yaml has 16; "
                                              r"set pretrain\.backbone to match"):
        PixPro(wider.pretrain)


def test_keys_that_do_not_fit_are_named(tmp_path):
    weights, _ = torchvision_resnet18(tmp_path)
    torch.save({**weights, "conv1.weight": torch.zeros(64, 1, 7, 7)}, tmp_path / "grey.pth")
    config = make_params(**SMP).pretrain.backbone
    with pytest.raises(CheckpointError, match=r"grey\.pth does not fit the smp resnet18 encoder: other shape "
                                              r"conv1\.weight \(64, 1, 7, 7\) vs \(64, 3, 7, 7\)"):
        load_init_weights(SmpUNet("resnet18", (16, 16, 16, 16), 8), str(tmp_path / "grey.pth"), config)

    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "resnet34.pth")
    with pytest.raises(CheckpointError, match=r"resnet34\.pth does not fit the smp resnet18 encoder: unknown "
                                              r"layer1\.2\.\S+, layer1\.2\.\S+, layer1\.2\.\S+, \.\.\.$"):
        load_init_weights(SmpUNet("resnet18", (16, 16, 16, 16), 8), str(tmp_path / "resnet34.pth"), config)

    torch.save({"layer9.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"other\.pth shares no weight name with the smp_unet backbone or "
                                              r"the smp resnet18 encoder \(its first: layer9\.weight\)"):
        load_init_weights(SmpUNet("resnet18", (16, 16, 16, 16), 8), str(tmp_path / "other.pth"), config)


def test_a_file_that_holds_no_weights(tmp_path):
    (tmp_path / "notes.pth").write_text("not weights")
    config = make_params(**SMP).pretrain.backbone
    with pytest.raises(CheckpointError, match=r"notes\.pth is not a weights file"):
        load_init_weights(SmpUNet("resnet18", (16, 16, 16, 16), 8), str(tmp_path / "notes.pth"), config)
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match=r"list\.pth is not a state dict"):
        load_init_weights(SmpUNet("resnet18", (16, 16, 16, 16), 8), str(tmp_path / "list.pth"), config)


def test_imagenet_is_smps_own_encoder_weights(monkeypatch):
    import segmentation_models_pytorch as smp

    real, asked = smp.encoders.get_encoder, []

    def offline_get_encoder(name, in_channels=3, depth=5, weights=None, **kwargs):
        asked.append((name, weights))
        torch.manual_seed(7)  # stands for the downloaded weights
        return real(name, in_channels=in_channels, depth=depth, weights=None, **kwargs)

    monkeypatch.setattr(smp.encoders, "get_encoder", offline_get_encoder)
    model = PixPro(make_params(**SMP, **{"pretrain.init": "imagenet"}).pretrain)
    assert asked == [("resnet18", "imagenet")]
    torch.manual_seed(7)
    downloaded = real("resnet18", weights=None).state_dict()
    assert_holds(model.backbone.encoder, downloaded)
    assert_holds(model.target_backbone.encoder, downloaded)


def test_init_is_checked_with_the_params(tmp_path):
    with pytest.raises(ConfigError, match=r"pretrain\.init = '.*missing\.pth' is not an existing weights file"):
        make_params(**{"pretrain.init": str(tmp_path / "missing.pth")})
    with pytest.raises(ConfigError, match=r"pretrain\.init = imagenet .* needs pretrain\.backbone\.arch smp_unet"):
        make_params(**{"pretrain.init": "imagenet"})  # the tiny params' classic UNet
