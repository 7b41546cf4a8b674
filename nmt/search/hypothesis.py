"""What search returns, and how finished hypotheses of different lengths are compared."""

from __future__ import annotations

from dataclasses import dataclass

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


def length_penalty(length: int, form: str, alpha: float) -> float:
    """The divisor of a hypothesis' log-probability; `length` counts the EOS.

    `avg`:  |y|^alpha              (alpha=1 is the average log-probability per token)
    `gnmt`: ((5 + |y|) / 6)^alpha  (Wu et al., 2016)
    `none`: 1
    """
    if form == "avg":
        return length ** alpha
    if form == "gnmt":
        return ((5 + length) / 6) ** alpha
    if form == "none":
        return 1.0
    raise ValueError(f"unknown length normalization {form!r}")


def finished(tokens: list[int], log_prob: float, form: str, alpha: float,
             attention: torch.Tensor | None = None, bonus: float = 0.0) -> Hypothesis:
    """A complete hypothesis, scored log P / length penalty (+ a coverage term)."""
    score = log_prob / length_penalty(len(tokens) + 1, form, alpha) + bonus
    return Hypothesis(tokens, log_prob, score, attention)
