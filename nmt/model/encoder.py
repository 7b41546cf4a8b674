"""The encoder: a (bidirectional, multi-layer) recurrent network over source embeddings.

Shapes: B sentences, S source length, E embedding size, L layers, D directions (2 if
bidirectional), M = D × hidden_size the memory size (M/D per direction).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

RNN_CLASSES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class Encoder(nn.Module):
    """The source side of the model. Its memory m_1..m_S, which the decoder attends to, is the
    top layer's output at each source position; bidirectional, both directions' states joined,
    m_s = [→h_s; ←h_s] (as in Bahdanau et al., 2015). The top layer's final states, joined the
    same way, start the decoder (`Decoder.initial_state`)."""

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        layers: int,
        bidirectional: bool,
        dropout: float,
    ):
        super().__init__()
        self.rnn = RNN_CLASSES[cell](
            input_size,
            hidden_size,
            num_layers=layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.directions = 2 if bidirectional else 1
        self.output_size = hidden_size * self.directions

    def forward(
        self, embedded: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory bank (B, S, output_size) and the top layer's final state (B, output_size).

        Sequences are packed, so padding never enters the recurrence and the backward direction
        starts at each sentence's real last token.
        """
        packed = pack_padded_sequence(
            embedded, lengths.cpu(), batch_first=True, enforce_sorted=False
        )  # from (B, S, E)
        outputs, final = self.rnn(packed)  # final: (L·D, B, M/D)
        memory, _ = pad_packed_sequence(
            outputs, batch_first=True, total_length=embedded.size(1)
        )  # (B, S, M), 0 on padding
        hidden = final[0] if isinstance(final, tuple) else final  # LSTM: (h, c); use h
        top = hidden.view(-1, self.directions, hidden.size(1), hidden.size(2))[-1]  # (D, B, M/D)
        return memory, torch.cat(list(top), dim=-1)  # (B, S, M), (B, M)
