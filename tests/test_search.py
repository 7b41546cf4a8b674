import itertools
import random

import pytest
import torch

from nmt.data.batching import pad_sources
from nmt.data.subwords import EOS
from nmt.search import beam_search, greedy_search, length_penalty
from nmt.search.beam import STOPPING, prefixes
from nmt.search.hypothesis import MIN_COVERAGE
from nmt.search.steps import StepRules
from conftest import tiny_model

VOCAB = 6  # pad, unk, bos, eos and two words: search may emit unk, 4, 5 or end


def encode(model, sources):
    source, lengths = pad_sources(sources)
    return model.encode(source, lengths)


@torch.no_grad()
def sequence_log_prob(model, source, tokens):
    """log P(tokens + EOS | source), step by step."""
    encoded = encode(model, [source])
    state = model.initial_state(encoded)
    previous, total = torch.tensor([2]), 0.0
    for token in [*tokens, EOS]:
        log_probs, state, _ = model.decode_step(encoded, state, previous)
        total += float(log_probs[0, token])
        previous = torch.tensor([token])
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("form, alpha", [("none", 0.0), ("avg", 1.0), ("gnmt", 0.6)])
def test_beam_search_equals_exhaustive_search(seed, form, alpha):
    model = tiny_model(vocab=VOCAB, seed=seed)
    source, max_len = [4, 5, 4], 3
    words = [1, 4, 5]
    every = [list(seq) for n in range(max_len + 1) for seq in itertools.product(words, repeat=n)]
    scored = sorted(
        ((sequence_log_prob(model, source, seq), seq) for seq in every),
        key=lambda item: item[0] / length_penalty(len(item[1]) + 1, form, alpha),
        reverse=True,
    )
    # A beam as wide as the number of prefixes of length max_len keeps every prefix alive.
    beam = len(words) ** max_len
    found = beam_search(
        model,
        encode(model, [source]),
        torch.tensor([max_len]),
        beam,
        nbest=5,
        length_norm=form,
        alpha=alpha,
    )[0]
    assert [h.tokens for h in found] == [seq for _, seq in scored[:5]]
    for hyp, (log_prob, seq) in zip(found, scored):
        assert hyp.log_prob == pytest.approx(log_prob, abs=1e-5)


def test_greedy_equals_beam_one():
    model = tiny_model(vocab=VOCAB + 10, seed=4)
    sources = [[5, 6, 7], [8], [9, 10, 11, 12, 13, 4]]
    limits = torch.tensor([6, 6, 6])
    greedy = greedy_search(model, encode(model, sources), limits)
    beam = beam_search(model, encode(model, sources), limits, beam=1, length_norm="none")
    for g, b in zip(greedy, beam):
        assert g[0].tokens == b[0].tokens
        assert g[0].log_prob == pytest.approx(b[0].log_prob, abs=1e-5)


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_batching_and_padding_change_nothing(search):
    model = tiny_model(vocab=30, seed=5)
    sources = [[5, 6, 7, 8, 9, 10], [11], [12, 13, 14], [20, 21, 22, 23]]
    limits = torch.tensor([8, 8, 8, 8])

    def run(batch_sources, batch_limits):
        encoded = encode(model, batch_sources)
        if search == "greedy":
            return greedy_search(model, encoded, batch_limits)
        return beam_search(model, encoded, batch_limits, beam=4, nbest=2)

    together = run(sources, limits)
    for i, source in enumerate(sources):
        alone = run([source], limits[i : i + 1])[0]
        assert [h.tokens for h in alone] == [h.tokens for h in together[i]]
        for a, b in zip(alone, together[i]):
            assert a.score == pytest.approx(b.score, abs=1e-5)


def test_outputs_respect_the_length_limit():
    model = tiny_model(vocab=30, seed=6)
    limits = torch.tensor([1, 2, 3])
    results = beam_search(model, encode(model, [[5], [6], [7]]), limits, beam=3, nbest=3)
    for limit, hyps in zip(limits.tolist(), results):
        assert all(len(h.tokens) <= limit for h in hyps)


def test_attention_is_kept_for_each_output_token():
    model = tiny_model(vocab=30, seed=7)
    hyp = beam_search(
        model, encode(model, [[5, 6, 7]]), torch.tensor([5]), beam=3, keep_attention=True
    )[0][0]
    assert hyp.attention.shape == (len(hyp.tokens) + 1, 4)
    assert torch.allclose(hyp.attention.sum(-1), torch.ones(len(hyp.tokens) + 1))


