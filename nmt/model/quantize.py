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
from typing import TypeVar, cast

import torch
from torch import nn

from nmt.errors import NmtError
from nmt.model import cells
from nmt.model.int8 import int8_linear
from nmt.model.seq2seq import Seq2Seq

QUANTIZATIONS = ("int8",)
QUANTIZABLE_RNNS = (nn.LSTM, nn.GRU)  # what torch.ao quantizes dynamically

Model = TypeVar("Model", bound=nn.Module)


def quantize(model: Model, kind: str) -> Model:
    """A copy of `model` (on the CPU) with int8 weights."""
    if kind not in QUANTIZATIONS:
        raise NmtError(f"--quantize {kind}: expected one of {', '.join(QUANTIZATIONS)}")
    if next(model.parameters()).device.type != "cpu":
        raise NmtError("--quantize int8 is for translating on a CPU; add --device cpu")
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic  # slow import

    stepwise = {
        f"{name}.decoder.rnn".lstrip(".")
        for name, module in model.named_modules()
        if isinstance(module, Seq2Seq) and module.decoder.stepwise
    }
    # Additive attention's energy vector v (A → 1) meets every (query, source position) pair:
    # quantizing its huge input on the fly would cost more than the int8 product saves.
    spec = {
        name: default_dynamic_qconfig
        for name, module in model.named_modules()
        if (isinstance(module, nn.Linear) and not name.endswith("attention.energy"))
        or (isinstance(module, QUANTIZABLE_RNNS) and name not in stepwise)
    }
    with warnings.catch_warnings():  # torch.ao's quantized tensors carry a deprecation notice
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        quantized = quantize_dynamic(model, spec, dtype=torch.qint8).eval()
        for module in quantized.modules():
            if isinstance(module, Seq2Seq) and module.decoder.stepwise:
                rnn = module.decoder.rnn
                setattr(
                    rnn,
                    cells.INT8_PRODUCTS,
                    {
                        name: int8_linear(weight, bias)
                        for name, (weight, bias) in cells.step_weights(
                            rnn, module.config.embedding_size
                        ).items()
                    },
                )
    return cast(Model, quantized)  # a copy of `model`: the same class, its submodules swapped
