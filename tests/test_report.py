"""Scoring reports: numbers checked against the sacreBLEU command line and constructed cases."""

import json
import re
import subprocess
import sys

import pytest

from nmt.cli import score_main
from nmt.errors import NmtError
from nmt.scoring.report import (
    build_report,
    compare_systems,
    length_breakdown,
    read_diagnostics,
    report_json,
    worst_sentences,
)

REFERENCES = [
    "A man is riding a bicycle down the street.",
    "Two dogs play in the snow.",
    "A woman sings on a stage.",
    "Children are playing football in a park.",
    "An old man reads a newspaper on a bench.",
] * 8
SYSTEM_A = [
    "A man rides a bike on the street.",
    "Two dogs are playing in snow.",
    "A woman is singing on stage.",
    "Kids play soccer in a park.",
    "An old man is reading the paper on a bench.",
] * 8
SYSTEM_B = list(REFERENCES[:35]) + SYSTEM_A[35:]
SOURCES = [
    "Ein Mann fährt Fahrrad.",
    "Zwei Hunde spielen im Schnee und laufen sehr schnell herum, weil es ihnen großen Spaß macht.",
    "Eine Frau singt.",
    "Kinder spielen.",
    "Ein alter Mann liest.",
] * 8


SACREBLEU_FLAGS = {  # nmt-score's flags → sacrebleu's command line, per metric
    (): {"bleu": [], "chrf": [], "ter": []},
    ("-lc",): {"bleu": ["-lc"], "chrf": ["--chrf-lowercase"], "ter": []},
    ("--tokenize", "none"): {"bleu": ["-tok", "none"], "chrf": [], "ter": []},
    ("--lowercase", "--tokenize", "intl"): {
        "bleu": ["-lc", "-tok", "intl"],
        "chrf": ["--chrf-lowercase"],
        "ter": [],
    },
}


@pytest.mark.parametrize("flags", SACREBLEU_FLAGS, ids=lambda f: " ".join(f) or "default")
def test_bleu_chrf_ter_equal_the_sacrebleu_command_line(tmp_path, capsys, flags):
    (tmp_path / "ref").write_text("\n".join(REFERENCES) + "\n")
    # Half the lines with their case swapped, so that lowercasing changes the scores.
    hyps = [line.swapcase() if i % 2 else line for i, line in enumerate(SYSTEM_A)]
    (tmp_path / "hyp").write_text("\n".join(hyps) + "\n")
    expected = {}
    for metric, extra in SACREBLEU_FLAGS[flags].items():
        result = subprocess.run(
            [sys.executable, "-m", "sacrebleu", str(tmp_path / "ref"), "-i", str(tmp_path / "hyp"),
             "-m", metric, "-b", "-w", "4", *extra],
            capture_output=True,
            text=True,
            check=True,
        )  # fmt: skip
        expected[metric] = float(result.stdout.strip())
    with pytest.raises(SystemExit):
        score_main(
            ["-r", str(tmp_path / "ref"), "-i", str(tmp_path / "hyp"), "--samples", "0",
             "--json", str(tmp_path / "report.json"), *flags]
        )  # fmt: skip
    capsys.readouterr()
    metrics = json.loads((tmp_path / "report.json").read_text())["systems"][str(tmp_path / "hyp")]
    got = {m["name"].lower(): m["score"] for m in metrics["metrics"]}
    assert got == pytest.approx(expected, abs=1e-4)
    bleu, chrf = metrics["metrics"][0]["signature"], metrics["metrics"][1]["signature"]
    lowercase = "-lc" in flags or "--lowercase" in flags
    assert ("case:lc" in bleu) == lowercase and ("case:lc" in chrf) == lowercase
    assert f"tok:{flags[-1] if '--tokenize' in flags else '13a'}" in bleu


def test_lowercased_scores_ignore_case_only():
    from nmt.scoring.metrics import ScoreOptions, score

    upper = [line.upper() for line in REFERENCES]
    assert score(upper, [REFERENCES], ScoreOptions(lowercase=True))["BLEU"] == 100.0
    assert score(upper, [REFERENCES])["BLEU"] < 10
    with pytest.raises(NmtError, match="tokenize 'spm'"):
        ScoreOptions(tokenize="spm")  # needs a download: not offered


