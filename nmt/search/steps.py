"""Per-step rules shared by every search: which tokens may be produced."""

from __future__ import annotations

import torch

from nmt.data.subwords import BOS, EOS, PAD


def allowed_log_probs(log_probs: torch.Tensor, at_limit: torch.Tensor) -> torch.Tensor:
    """Forbid PAD and BOS everywhere; rows `at_limit` (N,) may only end (EOS)."""
    log_probs[:, PAD] = float("-inf")
    log_probs[:, BOS] = float("-inf")
    if bool(at_limit.any()):
        eos = log_probs[:, EOS].clone()
        log_probs[at_limit] = float("-inf")
        log_probs[:, EOS] = torch.where(at_limit, eos, log_probs[:, EOS])
    return log_probs
