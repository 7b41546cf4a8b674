"""Greedy search: the most probable token at every step, for a whole batch at once."""

from __future__ import annotations

import torch

from nmt.data.subwords import BOS, EOS
from nmt.model.seq2seq import EncoderState, Seq2Seq
from nmt.search.hypothesis import Hypothesis, finished
from nmt.search.steps import allowed_log_probs


@torch.no_grad()
def greedy_search(model: Seq2Seq, encoded: EncoderState, max_lengths: torch.Tensor,
                  length_norm: str = "none", alpha: float = 0.0,
                  keep_attention: bool = False) -> list[list[Hypothesis]]:
    """One hypothesis per sentence; `max_lengths` (B,) caps each output (EOS not counted)."""
    batch = max_lengths.size(0)
    device = encoded.memory.device
    state = model.initial_state(encoded)
    previous = torch.full((batch,), BOS, dtype=torch.long, device=device)
    log_prob = torch.zeros(batch, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    steps, attentions = [], []
    for t in range(int(max_lengths.max()) + 1):
        log_probs, state, weights = model.decode_step(encoded, state, previous)
        log_probs = allowed_log_probs(log_probs, at_limit=max_lengths.to(device) == t)
        best, previous = log_probs.max(dim=-1)
        previous = previous.masked_fill(done, EOS)
        log_prob += best.masked_fill(done, 0.0)
        steps.append(previous)
        if keep_attention:
            attentions.append(weights)
        done |= previous == EOS
        if bool(done.all()):
            break
    tokens = torch.stack(steps, 1).tolist()
    attention = torch.stack(attentions, 1).cpu() if keep_attention else None
    results = []
    for row in range(batch):
        length = tokens[row].index(EOS)
        results.append([finished(tokens[row][:length], float(log_prob[row]), length_norm, alpha,
                                 attention[row, :length + 1] if keep_attention else None)])
    return results
