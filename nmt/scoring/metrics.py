"""Scores through sacreBLEU: BLEU, chrF and TER, always on detokenized text, with signatures.

The signature says exactly how a number was computed (tokenizer, casing, smoothing, version);
a BLEU figure without it cannot be compared with anyone else's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from sacrebleu.metrics import BLEU, CHRF, TER

from nmt.errors import NmtError


@dataclass
class MetricScore:
    """One corpus-level metric: its score, its sacreBLEU signature and sacreBLEU's summary."""

    name: str
    score: float
    signature: str
    detail: str  # sacreBLEU's one-line summary, e.g. BLEU's n-gram precisions and brevity penalty


@dataclass
class ScoreReport:
    """BLEU, chrF and TER of a set of hypotheses (what `score` returns): `report["BLEU"]` is one
    score, `format` a table with the signatures, `to_json` the same as JSON."""

    sentences: int
    metrics: list[MetricScore]

    def __getitem__(self, name: str) -> float:
        for metric in self.metrics:
            if metric.name == name:
                return metric.score
        raise KeyError(name)

    def format(self) -> str:
        lines = [f"{'metric':<6} {'score':>6}  signature"]
        for m in self.metrics:
            lines.append(f"{m.name:<6} {m.score:6.2f}  {m.signature}")
        lines.append("")
        lines.extend(m.detail for m in self.metrics)
        lines.append(f"{self.sentences} sentences")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"


# sacreBLEU's tokenizers that need no extra package and no download (spm and flores fetch a
# SentencePiece model; ja-mecab and ko-mecab need MeCab).
TOKENIZERS = ("13a", "intl", "none", "char", "zh")


@dataclass(frozen=True)
class ScoreOptions:
    """How hypotheses are compared with references. The defaults are sacreBLEU's: cased BLEU on
    its 13a tokenization of detokenized text, the number to report. Papers on small data sets
    often report lowercased (`lowercase`) or differently tokenized (`tokenize`: one of
    sacreBLEU's, e.g. `none` for text tokenized beforehand, `intl`) BLEU; the signature records
    either. `lowercase` applies to BLEU and chrF; TER is case-insensitive in sacreBLEU already."""

    lowercase: bool = False
    tokenize: str | None = None  # None: sacreBLEU's default (13a)

    def __post_init__(self) -> None:
        if self.tokenize is not None and self.tokenize not in TOKENIZERS:
            raise NmtError(f"tokenize {self.tokenize!r}: use one of {', '.join(TOKENIZERS)}")

    def bleu(self) -> BLEU:
        return BLEU(lowercase=self.lowercase, tokenize=self.tokenize)

    def chrf(self) -> CHRF:
        return CHRF(lowercase=self.lowercase)


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
    """BLEU alone (sacreBLEU defaults), e.g. for validation during training."""
    return BLEU().corpus_score(hypotheses, [references]).score


def corpus_chrf(hypotheses: list[str], references: list[str]) -> float:
    """chrF alone (sacreBLEU defaults)."""
    return CHRF().corpus_score(hypotheses, [references]).score


def score(
    hypotheses: list[str], references: list[list[str]], options: ScoreOptions = ScoreOptions()
) -> ScoreReport:
    """BLEU, chrF and TER of detokenized hypotheses against one or more reference streams."""
    if not hypotheses:
        raise NmtError("no sentences to score")
    for number, stream in enumerate(references, start=1):
        if len(stream) != len(hypotheses):
            raise NmtError(
                f"reference {number} has {len(stream)} lines but the hypotheses have "
                f"{len(hypotheses)}"
            )
    metrics = []
    for name, metric in (("BLEU", options.bleu()), ("chrF", options.chrf()), ("TER", TER())):
        result = metric.corpus_score(hypotheses, references)
        metrics.append(
            MetricScore(name, round(result.score, 4), str(metric.get_signature()), str(result))
        )
    return ScoreReport(len(hypotheses), metrics)
