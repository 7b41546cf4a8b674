"""Where tensors live: CUDA when present, unless the user says otherwise."""

from __future__ import annotations

import torch

from nmt.errors import NmtError


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise NmtError(f"device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NmtError(f"device {name!r}: CUDA is not available on this machine")
    return device


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them (x86 `flags`, Arm `Features`); empty where
    the system does not say."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_bf16() -> bool | None:
    """Whether the CPU multiplies bfloat16 in hardware (Intel AMX, AVX512-BF16 as on AMD Zen 4
    and later, Arm's BF16 extension), where bf16 matrix products run several times faster than
    float32; None where the system does not say."""
    flags = cpu_flags()
    if not flags:
        return None
    return bool(flags & {"amx_bf16", "avx512_bf16", "bf16"})