def test_length_penalty_forms():
    assert length_penalty(4, "none", 0.6) == 1.0
    assert length_penalty(4, "avg", 1.0) == 4
    assert length_penalty(1, "gnmt", 0.6) == 1.0
    assert length_penalty(7, "gnmt", 1.0) == 2.0


def repeats_ngram(seq, n):
    grams = [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]
    return len(grams) != len(set(grams))


@pytest.mark.parametrize(
    "rules",
    [StepRules(min_len=2), StepRules(no_repeat_ngram=1), StepRules(min_len=1, no_repeat_ngram=2)],
)
def test_rules_equal_exhaustive_search_over_allowed_outputs(rules):
    model = tiny_model(vocab=VOCAB, seed=3)
    source, max_len, words = [5, 4], 3, [1, 4, 5]
    allowed = [
        list(seq)
        for n in range(rules.min_len, max_len + 1)
        for seq in itertools.product(words, repeat=n)
        if not (rules.no_repeat_ngram and repeats_ngram(seq, rules.no_repeat_ngram))
    ]
    scored = sorted(
        ((sequence_log_prob(model, source, seq), seq) for seq in allowed),
        reverse=True,
        key=lambda item: item[0],
    )
    found = beam_search(
        model,
        encode(model, [source]),
        torch.tensor([max_len]),
        len(words) ** max_len,
        nbest=3,
        length_norm="none",
        rules=rules,
    )[0]
    assert [h.tokens for h in found] == [seq for _, seq in scored[:3]]
    greedy = greedy_search(model, encode(model, [source]), torch.tensor([max_len]), rules=rules)[0][
        0
    ]
    assert len(greedy.tokens) >= rules.min_len
    assert not (rules.no_repeat_ngram and repeats_ngram(greedy.tokens, rules.no_repeat_ngram))


def draw(model, sources, seed, lines=None, **options):
    """4 samples of each source; `lines`: the sources' line numbers (default 0, 1, ...)."""
    from nmt.search.sampling import sample, stream_seed

    seeds = [stream_seed(seed, line) for line in (lines or range(len(sources)))]
    return sample(
        model, encode(model, sources), torch.tensor([6] * len(sources)), 4, seeds, **options
    )


def test_sampling_is_reproducible_for_a_seed():
    model = tiny_model(vocab=30, seed=8)
    sources = [[5, 6, 7], [8, 9]]
    first, again, other = draw(model, sources, 1), draw(model, sources, 1), draw(model, sources, 2)
    assert [[h.tokens for h in s] for s in first] == [[h.tokens for h in s] for s in again]
    assert [[h.tokens for h in s] for s in first] != [[h.tokens for h in s] for s in other]
    for hyps, source in zip(first, sources):  # scores are the model's own log-probabilities
        for hyp in hyps:
            assert hyp.log_prob == pytest.approx(
                sequence_log_prob(model, source, hyp.tokens), abs=1e-4
            )


def test_a_sentences_samples_do_not_depend_on_its_batch():
    """Each draw has its own random stream, so a line's samples are the same alone or among
    others (the promise behind reading stdin in chunks), and its draws differ from each other."""
    model = tiny_model(vocab=30, seed=8)
    together = draw(model, [[5, 6, 7], [8, 9], [10, 11, 12, 13]], 1)
    alone = draw(model, [[8, 9]], 1, lines=[1])
    assert [h.tokens for h in together[1]] == [h.tokens for h in alone[0]]
    assert len({tuple(h.tokens) for h in together[0]}) > 1
    elsewhere = draw(model, [[8, 9]], 1, lines=[2])  # another line number: other samples
    assert [h.tokens for h in elsewhere[0]] != [h.tokens for h in alone[0]]


