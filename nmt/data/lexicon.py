"""A lexical table learned from the training pairs, for vocabulary shortlists in search.

Scoring every target token at every search step (the output layer, its softmax and the top-k)
is most of the cost of translating. A batch's translations draw on few tokens: frequent ones and
the translations of its source tokens. IBM Model 1 (a few EM iterations over the training pairs,
with a NULL source token to soak up the function words) gives p(target | source token);
`Lexicon.shortlist` unions, for one batch, the most frequent target tokens, the likeliest other
translations of each source token, and (with a joint vocabulary) the source tokens themselves,
which may be copied. Marian's lexical shortlists work the same way.

The table is built once per run from the training data and kept as RUN/lexicon.safetensors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nmt.run_dir import LEXICON, RECIPE
from nmt.data.corpus import EncodedSplit
from nmt.data.prepare import prepare_data  # the training data exactly as training read it
from nmt.data.subwords import EOS, PAD
from nmt.errors import NmtError
from nmt.files import atomic_write_bytes
from nmt.recipe import SHORTLIST_WIDTH as WIDTH  # translations kept per source token
from nmt.recipe import Recipe

log = logging.getLogger("nmt")

EM_ITERATIONS = 5
MAX_CROSS_PAIRS = 20_000_000  # (source, target) token pairs Model 1 is fitted on: bounds memory


@dataclass
class Lexicon:
    translations: torch.Tensor  # (source vocabulary, WIDTH) target ids, likeliest first; PAD-padded
    by_frequency: torch.Tensor  # (target vocabulary,) target ids, most frequent first
    joint: bool  # one vocabulary on both sides: source tokens can be copied

    def shortlist(
        self,
        source: torch.Tensor,
        per_token: int,
        frequent: int,
        required: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The sorted target ids a batch of `source` ids (any shape, PAD-padded) may produce:
        the special ids, the `frequent` most frequent tokens, `per_token` translations per source
        token beyond those, and every id in `required` (e.g. forced prefixes).

        Specials (PAD=0 … EOS=3) are always the first columns, so their column is their id.
        """
        top = self.by_frequency[:frequent]
        known = torch.zeros(self.by_frequency.numel(), dtype=torch.bool)
        known[top] = True
        tokens = source.flatten().unique()
        candidates = self.translations[tokens]
        novel = ~known[candidates] & (candidates != PAD)
        picked = candidates[novel & (novel.cumsum(1) <= per_token)]
        parts = [torch.arange(EOS + 1), top, picked]
        if self.joint:
            parts.append(tokens)
        if required is not None:
            parts.append(required.flatten())
        return torch.cat(parts).unique()

    def save(self, path: Path) -> None:
        from safetensors.torch import save

        atomic_write_bytes(
            path,
            save(
                {
                    "translations": self.translations.contiguous(),
                    "by_frequency": self.by_frequency.contiguous(),
                },
                metadata={"joint": str(self.joint)},
            ),
        )

    @classmethod
    def load(cls, path: Path) -> "Lexicon":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "pt") as handle:
                return cls(
                    handle.get_tensor("translations"),
                    handle.get_tensor("by_frequency"),
                    handle.metadata().get("joint") == "True",
                )
        except (SafetensorError, KeyError, OSError) as error:
            raise NmtError(
                f"{path}: not a readable lexicon ({error}); delete it and it is built again"
            ) from None


