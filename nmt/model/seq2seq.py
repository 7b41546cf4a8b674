"""The whole translation model: embeddings → encoder → bridge → attentional decoder → output.

Search sees the model only through `encode` (once per batch) and `decode_step` (once per
output token); training calls `forward` on whole target sequences.

Shapes: B sentences, N rows (B, or B × beam once search repeats them), S source length,
T target steps, E embedding size, M memory size (encoder output), H decoder hidden size,
V target vocabulary (a shortlist's size when one is used).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, cast

import torch
from torch import nn
from torch.nn import functional as F

from nmt.data.subwords import EOS, PAD, UNK
from nmt.model.decoder import Decoder, DecoderState
from nmt.model.encoder import Encoder
from nmt.model.int8 import Int8Linear, quantized_rows
from nmt.recipe import ModelConfig


@dataclass
class EncoderState:
    """Everything the decoder needs from the source, computed once per batch."""

    memory: torch.Tensor  # (N, S, M)
    keys: torch.Tensor  # attention's projection of the memory, (N, S, ·): see Attention.keys
    mask: torch.Tensor  # (N, S), True on real tokens
    final: torch.Tensor  # (N, M), the encoder's final state for the bridge
    # The output layer restricted to a shortlist of target ids (see `Seq2Seq.shortlisted`);
    # None: the whole vocabulary.
    output: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def device(self) -> torch.device:
        return self.memory.device

    def index_select(self, index: torch.Tensor) -> "EncoderState":
        """Keep (and repeat) sentences: those still searched, or one copy per sample."""
        return EncoderState(
            self.memory.index_select(0, index),
            self.keys.index_select(0, index),
            self.mask.index_select(0, index),
            self.final.index_select(0, index),
            self.output,
        )


def tied_keys(config: ModelConfig) -> set[str]:
    """State-dict keys that repeat another key's tensor (a checkpoint stores both copies)."""
    tied = {"target_embedding.weight": config.tie_embeddings, "output.weight": config.tie_output}
    return {key for key, is_tied in tied.items() if is_tied}