def test_the_noise_hash_is_lowbias32_and_its_noise_finite():
    """hash32 in int64 arithmetic equals the 32-bit hash computed on Python ints (no overflow
    anywhere); uniforms never reach 0 or 1, so the Gumbel noise is always finite."""
    from nmt.search.sampling import gumbel_noise, hash32

    def reference(x):
        x = ((x ^ (x >> 16)) * 0x7FEB352D) & 0xFFFFFFFF
        x = ((x ^ (x >> 15)) * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    values = [0, 1, 2, 12345, 2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1]
    values += random.Random(0).sample(range(2**32), 200)
    assert hash32(torch.tensor(values)).tolist() == [reference(v) for v in values]
    noise = gumbel_noise(torch.tensor([0, 2**32 - 1]), 0, hash32(torch.arange(5000)))
    assert bool(torch.isfinite(noise).all())


def test_a_shortlists_column_order_does_not_change_a_sample():
    """Noise belongs to token ids, not columns: a shortlist holding every token, in another
    order, draws exactly the samples of the full vocabulary."""
    from nmt.search.sampling import sample, stream_seed

    model = tiny_model(vocab=30, seed=5)
    sources = [[5, 6, 7], [8, 9]]
    seeds = [stream_seed(4, line) for line in range(2)]
    limits = torch.tensor([6, 6])
    full = sample(model, encode(model, sources), limits, 3, seeds)
    shuffled = list(range(4, 30))
    random.Random(1).shuffle(shuffled)
    vocabulary = torch.tensor([0, 1, 2, 3, *shuffled])  # special ids first, as shortlists keep them
    encoded = model.shortlisted(encode(model, sources), vocabulary)
    listed = sample(model, encoded, limits, 3, seeds, vocabulary=vocabulary)
    assert [[h.tokens for h in s] for s in listed] == [[h.tokens for h in s] for s in full]


def test_samples_follow_the_models_distribution():
    """Gumbel-max draws: over many draws of a one-step output, each token's share matches its
    probability (tolerance: 4 standard errors of 4,000 draws)."""
    from nmt.search.sampling import sample, stream_seed

    model = tiny_model(vocab=8, seed=3)
    encoded = encode(model, [[5, 6]])
    draws = 4000
    found = sample(model, encoded, torch.tensor([1]), draws, [stream_seed(7, 0)])[0]
    first = torch.tensor([h.tokens[0] if h.tokens else EOS for h in found])
    assert len(found) == draws
    encoded_one = encode(model, [[5, 6]])
    state = model.initial_state(encoded_one)
    log_probs = model.decode_step(encoded_one, state, torch.tensor([2]))[0]
    probs = StepRules().apply(log_probs, 0, torch.tensor([1]), None, None).softmax(-1)[0]
    for token, p in enumerate(probs.tolist()):
        share = (first == token).float().mean().item()
        assert abs(share - p) <= 4 * (p * (1 - p) / draws) ** 0.5 + 1e-3, (token, share, p)


def test_low_temperature_and_top_k_one_are_greedy():
    model = tiny_model(vocab=30, seed=9)
    sources = [[5, 6, 7], [8, 9], [10]]
    greedy = greedy_search(model, encode(model, sources), torch.tensor([6] * 3))
    # T = 1e-6: this model's closest call (log-probabilities 3e-4 apart) is 300 nats apart
    for options in ({"temperature": 1e-6}, {"top_k": 1}, {"top_p": 1e-6}):
        for hyps, best in zip(draw(model, sources, 3, **options), greedy):
            assert all(h.tokens == best[0].tokens for h in hyps)


def test_nucleus_keeps_the_smallest_set_reaching_p():
    from nmt.search.sampling import truncate

    log_probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = torch.isfinite(truncate(log_probs, 1.0, 0, 0.75))
    assert kept.tolist() == [[True, True, False, False]]
    kept = torch.isfinite(truncate(log_probs, 1.0, 3, 0.95))
    assert kept.tolist() == [[True, True, True, False]]


def test_an_ensemble_of_one_equals_the_model_and_averages_log_probs():
    from nmt.model.ensemble import Ensemble

    model, other = tiny_model(vocab=30, seed=10), tiny_model(vocab=30, seed=11)
    sources, limits = [[5, 6, 7], [8]], torch.tensor([6, 6])
    single = beam_search(model, encode(model, sources), limits, beam=3, nbest=2)
    alone = Ensemble([model])
    for a, b in zip(single, beam_search(alone, encode(alone, sources), limits, beam=3, nbest=2)):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-6)
    pair = Ensemble([model, other])
    encoded = encode(pair, sources)
    previous = torch.tensor([2, 2])
    log_probs, _, _ = pair.decode_step(encoded, pair.initial_state(encoded), previous)
    expected = [
        m.decode_step(e, m.initial_state(e), previous)[0]
        for m, e in zip((model, other), encoded.members)
    ]
    assert torch.allclose(log_probs, (expected[0] + expected[1]) / 2)


