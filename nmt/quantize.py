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


def quantized_rows(layer: nn.Module, rows: torch.Tensor):
    """The outputs `rows` of a dynamically quantized linear layer, as a function: the same int8
    weights, sliced and packed once per call (for vocabulary shortlists). Unpacking the layer's
    weights is slow, so it happens once per layer."""
    if not hasattr(layer, "unpacked"):
        weight = layer.weight()
        if weight.qscheme() != torch.per_tensor_affine:
            raise NmtError(f"a shortlist needs per-tensor int8 weights, not {weight.qscheme()}")
        layer.unpacked = (weight.int_repr(), weight.q_scale(), weight.q_zero_point(),
                          layer.bias())
    integers, scale, zero_point, bias = layer.unpacked
    sliced = torch._make_per_tensor_quantized_tensor(integers[rows], scale, zero_point)
    packed = torch.ops.quantized.linear_prepack(sliced, None if bias is None else bias[rows])
    return lambda x: torch.ops.quantized.linear_dynamic(x, packed, reduce_range=True)
