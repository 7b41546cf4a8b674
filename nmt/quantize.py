"""int8 weights for faster translation on CPUs.

PyTorch's dynamic quantization stores weights as int8 and quantizes activations on the fly. It
covers every linear layer (the output layer over the vocabulary, the attention projections, the
attentional combination, the bridge), the encoder's recurrent network, and the decoder's
recurrent products: the decoder steps one token at a time with its own matrix products
(nmt/model/cells.py), so those get int8 versions of their own. `nmt-translate --quantize int8`
uses it; the BLEU it costs and the time it saves on Multi30k are in benchmarks/README.md.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from nmt.errors import NmtError
from nmt.model import cells

QUANTIZATIONS = ("int8",)
QUANTIZABLE_RNNS = (nn.LSTM, nn.GRU)  # what torch.ao quantizes dynamically


def quantize(model: nn.Module, kind: str) -> nn.Module:
    """A copy of `model` (on the CPU) with int8 weights."""
    if kind not in QUANTIZATIONS:
        raise NmtError(f"--quantize {kind}: expected one of {', '.join(QUANTIZATIONS)}")
    if next(model.parameters()).device.type != "cpu":
        raise NmtError("--quantize int8 is for translating on a CPU; add --device cpu")
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    from nmt.model.seq2seq import Seq2Seq

    stepwise = {f"{name}.decoder.rnn".lstrip(".") for name, module in model.named_modules()
                if isinstance(module, Seq2Seq) and module.decoder.stepwise}
    # Additive attention's energy vector v (A → 1) meets every (query, source position) pair:
    # quantizing its huge input on the fly would cost more than the int8 product saves.
    spec = {name: default_dynamic_qconfig for name, module in model.named_modules()
            if (isinstance(module, nn.Linear) and not name.endswith("attention.energy")) or
            (isinstance(module, QUANTIZABLE_RNNS) and name not in stepwise)}
    with warnings.catch_warnings():  # torch.ao's quantized tensors carry a deprecation notice
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        quantized = quantize_dynamic(model, spec, dtype=torch.qint8).eval()
        for module in quantized.modules():
            if isinstance(module, Seq2Seq) and module.decoder.stepwise:
                rnn = module.decoder.rnn
                setattr(rnn, cells.INT8_PRODUCTS, {
                    name: int8_linear(weight, bias) for name, (weight, bias) in
                    cells.step_weights(rnn, module.config.embedding_size).items()})
    return quantized


def int8_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """`x ↦ x Wᵀ + b` with int8 weights, quantized as the linear layers are."""
    from torch.ao.quantization import quantize_dynamic

    linear = nn.Linear(weight.size(1), weight.size(0), bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return quantize_dynamic(nn.Sequential(linear), {nn.Linear}, dtype=torch.qint8)[0]


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