@torch.no_grad()
def sequence_coverage_bonus(model, source, tokens, beta):
    encoded = encode(model, [source])
    state = model.initial_state(encoded)
    previous, coverage = torch.tensor([2]), torch.zeros(len(source) + 1)
    for token in [*tokens, EOS]:
        _, state, weights = model.decode_step(encoded, state, previous)
        coverage += weights[0]
        previous = torch.tensor([token])
    return beta * float(coverage.clamp(max=1.0).log().sum())


def test_coverage_penalty_equals_exhaustive_search():
    model = tiny_model(vocab=VOCAB, seed=12)
    source, max_len, words, beta = [4, 5, 4, 5], 3, [1, 4, 5], 0.4
    every = [list(seq) for n in range(max_len + 1) for seq in itertools.product(words, repeat=n)]
    scored = sorted(
        (
            (
                sequence_log_prob(model, source, seq) / length_penalty(len(seq) + 1, "gnmt", 0.6)
                + sequence_coverage_bonus(model, source, seq, beta),
                seq,
            )
            for seq in every
        ),
        key=lambda item: item[0],
        reverse=True,
    )
    found = beam_search(
        model, encode(model, [source]), torch.tensor([max_len]), 27, nbest=3, coverage_penalty=beta
    )[0]
    assert [h.tokens for h in found] == [seq for _, seq in scored[:3]]
    assert [h.score for h in found] == pytest.approx([s for s, _ in scored[:3]], abs=1e-4)


@pytest.mark.parametrize("search", ["greedy", "beam", "sample"])
def test_forced_prefix_starts_every_output(search):
    from nmt.search.sampling import sample

    model = tiny_model(vocab=30, seed=13)
    sources = [[5, 6, 7], [8, 9], [10]]
    prefix = torch.tensor([[20, 21], [22, 0], [0, 0]])  # 0 = PAD: no (further) prefix
    encoded, limits = encode(model, sources), torch.tensor([6, 6, 6])
    if search == "greedy":
        results = greedy_search(model, encoded, limits, prefix=prefix)
    elif search == "beam":
        results = beam_search(model, encoded, limits, beam=3, nbest=3, prefix=prefix)
    else:
        results = sample(model, encoded, limits, 3, list(range(len(sources))), prefix=prefix)
    for hyps, wanted, source in zip(results, ([20, 21], [22], []), sources):
        for hyp in hyps:
            assert hyp.tokens[: len(wanted)] == wanted
            assert hyp.log_prob == pytest.approx(
                sequence_log_prob(model, source, hyp.tokens), abs=1e-4
            )


class FixedTable:
    """A stand-in model whose next-token distribution depends only on the previous token:
    after BOS, 'a' (id 4) has p=0.6 and EOS p=0.4; after 'a', EOS has p=0.6 and 'a' p=0.4."""

    class State:
        def __init__(self, rows):
            self.rows = rows
            self.device = torch.device("cpu")

        def index_select(self, index):
            return FixedTable.State(self.rows.index_select(0, index))

    def encode(self, rows):
        return self.State(rows)

    def initial_state(self, encoded):
        return encoded

    def decode_step(self, encoded, state, previous):
        log_probs = torch.full((previous.size(0), 6), float("-inf"))
        after_bos = previous == 2
        log_probs[:, 4] = torch.where(after_bos, torch.tensor(0.6).log(), torch.tensor(0.4).log())
        log_probs[:, EOS] = torch.where(after_bos, torch.tensor(0.4).log(), torch.tensor(0.6).log())
        return log_probs, state, torch.ones(previous.size(0), 1)


