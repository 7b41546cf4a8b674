"""Vocabulary shortlists: the lexicon behind them and search restricted to them."""

import itertools

import numpy as np
import pytest
import torch

from nmt.data.corpus import EncodedSplit
from nmt.data.subwords import EOS, PAD
from nmt.errors import NmtError
from nmt.data.lexicon import Lexicon, build_lexicon
from nmt.run_dir import LEXICON
from nmt.model.quantize import quantize
from nmt.search import beam_search, greedy_search, length_penalty
from conftest import tiny_model
from test_search import encode


def encoded_split(sources, targets) -> EncodedSplit:
    def flat(rows):
        offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
        return np.concatenate([np.asarray(r, dtype=np.int32) for r in rows]), offsets

    src_values, src_offsets = flat(sources)
    tgt_values, tgt_offsets = flat(targets)
    return EncodedSplit(src_values, src_offsets, tgt_values, tgt_offsets, np.arange(len(sources)))


def test_model_one_finds_each_words_translation():
    # Source words 10..29 translate to target words 40..59 (in another order); every target
    # also has the function word 4, which Model 1's NULL source token should absorb.
    rng = np.random.default_rng(0)
    translation = dict(zip(range(10, 30), rng.permutation(np.arange(40, 60)).tolist()))
    sources, targets = [], []
    for _ in range(400):
        words = rng.choice(np.arange(10, 30), size=rng.integers(2, 6), replace=False).tolist()
        sources.append(words)
        targets.append(rng.permutation([translation[w] for w in words] + [4]).tolist())
    lexicon = build_lexicon(encoded_split(sources, targets), 30, 60, joint=False)
    assert lexicon.translations.shape == (30, 50)
    assert {s: int(lexicon.translations[s, 0]) for s in translation} == translation
    assert int(lexicon.by_frequency[0]) == 4
    assert (lexicon.translations[PAD] == PAD).all()  # NULL's row is not a token's


def small_lexicon(joint: bool = True) -> Lexicon:
    translations = torch.full((20, 50), PAD, dtype=torch.long)
    translations[7, :4] = torch.tensor([4, 11, 12, 13])  # 4 is frequent: 11, 12, 13 are novel
    translations[8, :2] = torch.tensor([14, 15])
    by_frequency = torch.tensor([4, 5, 6, *range(7, 20), 0, 1, 2, 3])
    return Lexicon(translations, by_frequency, joint)


def test_shortlist_unions_specials_frequent_translations_and_copies():
    source = torch.tensor([[7, 8], [8, PAD]])
    assert small_lexicon().shortlist(source, per_token=2, frequent=2).tolist() == [
        0,
        1,
        2,
        3,
        4,
        5,
        7,
        8,
        11,
        12,
        14,
        15,
    ]
    assert small_lexicon(joint=False).shortlist(source, per_token=1, frequent=1).tolist() == [
        0,
        1,
        2,
        3,
        4,
        11,
        14,
    ]
    required = torch.tensor([[19, PAD]])
    assert 19 in small_lexicon().shortlist(source, 1, 1, required).tolist()


def test_a_lexicon_survives_saving(tmp_path):
    lexicon = small_lexicon(joint=False)
    lexicon.save(tmp_path / LEXICON)
    again = Lexicon.load(tmp_path / LEXICON)
    assert torch.equal(again.translations, lexicon.translations)
    assert torch.equal(again.by_frequency, lexicon.by_frequency) and again.joint is False
    (tmp_path / LEXICON).write_bytes(b"not safetensors")
    with pytest.raises(NmtError, match=LEXICON):
        Lexicon.load(tmp_path / LEXICON)


@torch.no_grad()
def restricted_log_prob(model, source, tokens, vocabulary):
    """log P(tokens + EOS | source) with each step's distribution renormalized over
    `vocabulary`: what search over a shortlist must maximise."""
    encoded = encode(model, [source])
    state = model.initial_state(encoded)
    previous, total = torch.tensor([2]), 0.0
    for token in [*tokens, EOS]:
        log_probs, state, _ = model.decode_step(encoded, state, previous)
        total += float(
            torch.log_softmax(log_probs[0, vocabulary], -1)[vocabulary.tolist().index(token)]
        )
        previous = torch.tensor([token])
    return total


@pytest.mark.parametrize("seed", [0, 1])
def test_beam_search_over_a_shortlist_equals_exhaustive_search_over_it(seed):
    model = tiny_model(vocab=9, seed=seed)
    vocabulary = torch.tensor([0, 1, 2, 3, 5, 8])  # words 4, 6 and 7 are left out
    source, max_len, words = [4, 6, 7], 3, [1, 5, 8]
    every = [list(seq) for n in range(max_len + 1) for seq in itertools.product(words, repeat=n)]
    scored = sorted(
        ((restricted_log_prob(model, source, seq, vocabulary), seq) for seq in every),
        key=lambda item: item[0] / length_penalty(len(item[1]) + 1, "gnmt", 0.6),
        reverse=True,
    )
    encoded = model.shortlisted(encode(model, [source]), vocabulary)
    found = beam_search(
        model,
        encoded,
        torch.tensor([max_len]),
        len(words) ** max_len,
        nbest=4,
        vocabulary=vocabulary,
    )[0]
    assert [h.tokens for h in found] == [seq for _, seq in scored[:4]]
    for hyp, (log_prob, _) in zip(found, scored):
        assert hyp.log_prob == pytest.approx(log_prob, abs=1e-5)
    greedy = greedy_search(model, encoded, torch.tensor([max_len]), vocabulary=vocabulary)[0][0]
    assert set(greedy.tokens) <= set(words)


