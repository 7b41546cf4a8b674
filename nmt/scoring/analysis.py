"""Search error or model error? The beam-search error analysis of the course material.

For every sentence whose hypothesis differs from its reference, score the reference with the
model (forced decoding, scored as beam search scores: length normalization and coverage bonus).
If the model prefers the reference, search failed to find it: a *search error* (a wider beam may
help) - unless the reference lies beyond the search's length limits (longer than
max_len_a·|x| + max_len_b, or shorter than min_len), which no beam could have produced: a
*limit error* (widen the limit, not the beam). If the model prefers its own output, the *model*
is at fault (more data, regularisation, a bigger model).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nmt.errors import NmtError
from nmt.translate import Translator


@dataclass
class Verdict:
    """One sentence whose output differs from its reference: both scored by the model as
    search scores them, and whose fault that is (search, model, or the length limits)."""

    line: int  # 1-based
    source: str
    hypothesis: str
    reference: str
    hypothesis_score: float
    reference_score: float
    reference_reachable: bool = True  # within the search's length limits

    @property
    def kind(self) -> str:
        if self.reference_score <= self.hypothesis_score:
            return "model"
        return "search" if self.reference_reachable else "limit"

    @property
    def margin(self) -> float:
        return abs(self.reference_score - self.hypothesis_score)


@dataclass
class ErrorAnalysis:
    """Search errors against model errors over a test set: the verdicts, their shares and a
    few examples of each (`format` prints what `nmt-score --analyze` shows)."""

    sentences: int
    verdicts: list[Verdict] = field(default_factory=list)  # sentences whose output differs

    def count(self, kind: str) -> int:
        return sum(1 for v in self.verdicts if v.kind == kind)

    def share(self, kind: str) -> float:
        return 100.0 * self.count(kind) / max(len(self.verdicts), 1)

    def examples(self, kind: str, count: int = 3) -> list[Verdict]:
        """The clearest cases: largest score margin first."""
        return sorted((v for v in self.verdicts if v.kind == kind), key=lambda v: -v.margin)[:count]

    def format(self, examples: int = 3) -> str:
        lines = [
            f"{self.sentences} sentences, {len(self.verdicts)} differ from the reference: "
            f"{self.count('search')} search errors ({self.share('search'):.1f}%), "
            f"{self.count('model')} model errors ({self.share('model'):.1f}%), "
            f"{self.count('limit')} limit errors ({self.share('limit'):.1f}%)"
        ]
        for kind, meaning in (
            ("search", "the model prefers the reference; search missed it"),
            ("model", "the model prefers its own output"),
            (
                "limit",
                "the model prefers the reference, but it is beyond the search's length limits",
            ),
        ):
            found = self.examples(kind, examples)
            if found:
                lines.append(f"\n{kind} errors ({meaning}):")
            for v in found:
                lines.append(
                    f"  line {v.line}: {v.source}\n"
                    f"    output    {v.hypothesis_score:8.3f}  {v.hypothesis}\n"
                    f"    reference {v.reference_score:8.3f}  {v.reference}"
                )
        return "\n".join(lines)


def analyze(
    translator: Translator,
    sources: list[str],
    hypotheses: list[str],
    references: list[str],
    **options,
) -> ErrorAnalysis:
    """Classify each differing sentence as a search, model or limit error (`options`: decode
    keys such as length_norm, alpha, coverage_penalty, max_len_a, max_len_b, min_len, as used
    by the search that produced the hypotheses; unset ones are the translator's)."""
    if not len(sources) == len(hypotheses) == len(references):
        raise NmtError(
            f"analysis needs as many sources ({len(sources)}), hypotheses "
            f"({len(hypotheses)}) and references ({len(references)})"
        )
    differ = [i for i, (h, r) in enumerate(zip(hypotheses, references)) if h.strip() != r.strip()]
    chosen_sources = [sources[i] for i in differ]
    hyp_scores = translator.force(chosen_sources, [hypotheses[i] for i in differ], **options)
    ref_scores = translator.force(chosen_sources, [references[i] for i in differ], **options)
    return ErrorAnalysis(
        len(sources),
        [
            Verdict(i + 1, sources[i], hypotheses[i], references[i], h.score, r.score, r.reachable)
            for i, h, r in zip(differ, hyp_scores, ref_scores)
        ],
    )
