"""One time step of a stacked LSTM / GRU / tanh-RNN, computed with the weights of `nn.LSTM` etc.

`nn.LSTM` called once per step is slow on CPU (each call sets up a whole fused-sequence kernel,
forward and backward). An input-feeding decoder must step one token at a time, so it uses these
few matrix products instead, on the same parameters: the full-sequence module stays available
for decoders without input feeding, and checkpoints are the same either way.

The input-side product of layer 0 for the target embeddings does not depend on earlier steps, so
`input_projection` computes it for all steps at once; each step adds only what is left.

Shapes: N rows, T steps, E embedding size, H hidden size, L layers, G gate width (4H LSTM,
3H GRU, H tanh-RNN), F the rest of layer 0's input (context and/or fed attentional vector).
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
# An RNN quantized for translation (nmt/model/quantize.py) carries int8 versions of the products below
# under this attribute: {"embedded", "extra", "hiddenL", "inputL"} → a function of the input.
INT8_PRODUCTS = "int8_products"


def input_projection(rnn: nn.RNNBase, embedded: torch.Tensor) -> torch.Tensor:
    """Layer 0's input gates from the embeddings (N, T, E) → (N, T, G), bias included."""
    int8 = getattr(rnn, INT8_PRODUCTS, None)
    if int8 is not None:
        return int8["embedded"](embedded)
    size = embedded.size(-1)  # E: layer 0's first input columns
    # nn.RNNBase registers its weights by name: typed Tensor | Module through Module.__getattr__
    weight, bias = cast(torch.Tensor, rnn.weight_ih_l0), cast(torch.Tensor, rnn.bias_ih_l0)
    return F.linear(embedded, weight[:, :size], bias)


def step_weights(
    rnn: nn.RNNBase, embedding_size: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """The (weight, bias) of each product `step` computes, by the names of INT8_PRODUCTS."""
    weight, bias = cast(torch.Tensor, rnn.weight_ih_l0), cast(torch.Tensor, rnn.bias_ih_l0)
    weights: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {
        "embedded": (weight[:, :embedding_size], bias)
    }
    if rnn.input_size > embedding_size:
        weights["extra"] = (weight[:, embedding_size:], None)
    for layer in range(rnn.num_layers):
        weights[f"hidden{layer}"] = (
            getattr(rnn, f"weight_hh_l{layer}"),
            getattr(rnn, f"bias_hh_l{layer}"),
        )
        if layer:
            weights[f"input{layer}"] = (
                getattr(rnn, f"weight_ih_l{layer}"),
                getattr(rnn, f"bias_ih_l{layer}"),
            )
    return weights


def step(
    rnn: nn.RNNBase,
    cell: str,
    gates_x: torch.Tensor,
    extra: torch.Tensor | None,
    state: State,
    dropout: float,
    training: bool,
) -> tuple[torch.Tensor, State]:
    """Advance every layer one step. `gates_x` (N, G) is layer 0's precomputed input part;
    `extra` (N, F) is the rest of layer 0's input (the fed attentional vector), if any.
    Returns the top layer's output (N, H) and the new state (L, N, H)."""
    hidden, memory = (
        state if isinstance(state, tuple) else (state, None)
    )  # (L, N, H), c only in LSTMs
    int8 = getattr(rnn, INT8_PRODUCTS, None)
    new_hidden, new_memory = [], []
    layer_input: torch.Tensor | None = None
    for layer in range(rnn.num_layers):
        w_ih = getattr(rnn, f"weight_ih_l{layer}")
        if layer == 0:
            gates = gates_x  # (N, G)
            if extra is not None:  # + W_ih[:, E:] · extra, (N, G)
                gates = (
                    gates + int8["extra"](extra)
                    if int8
                    else torch.addmm(gates, extra, w_ih[:, -extra.size(1) :].t())
                )
        else:
            assert layer_input is not None  # the layer below's output
            layer_input = F.dropout(layer_input, dropout, training)  # (N, H)
            gates = (
                int8[f"input{layer}"](layer_input)
                if int8
                else F.linear(layer_input, w_ih, getattr(rnn, f"bias_ih_l{layer}"))
            )  # (N, G)
        h = hidden[layer]  # (N, H)
        # W_hh h + b_hh: (N, G)
        recurrent = (
            int8[f"hidden{layer}"](h)
            if int8
            else F.linear(h, getattr(rnn, f"weight_hh_l{layer}"), getattr(rnn, f"bias_hh_l{layer}"))
        )
        if cell == "lstm":
            # Input, forget, cell and output gates, each (N, H), in PyTorch's order:
            # c' = σ(f)·c + σ(i)·tanh(g), h' = σ(o)·tanh(c').
            i, f, g, o = (gates + recurrent).chunk(4, dim=1)
            assert memory is not None  # an LSTM's state is (h, c)
            c = torch.sigmoid(f) * memory[layer] + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            new_memory.append(c)
        elif cell == "gru":
            # Reset r and update z gates, each (N, H), as PyTorch's GRU:
            # h' = (1 - z)·tanh(x_n + r·h_n) + z·h.
            x_r, x_z, x_n = gates.chunk(3, dim=1)
            h_r, h_z, h_n = recurrent.chunk(3, dim=1)
            r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
            h = (1 - z) * torch.tanh(x_n + r * h_n) + z * h
        else:
            h = torch.tanh(gates + recurrent)  # (N, H)
        new_hidden.append(h)
        layer_input = h
    hidden = torch.stack(new_hidden)  # (L, N, H)
    assert layer_input is not None  # an RNN has at least one layer
    return layer_input, ((hidden, torch.stack(new_memory)) if cell == "lstm" else hidden)
