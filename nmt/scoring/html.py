"""The scoring report as one self-contained HTML page: no network, no scripts, images inline.

Every value that comes from the user's files (sources, outputs, references, system names i.e.
hypothesis paths, the --diagnostics JSON lines) goes through `_e`, numbers included: the
command checks a --diagnostics file's types, but `render` also takes documents built in Python."""

from __future__ import annotations

import base64
import html

from nmt.plots import png_bytes, pyplot

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td.text, th.text { text-align: left; max-width: 30em; }
code { font-size: 0.85em; color: #555; }
.significant { font-weight: bold; }
"""


def render(document: dict, title: str = "nmt-score report") -> str:
    """HTML for the JSON document that `nmt-score --json` writes."""
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
    ]
    systems = document["systems"]
    parts.append(
        "<h2>Scores</h2><table><tr><th>system</th><th>BLEU</th><th>chrF</th><th>TER</th></tr>"
    )
    for name, entry in systems.items():
        scores = {m["name"]: m["score"] for m in entry["metrics"]}
        parts.append(
            f"<tr><td>{_e(name)}</td><td>{scores['BLEU']:.2f}</td>"
            f"<td>{scores['chrF']:.2f}</td><td>{scores['TER']:.2f}</td></tr>"
        )
    parts.append("</table>")
    first = next(iter(systems.values()))
    parts.extend(
        f"<div><code>{_e(m['name'])}: {_e(m['signature'])}</code></div>" for m in first["metrics"]
    )
    if "comparison" in document:
        parts.append(_comparison(document["comparison"]))
    for name, entry in systems.items():
        if entry.get("by_source_length"):
            parts.append(f"<h2>By source length: {_e(name)}</h2>")
            parts.append(
                _table(
                    entry["by_source_length"],
                    ["source_words", "sentences", "bleu", "length_ratio", "brevity_penalty"],
                )
            )
    buckets = {
        name: e["by_source_length"] for name, e in systems.items() if e.get("by_source_length")
    }
    if buckets:
        parts.append(f"<img alt='BLEU by source length' src='{_bucket_plot(buckets)}'>")
    for name, entry in systems.items():
        if entry.get("worst"):
            parts.append(
                f"<h2>Lowest chrF: {_e(name)}</h2><table><tr><th>line</th><th>chrF</th>"
                "<th class='text'>source</th><th class='text'>output</th>"
                "<th class='text'>reference</th></tr>"
            )
            for row in entry["worst"]:
                parts.append(
                    f"<tr><td>{_e(row['line'])}</td><td>{row['chrf']:.1f}</td>"
                    f"<td class='text'>{_e(row['source'] or '')}</td>"
                    f"<td class='text'>{_e(row['hypothesis'])}</td>"
                    f"<td class='text'>{_e(row['reference'])}</td></tr>"
                )
            parts.append("</table>")
    if document.get("diagnostics"):
        parts.append(
            "<h2>Flagged by nmt-translate --diagnose</h2><table><tr><th>line</th>"
            "<th class='text'>flags</th><th class='text'>source</th>"
            "<th class='text'>output</th><th class='text'>evidence</th></tr>"
        )
        for entry in document["diagnostics"]:
            evidence = [
                f"{w['word']} ({_num(w['attention'], '.2f')})"
                for w in entry["under_attended"] + entry["over_attended"]
            ]
            evidence += [f"repeated: {gram}" for gram in entry["repeated_ngrams"]]
            evidence += [
                f"length ratio {entry['length_ratio']}",
                f"mean log-prob {entry['mean_log_prob']}",
            ]
            parts.append(
                f"<tr><td>{_e(entry['line'])}</td><td class='text'>"
                f"{_e(', '.join(entry['flags']))}</td>"
                f"<td class='text'>{_e(entry['source'])}</td>"
                f"<td class='text'>{_e(entry['output'])}</td>"
                f"<td class='text'>{_e('; '.join(evidence))}</td></tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _comparison(comparison: dict) -> str:
    rows = [
        "<h2>Confidence intervals and significance</h2><table><tr><th>system</th>"
        "<th>metric</th><th>score</th><th>95% CI</th><th>p</th></tr>"
    ]
    for s in comparison["scores"]:
        p = s["p_value"]
        cls = " class='significant'" if p is not None and p < 0.05 else ""
        rows.append(
            f"<tr{cls}><td>{_e(s['system'])}</td><td>{_e(s['metric'])}</td>"
            f"<td>{s['score']:.2f}</td><td>{s['mean']:.2f} ± {s['interval']:.2f}</td>"
            f"<td>{'-' if p is None else f'{p:.4f}'}</td></tr>"
        )
    test = (
        "paired bootstrap resampling" if comparison["test"] == "bs" else "approximate randomization"
    )
    rows.append(
        f"</table><p>p: {test} ({_e(comparison['samples'])} samples) against the first "
        f"system; bold: p &lt; 0.05.</p>"
    )
    return "\n".join(rows)


def _table(rows: list[dict], keys: list[str]) -> str:
    head = "".join(f"<th>{_e(k.replace('_', ' '))}</th>" for k in keys)
    body = "".join(
        "<tr>" + "".join(f"<td>{_e(str(r[k]))}</td>" for k in keys) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _bucket_plot(buckets: dict[str, list[dict]]) -> str:
    figure, axis = pyplot().subplots(figsize=(6, 3.2), dpi=100)
    for name, rows in buckets.items():
        # A system name is a file name: a "$" in it would start matplotlib's mathtext (and
        # "$\\x$" would make the plot, hence the report, fail).
        axis.plot(
            [r["source_words"] for r in rows],
            [r["bleu"] for r in rows],
            "o-",
            label=name.replace("$", r"\$"),
        )
    axis.set_xlabel("source words")
    axis.set_ylabel("BLEU")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return "data:image/png;base64," + base64.b64encode(png_bytes(figure)).decode()


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _num(value: object, spec: str) -> str:
    """A number formatted by `spec`; anything else (a hand-edited JSON line) as it is."""
    return format(value, spec) if isinstance(value, (int, float)) else str(value)
