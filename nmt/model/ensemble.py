"""An ensemble: several models sharing a target vocabulary, searched as one.

It offers search the same interface as a single model (`encode`, `initial_state`,
`decode_step`); each step's log-probabilities are the members' average.

Shapes: N rows, S source length, V target vocabulary (a shortlist's size when one is used).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, cast

import torch
from torch import nn

from nmt.model.seq2seq import Seq2Seq


@dataclass
class MemberStates:
    """One state per member, reordered together."""

    members: list

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    @property
    def mask(self) -> torch.Tensor:
        """Real source tokens (True), as the coverage penalty needs: the members read one source."""
        return self.members[0].mask

    def index_select(self, index: torch.Tensor) -> "MemberStates":
        return MemberStates([state.index_select(index) for state in self.members])


class Ensemble(nn.Module):
    """Several `Seq2Seq` models as one: each step scores a token by the mean of the E members'
    log-probabilities, (1/E) Σ_e log p_e(y_t | y_<t, x) (the log of their geometric mean, not
    renormalized), and averages their attention."""

    def __init__(self, models: list[Seq2Seq]):
        super().__init__()
        self.members = nn.ModuleList(models)

    def _models(self) -> Iterable[Seq2Seq]:
        """`members`, typed: an nn.ModuleList's items are typed as any Module."""
        return cast("Iterable[Seq2Seq]", self.members)

    def encode(self, source: torch.Tensor, source_lengths: torch.Tensor) -> MemberStates:
        return MemberStates([model.encode(source, source_lengths) for model in self._models()])

    def initial_state(self, encoded: MemberStates) -> MemberStates:
        return MemberStates(
            [model.initial_state(member) for model, member in zip(self._models(), encoded.members)]
        )

    def shortlisted(self, encoded: MemberStates, vocabulary: torch.Tensor) -> MemberStates:
        return MemberStates(
            [
                model.shortlisted(member, vocabulary)
                for model, member in zip(self._models(), encoded.members)
            ]
        )

    def decode_step(
        self, encoded: MemberStates, state: MemberStates, previous: torch.Tensor
    ) -> tuple[torch.Tensor, MemberStates, torch.Tensor]:
        """The average of the members' log-probabilities (and of their attention)."""
        steps = [
            model.decode_step(e, s, previous)
            for model, e, s in zip(self._models(), encoded.members, state.members)
        ]
        log_probs = torch.stack([step[0] for step in steps]).mean(0)  # (members, N, V) → (N, V)
        attention = torch.stack([step[2] for step in steps]).mean(0)  # (members, N, S) → (N, S)
        return log_probs, MemberStates([step[1] for step in steps]), attention