def test_length_normalization_changes_the_winner():
    """Unnormalized, the empty output wins (log 0.4 > log 0.6 + log 0.6); per token, 'a' wins."""
    model = FixedTable()
    encoded, limits = model.encode(torch.zeros(1)), torch.tensor([3])
    plain = beam_search(model, encoded, limits, beam=2, length_norm="none")[0][0]
    average = beam_search(model, encoded, limits, beam=2, length_norm="avg", alpha=1.0)[0][0]
    assert plain.tokens == [] and plain.log_prob == pytest.approx(float(torch.tensor(0.4).log()))
    assert average.tokens == [4]
    assert average.score == pytest.approx(float(torch.tensor(0.36).log()) / 2)
    assert greedy_search(model, encoded, limits)[0][0].tokens == [4]  # greedy takes 'a' first


class PrefixTable:
    """A stand-in model whose next-token probabilities depend on the output so far:
    `table[prefix]` maps tokens to probabilities (a prefix not in it ends: EOS has p=1).
    `attention[prefix]` gives that step's attention (default: uniform over real tokens)."""

    class State:
        def __init__(self, prefixes, mask):
            self.prefixes, self.mask, self.device = prefixes, mask, torch.device("cpu")

        def index_select(self, index):
            return PrefixTable.State(
                [self.prefixes[i] for i in index.tolist()], self.mask.index_select(0, index)
            )

    def __init__(self, table, attention=None):
        self.table, self.attention = table, attention or {}

    def encode(self, mask):
        return self.State([()] * mask.size(0), mask)

    def initial_state(self, encoded):
        return encoded

    def decode_step(self, encoded, state, previous):
        prefixes = [
            p if token == 2 else p + (token,) for p, token in zip(state.prefixes, previous.tolist())
        ]
        probs = torch.zeros(len(prefixes), VOCAB)
        weights = state.mask / state.mask.sum(-1, keepdim=True)
        for row, prefix in enumerate(prefixes):
            for token, p in self.table.get(prefix, {EOS: 1.0}).items():
                probs[row, token] = p
            if prefix in self.attention:
                weights[row] = torch.tensor(self.attention[prefix])
        return probs.log(), self.State(prefixes, state.mask), weights


# 'a' then EOS beats EOS at once, and 'a a' then EOS beats both, under every length
# normalization; but when 'a' ends, two hypotheses (beam 2) have finished while 'a a' is alive.
A = 4
OVERTAKEN = {
    (): {A: 0.7, EOS: 0.2, 5: 0.1},
    (A,): {A: 0.55, EOS: 0.45},
    (A, A): {EOS: 0.99, 5: 0.01},
}


@pytest.mark.parametrize("form, alpha", [("none", 0.0), ("avg", 1.0), ("gnmt", 0.6), ("gnmt", 1.0)])
def test_exact_stopping_finds_what_stopping_at_the_first_beam_finished_misses(form, alpha):
    model = PrefixTable(OVERTAKEN)
    encoded, limits = model.encode(torch.ones(1, 3, dtype=torch.bool)), torch.tensor([4])

    def search(stopping, nbest=1):
        return beam_search(
            model,
            encoded,
            limits,
            beam=2,
            nbest=nbest,
            length_norm=form,
            alpha=alpha,
            stopping=stopping,
        )[0]

    first, exact = search("first")[0], search("exact")[0]
    assert first.tokens == [A]
    assert exact.tokens == [A, A]
    assert exact.log_prob == pytest.approx(float(torch.tensor(0.7 * 0.55 * 0.99).log()))
    assert exact.score > first.score
    assert [h.tokens for h in search("exact", nbest=2)] == [[A, A], [A]]


def test_a_real_source_token_without_attention_is_penalized():
    """'a' is likelier than 'b' but never attends to the source's last real token (attention
    exactly 0, as when it underflows); the last column is padding, also never attended."""
    zero, half = [0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]
    model = PrefixTable(
        {(): {A: 0.5, 5: 0.4, EOS: 0.1}, (A,): {EOS: 1.0}, (5,): {EOS: 1.0}},
        attention={(): zero, (A,): zero, (5,): half},
    )
    encoded = model.encode(torch.tensor([[True, True, True, False]]))
    found = beam_search(
        model, encoded, torch.tensor([3]), beam=2, nbest=2, length_norm="none", coverage_penalty=1.0
    )[0]
    assert [h.tokens for h in found] == [[5], [A]]
    dropped = float(torch.tensor(MIN_COVERAGE).log())  # token 3 of 'a', about -23
    assert found[1].score == pytest.approx(float(torch.tensor(0.5).log()) + dropped, abs=1e-4)
    # 'b' covers tokens 1 and 2 by 0.5 each, token 3 fully; the padding column counts nothing.
    assert found[0].score == pytest.approx(float(torch.tensor(0.4 * 0.25).log()), abs=1e-5)


