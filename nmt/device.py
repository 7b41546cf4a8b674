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
