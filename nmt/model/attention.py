"""Attention scores between decoder queries and encoder memory.

Each attention splits its work in two: `keys(memory)` runs once per batch (the projection of the
memory bank does not change between decoder steps), `forward` runs per step (or once for all
steps) and only touches the query.
"""

from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
    """Base class: turns scores into masked weights and a context vector."""

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        """Per-batch precomputation over memory (B, S, M)."""
        raise NotImplementedError

    def scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Unnormalised scores (B, T, S) for queries (B, T, H)."""
        raise NotImplementedError

    def forward(self, query: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Context (N, T, M) and weights (N, T, S); `mask` (B, S) is True on real source tokens.

        N may be a multiple k of the B sentences (beam search: k hypotheses per sentence, rows
        grouped by sentence); a sentence's hypotheses then share its keys and memory, which are
        never copied k times.
        """
        rows, steps = query.shape[:2]
        group = rows // keys.size(0)
        query = query.reshape(keys.size(0), group * steps, query.size(-1))
        scores = self.scores(query, keys).masked_fill(~mask[:, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(weights, memory)
        return context.view(rows, steps, -1), weights.view(rows, steps, -1)


class AdditiveAttention(Attention):
    """Bahdanau et al. (2015): v · tanh(W q + U m)."""

    def __init__(self, query_size: int, memory_size: int, attention_size: int):
        super().__init__()
        self.memory_projection = nn.Linear(memory_size, attention_size, bias=False)
        self.query_projection = nn.Linear(query_size, attention_size, bias=False)
        self.energy = nn.Linear(attention_size, 1, bias=False)

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        return self.memory_projection(memory)

    def scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        # (B, T, S, A): the largest tensor of a search step; tanh in place saves a second one.
        hidden = torch.tanh_(self.query_projection(query)[:, :, None, :] + keys[:, None, :, :])
        return self.energy(hidden).squeeze(-1)


class DotAttention(Attention):
    """Luong et al. (2015) dot: q · m (query and memory of the same size)."""

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        return memory

    def scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return torch.bmm(query, keys.transpose(1, 2))


class GeneralAttention(DotAttention):
    """Luong et al. (2015) general: q · W m, with W m computed once per batch."""

    def __init__(self, query_size: int, memory_size: int):
        super().__init__()
        self.memory_projection = nn.Linear(memory_size, query_size, bias=False)

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        return self.memory_projection(memory)


def build_attention(score: str, query_size: int, memory_size: int) -> Attention:
    if score == "additive":
        return AdditiveAttention(query_size, memory_size, query_size)
    if score == "dot":
        return DotAttention()
    if score == "general":
        return GeneralAttention(query_size, memory_size)
    raise ValueError(f"unknown attention score {score!r}")
