"""Sampling: draw outputs from the model's distribution, sharpened or truncated.

`temperature` < 1 sharpens the distribution (→ 0 is greedy), `top_k` keeps the k most probable
tokens, `top_p` the smallest set whose probability reaches p (nucleus sampling). Draws are
Gumbel-max: the token with the largest log-weight plus noise, where the noise of a token is a hash
of (the draw's seed, the step, the token's id). The draw's seed comes from the decode seed, its
sentence's line number and the draw's number, so a sentence's samples do not depend on the other
sentences of its batch, the batch size or a shortlist's column order; and the noise of a whole
batch is a few vectorised integer operations per step.

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
        probs = ordered.softmax(-1)  # (N, V)
        outside = probs.cumsum(-1) - probs >= top_p  # mass before a token already ≥ p
        scaled = scaled.scatter(1, order, ordered.masked_fill(outside, float("-inf")))  # (N, V)
    return scaled


def stream_seed(*parts: int) -> int:
    """A seed for a random stream of its own, e.g. (seed, line) or (line's seed, draw): distinct
    for distinct parts, unlike sums or products of them."""
    digest = hashlib.blake2b(repr(tuple(map(int, parts))).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # a non-negative int64


_LOW32 = 0xFFFFFFFF


def _times(x: torch.Tensor, constant: int) -> torch.Tensor:
    """x · constant mod 2³² for x < 2³² in int64, in halves so that no product overflows."""
    low = x * (constant & 0xFFFF)
    high = ((x * (constant >> 16)) & 0xFFFF) << 16
    return (low + high) & _LOW32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A well-mixed 32-bit hash of each element (int64 holding 32 bits; Wellons' lowbias32)."""
    x = _times(x ^ (x >> 16), 0x7FEB352D)
    x = _times(x ^ (x >> 15), 0x846CA68B)
    return x ^ (x >> 16)


def gumbel_noise(draw_seeds: torch.Tensor, step: int, token_keys: torch.Tensor) -> torch.Tensor:
    """(N, V) Gumbel(0, 1) noise, each value a function of (draw seed, step, token id) only.

    `draw_seeds` (N,) int64 of 32 bits, `token_keys` (V,) the token ids' `hash32`, the same at
    every step. Uniforms lie strictly inside
    (0, 1) (24 bits, offset by half a step), so the noise is always finite."""
    step_key = hash32(torch.tensor(step & _LOW32, dtype=torch.long))
    row_keys = hash32(draw_seeds ^ step_key)  # (N,)
    bits = hash32(row_keys[:, None] ^ token_keys[None, :])  # (N, V)
    uniform = ((bits >> 8).to(torch.float32) + 0.5) / 2**24
    return -(-uniform.log()).log()


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
    draw_seeds = torch.tensor(
        [stream_seed(line, draw) & _LOW32 for line in line_seeds for draw in range(samples)],
        dtype=torch.long,
        device=device,
    )  # (N,)
    step = 0
    token_keys = None  # (V,): hash32 of the columns' token ids, the same at every step

    def pick(log_probs: torch.Tensor) -> torch.Tensor:
        # Gumbel-max: argmax(log w + Gumbel noise) is a draw from softmax(log w).
        nonlocal step, token_keys
        log_weights = truncate(log_probs, temperature, top_k, top_p)  # (N, V)
        if token_keys is None:
            token_ids = vocabulary if vocabulary is not None else torch.arange(log_probs.size(-1))
            token_keys = hash32(token_ids.to(device))
        noise = gumbel_noise(draw_seeds, step, token_keys)  # (N, V)
        step += 1
        return (log_weights + noise).argmax(-1)  # (N,) columns

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
