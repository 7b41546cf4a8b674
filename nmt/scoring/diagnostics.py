"""Per-sentence diagnostics: which translations are likely wrong, and how.

- under-translation: a source word (its subword pieces merged) that received little attention in
  total, so its meaning may be missing from the output;
- over-translation: a source word attended far more than its share, or an output n-gram of three
  or more words (or a word) repeated back to back or later;
- length-ratio outliers and low-confidence outputs, judged against the dev set (its 5th and 95th
  percentiles), since what is normal differs between language pairs and models.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from nmt.run_dir import DIAGNOSTICS, RECIPE
from nmt.files import atomic_write_text
from nmt.data.corpus import load_split
from nmt.errors import NmtError
from nmt.recipe import Recipe
from nmt.search import Hypothesis
from nmt.translate import Translator

log = logging.getLogger("nmt")

# A word's expected total attention is its share: output tokens / source words (at most 1 for
# the lower bound, at least 1 for the upper). Far below it, the word was probably dropped; far
# above it, probably translated twice.
UNDER_ATTENDED = 0.5  # × the share
OVER_ATTENDED = 2.5  # × the share
WORD_START = "\u2581"


@dataclass
class Norms:
    """The dev set's range of normal: 5th and 95th percentiles."""

    length_ratio: tuple[float, float]  # output words / source words
    mean_log_prob: tuple[float, float]  # per output token, EOS included


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
            gram = tuple(words[i : i + n])
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
    return {
        "line": line,
        "flags": flags,
        "source": source,
        "output": hyp.text,
        "under_attended": under,
        "over_attended": over,
        "repeated_ngrams": repeats,
        "length_ratio": round(ratio, 3),
        "mean_log_prob": round(mean_log_prob, 4),
    }


def dev_norms(translator: Translator, run_dir: Path, **options) -> Norms:
    """Percentiles of the dev set's translations, computed once per model and search setting and
    cached in RUN_DIR/diagnostics.json (a cache: unreadable, it is made again; unwritable, it is
    skipped). The key holds every setting the search uses (the run's defaults and decode.yaml
    too) and a digest of the weights, so another checkpoint, int8 weights, an ensemble or a
    resumed run's new best computes its own norms."""
    cache = run_dir / DIAGNOSTICS
    settings = asdict(translator.settings(**options))
    weights = weights_digest(translator.model)
    key = json.dumps({"settings": settings, "weights": weights, "int8": translator.quantized})
    stored = _cached(cache)
    try:
        return Norms(
            **{name: (float(low), float(high)) for name, (low, high) in stored[key].items()}
        )
    except (KeyError, TypeError, AttributeError, ValueError):
        pass  # not computed for these settings yet (or a damaged entry): compute them
    recipe = Recipe.load(run_dir / RECIPE)
    try:  # in whatever format the run was trained from (text, tsv, jsonl, hub)
        dev = load_split(recipe.data, Path(recipe.data.root), recipe.data.dev, run_dir / "cache")
    except NmtError as error:
        raise NmtError(f"the diagnostics' norms need the run's dev set once: {error}") from None
    sources = [line for line in dev.sources if line.strip()]
    if not sources:
        raise NmtError(
            f"{', '.join(map(str, dev.files)) or recipe.data.hub_name}: the run's dev "
            f"set has no sentences to compute the diagnostics' norms from"
        )
    hyps = translator.translate(sources, **options)
    ratios = [len(h.text.split()) / max(len(s.split()), 1) for s, h in zip(sources, hyps)]
    confidence = [h.log_prob / (len(h.tokens) + 1) for h in hyps]
    norms = Norms(
        tuple(np.percentile(ratios, [5, 95]).round(4).tolist()),
        tuple(np.percentile(confidence, [5, 95]).round(4).tolist()),
    )
    stored[key] = asdict(norms)
    try:
        atomic_write_text(cache, json.dumps(stored, indent=2) + "\n")
    except OSError as error:
        log.warning(
            "%s: cannot cache the diagnostics' norms (%s); they are computed again next time",
            cache,
            error.strerror,
        )
    return norms


try:  # int8 recurrent layers (a torch without dynamic quantization has none)
    from torch.ao.nn.quantized.dynamic.modules.rnn import RNNBase as QuantizedRNN
except ImportError:  # pragma: no cover
    QuantizedRNN = ()  # type: ignore[assignment,misc]


def weights_digest(model: torch.nn.Module) -> str:
    """A digest of a model's weight tensors: equal weights, equal digest. int8 layers count
    dequantized, recurrent ones too (their packed weights are not in the state_dict).
    SHA-1 for speed (a cache key, not a signature): ~30 ms for Multi30k's 26 MB of weights."""
    digest = hashlib.sha1()
    for name, tensor in _named_weights(model):
        digest.update(name.encode())
        tensor = tensor.dequantize() if tensor.is_quantized else tensor
        raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        digest.update(raw.numpy().tobytes())
    return digest.hexdigest()


def _named_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every weight tensor with its name: the state_dict's (int8 linear layers store a tuple of
    packed tensors), then those of int8 recurrent layers, packed where state_dict cannot see."""
    for name, value in model.state_dict().items():
        for tensor in _tensors(value):
            yield name, tensor
    for name, module in model.named_modules():
        if isinstance(module, QuantizedRNN):
            for key, tensor in [*module.get_weight().items(), *module.get_bias().items()]:
                yield f"{name}.{key}", tensor


def _tensors(value) -> list[torch.Tensor]:
    """The tensors in a state_dict entry (int8 layers store a tuple of packed tensors)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [tensor for item in value for tensor in _tensors(item)]
    return []


def _cached(path: Path) -> dict:
    """The norms cached so far; none when the file is missing or damaged."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return stored if isinstance(stored, dict) else {}
