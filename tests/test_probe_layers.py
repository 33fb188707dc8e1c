"""`probe.layers`: decoder stages upsampled and concatenated before the frozen-feature evaluation."""

from __future__ import annotations

import pytest
import torch
import yaml
from torch.nn import functional as F
from typer.testing import CliRunner

from pixpro.checkpoint import load_checkpoint
from pixpro.config import BackboneConfig
from pixpro.errors import ConfigError
from pixpro.features import DecoderStages, frozen_backbone_on_device, probe_feature_dim
from pixpro.model.backbone import ClassicUNet, build_backbone
from pixpro.stages.cli import app
from tests.conftest import REPO, TINY_EVAL, TINY_PRETRAIN, make_eval_params, tiny_params

SMP = BackboneConfig(arch="smp_unet", encoder="resnet18", decoder_channels=(16, 12, 8, 4), dim=6)
CLASSIC = BackboneConfig(arch="unet", widths=(4, 8, 16), dim=6)


def classic_stages_by_hand(net: ClassicUNet, images: torch.Tensor) -> list[torch.Tensor]:
    """ClassicUNet's forward written out, keeping every decoder stage (coarse to fine)."""
    skips, x = [], images
    for i, block in enumerate(net.down):
        x = block(x if i == 0 else F.max_pool2d(x, 2))
        skips.append(x)
    stages = []
    for up, merge, skip in zip(net.up, net.merge, skips[-2::-1]):
        x = merge(torch.cat([up(x), skip], dim=1))
        stages.append(x)
    return [*stages, net.head(x)]


def test_stage_channels_match_the_built_networks():
    images = torch.randn(2, 3, 32, 64)
    torch.manual_seed(0)
    net = build_backbone(CLASSIC).eval()
    assert [s.shape[1] for s in classic_stages_by_hand(net, images)] == list(CLASSIC.stage_channels) == [8, 4, 6]
    assert SMP.stage_channels == (16, 12, 8, 4, 6)


@pytest.mark.parametrize("cfg", [SMP, CLASSIC], ids=["smp_unet", "unet"])
def test_the_last_stage_alone_is_the_normalised_backbone_output(cfg):
    torch.manual_seed(0)
    net = build_backbone(cfg).eval()
    images = torch.randn(2, 3, 32, 64)
    with torch.no_grad():
        expected = F.normalize(net(images), dim=1)
        got = DecoderStages(net, (len(cfg.stage_channels),))(images)
    torch.testing.assert_close(got, expected)


def test_stages_are_upsampled_normalised_each_and_concatenated_at_unit_length():
    torch.manual_seed(0)
    net = build_backbone(CLASSIC).eval()
    images = torch.randn(2, 3, 32, 64)
    with torch.no_grad():
        by_hand = classic_stages_by_hand(net, images)
        got = DecoderStages(net, (1, 3))(images)
    coarse = F.normalize(F.interpolate(by_hand[0], size=(32, 64), mode="bilinear", align_corners=False), dim=1)
    fine = F.normalize(by_hand[2], dim=1)
    assert got.shape == (2, 8 + 6, 32, 64)
    torch.testing.assert_close(got, torch.cat([coarse, fine], dim=1) / 2 ** 0.5)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(2, 32, 64))
    assert by_hand[0].shape[-2:] == (16, 32)  # the coarse stage (1/2 resolution) really was upsampled


def test_smp_stages_have_their_channels_at_input_resolution():
    torch.manual_seed(0)
    net = build_backbone(SMP).eval()
    with torch.no_grad():
        got = DecoderStages(net, (1, 2, 5))(torch.randn(1, 3, 64, 64))
    assert got.shape == (1, 16 + 12 + 6, 64, 64)
    for part in got.split([16, 12, 6], dim=1):
        # Each stage has norm 1/sqrt(3), except where a narrow post-ReLU stage is all zero.
        norms = part.norm(dim=1)
        nonzero = norms > 0
        assert nonzero.float().mean() > 0.5
        torch.testing.assert_close(norms[nonzero], torch.full_like(norms[nonzero], 3 ** -0.5))


def test_the_default_is_the_plain_backbone_and_negative_layers_count_from_the_output(tmp_path):
    default = make_eval_params()  # tiny: unet, widths [4, 8] -> stages of 4 and 8 (= dim) channels
    assert default.probe.layers == (-1,) and default.probe_stages == (2,)
    assert probe_feature_dim(default) == 8
    model, _ = frozen_backbone_on_device("random", default, tmp_path / "absent.pt")
    assert not isinstance(model, DecoderStages)  # exactly the backbone every stage used before
    both = make_eval_params(**{"probe.layers": [-2, -1]})
    assert both.probe_stages == (1, 2) and make_eval_params(**{"probe.layers": [1, 2]}).probe_stages == (1, 2)
    assert probe_feature_dim(both) == 4 + 8
    model, _ = frozen_backbone_on_device("random", both, tmp_path / "absent.pt")
    assert isinstance(model, DecoderStages) and model.layers == (1, 2)


@pytest.mark.parametrize("layers, message", [
    ([3], r"probe.layers = \[3\] must name decoder stages 1 \(coarsest\) .. 2 .*or -1 \(the output\) .. -2"),
    ([0, 2], r"probe.layers = \[0, 2\] must name decoder stages"),
    ([-3], r"probe.layers = \[-3\] must name decoder stages"),
    ([2, -1], r"probe.layers = \[2, -1\] names a stage twice"),
    ([], "probe.layers needs at least one decoder stage"),
])
def test_bad_layers_are_one_line_config_errors(layers, message):
    with pytest.raises(ConfigError, match=message):
        make_eval_params(**{"probe.layers": layers})


def test_the_repository_default_is_the_output_stage():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params["probe"]["layers"] == [-1]


def test_extract_probe_and_evaluate_run_on_two_stages(tmp_path, prepared):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params({**TINY_PRETRAIN, **TINY_EVAL, "probe.layers": [-2, -1]}),
                                     sort_keys=False))
    runner = CliRunner()
    bank, probe = tmp_path / "bank.pt", tmp_path / "probe.pt"
    for args in (
        ["extract", "--backbone", "random", "--params", params, "--data", prepared,
         "--checkpoint", tmp_path / "absent.pt", "--out", bank],
        ["probe", "--params", params, "--bank", bank, "--out", probe, "--curve", tmp_path / "curve.csv"],
        ["evaluate", "--backbone", "random", "--params", params, "--data", prepared,
         "--checkpoint", tmp_path / "absent.pt", "--probe", probe, "--metrics", tmp_path / "seg.json",
         "--predictions", tmp_path / "predictions", "--plots", tmp_path / "plots"],
    ):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
    assert load_checkpoint(bank, "extract")["features"].shape[1] == 4 + 8
    assert (tmp_path / "seg.json").is_file()

    # A bank from one layer choice is refused under another, with the command that fixes it.
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(tiny_params({**TINY_PRETRAIN, **TINY_EVAL, "probe.layers": [2]}),
                                    sort_keys=False))
    result = runner.invoke(app, ["evaluate", "--backbone", "random", "--params", str(other), "--data", str(prepared),
                                 "--checkpoint", str(tmp_path / "absent.pt"), "--probe", str(probe),
                                 "--metrics", str(tmp_path / "seg2.json"), "--predictions", str(tmp_path / "p2"),
                                 "--plots", str(tmp_path / "plots2")])
    assert result.exit_code != 0
    assert "rerun `dvc repro extract probe`" in result.output