@torch.no_grad()
def unstopped_beam_search(model, source, max_len, beam, form, alpha, min_len, beta, steps=None):
    """Beam search in plain Python with beam_search's pruning (of the 2·beam best extensions,
    EOS ones ranked within the beam finish and the `beam` best others go on) but no early
    stopping: it runs to the length limit. Every finished hypothesis, best first. `steps` (a
    list) receives each step's kept (tokens, log-prob) and finished (tokens, log-prob, score)."""
    encoded = encode(model, [source])
    state = model.initial_state(encoded)
    live = [([], 0.0, torch.zeros(len(source) + 1))]  # tokens, log-prob, coverage; row of state
    done = []
    for t in range(max_len + 1):
        previous = torch.tensor([tokens[-1] if tokens else 2 for tokens, _, _ in live])
        log_probs, state, weights = model.decode_step(
            encoded.index_select(torch.zeros(len(live), dtype=torch.long)), state, previous
        )
        allowed = (
            [EOS]
            if t >= max_len
            else [1, *(w for w in range(4, log_probs.size(1)))] + ([] if t < min_len else [EOS])
        )
        candidates = []
        for row, (tokens, log_prob, coverage) in enumerate(live):
            coverage = coverage + weights[row]
            for token in allowed:
                candidates.append(
                    (log_prob + float(log_probs[row, token]), tokens, token, row, coverage)
                )
        candidates = sorted(candidates, key=lambda c: c[0], reverse=True)[: 2 * beam]
        ended = []
        for rank, (log_prob, tokens, token, _, coverage) in enumerate(candidates):
            if token == EOS and rank < beam:
                bonus = beta * float(coverage.clamp(MIN_COVERAGE, 1.0).log().sum())
                score = log_prob / length_penalty(len(tokens) + 1, form, alpha) + bonus
                done.append((score, tokens))
                ended.append((tokens, log_prob, score))
        go_on = [c for c in candidates if c[2] != EOS][:beam]
        if steps is not None:
            kept = [(tokens + [token], log_prob) for log_prob, tokens, token, _, _ in go_on]
            steps.append({"kept": kept, "finished": ended})
        if not go_on:
            break
        state = state.index_select(torch.tensor([c[3] for c in go_on]))
        live = [
            (tokens + [token], log_prob, coverage) for log_prob, tokens, token, _, coverage in go_on
        ]
    return sorted(done, key=lambda d: d[0], reverse=True)


def random_case(seed):
    """A tiny model with sharpened (seeded) output distributions and a random search setting."""
    rng = random.Random(seed)
    model = tiny_model(vocab=VOCAB, seed=seed)
    with torch.no_grad():
        model.output.weight.mul_(rng.uniform(1.0, 8.0))
        model.output.bias.mul_(rng.uniform(1.0, 8.0))
    sources = [[rng.randrange(4, VOCAB) for _ in range(rng.randint(1, 4))] for _ in range(3)]
    max_lens = [rng.randint(1, 6) for _ in sources]
    beam = rng.randint(1, 3)
    form, alpha = rng.choice(
        [("none", 0.0), ("avg", 1.0), ("avg", 0.0), ("gnmt", 0.6), ("gnmt", 2.0)]
    )
    return dict(
        model=model,
        sources=sources,
        max_lens=max_lens,
        beam=beam,
        nbest=rng.randint(1, beam),
        form=form,
        alpha=alpha,
        min_len=min(rng.choice([0, 0, 1, 2]), *max_lens),
        beta=rng.choice([0.0, 0.0, 0.3]),
    )