def dump_dom(browser: str, page) -> subprocess.CompletedProcess:
    """The DOM headless Chromium builds from `page`, its console on stderr."""
    return subprocess.run(
        [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
         "--v=0", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip


def write_scoring_files(folder):
    """ref, a, b, src and diag.jsonl (two sentences --diagnose flagged) in `folder`."""
    for name, lines in (("ref", REFERENCES), ("a", SYSTEM_A), ("b", SYSTEM_B), ("src", SOURCES)):
        (folder / name).write_text("\n".join(lines) + "\n")
    flagged = {
        "line": 2,
        "flags": ["under-translation"],
        "source": SOURCES[1],
        "output": SYSTEM_A[1],
        "under_attended": [{"word": "Schnee", "attention": 0.01}],
        "over_attended": [],
        "repeated_ngrams": [],
        "length_ratio": 0.4,
        "mean_log_prob": -0.5,
    }
    (folder / "diag.jsonl").write_text(
        json.dumps(flagged) + "\n" + json.dumps({**flagged, "line": 3, "flags": []}) + "\n"
    )


def test_the_python_report_is_the_one_nmt_score_prints_and_writes(tmp_path, capsys):
    from nmt.scoring.html import render

    write_scoring_files(tmp_path)
    with pytest.raises(SystemExit) as code:
        score_main(
            [
                "-r",
                str(tmp_path / "ref"),
                "-i",
                str(tmp_path / "a"),
                str(tmp_path / "b"),
                "-s",
                str(tmp_path / "src"),
                "--paired",
                "ar",
                "--samples",
                "50",
                "--worst",
                "3",
                "--diagnostics",
                str(tmp_path / "diag.jsonl"),
                "--json",
                str(tmp_path / "report.json"),
                "--html",
                str(tmp_path / "report.html"),
            ]
        )
    assert code.value.code == 0
    printed = capsys.readouterr().out
    said = []
    document = build_report(
        {str(tmp_path / "a"): SYSTEM_A, str(tmp_path / "b"): SYSTEM_B},
        [REFERENCES],
        SOURCES,
        paired="ar",
        samples=50,
        worst=3,
        diagnostics=read_diagnostics(tmp_path / "diag.jsonl", 40),
        echo=said.append,
    )
    assert report_json(document) == (tmp_path / "report.json").read_text()  # byte for byte
    assert (
        render(document, f"nmt-score: {tmp_path / 'ref'}") == (tmp_path / "report.html").read_text()
    )
    assert "".join(part + "\n" for part in said) == printed
    assert list(document) == ["systems", "diagnostics", "comparison"]
    assert [entry["line"] for entry in document["diagnostics"]] == [2]
    assert len(document["systems"][str(tmp_path / "b")]["worst"]) == 3
    quiet = build_report([("a", SYSTEM_A)], [REFERENCES], samples=0, worst=0)
    assert list(quiet) == ["systems"] and list(quiet["systems"]["a"]) == ["sentences", "metrics"]
    with pytest.raises(NmtError, match="3 sources for 40 reference lines"):
        build_report([("a", SYSTEM_A)], [REFERENCES], SOURCES[:3])


def test_paired_significance_finds_the_clearly_better_system():
    comparison = compare_systems([("a", SYSTEM_A), ("b", SYSTEM_B)], [REFERENCES], "bs", 300)
    by = {(s.system, s.metric): s for s in comparison.scores}
    assert by[("a", "BLEU")].p_value is None
    assert by[("b", "BLEU")].score > by[("a", "BLEU")].score
    assert by[("b", "BLEU")].p_value < 0.05 and by[("b", "chrF")].p_value < 0.05
    assert by[("a", "BLEU")].interval > 0
    randomized = compare_systems([("a", SYSTEM_A), ("b", SYSTEM_B)], [REFERENCES], "ar", 300)
    assert {s.system: s.p_value for s in randomized.scores if s.metric == "BLEU"}["b"] < 0.05
    assert "approximate randomization against the baseline 'a'" in randomized.format()


def test_length_buckets_and_worst_sentences():
    rows = length_breakdown(SOURCES, SYSTEM_A, REFERENCES, edges=(5, 10))
    assert [(r["source_words"], r["sentences"]) for r in rows] == [("1-5", 32), ("11+", 8)]
    worst = worst_sentences(SOURCES, SYSTEM_B, REFERENCES, count=3)
    assert len(worst) == 3 and all(w["line"] > 35 for w in worst)
    assert worst[0]["chrf"] <= worst[1]["chrf"] <= worst[2]["chrf"] < 100


def test_html_report_opens_in_headless_chromium_without_console_errors(tmp_path, capsys):
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("needs Debian's chromium (.ci/run installs it)")
    write_scoring_files(tmp_path)
    page = tmp_path / "report.html"
    with pytest.raises(SystemExit) as code:
        score_main(
            [
                "-r",
                str(tmp_path / "ref"),
                "-i",
                str(tmp_path / "a"),
                str(tmp_path / "b"),
                "-s",
                str(tmp_path / "src"),
                "--samples",
                "100",
                "--html",
                str(page),
                "--diagnostics",
                str(tmp_path / "diag.jsonl"),
            ]
        )
    assert code.value.code == 0
    capsys.readouterr()
    # Nothing to fetch: no address outside the inline images (whose base64 may spell "http").
    inline = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page.read_text())
    assert "data:image/png;base64," in page.read_text()
    assert "http" not in inline.replace("http-equiv", "")
    result = dump_dom(browser, page)
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert "Confidence intervals and significance" in dom and "Lowest chrF" in dom
    bleu_b = compare_systems([("a", SYSTEM_A), ("b", SYSTEM_B)], [REFERENCES], "bs", 100)
    assert f"{bleu_b.scores[1].score:.2f}" in dom  # system b's BLEU is on the page
    assert "data:image/png;base64," in dom
    assert "Flagged by nmt-translate --diagnose" in dom and "Schnee (0.01)" in dom
    assert "CONSOLE" not in result.stderr and "Uncaught" not in result.stderr


# Markup through every user-derived field of the HTML report: script tags, event handlers, a
# `</script>` that would end an enclosing script, quotes that would end an attribute, a
# `</title>`, and a "$\x$" that matplotlib would read as (invalid) mathtext in the plot's legend.
PWN = "document.title='pwned'"
PAYLOADS = {
    "source": f"<script>{PWN}</script> Ein Mann.",
    "hypothesis": f'<img src=x onerror="{PWN}"> & a man',
    "reference": f"</script><script>{PWN}</script> ' \" a man",
    "diag_flag": f"<img src=x onerror={PWN}>",
    "diag_source": f'\'><svg onload="{PWN}">',
    "diag_output": f"</td></table><script>{PWN}</script>",
    "diag_word": f"</style><script>{PWN}</script>",
    "diag_gram": f'<iframe srcdoc="<script>{PWN}</script>"></iframe>',
}
SYSTEM_NAMES = [f"sys' \"><img src=x onerror={PWN}>", f"b</script><script>{PWN}</script>$\\x$"]
REF_NAME = f"ref</title><script>{PWN}</script>"


def _hostile_report(tmp_path):
    """Writes the report of two hostile systems (paths, lines, --diagnostics) and returns it."""
    sources = [PAYLOADS["source"], "Zwei Hunde.", "Eine Frau singt."]
    hypotheses = [PAYLOADS["hypothesis"], "Two dogs.", "A woman is singing."]
    references = [PAYLOADS["reference"], "Two dogs play.", "A woman sings."]
    files = {
        "src": sources,
        REF_NAME: references,
        SYSTEM_NAMES[0]: hypotheses,
        SYSTEM_NAMES[1]: hypotheses[::-1],
    }
    for name, lines in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    # Numeric fields (line, attention, length_ratio) are checked as numbers when read (a string
    # there is refused; tests/test_bad_input.py), so markup can come only through the text ones.
    flagged = {
        "line": 1,
        "flags": [PAYLOADS["diag_flag"]],
        "source": PAYLOADS["diag_source"],
        "output": PAYLOADS["diag_output"],
        "under_attended": [{"word": PAYLOADS["diag_word"], "attention": 0.1}],
        "over_attended": [],
        "repeated_ngrams": [PAYLOADS["diag_gram"]],
        "length_ratio": 0.4,
        "mean_log_prob": -0.5,
    }
    (tmp_path / "diag.jsonl").write_text(json.dumps(flagged) + "\n")
    page = tmp_path / "report.html"
    with pytest.raises(SystemExit) as code:
        score_main(
            ["-r", str(tmp_path / REF_NAME), "-i"]
            + [str(tmp_path / name) for name in SYSTEM_NAMES]
            + [
                "-s",
                str(tmp_path / "src"),
                "--samples",
                "5",
                "--worst",
                "10",
                "--html",
                str(page),
                "--diagnostics",
                str(tmp_path / "diag.jsonl"),
            ]
        )
    assert code.value.code == 0
    texts = [
        *PAYLOADS.values(),
        *(str(tmp_path / name) for name in SYSTEM_NAMES),
        f"nmt-score: {tmp_path / REF_NAME}",
    ]
    return page, texts


def test_html_report_escapes_every_user_derived_field(tmp_path, capsys):
    import html

    page, texts = _hostile_report(tmp_path)
    capsys.readouterr()
    text = page.read_text()
    for value in texts:
        assert html.escape(value, quote=True) in text, value
    lowered = text.lower()
    assert "<script" not in lowered and "<svg" not in lowered and "<iframe" not in lowered
    assert lowered.count("<img") == 1 and "<img alt='bleu by source length' src='data:" in lowered


def test_html_report_with_markup_in_every_field_runs_no_script_in_chromium(tmp_path, capsys):
    import shutil
    from html.parser import HTMLParser

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("needs Debian's chromium (.ci/run installs it)")
    page, texts = _hostile_report(tmp_path)
    capsys.readouterr()
    result = dump_dom(browser, page)
    assert result.returncode == 0, result.stderr[-2000:]

    class Dom(HTMLParser):  # the elements and text of the DOM as Chromium built it
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.tags, self.open, self.text, self.title = [], [], [], ""

        def handle_starttag(self, tag, attrs):
            self.tags.append((tag, dict(attrs)))
            self.open.append(tag)

        def handle_endtag(self, tag):
            while self.open and self.open.pop() != tag:
                pass

        def handle_data(self, data):
            if self.open and self.open[-1] == "title":
                self.title += data
            elif not self.open or self.open[-1] != "style":
                self.text.append(data)

    dom = Dom()
    dom.feed(result.stdout)
    assert dom.title == f"nmt-score: {tmp_path / REF_NAME}"  # no script set document.title
    names = [tag for tag, _ in dom.tags]
    assert not {"script", "svg", "iframe", "b", "i"} & set(names), names
    images = [attrs for tag, attrs in dom.tags if tag == "img"]
    assert len(images) == 1 and images[0]["src"].startswith("data:image/png;base64,")
    assert not [a for _, attrs in dom.tags for a in attrs if a.startswith("on")]
    shown = "".join(dom.text)
    for value in texts[:-1]:
        assert value in shown, value  # each shows literally, as text
    assert "Uncaught" not in result.stderr and "CONSOLE" not in result.stderr


def test_lowercasing_reaches_the_paired_test_the_breakdown_and_the_worst_sentences():
    from nmt.scoring.metrics import ScoreOptions
    from nmt.scoring.report import build_report

    upper = [line.upper() for line in REFERENCES]
    report = build_report(
        {"upper": upper, "same": REFERENCES},
        [REFERENCES],
        SOURCES,
        samples=20,
        options=ScoreOptions(lowercase=True),
    )
    system = report["systems"]["upper"]
    assert all(row["bleu"] == 100.0 for row in system["by_source_length"])
    assert system["worst"] == []  # perfect once lowercased: none listed
    assert {s["score"] for s in report["comparison"]["scores"]} == {100.0}
    assert "case:lc" in report["comparison"]["signatures"]["BLEU"]
