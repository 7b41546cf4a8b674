"""int8 weights for faster translation on CPUs.

PyTorch's dynamic quantization stores the weights of every linear layer (the output layer over
the vocabulary, which dominates each search step, the attention projections, the attentional
combination and the bridge) as int8 and quantizes activations on the fly; the recurrent cells
stay in float32. `nmt-translate --quantize int8` uses it; the BLEU it costs and the time it
saves on Multi30k are in benchmarks/README.md.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from nmt.errors import NmtError

QUANTIZATIONS = ("int8",)


def quantize(model: nn.Module, kind: str) -> nn.Module:
    """A copy of `model` (on the CPU) with int8 linear layers."""
    if kind not in QUANTIZATIONS:
        raise NmtError(f"--quantize {kind}: expected one of {', '.join(QUANTIZATIONS)}")
    if next(model.parameters()).device.type != "cpu":
        raise NmtError("--quantize int8 is for translating on a CPU; add --device cpu")
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch.ao's quantized tensors carry a deprecation notice
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8).eval()
