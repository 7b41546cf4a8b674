"""Batched beam search with length normalization and n-best lists.

All sentences of a batch advance together as one (sentences × beam) batch; each step is a
handful of tensor operations (top-k over sentences' beams × vocabulary, one `index_select` of the
decoder state). A sentence leaves the batch as soon as its result is settled (see `stopping`),
so finished sentences cost nothing more.
"""

from __future__ import annotations

import torch

from nmt.data.subwords import BOS, EOS
from nmt.model.seq2seq import EncoderState, Seq2Seq
from nmt.search.hypothesis import Hypothesis, coverage_bonus, length_penalty
from nmt.search.steps import StepRules, to_columns, to_ids


STOPPING = ("exact", "first")  # when a sentence's search ends; see `beam_search`


@torch.no_grad()
def beam_search(model: Seq2Seq, encoded: EncoderState, max_lengths: torch.Tensor, beam: int,
                nbest: int = 1, length_norm: str = "gnmt", alpha: float = 0.6,
                keep_attention: bool = False, rules: StepRules = StepRules(),
                prefix: torch.Tensor | None = None, coverage_penalty: float = 0.0,
                vocabulary: torch.Tensor | None = None, stopping: str = "exact"
                ) -> list[list[Hypothesis]]:
    """The `nbest` best hypotheses per sentence, best first by normalized score.

    `prefix` (B, P), PAD-padded, forces each output's first tokens. `coverage_penalty` β adds
    GNMT's β·Σ_i log(min(Σ_t attention_ti, 1)) over source tokens i to finished scores, which
    favours outputs that attend to every source token. `vocabulary` (K,): the sorted target ids
    of a shortlist the model's output layer scores (see `Seq2Seq.shortlisted`); the search runs
    in its columns and maps them back to ids.

    A sentence stops at its length limit, or earlier as `stopping` says. `exact`: once no
    hypothesis left in its beam can score above its `nbest`-th best finished one, so the result
    is what the same beam run to the length limit would give. `first`: once `beam` hypotheses
    have finished, although one still in the beam may score better (faster, not exact).
    """
    if nbest > beam:
        raise ValueError(f"nbest ({nbest}) cannot exceed the beam size ({beam})")
    if stopping not in STOPPING:
        raise ValueError(f"unknown stopping rule {stopping!r}; use one of {', '.join(STOPPING)}")
    batch, device = max_lengths.size(0), encoded.device
    max_lengths = max_lengths.to(device)
    sentence_ids = torch.arange(batch, device=device)  # original index of each sentence still searched
    # A sentence's beams share its encoder state (attention groups rows by sentence).
    state = model.initial_state(encoded).index_select(sentence_ids.repeat_interleave(beam))
    # Cumulative log-probabilities (n, beam); at the start only the first beam is alive.
    scores = torch.full((batch, beam), float("-inf"), device=device)
    scores[:, 0] = 0.0
    tokens = torch.full((batch * beam, 1), BOS, dtype=torch.long, device=device)
    history = None  # attention so far, (n * beam, t, S), kept only when asked for
    coverage = None  # attention summed over steps, (n * beam, S), for the coverage penalty
    if vocabulary is not None:
        vocabulary = vocabulary.to(device)
    if prefix is not None:
        prefix = to_columns(vocabulary, prefix.to(device))
    results: list[list[Hypothesis]] = [[] for _ in range(batch)]
    # The `beam` best normalized scores finished so far per sentence, in float64 as
    # `hypothesis.finished` computes them.
    best = torch.full((batch, beam), float("-inf"), dtype=torch.float64, device=device)
    top_penalty = length_penalty(max_lengths.double() + 1, length_norm, alpha)
    row_limits, row_prefix, row_real = _per_row(max_lengths, prefix, beam, encoded,
                                                coverage_penalty)

    for t in range(int(max_lengths.max()) + 1):
        n = sentence_ids.size(0)
        log_probs, state, weights = model.decode_step(encoded, state,
                                                    to_ids(vocabulary, tokens[:, -1]))
        log_probs = rules.apply(log_probs, t, row_limits, tokens[:, 1:], row_prefix)
        # The 2·beam best candidates of a sentence are among the 2·beam best of each of its
        # beams, so rank within each beam first (no (n, beam × vocab) sum is ever built).
        per_beam = min(2 * beam, log_probs.size(-1))
        beam_scores, beam_tokens = log_probs.topk(per_beam, dim=1)
        candidates = (scores.view(-1, 1) + beam_scores).view(n, beam * per_beam)
        top_scores, top_ids = candidates.topk(min(2 * beam, beam * per_beam), dim=1)
        origin = top_ids // per_beam  # the beam each candidate extends
        token = beam_tokens.view(n, beam * per_beam).gather(1, top_ids)
        rows = origin + (torch.arange(n, device=device) * beam)[:, None]  # rows in (n * beam)
        if keep_attention:
            step = weights.unsqueeze(1)
            history = step if history is None else torch.cat([history, step], 1)
        if coverage_penalty:
            coverage = weights if coverage is None else coverage + weights
            bonus = coverage_bonus(coverage, row_real, coverage_penalty)

        # Hypotheses ending here: EOS candidates ranked within the beam, with a finite score.
        ends = (token == EOS) & torch.isfinite(top_scores)
        ends[:, beam:] = False
        if bool(ends.any()):  # gathered together: one copy out of tensors, not one per item
            normalized = top_scores.double() / length_penalty(t + 1, length_norm, alpha)
            if coverage_penalty:
                normalized = normalized + bonus[rows].double()
            best = torch.cat([best, normalized.masked_fill(~ends, float("-inf"))], 1
                             ).topk(beam, dim=1).values
            sentence, candidate = ends.nonzero(as_tuple=True)
            ended = rows[sentence, candidate]
            for i, (index, ids, log_prob, score) in enumerate(zip(
                    sentence_ids[sentence].tolist(),
                    to_ids(vocabulary, tokens[ended, 1:]).tolist(),
                    top_scores[sentence, candidate].tolist(),
                    normalized[sentence, candidate].tolist())):
                results[index].append(Hypothesis(
                    ids, log_prob, score, history[ended[i]].cpu() if keep_attention else None))

        # The beam continues with the best candidates that did not end.
        alive_scores, picks = top_scores.masked_fill(token == EOS, float("-inf")).topk(beam, dim=1)
        alive_rows = rows.gather(1, picks)
        alive_tokens = token.gather(1, picks)

        if stopping == "exact":
            # Log-probabilities only fall and the largest length penalty is the limit's, so a
            # live hypothesis ends at best at its score / that penalty (a coverage bonus ≤ 0).
            settled = best[:, nbest - 1] >= alive_scores[:, 0].double() / top_penalty
        else:
            settled = torch.isfinite(best[:, -1])  # `beam` hypotheses have finished
        done = settled | (max_lengths <= t) | ~torch.isfinite(alive_scores[:, 0])
        if bool(done.all()):
            break
        keep = (~done).nonzero().squeeze(1)
        scores = alive_scores[keep]
        row_index = alive_rows[keep].view(-1)
        tokens = torch.cat([tokens[row_index], alive_tokens[keep].view(-1, 1)], 1)
        state = state.index_select(row_index)
        if keep_attention:
            history = history[row_index]
        if coverage_penalty:
            coverage = coverage[row_index]
        if keep.size(0) < n:  # sentences left the batch: shrink what is fixed per sentence
            encoded = encoded.index_select(keep)
            sentence_ids, max_lengths, best = sentence_ids[keep], max_lengths[keep], best[keep]
            top_penalty = length_penalty(max_lengths.double() + 1, length_norm, alpha)
            if prefix is not None:
                prefix = prefix[keep]
            row_limits, row_prefix, row_real = _per_row(max_lengths, prefix, beam, encoded,
                                                        coverage_penalty)

    return [sorted(found, key=lambda h: h.score, reverse=True)[:nbest] for found in results]


def _per_row(max_lengths: torch.Tensor, prefix: torch.Tensor | None, beam: int,
             encoded: EncoderState, coverage_penalty: float
             ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Each sentence's length limit, forced prefix and (for the coverage penalty) real source
    tokens, repeated for its beams: remade only when sentences leave the batch, not every step."""
    return (max_lengths.repeat_interleave(beam),
            None if prefix is None else prefix.repeat_interleave(beam, 0),
            encoded.mask.repeat_interleave(beam, 0) if coverage_penalty else None)
