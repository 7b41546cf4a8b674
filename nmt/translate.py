"""The Python API for translation: load a run directory, translate plain text.

    from nmt import Translator
    translator = Translator.from_run("runs/quickstart")
    print(translator.translate(["zweiundvierzig"])[0].text)
"""

from __future__ import annotations

import logging
from pathlib import Path
import torch
import yaml
from tqdm import tqdm

from nmt.checkpoint import atomic_write_text, load_checkpoint, restore
from nmt.data.batching import pad_sources
from nmt.data.subwords import BOS, EOS, PAD, Tokenizer, looks_segmented
from nmt.device import pick_device
from nmt.errors import NmtError
from nmt.evaluate import corpus_bleu, corpus_chrf
from nmt.lexicon import Lexicon, lexicon_for_run
from nmt.model.ensemble import Ensemble
from nmt.model.seq2seq import Seq2Seq
from nmt.recipe import DecodeConfig, Recipe, with_changes
from nmt.search import Hypothesis, beam_search, greedy_search
from nmt.search.hypothesis import finished
from nmt.search.sampling import sample
from nmt.search.steps import StepRules

log = logging.getLogger("nmt")


class Translator:
    """A trained model (or an ensemble) with its tokenizer and decoding defaults."""

    def __init__(self, model: Seq2Seq | Ensemble, tokenizer: Tokenizer,
                 decode: DecodeConfig | None = None, device: torch.device | None = None,
                 max_source_tokens: int = 0, run_dir: Path | None = None,
                 lexicon: Lexicon | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.decode = decode or DecodeConfig()
        self.device = device or next(model.parameters()).device
        self.max_source_tokens = max_source_tokens  # the training limit; 0: none
        self.run_dir = run_dir  # where the lexicon for shortlists is found (or built)
        self._lexicon = lexicon

    @classmethod
    def from_run(cls, run_dir: str | Path, checkpoint: str = "best",
                 device: str = "auto", quantize: str = "") -> "Translator":
        """Load `checkpoints/<checkpoint>` of a run directory made by `nmt-train`."""
        return cls.from_runs([run_dir], checkpoint, device, quantize)

    @classmethod
    def from_runs(cls, run_dirs: list[str | Path], checkpoint: str = "best",
                  device: str = "auto", quantize: str = "") -> "Translator":
        """One run, or an ensemble of runs that share their SentencePiece model(s); decoding
        defaults come from the first run. `quantize="int8"`: int8 linear layers (CPU only)."""
        loaded = [_load_run(Path(run_dir), checkpoint) for run_dir in run_dirs]
        model, tokenizer, recipe = loaded[0]
        for other_dir, (_, other, _) in zip(run_dirs[1:], loaded[1:]):
            if other.sha256 != tokenizer.sha256:
                raise NmtError(f"{other_dir}: its SentencePiece model differs from "
                               f"{run_dirs[0]}'s; an ensemble needs one shared vocabulary")
        if len(loaded) > 1:
            model = Ensemble([member for member, _, _ in loaded])
        target = pick_device(device)
        model = model.to(target)
        if quantize:
            from nmt.quantize import quantize as quantized

            model = quantized(model, quantize)
        return cls(model, tokenizer, tuned_decoding(Path(run_dirs[0]), recipe.decode),
                   target, recipe.data.max_len, Path(run_dirs[0]))

    @property
    def lexicon(self) -> Lexicon:
        """The lexical table shortlists come from, loaded (or built) on first use."""
        if self._lexicon is None:
            if self.run_dir is None:
                raise NmtError("a shortlist needs a lexicon: load the Translator with from_run, "
                               "or give it lexicon=")
            self._lexicon = lexicon_for_run(self.run_dir)
        return self._lexicon

    def translate(self, lines: list[str], **options) -> list[Hypothesis]:
        """The best translation of each line, in input order. Options as in `nbest`."""
        return [hyps[0] for hyps in self.nbest(lines, nbest=1, **options)]

    def nbest(self, lines: list[str], nbest: int = 1, keep_attention: bool = False,
              progress: bool = False, prefixes: list[str] | None = None,
              **options) -> list[list[Hypothesis]]:
        """The `nbest` best translations (or samples) of each line.

        `prefixes` (plain text, one per line, "" for none) force how each translation begins.
        `options` are keys of the recipe's decode section (beam, length_norm, alpha, max_len_a,
        max_len_b, batch_size, coverage_penalty, min_len, no_repeat_ngram, shortlist,
        shortlist_frequent, sample, temperature, top_k, top_p, seed); unset ones (None) keep the
        run's defaults. Lines are sorted by length into batches (less padding) and results come
        back in input order; an empty line gives an empty translation. `progress` draws a bar on
        stderr.
        """
        settings = with_changes(self.decode, {k: v for k, v in options.items() if v is not None},
                                "decode")
        if nbest > settings.beam and not settings.sample:
            raise NmtError(f"--nbest {nbest} needs a beam of at least {nbest} "
                           f"(beam is {settings.beam})")
        generator = torch.Generator(self.device).manual_seed(settings.seed)
        if looks_segmented(lines):
            log.warning("the input looks already segmented into subwords (many '\u2581' or '@@'); "
                        "nmt segments plain text itself, so give it untokenized text")
        encoded = self._limit(self.tokenizer.encode_source(list(lines)))
        if prefixes is not None and len(prefixes) != len(lines):
            raise NmtError(f"{len(prefixes)} prefixes for {len(lines)} lines; give one per line")
        forced = self.tokenizer.encode_target(list(prefixes)) if prefixes else None
        results: list[list[Hypothesis]] = [[] for _ in lines]
        order = sorted((i for i, ids in enumerate(encoded) if lines[i].strip()),
                       key=lambda i: len(encoded[i]))
        for i, line in enumerate(lines):
            if not line.strip():
                results[i] = [Hypothesis([], 0.0, 0.0)] * nbest
        bar = tqdm(total=len(order), unit="sent", disable=not progress, leave=False,
                   dynamic_ncols=True, mininterval=1.0)
        for start in range(0, len(order), settings.batch_size):
            chunk = order[start:start + settings.batch_size]
            chunk_prefixes = [forced[i] for i in chunk] if forced else None
            for i, hyps in zip(chunk, self._search([encoded[i] for i in chunk], settings, nbest,
                                                   keep_attention, generator, chunk_prefixes)):
                for hyp in hyps:
                    hyp.text = self.tokenizer.decode_target(hyp.tokens)
                    if hyp.attention is not None:  # drop the batch's padding columns
                        hyp.attention = hyp.attention[:, :len(encoded[i]) + 1]
                results[i] = hyps
            bar.update(len(chunk))
        bar.close()
        return results

    def _limit(self, encoded: list[list[int]]) -> list[list[int]]:
        """Cut sources longer than any the model was trained on, with a warning: such input
        gives unreliable output (and unbounded cost); split it into sentences instead."""
        limit = self.max_source_tokens
        long = [i + 1 for i, ids in enumerate(encoded) if limit and len(ids) > limit]
        if long:
            shown = ", ".join(map(str, long[:5])) + (" ..." if len(long) > 5 else "")
            log.warning("line(s) %s: longer than the %d subword tokens the model was trained "
                        "on (data.max_len); translating their first %d tokens only", shown,
                        limit, limit)
            encoded = [ids[:limit] for ids in encoded]
        return encoded

    def tune(self, sources: list[str], references: list[str], beams: tuple[int, ...] = (1, 5, 10),
             alphas: tuple[float, ...] = (0.6, 1.0)) -> list[dict]:
        """Dev-set BLEU and chrF for each beam size × length normalization × alpha, best first.

        Greedy search (beam 1) has no length normalization to tune, nor does `none` an alpha.
        """
        grid = []
        for beam in beams:
            forms = [("none", 0.0)] if beam == 1 else \
                [("none", 0.0)] + [(form, a) for form in ("avg", "gnmt") for a in alphas]
            grid.extend((beam, form, alpha) for form, alpha in forms)
        rows = []
        for beam, form, alpha in tqdm(grid, desc="tuning", unit="setting", leave=False):
            hypotheses = [h.text for h in self.translate(sources, beam=beam, length_norm=form,
                                                         alpha=alpha)]
            rows.append({"beam": beam, "length_norm": form, "alpha": alpha,
                         "bleu": round(corpus_bleu(hypotheses, references), 2),
                         "chrf": round(corpus_chrf(hypotheses, references), 2)})
        return sorted(rows, key=lambda row: (row["bleu"], row["chrf"]), reverse=True)

    @torch.no_grad()
    def force(self, sources: list[str], targets: list[str], length_norm: str | None = None,
              alpha: float | None = None) -> list[Hypothesis]:
        """Score given translations: the model's log-probability of each target (EOS included),
        normalized as search would normalize it. Runs the decoder step by step, exactly as
        search does, so a forced score and a search score of the same output agree."""
        settings = with_changes(self.decode, {k: v for k, v in
                                              dict(length_norm=length_norm, alpha=alpha).items()
                                              if v is not None}, "decode")
        source_ids = self.tokenizer.encode_source(list(sources))
        target_ids = self.tokenizer.encode_target(list(targets))
        results: list[Hypothesis] = []
        for start in range(0, len(sources), settings.batch_size):
            chunk_targets = target_ids[start:start + settings.batch_size]
            source, lengths = pad_sources(source_ids[start:start + settings.batch_size])
            encoded = self.model.encode(source.to(self.device), lengths)
            state = self.model.initial_state(encoded)
            steps = max(len(t) for t in chunk_targets) + 1
            target = torch.full((len(chunk_targets), steps), PAD, dtype=torch.long)
            for row, ids in enumerate(chunk_targets):
                target[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
                target[row, len(ids)] = EOS
            target = target.to(self.device)
            previous = torch.full((len(chunk_targets),), BOS, dtype=torch.long,
                                  device=self.device)
            total = torch.zeros(len(chunk_targets), device=self.device)
            for t in range(steps):
                log_probs, state, _ = self.model.decode_step(encoded, state, previous)
                picked = log_probs.gather(1, target[:, t:t + 1]).squeeze(1)
                total += picked.masked_fill(target[:, t] == PAD, 0.0)
                previous = target[:, t]
            for ids, log_prob in zip(chunk_targets, total.tolist()):
                hyp = finished(ids, log_prob, settings.length_norm, settings.alpha)
                hyp.text = self.tokenizer.decode_target(ids)
                results.append(hyp)
        return results

    def attention_record(self, line: str, hyp: Hypothesis) -> dict:
        """A hypothesis' attention with the subword pieces on both axes (for plots)."""
        source = self.tokenizer.source_pieces(self.tokenizer.encode_source([line])[0])
        target = self.tokenizer.target_pieces(hyp.tokens)
        weights = [] if hyp.attention is None else \
            [[round(w, 4) for w in row] for row in hyp.attention.tolist()]
        return {"source": [*source, "</s>"], "target": [*target, "</s>"], "attention": weights}

    def self_check(self, lines: list[str], tolerance: float = 1e-5, **options) -> list[str]:
        """Differences between translating `lines` one at a time and in batches.

        Padding and batching must never change a translation; a difference is a bug.
        """
        alone = self.nbest(lines, **{**options, "batch_size": 1})
        together = self.nbest(lines, **options)
        problems = []
        for number, (a, b) in enumerate(zip(alone, together), start=1):
            for rank, (x, y) in enumerate(zip(a, b), start=1):
                if x.tokens != y.tokens:
                    problems.append(f"line {number}, hypothesis {rank}: {x.text!r} alone but "
                                    f"{y.text!r} in a batch")
                elif abs(x.score - y.score) > tolerance:
                    problems.append(f"line {number}, hypothesis {rank}: score {x.score:.6f} "
                                    f"alone but {y.score:.6f} in a batch")
        return problems

    @torch.no_grad()
    def _search(self, sources: list[list[int]], settings: DecodeConfig, nbest: int,
                keep_attention: bool, generator: torch.Generator,
                prefixes: list[list[int]] | None) -> list[list[Hypothesis]]:
        source, lengths = pad_sources(sources)
        encoded = self.model.encode(source.to(self.device), lengths)
        max_lengths = (settings.max_len_a * (lengths - 1) + settings.max_len_b).long()
        prefix = None
        if prefixes and any(prefixes):
            prefix = torch.full((len(prefixes), max(map(len, prefixes))), PAD, dtype=torch.long)
            for row, ids in enumerate(prefixes):
                prefix[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            max_lengths = torch.maximum(max_lengths, (prefix != PAD).sum(1))
        vocabulary = None
        if settings.shortlist:
            vocabulary = self.lexicon.shortlist(source, settings.shortlist,
                                                settings.shortlist_frequent, prefix)
            encoded = self.model.shortlisted(encoded, vocabulary)
        rules = StepRules(settings.min_len, settings.no_repeat_ngram)
        common = dict(length_norm=settings.length_norm, alpha=settings.alpha,
                      keep_attention=keep_attention, rules=rules, prefix=prefix,
                      vocabulary=vocabulary)
        if settings.sample:
            return sample(self.model, encoded, max_lengths, nbest, generator,
                          settings.temperature, settings.top_k, settings.top_p, **common)
        if settings.beam == 1:
            return greedy_search(self.model, encoded, max_lengths, **common)
        return beam_search(self.model, encoded, max_lengths, settings.beam, nbest,
                           coverage_penalty=settings.coverage_penalty, **common)


def _load_run(run_dir: Path, checkpoint: str) -> tuple[Seq2Seq, Tokenizer, Recipe]:
    if not (run_dir / "recipe.yaml").is_file():
        raise NmtError(f"{run_dir}: not an nmt run directory (no recipe.yaml); "
                       f"give the directory nmt-train wrote")
    recipe = Recipe.load(run_dir / "recipe.yaml")
    tokenizer = Tokenizer.load(run_dir)
    tensors, meta = load_checkpoint(run_dir / "checkpoints" / checkpoint)
    if meta.get("spm_sha256") != tokenizer.sha256:
        models = " and ".join(str(path) for path in tokenizer.files)
        raise NmtError(f"{models}: not the SentencePiece model checkpoint {checkpoint!r} was "
                       f"trained with (SHA-256 differs); restore the run's own")
    model = Seq2Seq(recipe.model, tokenizer.source_vocab_size, tokenizer.target_vocab_size)
    try:
        restore(tensors, meta, model)
    except RuntimeError as error:
        raise NmtError(f"{run_dir}: checkpoint {checkpoint!r} does not fit its recipe and "
                       f"vocabulary: {str(error).splitlines()[0]}") from None
    return model, tokenizer, recipe


TUNED = "decode.yaml"  # decoding defaults chosen by `nmt-translate --tune`, over the recipe's


def tuned_decoding(run_dir: Path, decode: DecodeConfig) -> DecodeConfig:
    path = run_dir / TUNED
    if not path.is_file():
        return decode
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise NmtError(f"{path}: YAML syntax error: {error}") from None
    if not isinstance(values, dict):
        raise NmtError(f"{path}: expected a mapping of decode keys")
    return with_changes(decode, values, "decode")


def save_tuned_decoding(run_dir: Path, values: dict) -> Path:
    path = run_dir / TUNED
    atomic_write_text(path, yaml.safe_dump(values, sort_keys=False))
    return path
