"""int8 matrix products: a linear layer's weights as int8 (`int8_linear`), and the rows of a
quantized layer for a vocabulary shortlist (`quantized_rows`). The model uses them; quantizing a
whole model is nmt/model/quantize.py.

Shapes: O a layer's outputs, I its inputs, R the rows kept (a shortlist's size), N input rows.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import nn

from nmt.errors import NmtError


def int8_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """`x ↦ x Wᵀ + b` with int8 weights, quantized as the linear layers are."""
    from torch.ao.quantization import quantize_dynamic

    linear = nn.Linear(weight.size(1), weight.size(0), bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return quantize_dynamic(nn.Sequential(linear), {nn.Linear}, dtype=torch.qint8)[0]


class Int8Linear(Protocol):
    """What `quantized_rows` uses of a dynamically quantized linear layer
    (torch.ao.nn.quantized.dynamic.Linear), whose weight and bias are methods."""

    unpacked: tuple[torch.Tensor, float, int, torch.Tensor | None]  # set by `quantized_rows`

    def weight(self) -> torch.Tensor: ...

    def bias(self) -> torch.Tensor | None: ...


def quantized_rows(layer: Int8Linear, rows: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The outputs `rows` of a dynamically quantized linear layer, as a function: the same int8
    weights, sliced and packed once per call (for vocabulary shortlists). Unpacking the layer's
    weights is slow, so it happens once per layer."""
    if not hasattr(layer, "unpacked"):
        weight = layer.weight()  # (O, I), int8 per-tensor
        if weight.qscheme() != torch.per_tensor_affine:
            raise NmtError(f"a shortlist needs per-tensor int8 weights, not {weight.qscheme()}")
        layer.unpacked = (weight.int_repr(), weight.q_scale(), weight.q_zero_point(), layer.bias())
    integers, scale, zero_point, bias = layer.unpacked
    sliced = torch._make_per_tensor_quantized_tensor(integers[rows], scale, zero_point)  # (R, I)
    packed = torch.ops.quantized.linear_prepack(sliced, None if bias is None else bias[rows])
    # x (N, I) → (N, R)
    return lambda x: torch.ops.quantized.linear_dynamic(x, packed, reduce_range=True)
