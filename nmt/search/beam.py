"""Batched beam search with length normalization and n-best lists.

All sentences of a batch advance together as one (sentences × beam) batch; each step is a
handful of tensor operations (top-k over sentences' beams × vocabulary, one `index_select` of the
decoder state). A sentence leaves the batch as soon as it has `beam` finished hypotheses, so
finished sentences cost nothing more.
"""

from __future__ import annotations

import torch

from nmt.data.subwords import BOS, EOS
from nmt.model.seq2seq import EncoderState, Seq2Seq
from nmt.search.hypothesis import Hypothesis, finished
from nmt.search.steps import StepRules, to_columns, to_ids


@torch.no_grad()
def beam_search(model: Seq2Seq, encoded: EncoderState, max_lengths: torch.Tensor, beam: int,
                nbest: int = 1, length_norm: str = "gnmt", alpha: float = 0.6,
                keep_attention: bool = False, rules: StepRules = StepRules(),
                prefix: torch.Tensor | None = None, coverage_penalty: float = 0.0,
                vocabulary: torch.Tensor | None = None) -> list[list[Hypothesis]]:
    """The `nbest` best hypotheses per sentence, best first by normalized score.

    `prefix` (B, P), PAD-padded, forces each output's first tokens. `coverage_penalty` β adds
    GNMT's β·Σ_i log(min(Σ_t attention_ti, 1)) over source tokens i to finished scores, which
    favours outputs that attend to every source token. `vocabulary` (K,): the sorted target ids
    of a shortlist the model's output layer scores (see `Seq2Seq.shortlisted`); the search runs
    in its columns and maps them back to ids.
    """
    if nbest > beam:
        raise ValueError(f"nbest ({nbest}) cannot exceed the beam size ({beam})")
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
    found = torch.zeros(batch, dtype=torch.long, device=device)  # finished, per active sentence
    row_limits, row_prefix = _per_row(max_lengths, prefix, beam)

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
            # Padding gets exactly zero attention, so real source tokens are those with any.
            bonus = coverage_penalty * torch.where(
                coverage > 0, coverage.clamp(max=1.0).log(), torch.zeros_like(coverage)).sum(-1)

        # Hypotheses ending here: EOS candidates ranked within the beam, with a finite score.
        ends = (token == EOS) & torch.isfinite(top_scores)
        ends[:, beam:] = False
        found += ends.sum(1)
        if bool(ends.any()):  # gathered together: one copy out of tensors, not one per item
            sentence, candidate = ends.nonzero(as_tuple=True)
            ended = rows[sentence, candidate]
            bonuses = bonus[ended].tolist() if coverage_penalty else [0.0] * ended.numel()
            for i, (index, ids, score) in enumerate(zip(
                    sentence_ids[sentence].tolist(),
                    to_ids(vocabulary, tokens[ended, 1:]).tolist(),
                    top_scores[sentence, candidate].tolist())):
                results[index].append(finished(
                    ids, score, length_norm, alpha,
                    history[ended[i]].cpu() if keep_attention else None, bonuses[i]))

        # The beam continues with the best candidates that did not end.
        alive_scores, picks = top_scores.masked_fill(token == EOS, float("-inf")).topk(beam, dim=1)
        alive_rows = rows.gather(1, picks)
        alive_tokens = token.gather(1, picks)

        done = (found >= beam) | (max_lengths <= t) | ~torch.isfinite(alive_scores[:, 0])
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
            sentence_ids, max_lengths, found = sentence_ids[keep], max_lengths[keep], found[keep]
            if prefix is not None:
                prefix = prefix[keep]
            row_limits, row_prefix = _per_row(max_lengths, prefix, beam)

    return [sorted(found, key=lambda h: h.score, reverse=True)[:nbest] for found in results]


def _per_row(max_lengths: torch.Tensor, prefix: torch.Tensor | None, beam: int
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each sentence's length limit and forced prefix repeated for its beams: remade only when
    sentences leave the batch, not at every step."""
    return (max_lengths.repeat_interleave(beam),
            None if prefix is None else prefix.repeat_interleave(beam, 0))
