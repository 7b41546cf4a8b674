import pytest

from nmt.data.subwords import BOS, EOS, PAD, UNK, Tokenizer, looks_segmented
from nmt.errors import NmtError
from nmt.recipe import TokenizerConfig
from conftest import QUICKSTART


def lines(split, lang, count=2000):
    return (QUICKSTART / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()[:count]


@pytest.mark.parametrize("kind, joint", [("unigram", True), ("bpe", False)])
def test_round_trip_and_fixed_special_ids(tmp_path, kind, joint):
    config = TokenizerConfig(type=kind, vocab_size=150, joint=joint)
    tokenizer = Tokenizer.train(config, lines("train", "de"), lines("train", "en"), tmp_path, 1)
    for processor in (tokenizer.source, tokenizer.target):
        assert (processor.pad_id(), processor.unk_id(), processor.bos_id(), processor.eos_id()) == (
            PAD,
            UNK,
            BOS,
            EOS,
        )
    for sentence in lines("dev", "en", 50):
        assert tokenizer.decode_target(tokenizer.encode_target([sentence])[0]) == sentence
    # Reloading from the run directory gives the same model and hash.
    again = Tokenizer.load(tmp_path)
    assert again.sha256 == tokenizer.sha256
    assert again.encode_source(["zweiundvierzig"]) == tokenizer.encode_source(["zweiundvierzig"])


def test_vocabulary_too_large_names_the_key(tmp_path):
    with pytest.raises(NmtError, match=r"tokenizer\.vocab_size: 5000 is more than .* at most \d+"):
        Tokenizer.train(
            TokenizerConfig(vocab_size=5000), ["eins zwei", "drei"], ["one two"], tmp_path, 1
        )


def test_looks_segmented():
    assert looks_segmented(["\u2581zwei und \u2581vier zig", "\u2581eins"])
    assert looks_segmented(["zwei@@ und@@ vierzig"])
    assert not looks_segmented(["zweiundvierzig", "am dritten März"])


def test_subwords_learn_from_a_seeded_sample_of_max_sentences_with_the_recipes_coverage(
    tmp_path, monkeypatch
):
    """tokenizer.max_sentences caps the lines SentencePiece learns from (the same seed draws the
    same sample, so a rerun builds the same vocabulary); character_coverage is passed on."""
    import sentencepiece as spm

    seen = []
    real_train = spm.SentencePieceTrainer.train

    def recorded(**kwargs):
        sentences = list(kwargs.pop("sentence_iterator"))
        seen.append((sentences, kwargs["character_coverage"]))
        return real_train(sentence_iterator=iter(sentences), **kwargs)

    monkeypatch.setattr(spm.SentencePieceTrainer, "train", recorded)
    config = TokenizerConfig(vocab_size=150, joint=True, max_sentences=300, character_coverage=0.98)
    source, target = lines("train", "de"), lines("train", "en")
    first = Tokenizer.train(config, source, target, tmp_path / "a", 7)
    again = Tokenizer.train(config, source, target, tmp_path / "b", 7)
    (sample, coverage), (resample, _) = seen
    assert len(sample) == 300 and coverage == 0.98
    assert set(sample) <= set(source) | set(target) and sample == resample
    assert sample != (source + target)[:300]  # drawn, not the first lines
    assert set(sample) & set(source) and set(sample) & set(target)  # from both sides (joint)
    assert first.sha256 == again.sha256