def build_lexicon(data: EncodedSplit, source_vocab: int, target_vocab: int, joint: bool) -> Lexicon:
    """Fit IBM Model 1, p(target token | source token), on the pairs of `data` (the first ones
    up to MAX_CROSS_PAIRS token pairs), counting each token once per sentence."""
    cross = np.cumsum(data.src_lengths * data.tgt_lengths)
    sentences = max(1, int(np.searchsorted(cross, MAX_CROSS_PAIRS, side="right")))
    src_sentence, src_token = _distinct(data.src_values, data.src_offsets, sentences, source_vocab)
    tgt_sentence, tgt_token = _distinct(data.tgt_values, data.tgt_offsets, sentences, target_vocab)
    # NULL (stored as PAD, which never occurs in data) is a source token of every sentence.
    src_sentence = np.concatenate([np.arange(sentences), src_sentence])
    src_token = np.concatenate([np.full(sentences, PAD), src_token])
    order = np.argsort(src_sentence, kind="stable")
    src_sentence, src_token = src_sentence[order], src_token[order]

    # Every (source token, target token) of a sentence, as indices into the distinct target
    # occurrences (`tgt_index`) and into the distinct (source, target) pairs (`pair`).
    per_sentence = np.bincount(tgt_sentence, minlength=sentences)
    first = np.concatenate([[0], np.cumsum(per_sentence)[:-1]])
    repeats = per_sentence[src_sentence]
    tgt_index = np.repeat(first[src_sentence], repeats) + _ragged_arange(repeats)
    codes = np.repeat(src_token.astype(np.int64), repeats) * target_vocab + tgt_token[tgt_index]
    codes, pair = np.unique(codes, return_inverse=True)
    pair_source = codes // target_vocab

    prob = np.ones(len(codes))
    for _ in range(EM_ITERATIONS):
        share = prob[pair]  # E: each target token's alignment to its sentence's source tokens
        share /= np.bincount(tgt_index, weights=share, minlength=len(tgt_token))[tgt_index]
        counts = np.bincount(pair, weights=share, minlength=len(codes))  # M: renormalize
        prob = (
            counts / np.bincount(pair_source, weights=counts, minlength=source_vocab)[pair_source]
        )

    ranked = np.lexsort((-prob, pair_source))  # by source token, then likeliest first
    ranked_source = pair_source[ranked]
    rank = np.arange(len(ranked)) - np.searchsorted(ranked_source, ranked_source)
    keep = ranked[rank < WIDTH]
    translations = torch.full((source_vocab, WIDTH), PAD, dtype=torch.long)
    translations[torch.from_numpy(pair_source[keep]), torch.from_numpy(rank[rank < WIDTH])] = (
        torch.from_numpy(codes[keep] % target_vocab)
    )
    translations[PAD] = PAD  # NULL's translations are function words, not a token's
    frequency = np.bincount(tgt_token, minlength=target_vocab)
    by_frequency = torch.from_numpy(np.argsort(-frequency, kind="stable"))
    return Lexicon(translations, by_frequency, joint)


def _distinct(
    values: np.ndarray, offsets: np.ndarray, sentences: int, vocab: int
) -> tuple[np.ndarray, np.ndarray]:
    """(sentence, token) of each distinct token of the first `sentences` sentences, by sentence."""
    lengths = np.diff(np.asarray(offsets[: sentences + 1]))
    tokens = np.asarray(values[: int(offsets[sentences])], dtype=np.int64)
    codes = np.unique(np.repeat(np.arange(sentences, dtype=np.int64), lengths) * vocab + tokens)
    return codes // vocab, codes % vocab


def _ragged_arange(lengths: np.ndarray) -> np.ndarray:
    """0..n-1 for each n in `lengths`, concatenated."""
    ends = np.cumsum(lengths)
    return np.arange(ends[-1] if len(ends) else 0) - np.repeat(ends - lengths, lengths)


def lexicon_for_run(run_dir: Path) -> Lexicon:
    """The run's lexicon, built from its training data (and saved) on first use."""
    path = run_dir / LEXICON
    if path.is_file():
        return Lexicon.load(path)

    recipe = Recipe.load(run_dir / RECIPE)
    try:
        prepared = prepare_data(recipe, run_dir)
        tokenizer, data = prepared.tokenizer, prepared.train_data
    except NmtError as error:
        raise NmtError(f"a shortlist needs {path}, built from the training data: {error}") from None
    log.info("building %s from %d training pairs (once per run)", path, len(data))
    lexicon = build_lexicon(
        data, tokenizer.source_vocab_size, tokenizer.target_vocab_size, recipe.tokenizer.joint
    )
    lexicon.save(path)
    return lexicon
