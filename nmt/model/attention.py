"""Attention scores between decoder queries and encoder memory.

Each attention splits its work in two: `keys(memory)` runs once per batch (the projection of the
memory bank does not change between decoder steps), `forward` runs per step (or once for all
steps) and only touches the query.

By their textbook names: the score of Bahdanau et al. (2015), also Luong et al.'s (2015)
`concat`, is `AdditiveAttention`; Luong's `dot` and `general` are `DotAttention` and
`GeneralAttention`. The recipe's `model.attention` presets pair a score with a flow (where the
query comes from and where the context goes, nmt/model/decoder.py):

    preset          score      class                flow
    bahdanau        additive   AdditiveAttention    bahdanau
    luong-dot       dot        DotAttention         luong
    luong-general   general    GeneralAttention     luong
    luong-concat    additive   AdditiveAttention    luong

That table is `ATTENTION_PRESETS` in nmt/recipe.py, one layer down, which resolves it
(`ModelConfig.score`, `ModelConfig.flow`): validating a recipe needs a preset's score (a dot
score needs equal sizes) without loading PyTorch, and nmt/recipe.py may not import the model.
`build_attention` turns the resolved score name into a class.

Shapes: B sentences, N rows (N = B·K when beam search gives each sentence K rows, else B),
T query steps (1 per search step), S source length, M memory size (encoder output), H query
size (decoder hidden), A attention size (= H here).
"""

from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
    """Base class: turns scores into masked weights and a context vector.

        a_s = softmax_s(score(q, m_s))   over real source tokens (padding scores -inf)
        c   = Σ_s a_s m_s

    for a query q (the decoder state) and memory m_1..m_S (the encoder's outputs). Subclasses
    give `score`, split into `keys` (the memory's part, once per batch) and `scores`.
    """

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        """Per-batch precomputation over memory (B, S, M)."""
        raise NotImplementedError

    def scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Unnormalised scores (B, T, S) for queries (B, T, H)."""
        raise NotImplementedError

    def forward(
        self, query: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Context (N, T, M) and weights (N, T, S); `mask` (B, S) is True on real source tokens.

        N may be a multiple K of the B sentences (beam search: K hypotheses per sentence, rows
        grouped by sentence); a sentence's hypotheses then share its keys and memory, which are
        never copied K times.
        """
        rows, steps = query.shape[:2]  # N, T
        group = rows // keys.size(0)  # K = N / B rows per sentence
        query = query.reshape(keys.size(0), group * steps, query.size(-1))  # (B, K·T, H)
        # (B, K·T, S), -inf on padding
        scores = self.scores(query, keys).masked_fill(~mask[:, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)  # (B, K·T, S)
        context = torch.bmm(weights, memory)  # (B, K·T, M)
        # (N, T, M) and (N, T, S)
        return context.view(rows, steps, -1), weights.view(rows, steps, -1)


class AdditiveAttention(Attention):
    """Additive (Bahdanau et al., 2015; Luong et al., 2015, `concat`):

        score(q, m_s) = vᵀ tanh(W q + U m_s)

    W (H → A), U (M → A) and v (A → 1) have no biases. Luong writes the same score as
    vᵀ tanh(W_a [q; m_s]), with W_a = [W U].

    In float32 it is computed as 2vᵀ σ(2W q + 2U m_s), which differs from it by −Σv, the same
    for every source position, so the softmax's weights are the same (tanh a = 2σ(2a) − 1). The
    reason is speed: this is the largest elementwise work of a search step, over (rows × source
    positions × attention size), and PyTorch's CPU sigmoid is about 10× faster than its tanh
    (AVX512, PyTorch 2.13; benchmarks/README.md). The keys are then 2U m_s. In bfloat16 (autocast,
    `--precision bf16`) it stays vᵀ tanh(...): σ's values near 0.5–1 and the offset Σv in the
    scores would be rounded far more coarsely than tanh's values near 0.
    """

    def __init__(self, query_size: int, memory_size: int, attention_size: int):
        super().__init__()
        self.memory_projection = nn.Linear(memory_size, attention_size, bias=False)
        self.query_projection = nn.Linear(query_size, attention_size, bias=False)
        self.energy = nn.Linear(attention_size, 1, bias=False)

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        keys = self.memory_projection(memory)  # U m: (B, S, A)
        return keys * 2 if keys.dtype == torch.float32 else keys  # float32: 2U m

    def scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        # (B, T, S, A), the largest tensor of a search step: made by one add and turned in place
        query = self.query_projection(query)[:, :, None, :]
        if keys.dtype != torch.float32:
            return self.energy(torch.tanh_(query + keys[:, None])).squeeze(-1)  # v·tanh(Wq + Um)
        hidden = torch.add(keys[:, None], query, alpha=2).sigmoid_()  # σ(2Wq + 2Um)
        return self.energy(hidden).squeeze(-1) * 2  # 2v·σ(...): (B, T, S)


class DotAttention(Attention):
    """Dot (Luong et al., 2015):

        score(q, m_s) = qᵀ m_s

    with no parameters; query and memory must have the same size (H = M). The keys are m_s.
    """

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        return memory  # (B, S, M)

    def scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return torch.bmm(query, keys.transpose(1, 2))  # (B, T, H)·(B, H, S): (B, T, S)


class GeneralAttention(DotAttention):
    """General, or bilinear (Luong et al., 2015):

        score(q, m_s) = qᵀ W_a m_s

    W_a (M → H) has no bias; the keys W_a m_s are computed once per batch, and each step is the
    dot score against them.
    """

    def __init__(self, query_size: int, memory_size: int):
        super().__init__()
        self.memory_projection = nn.Linear(memory_size, query_size, bias=False)

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        return self.memory_projection(memory)  # W_a m: (B, S, H)


def build_attention(score: str, query_size: int, memory_size: int) -> Attention:
    """The attention of a score name (`ModelConfig.score`: a preset's, or its override)."""
    if score == "additive":
        return AdditiveAttention(query_size, memory_size, query_size)
    if score == "dot":
        return DotAttention()
    if score == "general":
        return GeneralAttention(query_size, memory_size)
    raise ValueError(f"unknown attention score {score!r}")
