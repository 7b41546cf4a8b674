"""Reports beyond one number: confidence intervals, paired significance between systems,
scores by sentence length, and the sentences that went worst. All through sacreBLEU.
`build_report` puts them together into the report of `nmt-score`."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import cast
from pathlib import Path

from sacrebleu.significance import PairedTest, Result

from nmt.data.corpus import read_lines
from nmt.errors import NmtError
from nmt.scoring.metrics import ScoreOptions, score


@dataclass
class SystemScore:
    """One system's score on one metric, with its bootstrap mean, 95% confidence interval and
    p-value against the baseline (a row of `Comparison`)."""

    system: str
    metric: str
    score: float
    mean: float  # of the resampled scores
    interval: float  # half-width of the 95% confidence interval
    p_value: float | None  # against the baseline (None for the baseline itself)


@dataclass
class Comparison:
    """Scores of several systems with 95% confidence intervals, each tested against the first."""

    test: str  # "bs" (paired bootstrap resampling) or "ar" (approximate randomization)
    samples: int
    scores: list[SystemScore]
    signatures: dict[str, str]

    def format(self) -> str:
        metrics = list(self.signatures)
        systems = list(dict.fromkeys(s.system for s in self.scores))
        by_key = {(s.system, s.metric): s for s in self.scores}
        width = max(len(name) for name in systems) + 2
        header = f"{'system':<{width}}" + "".join(f"{m + ' (95% CI)':>22}{'p':>8}" for m in metrics)
        lines = [header]
        for system in systems:
            row = f"{system:<{width}}"
            for metric in metrics:
                s = by_key[(system, metric)]
                p = (
                    "-"
                    if s.p_value is None
                    else f"{s.p_value:.4f}{'*' if s.p_value < 0.05 else ''}"
                )
                row += f"{s.score:>7.2f} ({s.mean:5.2f} ± {s.interval:4.2f}){p:>8}"
            lines.append(row)
        name = "paired bootstrap resampling" if self.test == "bs" else "approximate randomization"
        lines.append(
            f"\n95% CI: mean ± half-width over {self.samples} bootstrap resamples"
            + (
                f"; p: {name} against the baseline {systems[0]!r}, * p < 0.05"
                if len(systems) > 1
                else ""
            )
        )
        lines.extend(f"{metric}: {signature}" for metric, signature in self.signatures.items())
        return "\n".join(lines)


def compare_systems(
    named: list[tuple[str, list[str]]],
    references: list[list[str]],
    test: str = "bs",
    samples: int = 1000,
    options: ScoreOptions = ScoreOptions(),
) -> Comparison:
    """BLEU and chrF of each system with 95% CIs, and paired significance against the first."""
    for name, hypotheses in named:
        if len(hypotheses) != len(references[0]):
            raise NmtError(
                f"{name} has {len(hypotheses)} lines but the reference has {len(references[0])}"
            )
    paired = PairedTest(
        cast("list[tuple[str, Sequence[str]]]", named),
        {"BLEU": options.bleu(), "chrF": options.chrf()},
        references,
        test_type=test,
        n_samples=samples,
        n_ar_confidence=samples if test == "ar" else -1,
    )
    signatures, results = paired()
    scores = []
    for metric, key in (("BLEU", "BLEU"), ("chrF", "chrF2")):
        for (name, _), outcome in zip(named, results[key]):
            result = cast(Result, outcome)  # sacreBLEU's per-system result; its `str` is for names
            assert result.mean is not None and result.ci is not None  # set by the resampling
            scores.append(
                SystemScore(
                    name,
                    metric,
                    round(float(result.score), 2),
                    round(float(result.mean), 2),
                    round(float(result.ci), 2),
                    None if result.p_value is None else float(result.p_value),
                )
            )
    return Comparison(
        test, samples, scores, {"BLEU": str(signatures["BLEU"]), "chrF": str(signatures["chrF2"])}
    )


def length_breakdown(
    sources: list[str],
    hypotheses: list[str],
    references: list[str],
    edges: tuple[int, ...] = (10, 20, 30),
    options: ScoreOptions = ScoreOptions(),
) -> list[dict]:
    """BLEU, length ratio and brevity penalty per bucket of source length (in words)."""
    buckets: dict[str, list[int]] = {}
    bounds = [0, *edges]
    for i, source in enumerate(sources):
        words = len(source.split())
        for low, high in zip(bounds, [*edges, None]):
            if high is None or words <= high:
                label = f"{low + 1}-{high}" if high is not None else f"{low + 1}+"
                buckets.setdefault(label, []).append(i)
                break
    order = [f"{low + 1}-{high}" for low, high in zip(bounds, edges)] + [f"{edges[-1] + 1}+"]
    rows = []
    for label in order:
        if label in buckets:
            chosen = buckets[label]
            result = options.bleu().corpus_score(
                [hypotheses[i] for i in chosen], [[references[i] for i in chosen]]
            )
            rows.append(
                {
                    "source_words": label,
                    "sentences": len(chosen),
                    "bleu": round(result.score, 2),
                    "length_ratio": round(result.ratio, 3),
                    "brevity_penalty": round(result.bp, 3),
                }
            )
    return rows


def worst_sentences(
    sources: list[str] | None,
    hypotheses: list[str],
    references: list[str],
    count: int = 5,
    options: ScoreOptions = ScoreOptions(),
) -> list[dict]:
    """The sentences with the lowest sentence-level chrF (perfect ones are never listed)."""
    metric = options.chrf()
    scored = [
        (metric.sentence_score(h, [r]).score, i)
        for i, (h, r) in enumerate(zip(hypotheses, references))
    ]
    return [
        {
            "line": i + 1,
            "chrf": round(chrf, 2),
            "source": sources[i] if sources else None,
            "hypothesis": hypotheses[i],
            "reference": references[i],
        }
        for chrf, i in sorted(scored)[:count]
        if chrf < 100.0
    ]


def _words(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(w, dict) and isinstance(w.get("word"), str) and _number(w.get("attention"))
        for w in value
    )


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


DIAGNOSTIC_FIELDS = {  # what nmt-translate --diagnose writes, and what the reports read
    "line": (lambda v: isinstance(v, int) and not isinstance(v, bool), "a line number"),
    "flags": (_strings, "a list of strings"),
    "source": (lambda v: isinstance(v, str), "a string"),
    "output": (lambda v: isinstance(v, str), "a string"),
    "under_attended": (_words, 'a list of {"word": ..., "attention": ...}'),
    "over_attended": (_words, 'a list of {"word": ..., "attention": ...}'),
    "repeated_ngrams": (_strings, "a list of strings"),
    "length_ratio": (_number, "a number"),
    "mean_log_prob": (_number, "a number"),
}


def read_diagnostics(path: Path, sentences: int) -> list[dict]:
    """The JSON lines of `nmt-translate --diagnose` for a translation of `sentences` lines,
    checked: a report must not fail half-way on a hand-edited or foreign file."""
    entries = []
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise NmtError(
                f"{path}:{number}: invalid JSON: {error.msg}; expected the JSON "
                f"lines of nmt-translate --diagnose"
            ) from None
        if not isinstance(entry, dict):
            raise NmtError(
                f"{path}:{number}: expected a JSON object of nmt-translate --diagnose, "
                f"not {type(entry).__name__}"
            )
        for field, (valid, kind) in DIAGNOSTIC_FIELDS.items():
            if not valid(entry.get(field)):
                raise NmtError(f"{path}:{number}: field {field!r} must be {kind}")
        if not 1 <= entry["line"] <= sentences:
            raise NmtError(
                f"{path}:{number}: line {entry['line']} is outside the {sentences} lines scored"
            )
        entries.append(entry)
    return entries


def format_breakdown(rows: list[dict]) -> str:
    lines = [f"{'source words':>12} {'sentences':>9} {'BLEU':>6} {'hyp/ref':>7} {'BP':>5}"]
    lines.extend(
        f"{r['source_words']:>12} {r['sentences']:>9} {r['bleu']:>6.2f} "
        f"{r['length_ratio']:>7.3f} {r['brevity_penalty']:>5.3f}"
        for r in rows
    )
    return "\n".join(lines)


def format_worst(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        lines.append(f"line {r['line']} (chrF {r['chrf']:.1f})")
        if r["source"] is not None:
            lines.append(f"  source     {r['source']}")
        lines.append(f"  output     {r['hypothesis']}\n  reference  {r['reference']}")
    return "\n".join(lines)


def build_report(
    hypotheses_by_system: Mapping[str, list[str]] | Sequence[tuple[str, list[str]]],
    references: list[list[str]],
    sources: list[str] | None = None,
    paired: str = "bs",
    samples: int = 1000,
    worst: int = 5,
    diagnostics: list[dict] | None = None,
    echo: Callable[[str], object] | None = None,
    options: ScoreOptions = ScoreOptions(),
) -> dict:
    """The report `nmt-score` prints and writes (--json, --html): for each system (name →
    detokenized lines) BLEU, chrF and TER with signatures, BLEU by source length (with
    `sources`) and the `worst` sentences by chrF (0: none); the `diagnostics` entries of
    `read_diagnostics` that carry flags; and with `samples` > 0 the `paired` test ("bs" or
    "ar") of each system against the first, all compared as `options` say (lowercased, another
    tokenization). `echo` is given each part of the text report as
    soon as it is ready (nmt-score passes `print`). `report_json` writes the result as
    `nmt-score --json` does; `nmt.scoring.html.render` makes its HTML page."""
    systems = list(
        hypotheses_by_system.items()
        if isinstance(hypotheses_by_system, Mapping)
        else hypotheses_by_system
    )
    if not systems or not references:
        raise NmtError("a report needs at least one system and one reference")
    if sources is not None and len(sources) != len(references[0]):
        raise NmtError(
            f"{len(sources)} sources for {len(references[0])} reference lines; give "
            f"one per sentence"
        )
    for name, value in (("samples", samples), ("worst", worst)):
        if value < 0:
            raise NmtError(f"{name} must be at least 0, not {value}")
    if paired not in ("bs", "ar"):
        raise NmtError(f"paired must be bs or ar, not {paired!r}")
    say = echo or (lambda text: None)
    document: dict = {"systems": {}}
    for name, hypotheses in systems:
        report = score(hypotheses, references, options)
        say(f"== {name}\n{report.format()}\n")
        entry = json.loads(report.to_json())
        if sources is not None:
            entry["by_source_length"] = length_breakdown(
                sources, hypotheses, references[0], options=options
            )
            say(format_breakdown(entry["by_source_length"]) + "\n")
        if worst:
            entry["worst"] = worst_sentences(sources, hypotheses, references[0], worst, options)
            say(f"lowest chrF:\n{format_worst(entry['worst'])}\n")
        document["systems"][name] = entry
    if diagnostics is not None:
        document["diagnostics"] = [entry for entry in diagnostics if entry["flags"]]
        say(
            f"diagnostics: {len(document['diagnostics'])} of {len(diagnostics)} outputs "
            f"flagged (see --json or --html)\n"
        )
    if samples > 0:
        comparison = compare_systems(systems, references, paired, samples, options)
        say(comparison.format())
        document["comparison"] = asdict(comparison)
    return document


def report_json(document: dict) -> str:
    """A report of `build_report` as `nmt-score --json` writes it."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