@pytest.mark.parametrize("kind", ["float", "int8", "ensemble"])
def test_a_shortlist_of_the_whole_vocabulary_changes_nothing(kind):
    from nmt.model.ensemble import Ensemble

    model = tiny_model(vocab=40, seed=5)
    if kind == "int8":
        model = quantize(model, "int8")
    elif kind == "ensemble":
        model = Ensemble([model, tiny_model(vocab=40, seed=6)])
    sources = [[5, 6, 7, 9], [8, 30], [9, 10, 11, 12, 13, 4]]
    limits = torch.tensor([7, 7, 7])
    everything = torch.arange(40)
    prefix = torch.tensor([[20, 21], [PAD, PAD], [22, PAD]])
    for search, options in ((beam_search, dict(beam=4, nbest=2)), (greedy_search, {})):
        plain = search(model, encode(model, sources), limits, prefix=prefix, **options)
        short = search(
            model,
            model.shortlisted(encode(model, sources), everything),
            limits,
            prefix=prefix,
            vocabulary=everything,
            **options,
        )
        for a, b in zip(plain, short):
            assert [h.tokens for h in a] == [h.tokens for h in b]
            assert [h.log_prob for h in a] == pytest.approx([h.log_prob for h in b], abs=1e-5)


def test_int8_rows_are_the_int8_layers_rows():
    from nmt.model.int8 import quantized_rows

    layer = quantize(torch.nn.Sequential(torch.nn.Linear(16, 50)), "int8")[0]
    rows = torch.tensor([0, 3, 7, 49])
    x = torch.randn(5, 16)
    assert torch.allclose(quantized_rows(layer, rows)(x), layer(x)[:, rows], atol=1e-5)


def test_search_forces_a_prefix_through_a_shortlisted_vocabulary():
    model = tiny_model(vocab=9, seed=2)
    vocabulary = torch.tensor([0, 1, 2, 3, 5, 8])
    encoded = model.shortlisted(encode(model, [[4, 6]]), vocabulary)
    for search, options in ((beam_search, dict(beam=3)), (greedy_search, {})):
        found = search(
            model,
            encoded,
            torch.tensor([4]),
            prefix=torch.tensor([[8, 5]]),
            vocabulary=vocabulary,
            **options,
        )[0][0]
        assert found.tokens[:2] == [8, 5]


def test_translator_keeps_a_forced_prefix_outside_the_shortlist(tmp_path):
    """Translator puts the prefix's tokens into the shortlist it builds: a prefix word that
    neither the frequent words nor the source's translations bring in still begins the
    output, as it does without a shortlist."""
    from conftest import trained_run

    from nmt import Translator

    translator = Translator.from_run(trained_run(tmp_path))
    source, prefix = "drei Katzen", "birds and chairs"
    source_ids = torch.tensor(translator.tokenizer.encode_source([source]))
    prefix_ids = translator.tokenizer.encode_target([prefix])[0]
    options = dict(shortlist=1, shortlist_frequent=1)
    plain = translator.lexicon.shortlist(source_ids, 1, 1).tolist()
    assert set(prefix_ids) - set(plain), "the case under test: a prefix outside the shortlist"
    for settings in ({}, options, {**options, "beam": 1}):
        found = translator.nbest([source], prefixes=[prefix], **settings)[0][0]
        assert found.text.startswith(prefix), (settings, found.text)
        assert found.tokens[: len(prefix_ids)] == prefix_ids


def test_translate_with_a_shortlist_builds_the_lexicon_once(tiny_recipe, tmp_path, capsys):
    from nmt.cli import train_main, translate_main
    from test_cli import run

    run_dir = tmp_path / "run"
    code, _, err = run(train_main, [tiny_recipe, "--run-dir", run_dir, "train.max_steps=4"], capsys)
    assert code == 0, err
    corpus = tiny_recipe.parent / "corpus"
    args = [
        "-m",
        run_dir,
        "--beam",
        3,
        "-i",
        corpus / "test.de",
        "--shortlist",
        5,
        "--shortlist-frequent",
        20,
    ]
    code, out, err = run(translate_main, args, capsys)
    assert code == 0, err
    assert (run_dir / LEXICON).is_file()
    assert len(out.splitlines()) == len((corpus / "test.de").read_text().splitlines())
    # Once built, the lexicon is all it needs: not the training data.
    (corpus / "train.de").rename(corpus / "moved.de")
    assert run(translate_main, args, capsys)[1] == out
    (run_dir / LEXICON).unlink()
    code, _, err = run(translate_main, args, capsys)
    assert code == 2 and err.count("\n") == 1
    assert LEXICON in err and "train.de" in err
