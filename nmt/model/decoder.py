"""The decoder: a recurrent network that attends to the encoder's memory at every step.

Two flows, one module:
- Luong et al. (2015): the recurrent layer reads the previous target embedding (and, with input
  feeding, the previous attentional vector); its new state h queries the memory for a context c.
- Bahdanau et al. (2015): the previous state queries the memory first, and the context c is an
  input of the recurrent step, next to the embedding.
Either way the attentional vector tanh(W [c; h]) feeds the output layer (and, with input
feeding, the next step). `Decoder` writes both flows out.

Shapes: N rows (sentences, or sentences × beam), T target steps, S source length, E embedding
size, H decoder hidden size, M memory size (encoder output), L decoder layers, G gate width of
layer 0 (4H LSTM, 3H GRU, H RNN).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from nmt.model import cells
from nmt.model.attention import build_attention
from nmt.model.encoder import RNN_CLASSES
from nmt.recipe import ModelConfig


@dataclass
class DecoderState:
    """What the decoder carries from one step to the next, for N sequences: the recurrent
    state s_{t-1} and, with input feeding, the attentional vector h̃_{t-1} (see `Decoder`)."""

    hidden: torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # (L, N, H), LSTM: (h, c)
    feed: torch.Tensor | None  # (N, H): the previous attentional vector, with input feeding

    @property
    def top(self) -> torch.Tensor:
        """The top layer's hidden state (N, H): the Bahdanau flow's query."""
        return (self.hidden[0] if isinstance(self.hidden, tuple) else self.hidden)[-1]

    def index_select(self, index: torch.Tensor) -> "DecoderState":
        """Keep (and reorder) sequences: one gather per tensor, for beam search. `index` (N',)
        picks the rows of the new state."""
        hidden: cells.State
        if isinstance(self.hidden, tuple):
            # each (L, N', H)
            hidden = cast(
                "tuple[torch.Tensor, torch.Tensor]",
                tuple(h.index_select(1, index) for h in self.hidden),
            )
        else:
            hidden = self.hidden.index_select(1, index)  # (L, N', H)
        feed = None if self.feed is None else self.feed.index_select(0, index)  # (N', H)
        return DecoderState(hidden, feed)


class Decoder(nn.Module):
    """The attentional decoder. With y_{t-1} the previous target embedding, s_t the recurrent
    state (all layers), h_t its top layer, c_t the context and h̃_t the attentional vector:

    Luong flow (Luong et al., 2015), `attention_flow: luong`: attend with the current state.
        s_t = RNN(s_{t-1}, [y_{t-1}; h̃_{t-1}])     (h̃_{t-1} only with input feeding)
        c_t = attend(h_t, memory)
        h̃_t = tanh(W_c [c_t; h_t])

    Bahdanau flow (Bahdanau et al., 2015), `attention_flow: bahdanau`: attend with the previous
    state, then feed the context to the RNN.
        c_t = attend(h_{t-1}, memory)
        s_t = RNN(s_{t-1}, [y_{t-1}; c_t; h̃_{t-1}])  (h̃_{t-1} only with input feeding)
        h̃_t = tanh(W_c [c_t; h_t])                  (Luong's output; Bahdanau's is a maxout layer)

    Then p(y_t) = softmax(W_o h̃_t) (`Seq2Seq.output`). W_c has no bias; dropout follows the
    tanh. `attend` is the score's class in nmt/model/attention.py; s_0 comes from
    `initial_state`, h̃_0 = 0.
    """

    def __init__(self, config: ModelConfig, memory_size: int):
        super().__init__()
        self.cell, self.layers = config.decoder_cell, config.decoder_layers
        self.hidden_size, self.flow = config.decoder_hidden_size, config.flow
        self.input_feeding, self.init = config.input_feeding, config.decoder_init
        input_size = (
            config.embedding_size
            + (memory_size if self.flow == "bahdanau" else 0)
            + (self.hidden_size if self.input_feeding else 0)
        )
        self.rnn = RNN_CLASSES[self.cell](
            input_size,
            self.hidden_size,
            num_layers=self.layers,
            batch_first=True,
            dropout=config.dropout if self.layers > 1 else 0.0,
        )
        self.attention = build_attention(config.score, self.hidden_size, memory_size)
        self.combine = nn.Linear(self.hidden_size + memory_size, self.hidden_size, bias=False)
        self.bridge = nn.Linear(memory_size, self.hidden_size) if self.init == "bridge" else None
        self.dropout = nn.Dropout(config.dropout)
        self.locked_dropout = config.locked_dropout

    @property
    def stepwise(self) -> bool:
        """Whether each step needs the previous one's attention (no whole-sequence shortcut)."""
        return self.input_feeding or self.flow == "bahdanau"

    def initial_state(self, encoder_final: torch.Tensor) -> DecoderState:
        """Zeros, the encoder's final state, or a learned projection of it (the bridge)."""
        batch = encoder_final.size(0)  # N; encoder_final is (N, M)
        if self.init == "zeros":
            first = encoder_final.new_zeros(batch, self.hidden_size)  # (N, H)
        elif self.init == "last":
            first = encoder_final  # (N, M), M = H
        else:
            assert self.bridge is not None  # made when init is "bridge"
            first = torch.tanh(self.bridge(encoder_final))  # (N, H)
        hidden: cells.State
        hidden = first.unsqueeze(0).repeat(self.layers, 1, 1).contiguous()  # (L, N, H)
        if self.cell == "lstm":
            hidden = (hidden, hidden.clone())  # (h, c), each (L, N, H)
        # h̃_0 = 0: (N, H)
        feed = encoder_final.new_zeros(batch, self.hidden_size) if self.input_feeding else None
        return DecoderState(hidden, feed)

    def forward(
        self,
        embedded: torch.Tensor,
        state: DecoderState,
        keys: torch.Tensor,
        memory: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, DecoderState, torch.Tensor]:
        """Run T steps: attentional vectors (N, T, H), the new state, attention (N, T, S).

        Without input feeding, in the Luong flow the steps do not depend on each other's
        attention, so the recurrent layer and the attention each run once over the whole sequence.
        """
        keep = None  # with locked dropout, h̃'s mask for all steps: (N, 1, H)
        if self.locked_dropout and self.training and self.dropout.p > 0:
            keep = embedded.new_empty(embedded.size(0), 1, self.hidden_size)
            keep = keep.bernoulli_(1.0 - self.dropout.p) / (1.0 - self.dropout.p)
        if not self.stepwise:
            output, hidden = self.rnn(embedded, state.hidden)  # (N, T, H), (L, N, H)
            context, weights = self.attention(output, keys, memory, mask)  # (N, T, M), (N, T, S)
            return self._attentional(context, output, keep), DecoderState(hidden, None), weights
        outputs, all_weights = [], []
        # All steps' input gates in one product; unbind (not indexing) keeps backward linear in T.
        for gates_x in cells.input_projection(self.rnn, embedded).unbind(1):  # (N, G) per step
            extra = []  # the rest of layer 0's input: [c_t;] [h̃_{t-1}]
            if self.flow == "bahdanau":
                # c_t from h_{t-1}: (N, 1, M), weights (N, 1, S)
                context, weights = self.attention(state.top.unsqueeze(1), keys, memory, mask)
                extra.append(context.squeeze(1))  # (N, M)
            if self.input_feeding:
                extra.append(state.feed)  # h̃_{t-1}: (N, H)
            output, hidden = cells.step(
                self.rnn,
                self.cell,
                gates_x,
                torch.cat(extra, -1) if extra else None,
                state.hidden,
                self.rnn.dropout,
                self.training,
            )  # h_t (N, H), s_t
            output = output.unsqueeze(1)  # (N, 1, H)
            if self.flow == "luong":
                # c_t from h_t: (N, 1, M), weights (N, 1, S)
                context, weights = self.attention(output, keys, memory, mask)
            attentional = self._attentional(context, output, keep)  # h̃_t: (N, 1, H)
            state = DecoderState(hidden, attentional.squeeze(1) if self.input_feeding else None)
            outputs.append(attentional)
            all_weights.append(weights)
        return torch.cat(outputs, 1), state, torch.cat(all_weights, 1)  # (N, T, H), (N, T, S)

    def _attentional(
        self, context: torch.Tensor, output: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """h̃ = dropout(tanh(W_c [c; h])): (N, T, H) from c (N, T, M) and h (N, T, H); `keep`
        (N, 1, H), locked dropout's scaled mask, replaces a mask drawn per step."""
        attentional = torch.tanh(self.combine(torch.cat([context, output], dim=-1)))
        if keep is None:
            return self.dropout(attentional)
        # In the mask's float32, bf16 autocast's h̃ would turn float32, and with it the output
        # layer's products (the largest of all, run in h̃'s dtype): 30% slower training.
        return attentional * keep.to(attentional.dtype)
