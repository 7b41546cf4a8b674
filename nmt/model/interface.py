"""What search sees of a model: the protocols a `Seq2Seq` and an `Ensemble` both satisfy.

Search (nmt/search) and the Translator (nmt/translate.py) are annotated with these; they are for
type checkers and add no behaviour. A model's source encoding and decoder state are its own types
(`EncoderState` and `DecoderState` for a `Seq2Seq`, `MemberStates` for an `Ensemble`); search
only carries them from one call to the next and reorders them, so `Decodable` is generic in them.

Shapes: N rows, S source length, V target vocabulary (a shortlist's size when one is used).
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import torch

_Self = TypeVar("_Self")


class EncodedSource(Protocol):
    """A batch's source encoding, as search uses it (`EncoderState`, or `MemberStates`)."""

    @property
    def device(self) -> torch.device: ...

    @property
    def mask(self) -> torch.Tensor:
        """(N, S), True on real source tokens."""
        ...

    def index_select(self: _Self, index: torch.Tensor) -> _Self:
        """Keep (and repeat) the rows `index`."""
        ...


class SearchState(Protocol):
    """The decoder's state between steps (`DecoderState`, or `MemberStates`)."""

    def index_select(self: _Self, index: torch.Tensor) -> _Self:
        """Keep (and reorder) the rows `index`."""
        ...


Encoded = TypeVar("Encoded", bound=EncodedSource)
State = TypeVar("State", bound=SearchState)


class Decodable(Protocol[Encoded, State]):
    """A model search can decode with: a `Seq2Seq` (`Decodable[EncoderState, DecoderState]`) or
    an `Ensemble` (`Decodable[MemberStates, MemberStates]`)."""

    def encode(self, source: torch.Tensor, source_lengths: torch.Tensor) -> Encoded: ...

    def initial_state(self, encoded: Encoded) -> State: ...

    def shortlisted(self, encoded: Encoded, vocabulary: torch.Tensor) -> Encoded: ...

    def decode_step(
        self, encoded: Encoded, state: State, previous: torch.Tensor
    ) -> tuple[torch.Tensor, State, torch.Tensor]:
        """Log-probabilities (N, V), the new state, attention (N, S)."""
        ...


# A model whose state types are known only at run time (the Translator's: a Seq2Seq or an
# Ensemble, chosen by how many runs it loads).
AnyDecodable = Decodable[Any, Any]
