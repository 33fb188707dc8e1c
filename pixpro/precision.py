"""Which precision a stage computes in: bf16 autocast or fp32, decided from an `amp` setting.

Settings (`pretrain.amp`):
- `off`: fp32 everywhere.
- `cuda`: bf16 on CUDA, fp32 on CPU. What `amp: true` always meant; the committed default until a
  seed sweep shows what bf16 does to the features on CPU.
- `auto`: bf16 on CUDA, and on a CPU with native bf16 arithmetic (AVX512-BF16 or AMX tiles).
  Elsewhere oneDNN emulates bf16, which is slower than fp32, so such CPUs stay in fp32.
- `always`: bf16 on CUDA and on any CPU (emulated or not): for measuring, not for speed.
Legacy booleans read as `true` = `cuda`, `false` = `off`, with a warning: YAML reads an unquoted
`on`, `yes` or `true` as the boolean, so `amp: on` would silently mean `cuda`.

Autocast only changes the ops it lists (convolutions, matmuls, linear layers); the loss casts its
inputs back to fp32 (pixpro/losses.py) so normalisation and the InfoNCE logits stay fp32.
"""

from __future__ import annotations

import functools

import torch

from pixpro.config_base import AMP_SETTINGS, LEGACY_AMP


@functools.cache
def native_cpu_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX tiles) that torch's oneDNN
    kernels use. torch.ops.mkldnn._is_mkldnn_bf16_supported() is not the test: it is true on
    any AVX-512 CPU, where bf16 runs emulated."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # x86 only; private in torch 2.x
    return torch.backends.mkldnn.is_available() and any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def amp_setting(setting: str | bool) -> str:
    """The setting as one of AMP_SETTINGS (legacy booleans translated)."""
    if isinstance(setting, bool):
        return LEGACY_AMP[setting]
    if setting not in AMP_SETTINGS:
        raise ValueError(f"amp setting {setting!r} is not one of {', '.join(AMP_SETTINGS)}")
    return setting


def uses_bf16(device: torch.device | str, setting: str | bool) -> bool:
    """Whether work on `device` runs under bf16 autocast for this `amp` setting."""
    setting, kind = amp_setting(setting), torch.device(device).type
    if setting == "off" or kind not in ("cuda", "cpu"):
        return False
    if kind == "cuda":
        return True
    return setting == "always" or (setting == "auto" and native_cpu_bf16())


def autocast_for(device: torch.device | str, setting: str | bool) -> torch.autocast:
    """A reusable bf16 autocast context for `device`, enabled as uses_bf16 decides (a no-op
    otherwise, so fp32 runs compute exactly what they did before the setting existed)."""
    device = torch.device(device)
    kind = device.type if device.type in ("cuda", "cpu") else "cpu"
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=uses_bf16(device, setting))


def precision_name(device: torch.device | str, setting: str | bool) -> str:
    """'bf16' or 'fp32', for logs and benchmark tables."""
    return "bf16" if uses_bf16(device, setting) else "fp32"
