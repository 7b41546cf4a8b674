"""Sampling: draw outputs from the model's distribution, sharpened or truncated.

`temperature` < 1 sharpens the distribution (→ 0 is greedy), `top_k` keeps the k most probable
tokens, `top_p` the smallest set whose probability reaches p (nucleus sampling). Each draw has its
own seeded random stream (from the seed, its sentence's line number and the draw's number), so a
sentence's samples do not depend on which other sentences share its batch, or on the batch size.

Shapes: B sentences, N = B × samples rows (a sentence's samples consecutive), V vocabulary
columns (a shortlist's size with one).
"""

from __future__ import annotations

import hashlib

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


def stream_seed(*parts: int) -> int:
    """A seed for a random stream of its own, e.g. (seed, line) or (line's seed, draw): distinct
    for distinct parts, unlike sums or products of them."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # a non-negative int64


@torch.no_grad()
def sample(
    model: Decodable[Encoded, State],
    encoded: Encoded,
    max_lengths: torch.Tensor,
    samples: int,
    line_seeds: list[int],
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
    """`samples` draws per sentence, best first by normalized score. `line_seeds` (one per
    sentence, e.g. `stream_seed(seed, line)`) seed each sentence's draws. With a shortlist
    (`vocabulary`), draws come from the model's distribution renormalized over it."""
    batch = max_lengths.size(0)
    if len(line_seeds) != batch:
        raise ValueError(f"{len(line_seeds)} seeds for {batch} sentences")
    device = encoded.device
    rows = torch.arange(batch, device=device).repeat_interleave(samples)  # (N,)
    streams = [
        torch.Generator(device).manual_seed(stream_seed(line_seed, draw))
        for line_seed in line_seeds
        for draw in range(samples)
    ]

    def pick(log_probs: torch.Tensor) -> torch.Tensor:
        # Gumbel-max: argmax(log w + Gumbel noise) is a draw from w, and each row's noise comes
        # from its own stream, so a row's draw does not depend on the other rows.
        log_weights = truncate(log_probs, temperature, top_k, top_p)  # (N, V)
        size = log_weights.size(-1)
        uniform = torch.stack([torch.rand(size, generator=g, device=device) for g in streams])
        return (log_weights - (-uniform.log()).log()).argmax(-1)  # (N,) token ids

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
