"""The whole translation model: embeddings → encoder → bridge → attentional decoder → output.

Search sees the model only through `encode` (once per batch) and `decode_step` (once per
output token); training calls `forward` on whole target sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nmt.data.subwords import PAD
from nmt.model.decoder import Decoder, DecoderState
from nmt.model.encoder import Encoder
from nmt.recipe import ModelConfig


@dataclass
class EncoderState:
    """Everything the decoder needs from the source, computed once per batch."""

    memory: torch.Tensor  # (N, S, M)
    keys: torch.Tensor    # attention's projection of the memory
    mask: torch.Tensor    # (N, S), True on real tokens
    final: torch.Tensor   # (N, M), the encoder's final state for the bridge

    def index_select(self, index: torch.Tensor) -> "EncoderState":
        """Keep (and repeat) sentences, e.g. to expand a batch to its beams."""
        return EncoderState(*(t.index_select(0, index) for t in
                              (self.memory, self.keys, self.mask, self.final)))


class Seq2Seq(nn.Module):
    def __init__(self, config: ModelConfig, source_vocab_size: int, target_vocab_size: int):
        super().__init__()
        self.config = config
        self.source_embedding = nn.Embedding(source_vocab_size, config.embedding_size,
                                             padding_idx=PAD)
        self.target_embedding = nn.Embedding(target_vocab_size, config.embedding_size,
                                             padding_idx=PAD)
        self.encoder = Encoder(config.cell, config.embedding_size, config.hidden_size,
                               config.encoder_layers, config.bidirectional, config.dropout)
        self.decoder = Decoder(config.cell, config.embedding_size, self.encoder.output_size,
                               config.decoder_hidden_size, config.decoder_layers,
                               config.attention, config.input_feeding, config.bridge,
                               config.dropout)
        self.output = nn.Linear(config.decoder_hidden_size, target_vocab_size)
        self.dropout = nn.Dropout(config.dropout)
        for embedding in (self.source_embedding, self.target_embedding):
            nn.init.normal_(embedding.weight, std=config.embedding_size ** -0.5)
            nn.init.zeros_(embedding.weight[PAD])
        if config.tie_output:
            self.output.weight = self.target_embedding.weight

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def encode(self, source: torch.Tensor, source_lengths: torch.Tensor) -> EncoderState:
        embedded = self.dropout(self.source_embedding(source))
        memory, final = self.encoder(embedded, source_lengths)
        mask = source != PAD
        return EncoderState(memory, self.decoder.attention.keys(memory), mask, final)

    def initial_state(self, encoded: EncoderState) -> DecoderState:
        return self.decoder.initial_state(encoded.final)

    def decode_step(self, encoded: EncoderState, state: DecoderState, previous: torch.Tensor
                    ) -> tuple[torch.Tensor, DecoderState, torch.Tensor]:
        """One search step for N sequences: log-probabilities (N, V), new state, attention (N, S)."""
        embedded = self.dropout(self.target_embedding(previous)).unsqueeze(1)
        attentional, state, weights = self.decoder(embedded, state, encoded.keys,
                                                   encoded.memory, encoded.mask)
        log_probs = torch.log_softmax(self.output(attentional.squeeze(1)).float(), dim=-1)
        return log_probs, state, weights.squeeze(1)

    def forward(self, source: torch.Tensor, source_lengths: torch.Tensor,
                target_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced attentional vectors (B, T, H) and attention (B, T, S).

        Logits are left to `logits`, so the caller can skip padding positions.
        """
        encoded = self.encode(source, source_lengths)
        embedded = self.dropout(self.target_embedding(target_in))
        attentional, _, weights = self.decoder(embedded, self.initial_state(encoded),
                                               encoded.keys, encoded.memory, encoded.mask)
        return attentional, weights

    def logits(self, attentional: torch.Tensor) -> torch.Tensor:
        return self.output(attentional)
