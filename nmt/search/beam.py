"""Batched beam search with length normalization and n-best lists.

All sentences of a batch advance together as one (sentences × beam) batch; each step is a
handful of tensor operations (top-k over sentences' beams × vocabulary, one `index_select` of the
decoder state). A sentence leaves the batch as soon as its result is settled (see `stopping`),
so finished sentences cost nothing more.

Shapes: B sentences in the batch, n of them still searched, K the beam size, N = n·K rows (a
sentence's K beams are consecutive rows), V vocabulary columns (a shortlist's size with one),
C = min(2K, V) candidates kept per beam, S source length, t the step, P prefix length.
"""

from __future__ import annotations

import torch

from nmt.data.subwords import BOS, EOS
from nmt.model.interface import Decodable, Encoded, EncodedSource, State
from nmt.search.hypothesis import Hypothesis, coverage_bonus, length_penalty
from nmt.search.steps import StepRules, to_columns, to_ids


STOPPING = ("exact", "first")  # when a sentence's search ends; see `beam_search`


@torch.no_grad()
def beam_search(
    model: Decodable[Encoded, State],
    encoded: Encoded,
    max_lengths: torch.Tensor,
    beam: int,
    nbest: int = 1,
    length_norm: str = "gnmt",
    alpha: float = 0.6,
    keep_attention: bool = False,
    rules: StepRules = StepRules(),
    prefix: torch.Tensor | None = None,
    coverage_penalty: float = 0.0,
    vocabulary: torch.Tensor | None = None,
    stopping: str = "exact",
    steps: list[list[dict]] | None = None,
) -> list[list[Hypothesis]]:
    """The `nbest` best hypotheses per sentence, best first by normalized score.

    `prefix` (B, P), PAD-padded, forces each output's first tokens. `coverage_penalty` β adds
    GNMT's β·Σ_i log(min(Σ_t attention_ti, 1)) over source tokens i to finished scores, which
    favours outputs that attend to every source token. `vocabulary` (V,): the sorted target ids
    of a shortlist the model's output layer scores (see `Seq2Seq.shortlisted`); the search runs
    in its columns and maps them back to ids.

    A sentence stops at its length limit, or earlier as `stopping` says. `exact`: once no
    hypothesis left in its beam can score above its `nbest`-th best finished one, so the result
    is what the same beam run to the length limit would give. `first`: once `beam` hypotheses
    have finished, although one still in the beam may score better (faster, not exact).

    `steps` (one empty list per sentence) receives each sentence's beam after every step: the
    hypotheses kept and those that finished, with their scores and parents (`_record_step`);
    the course material's beam search diagram, drawn from a real search (`prefixes` rebuilds
    the hypotheses' tokens). It costs nothing when None.

    Why one long function: every step rebinds the same dozen tensors together (the beams'
    scores, tokens, decoder state, attention history and coverage, and, when sentences leave,
    all that is kept per sentence). As helpers, each step would take and return most of them
    and hide which ones shrink together; so the loop stays whole and reads as one page, a
    comment per step: score, rank candidates, collect finished, continue the beam, stop rule,
    reorder the beams, shrink finished sentences.
    """
    if nbest > beam:
        raise ValueError(f"nbest ({nbest}) cannot exceed the beam size ({beam})")
    if stopping not in STOPPING:
        raise ValueError(f"unknown stopping rule {stopping!r}; use one of {', '.join(STOPPING)}")
    batch, device = max_lengths.size(0), encoded.device
    max_lengths = max_lengths.to(device)
    sentence_ids = torch.arange(
        batch, device=device
    )  # original index of each sentence still searched
    # A sentence's beams share its encoder state (attention groups rows by sentence).
    state = model.initial_state(encoded).index_select(sentence_ids.repeat_interleave(beam))
    # Cumulative log-probabilities (n, K); at the start only the first beam is alive.
    scores = torch.full((batch, beam), float("-inf"), device=device)
    scores[:, 0] = 0.0
    tokens = torch.full((batch * beam, 1), BOS, dtype=torch.long, device=device)  # (N, t + 1)
    history = None  # attention so far, (N, t, S), kept only when asked for
    coverage = None  # attention summed over steps, (N, S), for the coverage penalty
    if vocabulary is not None:
        vocabulary = vocabulary.to(device)
    if prefix is not None:
        prefix = to_columns(vocabulary, prefix.to(device))  # (B, P)
    results: list[list[Hypothesis]] = [[] for _ in range(batch)]
    # The `beam` best normalized scores finished so far per sentence, (n, K), in float64 as
    # `hypothesis.finished` computes them.
    best = torch.full((batch, beam), float("-inf"), dtype=torch.float64, device=device)
    top_penalty = length_penalty(max_lengths.double() + 1, length_norm, alpha)  # (n,)
    # Per row, (N,), (N, P) and (N, S): each sentence's limit, prefix and real tokens, K times.
    row_limits, row_prefix, row_real = _per_row(
        max_lengths, prefix, beam, encoded, coverage_penalty
    )

    for t in range(int(max_lengths.max()) + 1):
        n = sentence_ids.size(0)  # sentences still searched: N = n·K rows
        # Score: every row's next-token log-probabilities (N, V) and attention (N, S).
        log_probs, state, weights = model.decode_step(
            encoded, state, to_ids(vocabulary, tokens[:, -1])
        )
        log_probs = rules.apply(log_probs, t, row_limits, tokens[:, 1:], row_prefix)  # (N, V)
        # Rank candidates: the 2·beam best of a sentence are among the 2·beam best of each of
        # its beams, so rank within each beam first (no (n, beam × vocab) sum is ever built).
        per_beam = min(2 * beam, log_probs.size(-1))  # C
        beam_scores, beam_tokens = log_probs.topk(per_beam, dim=1)  # (N, C)
        candidates = (scores.view(-1, 1) + beam_scores).view(n, beam * per_beam)  # (n, K·C)
        top_scores, top_ids = candidates.topk(min(2 * beam, beam * per_beam), dim=1)  # (n, 2K)
        origin = top_ids // per_beam  # the beam each candidate extends, (n, 2K)
        token = beam_tokens.view(n, beam * per_beam).gather(1, top_ids)  # (n, 2K)
        # Each candidate's row in N, (n, 2K)
        rows = origin + (torch.arange(n, device=device) * beam)[:, None]
        if keep_attention:
            step = weights.unsqueeze(1)  # (N, 1, S)
            history = step if history is None else torch.cat([history, step], 1)  # (N, t + 1, S)
        if coverage_penalty:
            coverage = weights if coverage is None else coverage + weights  # (N, S)
            assert row_real is not None  # `_per_row` gives it with a coverage penalty
            bonus = coverage_bonus(coverage, row_real, coverage_penalty)  # (N,)

        # Collect finished: EOS candidates ranked within the beam, with a finite score, end here.
        ended_now: list[tuple[int, dict]] = []  # (sentence, finished entry), for `steps`
        ends = (token == EOS) & torch.isfinite(top_scores)  # (n, 2K)
        ends[:, beam:] = False
        if bool(ends.any()):  # gathered together: one copy out of tensors, not one per item
            # (n, 2K), in float64
            normalized = top_scores.double() / length_penalty(t + 1, length_norm, alpha)
            if coverage_penalty:
                normalized = normalized + bonus[rows].double()
            best = (
                torch.cat([best, normalized.masked_fill(~ends, float("-inf"))], 1)
                .topk(beam, dim=1)
                .values
            )  # (n, K)
            sentence, candidate = ends.nonzero(as_tuple=True)  # (F,) each: F hypotheses end
            ended = rows[sentence, candidate]  # (F,) their rows
            for i, (index, ids, log_prob, score) in enumerate(
                zip(
                    sentence_ids[sentence].tolist(),
                    to_ids(vocabulary, tokens[ended, 1:]).tolist(),
                    top_scores[sentence, candidate].tolist(),
                    normalized[sentence, candidate].tolist(),
                )
            ):
                results[index].append(
                    Hypothesis(
                        ids,
                        log_prob,
                        score,
                        history[ended[i]].cpu() if history is not None else None,
                    )
                )
                if steps is not None:  # the parent: the row's slot in the last step's beam
                    parent = int(ended[i]) - int(sentence[i]) * beam
                    ended_now.append(
                        (index, {"parent": parent, "log_prob": log_prob, "score": score})
                    )

        # Continue the beam with the best candidates that did not end: each (n, K).
        alive_scores, picks = top_scores.masked_fill(token == EOS, float("-inf")).topk(beam, dim=1)
        alive_rows = rows.gather(1, picks)
        alive_tokens = token.gather(1, picks)
        if steps is not None:
            parents = alive_rows - (torch.arange(n, device=device) * beam)[:, None]  # (n, K)
            tokens_now = to_ids(vocabulary, alive_tokens)
            _record_step(steps, sentence_ids, tokens_now, parents, alive_scores, ended_now)

        # Stop rule: a sentence is done when settled, at its length limit, or out of live beams.
        if stopping == "exact":
            # Log-probabilities only fall and the largest length penalty is the limit's, so a
            # live hypothesis ends at best at its score / that penalty (a coverage bonus ≤ 0).
            settled = best[:, nbest - 1] >= alive_scores[:, 0].double() / top_penalty  # (n,)
        else:
            settled = torch.isfinite(best[:, -1])  # `beam` hypotheses have finished, (n,)
        done = settled | (max_lengths <= t) | ~torch.isfinite(alive_scores[:, 0])  # (n,)
        if bool(done.all()):
            break
        # Reorder the beams: the n' sentences not done keep their K continuing rows.
        keep = (~done).nonzero().squeeze(1)  # (n',)
        scores = alive_scores[keep]  # (n', K)
        row_index = alive_rows[keep].view(-1)  # (n'·K,) the rows the beams extend
        tokens = torch.cat([tokens[row_index], alive_tokens[keep].view(-1, 1)], 1)  # (n'·K, t + 2)
        state = state.index_select(row_index)
        if keep_attention:
            assert history is not None  # set at every step with keep_attention
            history = history[row_index]  # (n'·K, t + 1, S)
        if coverage_penalty:
            assert coverage is not None  # set at every step with a coverage penalty
            coverage = coverage[row_index]  # (n'·K, S)
        # Shrink finished sentences: drop what is kept per sentence for those that left.
        if keep.size(0) < n:
            encoded = encoded.index_select(keep)
            sentence_ids, max_lengths, best = sentence_ids[keep], max_lengths[keep], best[keep]
            top_penalty = length_penalty(max_lengths.double() + 1, length_norm, alpha)
            if prefix is not None:
                prefix = prefix[keep]
            row_limits, row_prefix, row_real = _per_row(
                max_lengths, prefix, beam, encoded, coverage_penalty
            )

    # Each sentence's `nbest` best finished hypotheses, best first by normalized score.
    return [sorted(found, key=lambda h: h.score, reverse=True)[:nbest] for found in results]