class Seq2Seq(nn.Module):
    """The attentional encoder-decoder of Bahdanau et al. (2015) and Luong et al. (2015):

        p(y_t | y_<t, x) = softmax(W_o h̃_t)

    source embeddings → `Encoder` (memory m_1..m_S) → `Decoder` (attentional vectors h̃_t) →
    the output layer W_o (`output`, over the target vocabulary). The recipe's `model` section
    (`ModelConfig`) picks cells, sizes, attention and initialisation.
    """

    def __init__(self, config: ModelConfig, source_vocab_size: int, target_vocab_size: int):
        super().__init__()
        self.config = config
        self.source_embedding = nn.Embedding(
            source_vocab_size, config.embedding_size, padding_idx=PAD
        )
        self.target_embedding = (
            self.source_embedding
            if config.tie_embeddings
            else nn.Embedding(target_vocab_size, config.embedding_size, padding_idx=PAD)
        )
        self.encoder = Encoder(
            config.encoder_cell,
            config.embedding_size,
            config.hidden_size,
            config.encoder_layers,
            config.bidirectional,
            config.dropout,
        )
        self.decoder = Decoder(config, self.encoder.output_size)
        self.output = nn.Linear(config.decoder_hidden_size, target_vocab_size)
        self.dropout = nn.Dropout(config.dropout)
        initialise(self, config)
        if config.tie_output:
            self.output.weight = self.target_embedding.weight

    def _embedding_dropout(self, embedded: torch.Tensor) -> torch.Tensor:
        """Dropout on (B, T, E) embeddings: one mask per sentence with `locked_dropout`."""
        if self.config.locked_dropout:
            return locked_dropout(embedded, self.config.dropout, self.training)
        return self.dropout(embedded)

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def encode(self, source: torch.Tensor, source_lengths: torch.Tensor) -> EncoderState:
        source = word_dropout(source, self.config.source_word_dropout, self.training)
        embedded = self._embedding_dropout(self.source_embedding(source))  # (B, S, E)
        memory, final = self.encoder(embedded, source_lengths)  # (B, S, M), (B, M)
        if torch.is_autocast_enabled(memory.device.type):
            # converted once here, not again by every decoder step's product (and its backward)
            memory = memory.to(torch.get_autocast_dtype(memory.device.type))
        if self.config.locked_dropout:  # the encoder's outputs too, one mask per sentence
            memory = locked_dropout(memory, self.config.dropout, self.training)
        mask = source != PAD  # (B, S)
        return EncoderState(memory, self.decoder.attention.keys(memory), mask, final)

    def initial_state(self, encoded: EncoderState) -> DecoderState:
        return self.decoder.initial_state(encoded.final)

    def shortlisted(self, encoded: EncoderState, vocabulary: torch.Tensor) -> EncoderState:
        """`encoded` with an output layer that scores only the target ids `vocabulary` (V,):
        its rows are gathered once per batch, and each step's log-probabilities are (N, V),
        normalized over the shortlist."""
        return replace(encoded, output=linear_rows(self.output, vocabulary.to(encoded.device)))

    def decode_step(
        self, encoded: EncoderState, state: DecoderState, previous: torch.Tensor
    ) -> tuple[torch.Tensor, DecoderState, torch.Tensor]:
        """One search step for N sequences, `previous` (N,) their last tokens: log-probabilities
        (N, V) (over the shortlist's V ids with one), new state, attention (N, S)."""
        embedded = self.dropout(self.target_embedding(previous)).unsqueeze(1)  # (N, 1, E)
        # h̃_t (N, 1, H), attention (N, 1, S)
        attentional, state, weights = self.decoder(
            embedded, state, encoded.keys, encoded.memory, encoded.mask
        )
        output = self.output if encoded.output is None else encoded.output
        # (N, V), in float32 even under autocast
        log_probs = torch.log_softmax(output(attentional.squeeze(1)).float(), dim=-1)
        # Attention in float32 too: coverage sums it over steps (a bf16 sum stops growing).
        return log_probs, state, weights.squeeze(1).float()

    def forward(
        self, source: torch.Tensor, source_lengths: torch.Tensor, target_in: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced attentional vectors (B, T, H) and attention (B, T, S).

        Logits are left to the caller (`logits`, or training's `output_loss`), which can skip
        padding positions.
        """
        encoded = self.encode(source, source_lengths)
        target_in = word_dropout(target_in, self.config.target_word_dropout, self.training)
        embedded = self._embedding_dropout(self.target_embedding(target_in))  # (B, T, E)
        # (B, T, H), (B, T, S)
        attentional, _, weights = self.decoder(
            embedded, self.initial_state(encoded), encoded.keys, encoded.memory, encoded.mask
        )
        return attentional, weights

    def logits(self, attentional: torch.Tensor) -> torch.Tensor:
        """W_o h̃: (..., H) → (..., V)."""
        return self.output(attentional)


def linear_rows(layer: nn.Module, rows: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The outputs `rows` of a linear layer (float or int8), its weights sliced once."""
    if isinstance(layer, nn.Linear):
        weight, bias = layer.weight[rows], layer.bias[rows]  # (V, H), (V,), V = len(rows)
        return lambda x: F.linear(x, weight, bias)
    return quantized_rows(cast(Int8Linear, layer), rows)  # not float: int8 (nmt/model/quantize.py)


def initialise(model: Seq2Seq, config: ModelConfig) -> None:
    """Weights as the recipe says; padding embeddings stay zero."""
    for name, parameter in model.named_parameters():
        if "embedding" in name:
            if config.init == "pytorch":
                nn.init.normal_(parameter, std=config.embedding_size**-0.5)
            elif config.init == "uniform":
                nn.init.uniform_(parameter, -config.init_range, config.init_range)
            else:
                nn.init.xavier_uniform_(parameter)
        elif config.init == "uniform":
            nn.init.uniform_(parameter, -config.init_range, config.init_range)
        elif config.init == "xavier":
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
            else:
                nn.init.zeros_(parameter)
    for rnn, cell in (
        (model.encoder.rnn, config.encoder_cell),
        (model.decoder.rnn, config.decoder_cell),
    ):
        gates = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
        for name, parameter in rnn.named_parameters():
            if name.startswith("weight_hh") and config.orthogonal_recurrent:
                for block in parameter.data.chunk(gates, dim=0):
                    nn.init.orthogonal_(block)
            if name.startswith("bias_ih") and cell == "lstm":
                size = parameter.size(0) // 4
                with torch.no_grad():  # PyTorch's gate order is input, forget, cell, output
                    parameter[size : 2 * size] += config.forget_bias
    with torch.no_grad():
        for embedding in (model.source_embedding, model.target_embedding):
            embedding.weight[PAD].zero_()


def word_dropout(ids: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """`ids` (B, T) with each real subword (not PAD, BOS or EOS) replaced by UNK with
    probability `p`, in training only."""
    if not training or p == 0.0:
        return ids
    drop = (torch.rand(ids.shape, device=ids.device) < p) & (ids > EOS)  # ids ≤ EOS: specials
    return ids.masked_fill(drop, UNK)


def locked_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout on `x` (B, T, D) with one mask per sentence, shared by its T steps (variational
    dropout): a unit dropped at one step is dropped at every step, so the recurrence cannot
    average the noise away."""
    if not training or p == 0.0:
        return x
    keep = x.new_empty(x.size(0), 1, x.size(2)).bernoulli_(1.0 - p) / (1.0 - p)  # (B, 1, D)
    return x * keep