def test_exact_stopping_equals_beam_search_run_to_the_length_limit():
    """Over many random tiny models and settings with beams narrower than the hypothesis space,
    stopping early by the exact rule gives what the same beam gives without stopping early; the
    fast rule differs in some of them and is never better."""
    differ = 0
    for seed in range(100):
        case = random_case(seed)
        model, beam, nbest = case["model"], case["beam"], case["nbest"]
        run = {
            stopping: beam_search(
                model,
                encode(model, case["sources"]),
                torch.tensor(case["max_lens"]),
                beam,
                nbest,
                case["form"],
                case["alpha"],
                rules=StepRules(min_len=case["min_len"]),
                coverage_penalty=case["beta"],
                stopping=stopping,
            )
            for stopping in STOPPING
        }
        for i, (source, max_len) in enumerate(zip(case["sources"], case["max_lens"])):
            reference = unstopped_beam_search(
                model,
                source,
                max_len,
                beam,
                case["form"],
                case["alpha"],
                case["min_len"],
                case["beta"],
            )[:nbest]
            exact, first = run["exact"][i], run["first"][i]
            where = f"seed {seed}, sentence {i}: {case}"
            assert [h.tokens for h in exact] == [tokens for _, tokens in reference], where
            assert [h.score for h in exact] == pytest.approx([s for s, _ in reference], abs=1e-5), (
                where
            )
            assert exact[0].score >= first[0].score - 1e-6, where
            differ += [h.tokens for h in first] != [h.tokens for h in exact]
    assert differ >= 10  # the rule matters in these cases


def test_recorded_steps_are_the_beam_at_each_step():
    """`beam_search(steps=...)` records, per sentence and step, the hypotheses the beam keeps and
    those that end, as a plain-Python beam search sees them, until the sentence stops; its
    result is among the recorded finished hypotheses."""
    checked = 0
    for seed in range(30):
        case = random_case(seed)
        model, beam = case["model"], max(case["beam"], 2)
        steps = [[] for _ in case["sources"]]
        found = beam_search(
            model,
            encode(model, case["sources"]),
            torch.tensor(case["max_lens"]),
            beam,
            1,
            case["form"],
            case["alpha"],
            rules=StepRules(min_len=case["min_len"]),
            coverage_penalty=case["beta"],
            steps=steps,
        )
        for i, (source, max_len) in enumerate(zip(case["sources"], case["max_lens"])):
            reference: list = []
            unstopped_beam_search(
                model, source, max_len, beam, case["form"], case["alpha"], case["min_len"],
                case["beta"], reference,
            )  # fmt: skip
            recorded, rebuilt = steps[i], prefixes(steps[i])
            assert 1 <= len(recorded) <= len(reference), f"seed {seed}, sentence {i}"
            for got, tokens, want in zip(recorded, rebuilt, reference):
                assert tokens["kept"] == [t for t, _ in want["kept"]]
                assert [h["log_prob"] for h in got["kept"]] == pytest.approx(
                    [p for _, p in want["kept"]], abs=1e-5
                )
                assert tokens["finished"] == [t for t, _, _ in want["finished"]]
                assert [h["score"] for h in got["finished"]] == pytest.approx(
                    [s for _, _, s in want["finished"]], abs=1e-5
                )
            ended = [t for step in rebuilt for t in step["finished"]]
            assert found[i][0].tokens in ended
            checked += len(recorded)
    assert checked > 100


def test_recording_steps_changes_no_result():
    case = random_case(4)
    model = case["model"]
    runs = [
        beam_search(
            model,
            encode(model, case["sources"]),
            torch.tensor(case["max_lens"]),
            3,
            2,
            keep_attention=True,
            steps=steps,
        )
        for steps in (None, [[] for _ in case["sources"]])
    ]
    assert [[(h.tokens, h.score) for h in hyps] for hyps in runs[0]] == [
        [(h.tokens, h.score) for h in hyps] for hyps in runs[1]
    ]


@pytest.mark.parametrize("seed", range(8))
def test_sampling_with_no_repeat_unigrams_when_some_samples_end_early(seed):
    """A finished sample keeps "producing" EOS; blocking repeated unigrams must not leave it
    with nothing to draw (all log-probabilities -inf), which made torch.multinomial fail."""
    from nmt.search.sampling import sample

    model = tiny_model(vocab=VOCAB, seed=seed)
    sources = [[4, 5], [5]]
    drawn = sample(
        model,
        encode(model, sources),
        torch.tensor([1, 6]),
        4,
        [seed, seed + 1],
        rules=StepRules(no_repeat_ngram=1),
    )
    for hyps in drawn:  # the first sentence's samples end at step 1, the second goes on
        for hyp in hyps:
            assert len(set(hyp.tokens)) == len(hyp.tokens)  # no token twice
