"""The decoder: a recurrent network that attends to the encoder's memory at every step.

Two flows, one module:
- Luong et al. (2015): the recurrent layer reads the previous target embedding (and, with input
  feeding, the previous attentional vector); its new state h queries the memory for a context c.
- Bahdanau et al. (2015): the previous state queries the memory first, and the context c is an
  input of the recurrent step, next to the embedding.
Either way the attentional vector tanh(W [c; h]) feeds the output layer (and, with input
feeding, the next step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nmt.model import cells
from nmt.model.attention import build_attention
from nmt.model.encoder import RNN_CLASSES
from nmt.recipe import ModelConfig


@dataclass
class DecoderState:
    """What the decoder carries from one step to the next, for N sequences."""

    hidden: torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # (layers, N, H), LSTM: (h, c)
    feed: torch.Tensor | None  # (N, H): the previous attentional vector, with input feeding

    @property
    def top(self) -> torch.Tensor:
        """The top layer's hidden state (N, H): the Bahdanau flow's query."""
        return (self.hidden[0] if isinstance(self.hidden, tuple) else self.hidden)[-1]

    def index_select(self, index: torch.Tensor) -> "DecoderState":
        """Keep (and reorder) sequences: one gather per tensor, for beam search."""
        if isinstance(self.hidden, tuple):
            hidden = tuple(h.index_select(1, index) for h in self.hidden)
        else:
            hidden = self.hidden.index_select(1, index)
        feed = None if self.feed is None else self.feed.index_select(0, index)
        return DecoderState(hidden, feed)


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig, memory_size: int):
        super().__init__()
        self.cell, self.layers = config.decoder_cell, config.decoder_layers
        self.hidden_size, self.flow = config.decoder_hidden_size, config.flow
        self.input_feeding, self.init = config.input_feeding, config.decoder_init
        input_size = (config.embedding_size + (memory_size if self.flow == "bahdanau" else 0)
                      + (self.hidden_size if self.input_feeding else 0))
        self.rnn = RNN_CLASSES[self.cell](input_size, self.hidden_size, num_layers=self.layers,
                                          batch_first=True,
                                          dropout=config.dropout if self.layers > 1 else 0.0)
        self.attention = build_attention(config.score, self.hidden_size, memory_size)
        self.combine = nn.Linear(self.hidden_size + memory_size, self.hidden_size, bias=False)
        self.bridge = nn.Linear(memory_size, self.hidden_size) if self.init == "bridge" else None
        self.dropout = nn.Dropout(config.dropout)

    @property
    def stepwise(self) -> bool:
        """Whether each step needs the previous one's attention (no whole-sequence shortcut)."""
        return self.input_feeding or self.flow == "bahdanau"

    def initial_state(self, encoder_final: torch.Tensor) -> DecoderState:
        """Zeros, the encoder's final state, or a learned projection of it (the bridge)."""
        batch = encoder_final.size(0)
        if self.init == "zeros":
            first = encoder_final.new_zeros(batch, self.hidden_size)
        elif self.init == "last":
            first = encoder_final
        else:
            first = torch.tanh(self.bridge(encoder_final))
        hidden = first.unsqueeze(0).repeat(self.layers, 1, 1).contiguous()
        if self.cell == "lstm":
            hidden = (hidden, hidden.clone())
        feed = encoder_final.new_zeros(batch, self.hidden_size) if self.input_feeding else None
        return DecoderState(hidden, feed)

    def forward(self, embedded: torch.Tensor, state: DecoderState, keys: torch.Tensor,
                memory: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, DecoderState, torch.Tensor]:
        """Run T steps: attentional vectors (N, T, H), the new state, attention (N, T, S).

        Without input feeding, in the Luong flow the steps do not depend on each other's
        attention, so the recurrent layer and the attention each run once over the whole sequence.
        """
        if not self.stepwise:
            output, hidden = self.rnn(embedded, state.hidden)
            context, weights = self.attention(output, keys, memory, mask)
            return self._attentional(context, output), DecoderState(hidden, None), weights
        outputs, all_weights = [], []
        # All steps' input gates in one product; unbind (not indexing) keeps backward linear in T.
        for gates_x in cells.input_projection(self.rnn, embedded).unbind(1):
            extra = []
            if self.flow == "bahdanau":
                context, weights = self.attention(state.top.unsqueeze(1), keys, memory, mask)
                extra.append(context.squeeze(1))
            if self.input_feeding:
                extra.append(state.feed)
            output, hidden = cells.step(self.rnn, self.cell, gates_x,
                                        torch.cat(extra, -1) if extra else None, state.hidden,
                                        self.rnn.dropout, self.training)
            output = output.unsqueeze(1)
            if self.flow == "luong":
                context, weights = self.attention(output, keys, memory, mask)
            attentional = self._attentional(context, output)
            state = DecoderState(hidden, attentional.squeeze(1) if self.input_feeding else None)
            outputs.append(attentional)
            all_weights.append(weights)
        return torch.cat(outputs, 1), state, torch.cat(all_weights, 1)

    def _attentional(self, context: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        return self.dropout(torch.tanh(self.combine(torch.cat([context, output], dim=-1))))
