"""Per-sentence diagnostics on constructed attention matrices."""

from nmt.scoring.diagnostics import Norms, diagnose, merge_pieces, repeated_ngrams
from nmt.search import Hypothesis

NORMS = Norms(length_ratio=(0.5, 2.0), mean_log_prob=(-1.0, -0.1))
SOURCE = ["\u2581zwei", "und", "zwanzig", "\u2581Katzen", "</s>"]


def hypothesis(text, tokens, log_prob):
    hyp = Hypothesis(list(range(tokens)), log_prob, log_prob)
    hyp.text = text
    return hyp


def record(rows):
    return {"source": SOURCE, "target": ["x"] * len(rows), "attention": rows}


def test_pieces_merge_into_words():
    assert merge_pieces(SOURCE) == [("zweiundzwanzig", [0, 1, 2]), ("Katzen", [3])]


def test_a_clean_translation_has_no_flags():
    rows = [[0.2, 0.3, 0.4, 0.05, 0.05], [0.05, 0.05, 0.1, 0.7, 0.1], [0.1, 0.1, 0.1, 0.3, 0.4]]
    found = diagnose(
        1, "zweiundzwanzig Katzen", record(rows), hypothesis("twenty-two cats", 2, -0.6), NORMS
    )
    assert found["flags"] == []


def test_an_ignored_word_is_under_translation():
    rows = [[0.3, 0.3, 0.3, 0.0, 0.1], [0.3, 0.3, 0.3, 0.01, 0.09], [0.3, 0.3, 0.3, 0.0, 0.1]]
    found = diagnose(
        1, "zweiundzwanzig Katzen", record(rows), hypothesis("twenty-two", 2, -0.6), NORMS
    )
    assert "under-translation" in found["flags"]
    assert [w["word"] for w in found["under_attended"]] == ["Katzen"]


def test_repetition_length_and_confidence():
    rows = [[0.0, 0.0, 0.0, 1.0, 0.0]] * 6
    text = "cats cats and more cats and more cats"
    found = diagnose(3, "zweiundzwanzig Katzen", record(rows), hypothesis(text, 5, -9.0), NORMS)
    assert {"over-translation", "length-ratio", "low-confidence", "under-translation"} <= set(
        found["flags"]
    )
    assert found["repeated_ngrams"] == [
        "cats",
        "cats and more",
        "and more cats",
        "cats and more cats",
    ]
    assert found["length_ratio"] == 4.0 and found["mean_log_prob"] == -1.5


def test_repeated_ngrams():
    assert repeated_ngrams("a b c a b c".split()) == ["a b c"]
    assert repeated_ngrams("one hundred and two hundred and three".split()) == []


def test_dev_norms_are_cached_per_model_and_setting(tmp_path):
    """The cached norms belong to the weights and settings that made them: another checkpoint,
    int8 weights or tuned decoding (decode.yaml) computes its own; the same ones reuse them."""
    import json

    from conftest import trained_run

    from nmt import Translator
    from nmt.scoring.diagnostics import dev_norms, weights_digest
    from nmt.translate import save_tuned_decoding

    run = trained_run(tmp_path)
    cache = run / "diagnostics.json"

    def entries(translator, **options):
        dev_norms(translator, run, **options)
        return len(json.loads(cache.read_text()))

    first = Translator.from_run(run, "step-1")
    assert entries(first) == 1
    assert entries(Translator.from_run(run, "step-1")) == 1  # the same weights: cached
    assert entries(first, beam=2) == 2
    assert entries(Translator.from_run(run, "step-2")) == 3
    assert entries(Translator.from_run(run, "step-1", quantize="int8")) == 4
    save_tuned_decoding(run, {"alpha": 0.123})
    assert entries(Translator.from_run(run, "step-1")) == 5  # the run's defaults changed
    digests = {
        weights_digest(Translator.from_run(run, name).model) for name in ("step-1", "step-2")
    }
    assert len(digests) == 2


def test_weights_digest_sees_int8_recurrent_weights():
    """int8 recurrent layers keep their weights packed, out of the state_dict: two int8 models
    that differ only there must still have different digests (else they share cached norms)."""
    import torch

    from nmt.model import Seq2Seq
    from nmt.model.quantize import quantize
    from nmt.recipe import ModelConfig
    from nmt.scoring.diagnostics import weights_digest

    torch.manual_seed(0)
    config = ModelConfig(embedding_size=8, hidden_size=8, decoder_hidden_size=8)
    model = Seq2Seq(config, 20, 20).eval()
    other = Seq2Seq(config, 20, 20).eval()
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other.encoder.rnn.weight_hh_l0[0, 0] += 1.0
    int8, other_int8 = quantize(model, "int8"), quantize(other, "int8")
    assert weights_digest(int8) == weights_digest(quantize(model, "int8"))
    assert weights_digest(int8) != weights_digest(other_int8)
