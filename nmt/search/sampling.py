"""Sampling: draw outputs from the model's distribution, sharpened or truncated.

`temperature` < 1 sharpens the distribution (→ 0 is greedy), `top_k` keeps the k most probable
tokens, `top_p` the smallest set whose probability reaches p (nucleus sampling). Draws come from a
seeded generator, so the same seed gives the same samples.

Shapes: B sentences, N = B × samples rows (a sentence's samples consecutive), V vocabulary
columns (a shortlist's size with one).
"""

from __future__ import annotations

import torch

from nmt.model.interface import Decodable, Encoded, State
from nmt.search.greedy import follow_path
from nmt.search.hypothesis import Hypothesis
from nmt.search.steps import StepRules


def truncate(log_probs: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Log-weights to sample from: tempered, then cut to the top k and the top-p nucleus."""
    scaled = log_probs / max(temperature, 1e-6)  # (N, V)
    if 0 < top_k < scaled.size(-1):
        threshold = scaled.topk(top_k, dim=-1).values[:, -1:]  # (N, 1): each row's k-th best
        scaled = scaled.masked_fill(scaled < threshold, float("-inf"))
    if top_p < 1.0:
        ordered, order = scaled.sort(dim=-1, descending=True)  # (N, V) each, best first
        cumulative = ordered.softmax(-1).cumsum(-1)  # (N, V)
        outside = cumulative - ordered.softmax(-1) >= top_p  # mass before a token already ≥ p
        scaled = scaled.scatter(1, order, ordered.masked_fill(outside, float("-inf")))  # (N, V)
    return scaled


@torch.no_grad()
def sample(
    model: Decodable[Encoded, State],
    encoded: Encoded,
    max_lengths: torch.Tensor,
    samples: int,
    generator: torch.Generator,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    length_norm: str = "none",
    alpha: float = 0.0,
    keep_attention: bool = False,
    rules: StepRules = StepRules(),
    prefix: torch.Tensor | None = None,
    vocabulary: torch.Tensor | None = None,
) -> list[list[Hypothesis]]:
    """`samples` draws per sentence, best first by normalized score. With a shortlist
    (`vocabulary`), draws come from the model's distribution renormalized over it."""
    batch = max_lengths.size(0)
    rows = torch.arange(batch, device=encoded.device).repeat_interleave(samples)  # (N,)

    def pick(log_probs: torch.Tensor) -> torch.Tensor:
        weights = truncate(log_probs, temperature, top_k, top_p).softmax(-1)  # (N, V)
        return torch.multinomial(weights, 1, generator=generator).squeeze(1)  # (N,) token ids

    drawn = follow_path(
        model,
        encoded.index_select(rows),
        max_lengths.repeat_interleave(samples),
        pick,
        length_norm,
        alpha,
        keep_attention,
        rules,
        None if prefix is None else prefix.to(rows.device).index_select(0, rows),
        vocabulary,
    )
    return [
        sorted(drawn[i * samples : (i + 1) * samples], key=lambda h: h.score, reverse=True)
        for i in range(batch)
    ]
