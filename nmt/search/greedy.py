"""Search along one path per sequence: greedy (the most probable token) or, with another
`pick`, sampling. A whole batch advances at once.

Shapes: B rows (sentences, or sentences × samples), V vocabulary columns (a shortlist's size
with one), S source length, t the step, T steps taken, P prefix length.
"""

from __future__ import annotations

from typing import Callable

import torch

from nmt.data.subwords import BOS, EOS
from nmt.model.interface import Decodable, Encoded, State
from nmt.search.hypothesis import Hypothesis, finished
from nmt.search.steps import StepRules, to_columns, to_ids

Pick = Callable[[torch.Tensor], torch.Tensor]  # (B, V) log-probabilities → (B,) token ids


@torch.no_grad()
def greedy_search(
    model: Decodable[Encoded, State],
    encoded: Encoded,
    max_lengths: torch.Tensor,
    length_norm: str = "none",
    alpha: float = 0.0,
    keep_attention: bool = False,
    rules: StepRules = StepRules(),
    prefix: torch.Tensor | None = None,
    vocabulary: torch.Tensor | None = None,
) -> list[list[Hypothesis]]:
    """One hypothesis per sentence; `max_lengths` (B,) caps each output (EOS not counted);
    `prefix` (B, P), PAD-padded, forces each output's first tokens; `vocabulary`: a shortlist's
    sorted target ids, as in `beam_search`."""
    return [
        [hyp]
        for hyp in follow_path(
            model,
            encoded,
            max_lengths,
            lambda lp: lp.argmax(-1),
            length_norm,
            alpha,
            keep_attention,
            rules,
            prefix,
            vocabulary,
        )
    ]


def follow_path(
    model: Decodable[Encoded, State],
    encoded: Encoded,
    max_lengths: torch.Tensor,
    pick: Pick,
    length_norm: str,
    alpha: float,
    keep_attention: bool,
    rules: StepRules,
    prefix: torch.Tensor | None = None,
    vocabulary: torch.Tensor | None = None,
) -> list[Hypothesis]:
    """Decode each row of `encoded` along the tokens `pick` chooses; the score is always the
    model's own log-probability of the chosen tokens."""
    batch = max_lengths.size(0)
    device = encoded.device
    max_lengths = max_lengths.to(device)
    if vocabulary is not None:
        vocabulary = vocabulary.to(device)
    if prefix is not None:
        prefix = to_columns(vocabulary, prefix.to(device))  # (B, P)
    state = model.initial_state(encoded)
    previous = torch.full((batch,), BOS, dtype=torch.long, device=device)  # (B,) last tokens
    log_prob = torch.zeros(batch, device=device)  # (B,) log P of each path so far
    done = torch.zeros(batch, dtype=torch.bool, device=device)  # (B,) True once EOS is taken
    steps: list[torch.Tensor] = []  # per step: tokens (B,)
    attentions: list[torch.Tensor] = []  # per step: attention (B, S)
    for t in range(int(max_lengths.max()) + 1):
        # (B, V), the new state, (B, S)
        log_probs, state, weights = model.decode_step(encoded, state, to_ids(vocabulary, previous))
        # Only n-gram blocking reads the history: do not restack it every step otherwise.
        history = torch.stack(steps, 1) if steps and rules.no_repeat_ngram else None  # (B, t)
        log_probs = rules.apply(log_probs, t, max_lengths, history, prefix)  # (B, V)
        if rules.no_repeat_ngram and bool(done.any()):
            # A finished row keeps taking EOS, which blocking bans once it is in the row: give
            # it EOS back, or past its length limit nothing is left to draw from.
            log_probs[done, EOS] = 0.0
        previous = pick(log_probs).masked_fill(done, EOS)  # (B,)
        log_prob += log_probs.gather(1, previous[:, None]).squeeze(1).masked_fill(done, 0.0)  # (B,)
        steps.append(previous)
        if keep_attention:
            attentions.append(weights)
        done |= previous == EOS
        if bool(done.all()):
            break
    tokens = to_ids(vocabulary, torch.stack(steps, 1)).tolist()  # B lists of T ids
    attention = torch.stack(attentions, 1).cpu() if keep_attention else None  # (B, T, S)
    results = []
    for row in range(batch):
        length = tokens[row].index(EOS)
        results.append(
            finished(
                tokens[row][:length],
                float(log_prob[row]),
                length_norm,
                alpha,
                attention[row, : length + 1] if attention is not None else None,
            )
        )
    return results
