"""The Python API for translation: load a run directory, translate plain text.

from nmt import Translator
translator = Translator.from_run("runs/quickstart")
print(translator.translate(["zweiundvierzig"])[0].text)
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import threading
from pathlib import Path
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypedDict

import torch
import yaml
from tqdm import tqdm

from nmt.checkpoint import load_checkpoint, restore
from nmt.files import atomic_write_text
from nmt.data.batching import pad_sources
from nmt.data.subwords import BOS, EOS, PAD, Tokenizer, looks_segmented
from nmt.device import cpu_has_bf16, pick_device
from nmt.errors import NmtError
from nmt.data.lexicon import Lexicon, lexicon_for_run
from nmt.model.ensemble import Ensemble
from nmt.model.interface import AnyDecodable, EncodedSource, SearchState
from nmt.model.quantize import quantize as quantized
from nmt.model.seq2seq import Seq2Seq
from nmt.run_dir import CHECKPOINTS, RECIPE, TUNED
from nmt.recipe import LENGTH_CAP, DecodeConfig, Recipe, check_decoding, with_changes
from nmt.search import Hypothesis, beam_search, greedy_search
from nmt.search.hypothesis import coverage_bonus, finished
from nmt.search.sampling import sample, stream_seed
from nmt.search.steps import StepRules

log = logging.getLogger("nmt")


class Translator:
    """A trained model (or an ensemble) with its tokenizer and decoding defaults."""

    def __init__(
        self,
        model: Seq2Seq | Ensemble,
        tokenizer: Tokenizer,
        decode: DecodeConfig | None = None,
        device: torch.device | None = None,
        max_source_tokens: int = 0,
        run_dir: Path | None = None,
        lexicon: Lexicon | None = None,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.decode = decode or DecodeConfig()
        self.device = device or next(model.parameters()).device
        self.max_source_tokens = max_source_tokens  # the training limit; 0: none
        self.run_dir = run_dir  # where the lexicon for shortlists is found (or built)
        self._lexicon = lexicon
        self.quantized = False  # int8 weights (from_runs with quantize="int8")
        self._bf16_model: Seq2Seq | Ensemble | None = None  # for `precision: bf16`
        self._bf16_version = -1  # the model's weights' version the copy was made from

    @classmethod
    def from_run(
        cls, run_dir: str | Path, checkpoint: str = "best", device: str = "auto", quantize: str = ""
    ) -> "Translator":
        """Load `checkpoints/<checkpoint>` of a run directory made by `nmt-train`."""
        return cls.from_runs([run_dir], checkpoint, device, quantize)

    @classmethod
    def from_runs(
        cls,
        run_dirs: list[str | Path],
        checkpoint: str = "best",
        device: str = "auto",
        quantize: str = "",
    ) -> "Translator":
        """One run, or an ensemble of runs that share their SentencePiece model(s); decoding
        defaults come from the first run. `quantize="int8"`: int8 linear layers (CPU only)."""
        loaded = [_load_run(Path(run_dir), checkpoint) for run_dir in run_dirs]
        model: Seq2Seq | Ensemble
        model, tokenizer, recipe = loaded[0]
        for other_dir, (_, other, _) in zip(run_dirs[1:], loaded[1:]):
            if other.sha256 != tokenizer.sha256:
                raise NmtError(
                    f"{other_dir}: its SentencePiece model differs from "
                    f"{run_dirs[0]}'s; an ensemble needs one shared vocabulary"
                )
        if len(loaded) > 1:
            model = Ensemble([member for member, _, _ in loaded])
        target = pick_device(device)
        model = model.to(target)
        if quantize:
            model = quantized(model, quantize)
        translator = cls(
            model,
            tokenizer,
            tuned_decoding(Path(run_dirs[0]), recipe.decode),
            target,
            recipe.data.max_len,
            Path(run_dirs[0]),
        )
        translator.quantized = bool(quantize)
        return translator

    @property
    def has_lexicon(self) -> bool:
        """Whether the lexicon is loaded (a shortlist would otherwise load or build it first)."""
        return self._lexicon is not None

    @property
    def lexicon(self) -> Lexicon:
        """The lexical table shortlists come from, loaded (or built) on first use."""
        if self._lexicon is None:
            if self.run_dir is None:
                raise NmtError(
                    "a shortlist needs a lexicon: load the Translator with from_run, "
                    "or give it lexicon="
                )
            self._lexicon = lexicon_for_run(self.run_dir)
        return self._lexicon

    def translate(self, lines: list[str], **options) -> list[Hypothesis]:
        """The best translation of each line, in input order. Options as in `nbest`."""
        return [hyps[0] for hyps in self.nbest(lines, nbest=1, **options)]

    def nbest(
        self,
        lines: list[str],
        nbest: int = 1,
        keep_attention: bool = False,
        progress: bool = False,
        prefixes: list[str] | None = None,
        keep_steps: bool = False,
        line_numbers: Sequence[int] | None = None,
        **options,
    ) -> list[list[Hypothesis]]:
        """The `nbest` best translations (or samples) of each line.

        `prefixes` (plain text, one per line, "" for none) force how each translation begins.
        `options` are keys of the recipe's decode section (beam, length_norm, alpha, max_len_a,
        max_len_b, stopping, batch_size, inter_threads, coverage_penalty, min_len,
        no_repeat_ngram, shortlist, shortlist_frequent, sample, temperature, top_k, top_p,
        seed); unset ones (None) keep the run's defaults. Lines are sorted by length into
        batches (less padding) and results come back in input order; an empty line gives an
        empty translation. `progress` draws a bar on stderr. `keep_steps` (beam search only)
        gives each hypothesis its sentence's beam after every step (`Hypothesis.steps`, each
        new token's piece added), for teaching views.
        Samples are seeded by the seed and each line's number in its input (`line_numbers`,
        default 0, 1, ...; give them when translating an input in pieces): the same seed and
        input give the same samples however the input is split or batched.
        """
        settings = self.settings(nbest, keep_steps=keep_steps, **options)
        numbers = range(len(lines)) if line_numbers is None else line_numbers
        if len(numbers) != len(lines):
            raise NmtError(f"{len(numbers)} line numbers for {len(lines)} lines")
        if looks_segmented(lines):
            log.warning(
                "the input looks already segmented into subwords (many '\u2581' or '@@'); "
                "nmt segments plain text itself, so give it untokenized text"
            )
        encoded = self._limit(self.tokenizer.encode_source(list(lines)))
        if prefixes is not None and len(prefixes) != len(lines):
            raise NmtError(f"{len(prefixes)} prefixes for {len(lines)} lines; give one per line")
        forced = self.tokenizer.encode_target(list(prefixes)) if prefixes else None
        results: list[list[Hypothesis]] = [[] for _ in lines]
        order = sorted(
            (i for i, ids in enumerate(encoded) if lines[i].strip()), key=lambda i: len(encoded[i])
        )
        chunks = [
            order[s : s + settings.batch_size] for s in range(0, len(order), settings.batch_size)
        ]
        workers = self.inter_threads(settings, len(order))  # each holds a batch in memory
        self._check_memory(settings, nbest, workers * min(max(len(order), 1), settings.batch_size))
        for i, line in enumerate(lines):
            if not line.strip():
                results[i] = [Hypothesis([], 0.0, 0.0)] * nbest
        if workers > 1:  # made here, once, not by two workers at the same time
            self.searched_model(settings)  # the bf16 copy
            if settings.shortlist:
                _ = self.lexicon  # loaded, or built, on first use

        def search(chunk: list[int]) -> list[list[Hypothesis]]:
            try:
                return self._search(
                    [encoded[i] for i in chunk],
                    settings,
                    nbest,
                    keep_attention,
                    [stream_seed(settings.seed, numbers[i]) for i in chunk],
                    [forced[i] for i in chunk] if forced else None,
                    keep_steps,
                )
            except RuntimeError as error:
                if not _out_of_memory(error):
                    raise
                raise NmtError(
                    f"out of memory on {self.device} searching {len(chunk)} sentences "
                    f"with {settings.beam if not settings.sample else nbest} "
                    f"{'samples' if settings.sample else 'beams'} each; lower the "
                    f"batch size (--batch-size), the beam (--beam) or the samples "
                    f"(--nbest)"
                ) from None

        bar = tqdm(
            total=len(order),
            unit="sent",
            disable=not progress,
            leave=False,
            dynamic_ncols=True,
            mininterval=1.0,
        )
        with _searched_at_once(search, chunks, workers) as searched:
            for chunk, found in zip(chunks, searched):
                for i, hyps in zip(chunk, found):
                    results[i] = self._readable(hyps, len(encoded[i]))
                bar.update(len(chunk))
        bar.close()
        return results

    def _readable(self, hyps: list[Hypothesis], source_tokens: int) -> list[Hypothesis]:
        """A sentence's hypotheses with their text, their attention over its own source tokens
        (and EOS) without the batch's padding, and each recorded step's subword piece."""
        for hyp in hyps:
            hyp.text = self.tokenizer.decode_target(hyp.tokens)
            if hyp.attention is not None:
                hyp.attention = hyp.attention[:, : source_tokens + 1]
        for step in hyps[0].steps or ():  # one list, shared by the sentence's n-best
            for entry in step["kept"]:
                entry["piece"] = self.tokenizer.target_pieces([entry["token"]])[0]
        return hyps

    def settings(
        self,
        nbest: int = 1,
        labels: dict[str, str] | None = None,
        keep_steps: bool = False,
        **options,
    ) -> DecodeConfig:
        """The run's decoding defaults changed by `options` (None: unchanged), each checked like
        a recipe value, then together and against the model, before any work is done. Errors
        name options as `labels` spell them (a command's flags), else as decode.KEY."""
        given = {key: value for key, value in options.items() if value is not None}
        add_sample = (labels or {}).get("sample", "sample=True")  # how the caller would say it
        # A value the caller gave is named as they gave it; one from the run, as decode.KEY.
        labels = {
            key: label
            for key, label in (labels or {}).items()
            if key in given or key in ("nbest", "keep_steps")
        }

        def name(key: str) -> str:
            return labels.get(key, "nbest" if key == "nbest" else f"decode.{key}")

        settings = with_changes(self.decode, given, "decode", labels=labels)
        check_decoding(settings, "option", labels)
        if settings.sample:  # options given for nothing: the user meant something else
            ignored = dict.fromkeys(
                ("beam", "coverage_penalty"), "applies to search, not to sampling"
            )
        else:
            ignored = dict.fromkeys(
                ("temperature", "top_k", "top_p", "seed"),
                f"applies to sampling only; add {add_sample}",
            )
            if settings.beam == 1:
                ignored["coverage_penalty"] = (
                    f"applies to beam search, not to greedy search ({name('beam')} 1)"
                )
        for key, reason in ignored.items():  # a neutral value (--beta 0) is no mistake
            if key in given and (key not in _NEUTRAL or given[key] != _NEUTRAL[key]):
                raise NmtError(f"option: {name(key)} {reason}")
        if nbest < 1:
            raise NmtError(f"option: {name('nbest')} must be at least 1, not {nbest}")
        if settings.precision == "bf16" and self.quantized:
            raise _bf16_with_int8(name("precision"))
        if keep_steps and (settings.sample or settings.beam == 1):
            raise NmtError(
                f"option: {labels.get('keep_steps', 'keep_steps')} records beam search; "
                f"use {name('beam')} 2 or more, without sampling"
            )
        if nbest > settings.beam and not settings.sample:
            raise NmtError(
                f"option: {name('nbest')} {nbest} needs {name('beam')} {nbest} or more "
                f"(it is {settings.beam})"
            )
        vocabulary = self.tokenizer.target_vocab_size
        if settings.beam > vocabulary and not settings.sample:
            raise NmtError(
                f"option: {name('beam')} {settings.beam} is wider than the model's "
                f"target vocabulary ({vocabulary} subwords); use at most {vocabulary}"
            )
        if settings.no_repeat_ngram == 1:  # every output token differs: are there enough?
            usable = (
                min(settings.shortlist_frequent, vocabulary) if settings.shortlist else vocabulary
            ) - 3  # PAD, BOS and EOS are never output tokens
            if settings.min_len > usable:
                raise NmtError(
                    f"option: {name('min_len')} {settings.min_len} needs as many "
                    f"different subwords with {name('no_repeat_ngram')} 1, and only "
                    f"{max(usable, 0)} are sure to be there; lower {name('min_len')}"
                )
        return settings

    def searched_model(self, settings: DecodeConfig) -> Seq2Seq | Ensemble:
        """The model search uses for `settings`: the model, or with `precision: bf16` a
        bfloat16 copy of it, made on first use and again once the model's weights have changed.
        Its matrix products run in bf16 (several times faster on CPUs with AMX or AVX512-BF16);
        each step's logits and attention turn float32, so scores are summed in float32. A copy
        rather than autocast, which would convert the weights again at every step."""
        if settings.precision != "bf16":
            return self.model
        if self.quantized:
            raise _bf16_with_int8("precision")
        version = sum(p._version for p in self.model.parameters())  # bumped by every update
        if self._bf16_model is None or self._bf16_version != version:
            if self.device.type == "cpu" and cpu_has_bf16() is False:
                log.warning(
                    "precision bf16: this CPU has no bfloat16 instructions (AMX or "
                    "AVX512-BF16); PyTorch emulates them, slower than fp32"
                )
            self._bf16_model = copy.deepcopy(self.model).to(torch.bfloat16).eval()
            self._bf16_version = version
        return self._bf16_model

    def inter_threads(self, settings: DecodeConfig, sentences: int) -> int:
        """How many batches of `sentences` sentences are searched at once
        (`decode.inter_threads`): on a CPU only, never more than PyTorch's threads, which the
        batches share, nor than the batches at least half full (a full batch on one thread
        beside a small remainder on the other takes longer than on both). Automatic (0): 2
        where PyTorch has exactly 2 threads, the case measured; else 1."""
        if self.device.type != "cpu":
            return 1
        threads = torch.get_num_threads()
        wanted = settings.inter_threads or (2 if threads == 2 else 1)
        full, rest = divmod(sentences, settings.batch_size)
        worth_a_thread = full + (2 * rest >= settings.batch_size)
        return max(1, min(wanted, threads, worth_a_thread))

    def _check_memory(self, settings: DecodeConfig, nbest: int, sentences: int) -> None:
        """Refuse a search whose scores alone cannot fit in the device's memory: sentences ×
        beam (or samples) × target vocabulary floats, a few copies of them at each step. Such a
        search would not fail cleanly but swap, or be killed by the system."""
        width = nbest if settings.sample else settings.beam
        needed = 4 * sentences * width * self.tokenizer.target_vocab_size * 4
        available = _device_memory(self.device)
        if available and needed > available:
            raise NmtError(
                f"option: {sentences} sentences × {width} "
                f"{'samples' if settings.sample else 'beams'} × "
                f"{self.tokenizer.target_vocab_size} target subwords need about "
                f"{needed / 2**30:,.1f} GiB at each step, more than the "
                f"{available / 2**30:,.1f} GiB of {self.device}; lower the batch size "
                f"(--batch-size), the batches at once (--inter-threads), the beam (--beam) "
                f"or the samples (--nbest)"
            )

    def _limit(self, encoded: list[list[int]]) -> list[list[int]]:
        """Cut sources longer than any the model was trained on, with a warning: such input
        gives unreliable output (and unbounded cost); split it into sentences instead."""
        limit = self.max_source_tokens
        long = [i + 1 for i, ids in enumerate(encoded) if limit and len(ids) > limit]
        if long:
            shown = ", ".join(map(str, long[:5])) + (" ..." if len(long) > 5 else "")
            log.warning(
                "line(s) %s: longer than the %d subword tokens the model was trained "
                "on (data.max_len); translating their first %d tokens only",
                shown,
                limit,
                limit,
            )
            encoded = [ids[:limit] for ids in encoded]
        return encoded

    def tune(
        self,
        sources: list[str],
        references: list[str],
        beams: tuple[int, ...] = (1, 5, 10),
        alphas: tuple[float, ...] = (0.6, 1.0),
    ) -> list[dict]:
        """Dev-set BLEU and chrF for each beam size × length normalization × alpha, best first.

        Greedy search (beam 1) has no length normalization to tune, nor does `none` an alpha.
        """
        grid: list[tuple[int, str, float]] = []
        for beam in beams:
            forms = (
                [("none", 0.0)]
                if beam == 1
                else [("none", 0.0)] + [(form, a) for form in ("avg", "gnmt") for a in alphas]
            )
            grid.extend((beam, form, alpha) for form, alpha in forms)
        from nmt.scoring.metrics import corpus_bleu, corpus_chrf  # sacreBLEU: only for tuning

        rows = []
        for beam, form, alpha in tqdm(grid, desc="tuning", unit="setting", leave=False):
            hypotheses = [
                h.text
                for h in self.translate(
                    sources, beam=beam, sample=False, length_norm=form, alpha=alpha
                )
            ]
            rows.append(
                {
                    "beam": beam,
                    "length_norm": form,
                    "alpha": alpha,
                    "bleu": round(corpus_bleu(hypotheses, references), 2),
                    "chrf": round(corpus_chrf(hypotheses, references), 2),
                }
            )
        return sorted(rows, key=lambda row: (row["bleu"], row["chrf"]), reverse=True)

    @torch.no_grad()
    def force(self, sources: list[str], targets: list[str], **options) -> list[Hypothesis]:
        """Score given translations as beam search scores them: the model's log-probability of
        each target (EOS included), normalized, plus the coverage bonus when `coverage_penalty`
        is set. A target search could not produce (beyond the sentence's length limit, or
        shorter than `min_len`) gets `reachable` False. `options`: decode keys, as in `nbest`.
        Runs the decoder step by step, exactly as search does, so a forced score and a search
        score of the same output agree."""
        settings = self.settings(**options)
        source_ids = self._limit(self.tokenizer.encode_source(list(sources)))
        target_ids = self.tokenizer.encode_target(list(targets))
        results: list[Hypothesis] = []
        model: AnyDecodable = self.searched_model(settings)  # as search would: bf16 alike
        for start in range(0, len(sources), settings.batch_size):
            chunk_targets = target_ids[start : start + settings.batch_size]
            source, lengths = pad_sources(source_ids[start : start + settings.batch_size])
            encoded: EncodedSource = model.encode(source.to(self.device), lengths)
            state: SearchState = model.initial_state(encoded)
            limits = length_limits(settings, lengths).tolist()
            steps = max(len(t) for t in chunk_targets) + 1
            target = torch.full((len(chunk_targets), steps), PAD, dtype=torch.long)
            for row, ids in enumerate(chunk_targets):
                target[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                target[row, len(ids)] = EOS
            target = target.to(self.device)
            previous = torch.full((len(chunk_targets),), BOS, dtype=torch.long, device=self.device)
            total = torch.zeros(len(chunk_targets), device=self.device)
            coverage = torch.zeros(source.shape, device=self.device)
            for t in range(steps):
                log_probs, state, weights = model.decode_step(encoded, state, previous)
                picked = log_probs.gather(1, target[:, t : t + 1]).squeeze(1)
                real = target[:, t] != PAD
                total += picked.masked_fill(~real, 0.0)
                coverage += weights * real[:, None]
                previous = target[:, t]
            bonuses = coverage_bonus(coverage, encoded.mask, settings.coverage_penalty).tolist()
            for ids, log_prob, bonus, limit in zip(chunk_targets, total.tolist(), bonuses, limits):
                hyp = finished(ids, log_prob, settings.length_norm, settings.alpha, bonus=bonus)
                hyp.text = self.tokenizer.decode_target(ids)
                hyp.reachable = settings.min_len <= len(ids) <= limit
                results.append(hyp)
        return results

    def attention_record(self, line: str, hyp: Hypothesis) -> dict:
        """A hypothesis' attention with the subword pieces on both axes (for plots)."""
        ids = self.tokenizer.encode_source([line])[0][: self.max_source_tokens or None]
        source = self.tokenizer.source_pieces(ids)  # cut as `_limit` cut what was translated
        target = self.tokenizer.target_pieces(hyp.tokens)
        weights = (
            []
            if hyp.attention is None
            else [[round(w, 4) for w in row] for row in hyp.attention.tolist()]
        )
        return {"source": [*source, "</s>"], "target": [*target, "</s>"], "attention": weights}

    def self_check(self, lines: list[str], tolerance: float = 1e-5, **options) -> list[str]:
        """Differences between translating `lines` one at a time and in batches.

        Padding and batching must never change a translation; a difference is a bug.
        """
        # One batch at a time in both: a batch's thread count may change float32 rounding.
        alone = self.nbest(lines, **{**options, "batch_size": 1, "inter_threads": 1})
        together = self.nbest(lines, **{**options, "inter_threads": 1})
        problems = []
        for number, (a, b) in enumerate(zip(alone, together), start=1):
            for rank, (x, y) in enumerate(zip(a, b), start=1):
                if x.tokens != y.tokens:
                    problems.append(
                        f"line {number}, hypothesis {rank}: {x.text!r} alone but "
                        f"{y.text!r} in a batch"
                    )
                elif abs(x.score - y.score) > tolerance:
                    problems.append(
                        f"line {number}, hypothesis {rank}: score {x.score:.6f} "
                        f"alone but {y.score:.6f} in a batch"
                    )
        return problems

    @torch.no_grad()
    def _search(
        self,
        sources: list[list[int]],
        settings: DecodeConfig,
        nbest: int,
        keep_attention: bool,
        line_seeds: list[int],
        prefixes: list[list[int]] | None,
        keep_steps: bool = False,
    ) -> list[list[Hypothesis]]:
        source, lengths = pad_sources(sources)
        model: AnyDecodable = self.searched_model(settings)
        encoded: EncodedSource = model.encode(source.to(self.device), lengths)
        max_lengths = length_limits(settings, lengths)
        prefix = None
        if prefixes and any(prefixes):
            prefix = torch.full((len(prefixes), max(map(len, prefixes))), PAD, dtype=torch.long)
            for row, ids in enumerate(prefixes):
                prefix[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            max_lengths = torch.maximum(max_lengths, (prefix != PAD).sum(1))
        vocabulary = None
        if settings.shortlist:
            vocabulary = self.lexicon.shortlist(
                source, settings.shortlist, settings.shortlist_frequent, prefix
            )
            encoded = model.shortlisted(encoded, vocabulary)
        rules = StepRules(settings.min_len, settings.no_repeat_ngram)
        common = _SearchOptions(
            length_norm=settings.length_norm,
            alpha=settings.alpha,
            keep_attention=keep_attention,
            rules=rules,
            prefix=prefix,
            vocabulary=vocabulary,
        )
        if settings.sample:
            return sample(
                model,
                encoded,
                max_lengths,
                nbest,
                line_seeds,
                settings.temperature,
                settings.top_k,
                settings.top_p,
                **common,
            )
        if settings.beam == 1:
            return greedy_search(model, encoded, max_lengths, **common)
        steps: list[list[dict]] | None = [[] for _ in sources] if keep_steps else None
        found = beam_search(
            model,
            encoded,
            max_lengths,
            settings.beam,
            nbest,
            coverage_penalty=settings.coverage_penalty,
            stopping=settings.stopping,
            steps=steps,
            **common,
        )
        for hyps, sentence_steps in zip(found, steps or ()):
            for hyp in hyps:
                hyp.steps = sentence_steps
        return found


_POOL = threading.Lock()  # one pool of workers at a time: PyTorch's thread count is process-wide


@contextlib.contextmanager
def _searched_at_once(
    work: Callable[[list[int]], list[list[Hypothesis]]], chunks: list[list[int]], workers: int
) -> Iterator[Iterator[list[list[Hypothesis]]]]:
    """`work` of each chunk, in order, computed by `workers` threads at once that share
    PyTorch's threads. Why: a search step is many small products, and PyTorch splitting each
    over two threads keeps them waiting for each other (about 40% of the time on 2 cores),
    while two batches at once, one thread each, wait only for the GIL between products.

    PyTorch keeps a thread count per thread, and a new thread takes the process's default (what
    `torch.set_num_threads` last set anywhere): so only one pool runs at a time (a caller in
    another thread meanwhile searches one batch at a time), and the default is restored as
    soon as every worker has taken its share.
    Thread-local state of the caller (autocast, grad mode) does not reach the workers; the
    search sets what it needs itself."""
    if workers == 1 or not _POOL.acquire(blocking=False):
        yield map(work, chunks)
        return
    pool, stopping = None, False
    started = threading.Barrier(workers + 1, timeout=60)
    try:
        threads = torch.get_num_threads()

        def share() -> None:
            torch.get_num_threads()  # this thread's count, taken from the default now,
            torch.set_num_threads(max(1, threads // workers))  # then its share
            started.wait()

        pool = ThreadPoolExecutor(workers, initializer=share)
        searched = pool.map(work, chunks)  # starts every worker: there are more chunks
        try:
            started.wait()
        finally:  # the default back at once: a thread started elsewhere meanwhile keeps it
            torch.set_num_threads(threads)
        yield searched
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the process is ending, do not wait
        stopping = True
        raise
    finally:
        _POOL.release()
        started.abort()  # a worker still waiting to start gives up
        if pool is not None:  # no batch starts after an error; those running are awaited
            pool.shutdown(wait=not stopping, cancel_futures=True)


class _SearchOptions(TypedDict):
    """The options every search takes alike (`Translator._search`)."""

    length_norm: str
    alpha: float
    keep_attention: bool
    rules: StepRules
    prefix: torch.Tensor | None
    vocabulary: torch.Tensor | None


# The values of options that change nothing, so asking for them where they do not apply is no
# mistake (`--beta 0` with greedy search). A beam size or a seed always means something: given
# where it cannot act (`--sample --beam 5`, `--seed 1` without --sample), it is refused.
_NEUTRAL = {"coverage_penalty": 0.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0}


def _device_memory(device: torch.device) -> int:
    """Bytes of memory of a device; 0 where the system does not say."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        return 0


def _out_of_memory(error: RuntimeError) -> bool:
    """A GPU out of memory, or the CPU allocator refusing a block (torch says so in words)."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or "can't allocate memory" in str(error)


def _bf16_with_int8(label: str) -> NmtError:
    return NmtError(
        f"option: {label} bf16 and int8 weights (--quantize int8) are two ways to speed up "
        f"search; choose one"
    )


def length_limits(settings: DecodeConfig, lengths: torch.Tensor) -> torch.Tensor:
    """Each output's length limit in subword tokens, max_len_a·|x| + max_len_b, from source
    lengths that count the appended EOS (as `pad_sources` gives them)."""
    max_len_b = float(min(settings.max_len_b, LENGTH_CAP))  # a Python int of any size
    limits = settings.max_len_a * (lengths - 1).double() + max_len_b
    return limits.clamp(max=LENGTH_CAP).long()  # a huge max_len_a must not wrap around to < 0


def _load_run(run_dir: Path, checkpoint: str) -> tuple[Seq2Seq, Tokenizer, Recipe]:
    if not (run_dir / RECIPE).is_file():
        raise NmtError(
            f"{run_dir}: not an nmt run directory (no recipe.yaml); "
            f"give the directory nmt-train wrote"
        )
    recipe = Recipe.load(run_dir / RECIPE)
    tokenizer = Tokenizer.load(run_dir)
    tensors, meta = load_checkpoint(run_dir / CHECKPOINTS / checkpoint, model_only=True)
    if meta.get("spm_sha256") != tokenizer.sha256:
        models = " and ".join(str(path) for path in tokenizer.files)
        raise NmtError(
            f"{models}: not the SentencePiece model checkpoint {checkpoint!r} was "
            f"trained with (SHA-256 differs); restore the run's own"
        )
    model = Seq2Seq(recipe.model, tokenizer.source_vocab_size, tokenizer.target_vocab_size)
    try:
        restore(tensors, meta, model)
    except RuntimeError as error:
        raise NmtError(
            f"{run_dir}: checkpoint {checkpoint!r} does not fit its recipe and "
            f"vocabulary: {str(error).splitlines()[0]}"
        ) from None
    return model, tokenizer, recipe


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
    tuned = with_changes(decode, values, "decode", str(path))
    check_decoding(tuned, str(path))
    return tuned


def save_tuned_decoding(run_dir: Path, values: dict) -> Path:
    path = run_dir / TUNED
    atomic_write_text(path, yaml.safe_dump(values, sort_keys=False))
    return path
