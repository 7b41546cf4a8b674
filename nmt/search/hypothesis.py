"""What search returns, and how finished hypotheses of different lengths are compared.

Shapes: N rows, S source length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import overload

import torch


@dataclass
class Hypothesis:
    """One translation: target ids (without BOS/EOS), total log-probability, normalized score.

    `text` is filled in by the Translator, which knows the tokenizer.
    """

    tokens: list[int]
    log_prob: float
    score: float
    attention: torch.Tensor | None = None  # (len(tokens) + 1, source length incl. EOS)
    text: str = ""
    # False for a forced output (`Translator.force`) that search could not have produced: longer
    # than its sentence's length limit or shorter than `min_len`.
    reachable: bool = True
    # With `keep_steps` (beam search): the beam of its sentence after each step, as
    # `beam_search(steps=...)` records it, each new token's piece added by the Translator.
    steps: list[dict] | None = None


@overload
def length_penalty(length: int, form: str, alpha: float) -> float: ...
@overload
def length_penalty(length: torch.Tensor, form: str, alpha: float) -> float | torch.Tensor: ...
def length_penalty(length: int | torch.Tensor, form: str, alpha: float) -> float | torch.Tensor:
    """The divisor of a hypothesis' log-probability; `length` counts the EOS (a tensor of lengths
    gives a tensor of divisors, for beam search's stopping bound).

    `avg`:  |y|^alpha              (alpha=1 is the average log-probability per token)
    `gnmt`: ((5 + |y|) / 6)^alpha  (Wu et al., 2016)
    `none`: 1
    """
    if form == "avg":
        return length**alpha
    if form == "gnmt":
        return ((5 + length) / 6) ** alpha
    if form == "none":
        return 1.0
    raise ValueError(f"unknown length normalization {form!r}")


MIN_COVERAGE = 1e-10  # the coverage a source token that received no attention counts as


def coverage_bonus(coverage: torch.Tensor, real: torch.Tensor, beta: float) -> torch.Tensor:
    """GNMT's coverage term β·Σ_i log(min(coverage_i, 1)) over the real source tokens.

    `coverage` (N, S): attention summed over output steps; `real` (N, S): True on source tokens,
    False on padding, which counts nothing. A real token whose attention underflowed to zero is
    the dropped word the penalty exists for: it counts as coverage MIN_COVERAGE, a large finite
    penalty (log 1e-10 ≈ -23 per token) that still lets hypotheses be compared, as -inf would not.
    """
    return beta * coverage.clamp(MIN_COVERAGE, 1.0).log().masked_fill(~real, 0.0).sum(-1)


def finished(
    tokens: list[int],
    log_prob: float,
    form: str,
    alpha: float,
    attention: torch.Tensor | None = None,
    bonus: float = 0.0,
) -> Hypothesis:
    """A complete hypothesis, scored log P / length penalty (+ a coverage term)."""
    score = log_prob / length_penalty(len(tokens) + 1, form, alpha) + bonus
    return Hypothesis(tokens, log_prob, score, attention)
