"""The training data as training reads it: corpus → SentencePiece (trained once, kept in the run
directory) → encoded and filtered arrays. Training, the shortlist's lexicon and the benchmarks
all read it through `prepare_data`, so they see the same pairs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

from nmt.data.corpus import EncodedSplit, TextSplit, encode_split, load_split
from nmt.data.subwords import Tokenizer
from nmt.errors import NmtError
from nmt.recipe import Recipe

log = logging.getLogger("nmt")


class PreparedData(NamedTuple):
    """A run's data, ready to batch: the text splits, the subword model, the encoded splits."""

    train_text: TextSplit
    dev_text: TextSplit
    tokenizer: Tokenizer
    train_data: EncodedSplit
    dev_data: EncodedSplit


def prepare_data(recipe: Recipe, run_dir: Path) -> PreparedData:
    """Read train and dev, train (or reuse) SentencePiece in `run_dir`, encode and filter."""
    root = Path(recipe.data.root)
    train_text = load_split(recipe.data, root, recipe.data.train, run_dir / "cache")
    dev_text = load_split(recipe.data, root, recipe.data.dev, run_dir / "cache")
    for split in (train_text, dev_text):
        if len(split.dataset) == 0:
            raise NmtError(f"{_describe(split)}: the {split.name} split is empty")
    if Tokenizer.exists(run_dir):
        tokenizer = Tokenizer.load(run_dir)
    else:
        log.info(
            "training SentencePiece (%s, %d pieces%s)",
            recipe.tokenizer.type,
            recipe.tokenizer.vocab_size,
            ", joint" if recipe.tokenizer.joint else "",
        )
        sources, targets = train_text.sample(recipe.tokenizer.max_sentences, recipe.seed)
        tokenizer = Tokenizer.train(recipe.tokenizer, sources, targets, run_dir, recipe.seed)
    train_data, counts = encode_split(
        train_text, tokenizer, run_dir / "cache", recipe.data.max_len, recipe.data.max_ratio
    )
    log.info("training data: %s", counts.describe())
    if counts.kept == 0:
        raise NmtError(
            f"{_describe(train_text)}: every pair was filtered out "
            f"(see data.max_len={recipe.data.max_len}, "
            f"data.max_ratio={recipe.data.max_ratio})"
        )
    dev_data, _ = encode_split(dev_text, tokenizer, run_dir / "cache")
    return PreparedData(train_text, dev_text, tokenizer, train_data, dev_data)


def _describe(split: TextSplit) -> str:
    return " + ".join(str(p) for p in split.files) or f"split {split.name!r}"
