"""The CUDA paths: bf16 autocast, channels_last and torch.compile in pretraining. Marked `cuda`
and skipped without a GPU; benchmarks/gpu_check.py runs them (`pytest -m cuda`)."""

from __future__ import annotations

import pytest
import torch

from pixpro.config import backbone_from_dict
from pixpro.model.backbone import build_backbone
from pixpro.precision import autocast_for
from tests.conftest import backbone_state, make_params, run_pretrain

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

GPU = {"pretrain.device": "cuda", "pretrain.epochs": 1}


def test_the_default_setting_runs_convolutions_in_bf16_on_cuda():
    conv = torch.nn.Conv2d(3, 4, 3).cuda()
    with autocast_for(torch.device("cuda"), "cuda"):
        assert conv(torch.randn(1, 3, 8, 8, device="cuda")).dtype == torch.bfloat16


def test_channels_last_computes_what_nchw_computes():
    params = make_params()
    torch.manual_seed(0)
    backbone = build_backbone(params.pretrain.backbone).cuda().eval()
    images = torch.randn(2, 3, *params.pretrain.views.size, device="cuda")
    with torch.no_grad():
        expected = backbone(images)
        backbone = backbone.to(memory_format=torch.channels_last)
        got = backbone(images.contiguous(memory_format=torch.channels_last))
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)  # TF32 and kernel choice differ


@pytest.mark.parametrize("compile_", [False, True], ids=["eager", "compiled"])
def test_bf16_channels_last_pretraining_learns_and_writes_a_plain_backbone(prepared, tmp_path, compile_):
    params = make_params(**GPU, **{"pretrain.amp": "cuda", "pretrain.channels_last": True,
                                   "pretrain.compile": compile_})
    torch.manual_seed(params.seed)
    initial = build_backbone(params.pretrain.backbone).state_dict()
    run_pretrain(params, prepared, tmp_path)
    weights = backbone_state(tmp_path)
    assert weights.keys() == initial.keys()  # no `_orig_mod.` prefix from compile
    assert all(torch.isfinite(w.float()).all() for w in weights.values())
    assert any(not torch.equal(w.cpu(), initial[name]) for name, w in weights.items() if w.is_floating_point())
    saved = torch.load(tmp_path / "backbone.pt", weights_only=False)
    plain = build_backbone(backbone_from_dict(saved["backbone_config"]))
    plain.load_state_dict(weights)  # loads on CPU, uncompiled
