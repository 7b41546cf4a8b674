"""Batches: length-sorted buckets cut to a token budget, shuffled per epoch from the seed.

Sorting by length before cutting keeps padding low; shuffling the batches (and breaking length
ties at random) keeps the order different every epoch, yet the same for the same seed and epoch,
which is what makes an exact resume possible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from nmt.data.subwords import BOS, EOS, PAD

if TYPE_CHECKING:
    from nmt.data.corpus import EncodedSplit


@dataclass
class Batch:
    """Padded tensors of one batch; `target_in` starts with BOS, `target_out` ends with EOS."""

    source: torch.Tensor  # (B, S)
    source_lengths: torch.Tensor  # (B,), on the CPU as packing wants
    target_in: torch.Tensor  # (B, T)
    target_out: torch.Tensor  # (B, T)

    @property
    def target_tokens(self) -> int:
        return int((self.target_out != PAD).sum())

    @property
    def source_tokens(self) -> int:
        return int(self.source_lengths.sum())

    def to(self, device: torch.device) -> "Batch":
        """On a GPU, copied from page-locked (pinned) memory, so the copy does not wait for the
        GPU to finish its previous work."""

        def move(tensor: torch.Tensor) -> torch.Tensor:
            if device.type == "cuda":
                tensor = tensor.pin_memory()
            return tensor.to(device, non_blocking=True)

        return Batch(
            move(self.source), self.source_lengths, move(self.target_in), move(self.target_out)
        )


def make_batches(
    src_lengths: np.ndarray,
    tgt_lengths: np.ndarray,
    batch_tokens: int,
    batch_sentences: int,
    seed: int,
    epoch: int,
) -> list[np.ndarray]:
    """Index arrays of one epoch's batches, deterministic for (seed, epoch).

    With `batch_sentences` > 0 each batch holds that many sentences; otherwise each batch holds as
    many as fit `sentences × (longest side + 1) <= batch_tokens`, the +1 being the EOS or BOS.
    """
    rng = np.random.default_rng([seed, epoch])
    sizes = np.maximum(src_lengths, tgt_lengths) + 1  # EOS ends the source, BOS/EOS the target
    shuffled = rng.permutation(len(sizes))
    order = shuffled[np.argsort(sizes[shuffled], kind="stable")]
    if batch_sentences > 0:
        batches = [order[i : i + batch_sentences] for i in range(0, len(order), batch_sentences)]
    else:
        batches, start, longest = [], 0, 0
        sorted_sizes = sizes[order]
        for end, size in enumerate(sorted_sizes):
            longest = max(longest, int(size))
            if longest * (end - start + 1) > batch_tokens:
                batches.append(order[start:end])
                start, longest = end, int(size)
        if start < len(order):
            batches.append(order[start:])
    rng.shuffle(batches)
    return batches


def pad_sources(sources: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Source ids with EOS appended, padded: (B, S) ids and (B,) lengths.

    The EOS marks the end for the encoder and gives even an empty line one token.
    """
    lengths = torch.tensor([len(s) + 1 for s in sources], dtype=torch.long)
    padded = torch.full((len(sources), int(lengths.max())), PAD, dtype=torch.long)
    for row, src in enumerate(sources):
        padded[row, : len(src)] = torch.as_tensor(np.asarray(src, dtype=np.int64))
        padded[row, len(src)] = EOS
    return padded, lengths


def collate(data: EncodedSplit, indices: np.ndarray) -> Batch:
    """Pad the pairs at `indices` into a batch."""
    source, source_lengths = pad_sources([data.source(i) for i in indices])
    targets = [data.target(i) for i in indices]
    target_length = max(len(t) for t in targets) + 1
    target_in = torch.full((len(indices), target_length), PAD, dtype=torch.long)
    target_out = torch.full((len(indices), target_length), PAD, dtype=torch.long)
    for row, ids in enumerate(targets):
        tgt = torch.from_numpy(ids.astype(np.int64))
        target_in[row, 0] = BOS
        target_in[row, 1 : len(tgt) + 1] = tgt
        target_out[row, : len(tgt)] = tgt
        target_out[row, len(tgt)] = EOS
    return Batch(source, source_lengths, target_in, target_out)
