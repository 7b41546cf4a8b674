"""Per-sentence diagnostics: which translations are likely wrong, and how.

- under-translation: a source word (its subword pieces merged) that received little attention in
  total, so its meaning may be missing from the output;
- over-translation: a source word attended far more than its share, or an output n-gram of three
  or more words (or a word) repeated back to back or later;
- length-ratio outliers and low-confidence outputs, judged against the dev set (its 5th and 95th
  percentiles), since what is normal differs between language pairs and models.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from nmt.checkpoint import atomic_write_text
from nmt.data.corpus import read_lines
from nmt.errors import NmtError
from nmt.recipe import Recipe
from nmt.search import Hypothesis
from nmt.translate import Translator

# A word's expected total attention is its share: output tokens / source words (at most 1 for
# the lower bound, at least 1 for the upper). Far below it, the word was probably dropped; far
# above it, probably translated twice.
UNDER_ATTENDED = 0.5  # × the share
OVER_ATTENDED = 2.5   # × the share
WORD_START = "\u2581"


@dataclass
class Norms:
    """The dev set's range of normal: 5th and 95th percentiles."""

    length_ratio: tuple[float, float]    # output words / source words
    mean_log_prob: tuple[float, float]   # per output token, EOS included


def merge_pieces(pieces: list[str]) -> list[tuple[str, list[int]]]:
    """Source words from SentencePiece pieces: (word, indices of its pieces)."""
    words: list[tuple[str, list[int]]] = []
    for index, piece in enumerate(pieces):
        if piece == "</s>":
            continue
        if piece.startswith(WORD_START) or not words:
            words.append((piece.lstrip(WORD_START), [index]))
        else:
            word, indices = words[-1]
            words[-1] = (word + piece, indices + [index])
    return [(word, indices) for word, indices in words if word]


def repeated_ngrams(words: list[str], sizes: tuple[int, ...] = (3, 4)) -> list[str]:
    """N-grams that occur twice, and words repeated back to back ("the the")."""
    found = [a for a, b in zip(words, words[1:]) if a == b]
    for n in sizes:
        seen: set[tuple[str, ...]] = set()
        for i in range(len(words) - n + 1):
            gram = tuple(words[i:i + n])
            if gram in seen and " ".join(gram) not in found:
                found.append(" ".join(gram))
            seen.add(gram)
    return found


def diagnose(line: int, source: str, record: dict, hyp: Hypothesis, norms: Norms) -> dict:
    """The diagnostics of one translation; `record` is Translator.attention_record's."""
    attention = np.asarray(record["attention"]) if record["attention"] else None
    under, over = [], []
    words = merge_pieces(record["source"])
    if attention is not None and attention.size and words:
        share = attention.shape[0] / len(words)
        for word, indices in words:
            total = float(attention[:, indices].sum())
            if total < UNDER_ATTENDED * min(share, 1.0):
                under.append({"word": word, "attention": round(total, 3)})
            elif total > OVER_ATTENDED * max(share, 1.0):
                over.append({"word": word, "attention": round(total, 3)})
    output_words, source_words = hyp.text.split(), source.split()
    ratio = len(output_words) / max(len(source_words), 1)
    mean_log_prob = hyp.log_prob / (len(hyp.tokens) + 1)
    flags = []
    if under:
        flags.append("under-translation")
    repeats = repeated_ngrams(output_words)
    if over or repeats:
        flags.append("over-translation")
    low, high = norms.length_ratio
    if source_words and not low <= ratio <= high:
        flags.append("length-ratio")
    if mean_log_prob < norms.mean_log_prob[0]:
        flags.append("low-confidence")
    return {"line": line, "flags": flags, "source": source, "output": hyp.text,
            "under_attended": under, "over_attended": over, "repeated_ngrams": repeats,
            "length_ratio": round(ratio, 3), "mean_log_prob": round(mean_log_prob, 4)}


def dev_norms(translator: Translator, run_dir: Path, **options) -> Norms:
    """Percentiles of the dev set's translations, computed once per search setting and cached in
    RUN_DIR/diagnostics.json."""
    cache = run_dir / "diagnostics.json"
    key = json.dumps({k: v for k, v in sorted(options.items()) if v is not None})
    stored = json.loads(cache.read_text()) if cache.is_file() else {}
    if key in stored:
        return Norms(**{k: tuple(v) for k, v in stored[key].items()})
    recipe = Recipe.load(run_dir / "recipe.yaml")
    path = Path(recipe.data.root) / f"{recipe.data.dev}.{recipe.data.src_lang}"
    if not path.is_file():
        raise NmtError(f"{path}: the run's dev set is needed once for the diagnostics' norms "
                       f"and is not there (data.root moved?)")
    sources = [line for line in read_lines(path) if line.strip()]
    hyps = translator.translate(sources, **options)
    ratios = [len(h.text.split()) / max(len(s.split()), 1) for s, h in zip(sources, hyps)]
    confidence = [h.log_prob / (len(h.tokens) + 1) for h in hyps]
    norms = Norms(tuple(np.percentile(ratios, [5, 95]).round(4).tolist()),
                  tuple(np.percentile(confidence, [5, 95]).round(4).tolist()))
    stored[key] = asdict(norms)
    atomic_write_text(cache, json.dumps(stored, indent=2) + "\n")
    return norms
