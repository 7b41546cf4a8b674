"""Search error or model error: constructed cases with known answers."""

import pytest

from nmt.scoring.analysis import analyze
from nmt.recipe import Recipe
from nmt.training import train
from nmt.translate import Translator


@pytest.fixture(scope="module")
def translator(tmp_path_factory):
    from conftest import TINY_RECIPE, write_slice

    root = tmp_path_factory.mktemp("analysis")
    write_slice(root / "corpus")
    (root / "tiny.yaml").write_text(TINY_RECIPE)
    train(
        Recipe.load(
            root / "tiny.yaml", ["train.max_steps=150", "train.valid_every=150", "train.lr=0.01"]
        ),
        root / "run",
    )
    return Translator.from_run(root / "run")


def test_forced_scores_equal_search_scores(translator):
    sources = (translator.tokenizer.target_path.parent.parent / "corpus" / "dev.de").read_text()
    sources = sources.splitlines()[:30]
    found = translator.translate(sources, beam=3)
    forced = translator.force(sources, [h.text for h in found])
    # An undertrained model may emit a segmentation SentencePiece would not produce from the
    # text; compare where re-encoding the text gives back the searched tokens.
    same = [(h, f) for h, f in zip(found, forced) if h.tokens == f.tokens]
    assert len(same) >= 3
    assert [f.score for _, f in same] == pytest.approx([h.score for h, _ in same], abs=1e-5)


def test_search_error_and_model_error_are_told_apart(translator):
    source = "zwei Katzen"
    output = translator.translate([source], beam=3)[0]
    candidates = ["two cats", "cats", "two two two", "one hundred and two cats", "x " * 40]
    scores = {c: h.score for c, h in zip(candidates, translator.force([source] * 5, candidates))}
    worse = min(scores, key=scores.get)
    assert scores[worse] < output.score
    # The reference scores above the output the search produced: a search error.
    search_case = analyze(translator, [source], [worse], [output.text])
    # The output scores above the reference: a model error.
    model_case = analyze(translator, [source], [output.text], [worse])
    assert [v.kind for v in search_case.verdicts] == ["search"]
    assert [v.kind for v in model_case.verdicts] == ["model"]
    assert search_case.share("search") == 100.0 and model_case.count("search") == 0
    # Identical output and reference are neither.
    assert analyze(translator, [source], [output.text], [output.text]).verdicts == []
    assert "1 search errors (100.0%)" in search_case.format()


def test_forced_scores_include_the_coverage_bonus_search_applied(translator):
    sources = (translator.tokenizer.target_path.parent.parent / "corpus" / "dev.de").read_text()
    sources = sources.splitlines()[:30]
    found = translator.translate(sources, beam=3, coverage_penalty=0.5)
    forced = translator.force(sources, [h.text for h in found], coverage_penalty=0.5)
    same = [(h, f) for h, f in zip(found, forced) if h.tokens == f.tokens]
    assert len(same) >= 3
    assert [f.score for _, f in same] == pytest.approx([h.score for h, _ in same], abs=1e-5)
    plain = translator.force(sources, [h.text for h in found])
    assert all(f.score <= p.score for f, p in zip(forced, plain))  # the bonus is at most 0
    assert any(f.score < p.score for f, p in zip(forced, plain))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"temperature": 0.5}, "decode.temperature applies to sampling only"),
        ({"beam": 0}, "decode.beam must be"),
        ({"min_len": 10**6}, "decode.min_len"),
    ],
)
def test_forced_scoring_checks_its_options_as_search_does(translator, options, message):
    """A forced score stands for a search with these options: one search would refuse is
    refused here too, rather than scored under settings no search can have."""
    from nmt.errors import NmtError

    with pytest.raises(NmtError, match=message):
        translator.force(["zwei Katzen"], ["two cats"], **options)


def test_a_reference_beyond_the_length_limit_is_no_search_error(translator):
    source, reference, worse = "zwei Katzen", "two cats", "x " * 40
    forced = translator.force([source] * 2, [reference, worse])
    assert forced[0].score > forced[1].score and len(forced[0].tokens) >= 2
    assert analyze(translator, [source], [worse], [reference]).verdicts[0].kind == "search"
    # The model prefers the reference, but a search with this limit could not produce it.
    limit = dict(max_len_a=0.0, max_len_b=len(forced[0].tokens) - 1)
    case = analyze(translator, [source], [worse], [reference], **limit)
    assert [v.kind for v in case.verdicts] == ["limit"]
    assert "0 search errors (0.0%)" in case.format() and "1 limit errors" in case.format()
    assert forced[0].reachable
    assert not translator.force([source], [reference], **limit)[0].reachable
    too_short = dict(min_len=len(forced[0].tokens) + 1)
    assert not translator.force([source], [reference], **too_short)[0].reachable
