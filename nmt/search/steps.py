"""Per-step rules shared by every search: which tokens may come next.

Shapes: N rows, V vocabulary columns (a shortlist's size with one), P prefix length, n the
blocked n-gram size, W = step - n + 1 windows of n tokens in a row's history.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nmt.data.subwords import BOS, EOS, PAD


@dataclass(frozen=True)
class StepRules:
    """Length limits and repetition blocking, applied to each step's log-probabilities."""

    min_len: int = 0  # EOS is forbidden before this many tokens
    no_repeat_ngram: int = 0  # no n-gram of this size may occur twice in an output (0: off)

    def apply(
        self,
        log_probs: torch.Tensor,
        step: int,
        max_lengths: torch.Tensor,
        history: torch.Tensor | None,
        prefix: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`log_probs` (N, V) for output position `step` (0-based); `max_lengths` (N,);
        `history` (N, step) holds the tokens already produced (needed for n-gram blocking);
        `prefix` (N, P), PAD-padded, forces each row's output to begin with its tokens."""
        forced = None
        if prefix is not None and step < prefix.size(1):
            forced = prefix[:, step]  # (N,), PAD where a row's prefix has ended
            forced_scores = log_probs.gather(1, forced[:, None]).squeeze(1)  # (N,)
        log_probs[:, PAD] = float("-inf")
        log_probs[:, BOS] = float("-inf")
        if step < self.min_len:
            log_probs[:, EOS] = float("-inf")
        n = self.no_repeat_ngram
        if n and history is not None and history.size(1) >= n:
            # Every n-gram so far whose first n-1 tokens equal the last n-1 tokens bans its last.
            windows = history.unfold(1, n, 1)  # (N, W, n)
            suffix = history[:, history.size(1) - n + 1 :]  # (N, n-1)
            repeats = (windows[:, :, :-1] == suffix[:, None, :]).all(-1)  # (N, W)
            penalty = torch.zeros_like(repeats, dtype=log_probs.dtype).masked_fill(
                repeats, float("-inf")
            )  # (N, W)
            log_probs.scatter_add_(1, windows[:, :, -1], penalty)
        at_limit = max_lengths <= step  # (N,)
        if bool(at_limit.any()):  # rows at their length limit may only end
            eos = log_probs[:, EOS].clone()  # (N,)
            log_probs[at_limit] = float("-inf")
            log_probs[:, EOS] = torch.where(at_limit, eos, log_probs[:, EOS])
        if forced is not None and bool((forced != PAD).any()):  # a prefix overrules the rest
            rows = (forced != PAD).nonzero().squeeze(1)  # the rows still in their prefix
            log_probs[rows] = float("-inf")
            log_probs[rows, forced[rows]] = forced_scores[rows]
        return log_probs


def to_columns(vocabulary: torch.Tensor | None, ids: torch.Tensor) -> torch.Tensor:
    """Target ids as columns of a shortlist's log-probabilities (`vocabulary`: its sorted ids,
    None: the whole vocabulary). Special ids are the first columns of every shortlist, so PAD,
    BOS and EOS are the same in both."""
    return ids if vocabulary is None else torch.searchsorted(vocabulary, ids)


def to_ids(vocabulary: torch.Tensor | None, columns: torch.Tensor) -> torch.Tensor:
    """The target ids of shortlist columns."""
    return columns if vocabulary is None else vocabulary[columns]
