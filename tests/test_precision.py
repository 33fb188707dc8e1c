"""`pretrain.amp`: which device computes in bf16 under each setting, and what the trainer runs."""

from __future__ import annotations

import pytest
import torch
import yaml

from pixpro import precision
from pixpro.config import params_from_dict
from pixpro.errors import ConfigError
from pixpro.precision import amp_setting, autocast_for, uses_bf16
from tests.conftest import backbone_state, make_params, run_pretrain

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a CUDA device object needs no GPU


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("setting, on_cuda, on_cpu_native, on_cpu_emulated", [
    ("off", False, False, False),
    ("cuda", True, False, False),
    ("auto", True, True, False),
    ("always", True, True, True),
])
def test_each_setting_picks_bf16_per_device(monkeypatch, native, setting, on_cuda, on_cpu_native, on_cpu_emulated):
    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: native)
    assert uses_bf16(CUDA, setting) is on_cuda
    assert uses_bf16(CPU, setting) is (on_cpu_native if native else on_cpu_emulated)
    assert uses_bf16("meta", setting) is False  # no autocast there: fp32


def test_legacy_booleans_keep_their_meaning_and_say_so():
    assert amp_setting(True) == "cuda" and amp_setting(False) == "off"
    # YAML reads an unquoted `on` as true: the old boolean's meaning, never silently.
    with pytest.warns(UserWarning, match=r"pretrain.amp: true is read as the old boolean, `cuda` .*always"):
        assert params_from_dict(yaml.safe_load("pretrain: {amp: on}")).pretrain.amp == "cuda"
    with pytest.warns(UserWarning, match=r"finetune.amp: false is read as the old boolean, `off`"):
        assert params_from_dict({"finetune": {"amp": False}}).finetune.amp == "off"
    with pytest.warns(UserWarning):
        assert params_from_dict({"pretrain": {"amp": False}}).pretrain.amp == "off"
    assert params_from_dict({"pretrain": {"amp": "auto"}}).pretrain.amp == "auto"
    assert params_from_dict({}).pretrain.amp == "cuda"  # the committed default: CPU stays fp32


def test_finetune_amp_takes_the_same_settings():
    assert params_from_dict({}).finetune.amp == "cuda"  # the committed default: CPU stays fp32
    with pytest.warns(UserWarning, match="finetune.amp: true"):
        assert params_from_dict({"finetune": {"amp": True}}).finetune.amp == "cuda"
    assert params_from_dict({"finetune": {"amp": "auto"}}).finetune.amp == "auto"
    with pytest.raises(ConfigError, match=r"finetune.amp = 'fast' is not one of 'auto', 'cuda', 'always', 'off'"):
        params_from_dict({"finetune": {"amp": "fast"}})


def test_an_unknown_setting_is_a_one_line_error():
    with pytest.raises(ConfigError, match=r"pretrain.amp = 'fast' is not one of 'auto', 'cuda', 'always', 'off'"):
        params_from_dict({"pretrain": {"amp": "fast"}})
    with pytest.raises(ValueError, match="not one of"):
        amp_setting("fast")


def test_native_bf16_is_read_from_torch_not_guessed():
    # Either flag torch reports (AVX512-BF16, AMX) is enough; mkldnn's own bf16 flag is not (it is
    # true on any AVX-512 CPU, where bf16 is emulated and slower than fp32).
    expected = torch.backends.mkldnn.is_available() and (
        torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    assert precision.native_cpu_bf16() is expected


@pytest.mark.parametrize("setting, dtype", [("always", torch.bfloat16), ("cuda", torch.float32), ("off", torch.float32)])
def test_autocast_for_runs_linear_layers_in_the_chosen_dtype(setting, dtype):
    layer = torch.nn.Linear(4, 3)
    context = autocast_for(CPU, setting)
    for _ in range(2):  # reusable, as the trainer enters it once per step
        with context:
            assert layer(torch.randn(2, 4)).dtype == dtype


def test_pretraining_on_cpu_is_unchanged_unless_bf16_is_chosen(prepared, tmp_path):
    # `cuda` (the default) and `off` are the same fp32 run on CPU, to the bit; `always` really computes
    # in bf16 (the control that makes the equality mean something), and its loss stays finite.
    weights = {}
    for setting in ("cuda", "off", "always"):
        params = make_params(**{"pretrain.amp": setting, "pretrain.device": "cpu", "pretrain.epochs": 1})
        result, _ = run_pretrain(params, prepared, tmp_path / setting)
        weights[setting] = backbone_state(tmp_path / setting)
    same = [name for name in weights["cuda"] if torch.equal(weights["cuda"][name], weights["off"][name])]
    assert same == list(weights["cuda"])
    changed = [name for name in weights["cuda"] if not torch.equal(weights["cuda"][name], weights["always"][name])]
    assert changed
    assert all(torch.isfinite(w.float()).all() for w in weights["always"].values())
