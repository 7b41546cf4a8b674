"""The decoder: a recurrent network that attends to the encoder's memory at every step.

Each step (Luong et al., 2015): the recurrent layer reads the previous target embedding (and,
with input feeding, the previous attentional vector); its output h queries the memory for a
context c; the attentional vector tanh(W [c; h]) feeds the output layer and the next step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nmt.model import cells
from nmt.model.attention import build_attention
from nmt.model.encoder import RNN_CLASSES


@dataclass
class DecoderState:
    """What the decoder carries from one step to the next, for N sequences."""

    hidden: torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # (layers, N, H), LSTM: (h, c)
    feed: torch.Tensor | None  # (N, H): the previous attentional vector, with input feeding

    def index_select(self, index: torch.Tensor) -> "DecoderState":
        """Keep (and reorder) sequences: one gather per tensor, for beam search."""
        if isinstance(self.hidden, tuple):
            hidden = tuple(h.index_select(1, index) for h in self.hidden)
        else:
            hidden = self.hidden.index_select(1, index)
        feed = None if self.feed is None else self.feed.index_select(0, index)
        return DecoderState(hidden, feed)


class Decoder(nn.Module):
    def __init__(self, cell: str, embedding_size: int, memory_size: int, hidden_size: int,
                 layers: int, attention: str, input_feeding: bool, bridge: bool,
                 dropout: float):
        super().__init__()
        self.cell, self.layers, self.hidden_size = cell, layers, hidden_size
        self.input_feeding = input_feeding
        input_size = embedding_size + (hidden_size if input_feeding else 0)
        self.rnn = RNN_CLASSES[cell](input_size, hidden_size, num_layers=layers, batch_first=True,
                                     dropout=dropout if layers > 1 else 0.0)
        self.attention = build_attention(attention, hidden_size, memory_size)
        self.combine = nn.Linear(hidden_size + memory_size, hidden_size, bias=False)
        self.bridge = nn.Linear(memory_size, hidden_size) if bridge else None
        self.dropout = nn.Dropout(dropout)

    def initial_state(self, encoder_final: torch.Tensor) -> DecoderState:
        """Zeros, or a learned projection of the encoder's final state (the bridge)."""
        batch = encoder_final.size(0)
        if self.bridge is None:
            hidden = encoder_final.new_zeros(self.layers, batch, self.hidden_size)
        else:
            hidden = torch.tanh(self.bridge(encoder_final)).unsqueeze(0).repeat(self.layers, 1, 1)
            hidden = hidden.contiguous()
        if self.cell == "lstm":
            hidden = (hidden, hidden.clone())
        feed = encoder_final.new_zeros(batch, self.hidden_size) if self.input_feeding else None
        return DecoderState(hidden, feed)

    def forward(self, embedded: torch.Tensor, state: DecoderState, keys: torch.Tensor,
                memory: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, DecoderState, torch.Tensor]:
        """Run T steps: attentional vectors (N, T, H), the new state, attention (N, T, S).

        Without input feeding the steps do not depend on each other's output, so the recurrent
        layer and the attention each run once over the whole sequence.
        """
        if not self.input_feeding:
            output, hidden = self.rnn(embedded, state.hidden)
            attentional, weights = self._attend(output, keys, memory, mask)
            return attentional, DecoderState(hidden, None), weights
        outputs, all_weights = [], []
        hidden, feed = state.hidden, state.feed
        # All steps' input gates in one product; unbind (not indexing) keeps backward linear in T.
        for gates_x in cells.input_projection(self.rnn, embedded).unbind(1):
            output, hidden = cells.step(self.rnn, self.cell, gates_x, feed, hidden,
                                        self.rnn.dropout, self.training)
            attentional, weights = self._attend(output.unsqueeze(1), keys, memory, mask)
            feed = attentional.squeeze(1)
            outputs.append(attentional)
            all_weights.append(weights)
        return torch.cat(outputs, 1), DecoderState(hidden, feed), torch.cat(all_weights, 1)

    def _attend(self, output: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        context, weights = self.attention(output, keys, memory, mask)
        attentional = torch.tanh(self.combine(torch.cat([context, output], dim=-1)))
        return self.dropout(attentional), weights