def _record_step(
    steps: list[list[dict]],
    sentence_ids: torch.Tensor,
    tokens: torch.Tensor,
    parents: torch.Tensor,
    scores: torch.Tensor,
    ended: list[tuple[int, dict]],
) -> None:
    """Append one step of each searched sentence to `steps`: the hypotheses its beam keeps,
    best first, each as its new token, its `parent` (the slot it extends in the previous
    step's `kept`; at the first step, 0: the empty start) and log-probability, from `tokens`,
    `parents` and `scores` (n, K); and those that ended at this step (`parent`, log-probability,
    normalized score). Parent pointers keep a record linear in beam × steps, where whole
    prefixes would grow with the square of the length."""
    ids, origins, values = tokens.tolist(), parents.tolist(), scores.tolist()
    for j, index in enumerate(sentence_ids.tolist()):
        steps[index].append(
            {
                "kept": [
                    {"token": token, "parent": parent, "log_prob": value}
                    for token, parent, value in zip(ids[j], origins[j], values[j])
                    if value != float("-inf")  # dead slots come last: the others keep theirs
                ],
                "finished": [entry for where, entry in ended if where == index],
            }
        )


def prefixes(steps: list[dict]) -> list[dict[str, list[list[int]]]]:
    """The tokens of every hypothesis of a sentence's recorded `steps`: for each step, `kept`
    and `finished` lists of token ids, in the order of the record."""
    previous: list[list[int]] = [[]]  # before the first step: the empty start
    rebuilt = []
    for step in steps:
        kept = [previous[h["parent"]] + [h["token"]] for h in step["kept"]]
        finished = [previous[h["parent"]] for h in step["finished"]]
        rebuilt.append({"kept": kept, "finished": finished})
        previous = kept
    return rebuilt


def _per_row(
    max_lengths: torch.Tensor,
    prefix: torch.Tensor | None,
    beam: int,
    encoded: EncodedSource,
    coverage_penalty: float,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Each sentence's length limit, forced prefix and (for the coverage penalty) real source
    tokens, repeated for its beams: remade only when sentences leave the batch, not every step."""
    return (
        max_lengths.repeat_interleave(beam),
        None if prefix is None else prefix.repeat_interleave(beam, 0),
        encoded.mask.repeat_interleave(beam, 0) if coverage_penalty else None,
    )
