"""Training: the whole loop in one place (`_train`), over the named steps of `_Run`.

recipe → corpus → subwords → batches → model → Adam steps, with validation (loss, perplexity,
greedy BLEU on dev) every `train.valid_every` updates, best/last checkpoints and early
stopping.
Everything a run makes lives in its run directory, so it can be resumed, translated from and
reproduced from that directory alone.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import platform
import shutil
import signal
import subprocess
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm import tqdm

from nmt import distributed
from nmt.checkpoint import (
    training_weights_bytes,
    checkpoint_exists,
    checkpoint_step,
    delete_checkpoint,
    delete_checkpoint_files,
    delete_unnamed_weights,
    load_checkpoint,
    restore,
    save_checkpoint,
)
from nmt.data.batching import Batch, collate, make_batches
from nmt.data.corpus import EncodedSplit, TextSplit, sample_split
from nmt.data.prepare import PreparedData, prepare_data
from nmt.data.subwords import PAD, Tokenizer
from nmt.device import cpu_has_bf16
from nmt.distributed import Cluster
from nmt.errors import NmtError, Terminated
from nmt.files import atomic_write_text, sha256_file
from nmt.scoring.metrics import corpus_bleu, corpus_chrf
from nmt.loss import output_loss
from nmt.model.seq2seq import Seq2Seq
from nmt.optim import build_optimizer, learning_rate, set_learning_rate
from nmt.plots import plot_learning_curves
from nmt.run_dir import (
    CHECKPOINTS,
    CURVES,
    LOG,
    MANIFEST,
    METRICS,
    RECIPE,
    RUN_FILES,
    RUN_FOLDERS,
    RUN_HEADER,
    holds_run,
)
from nmt.recipe import DecodeConfig, Recipe, TokenizerConfig, TrainConfig, parse_duration
from nmt.translate import Translator

log = logging.getLogger("nmt")
MAX_NONFINITE = 5  # non-finite losses in a row before training stops
SAMPLED_LENGTH_WARNING = 1.5  # sampled subwords per deterministic one that earn a warning
VALIDATION_DECODING = DecodeConfig(beam=1)  # dev BLEU: greedy, with the default length limits
METRICS_FIELDS = [
    "step",
    "epoch",
    "kind",
    "loss",
    "lr",
    "target_tokens_per_s",
    "dev_loss",
    "dev_ppl",
    "dev_bleu",
    "dev_chrf",
    "elapsed_s",
]


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint so `--resume` continues exactly."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # index of the next batch of this epoch's (seeded) batch order
    best: float | None = None
    best_step: int = 0
    bad_validations: int = 0
    plateau_wait: int = 0  # validations without improvement since the last plateau decay
    plateau_decays: int = 0
    kept: list[list[float]] = field(default_factory=list)  # [value, step] of step-N checkpoints
    elapsed_s: float = 0.0
    history: list[dict] = field(default_factory=list)  # validation results
    # The loss of the log window so far (a resumed run logs the same numbers), and the
    # non-finite losses in a row just before this point.
    window_loss: float = 0.0
    window_tokens: int = 0
    nonfinite: int = 0


@dataclass
class TrainResult:
    """What `train` returns: the run directory, updates done, the best dev value of `metric`
    (`train.early_stopping`) and its step, seconds taken, and whether early stopping ended it."""

    run_dir: Path
    steps: int
    best_step: int
    best: float | None
    metric: str
    elapsed_s: float
    stopped_early: bool


def batch_loss(model: Seq2Seq, batch: Batch, label_smoothing: float) -> torch.Tensor:
    """Summed cross-entropy over real target tokens; the output layer never sees padding."""
    attentional, _ = model(batch.source, batch.source_lengths, batch.target_in)
    real = batch.target_out != PAD
    return output_loss(
        attentional[real],
        model.output.weight,
        model.output.bias,
        batch.target_out[real],
        label_smoothing,
    )


def train(
    recipe: Recipe, run_dir: str | Path, resume: bool = False, overwrite: bool = False
) -> TrainResult:
    """Train a model as the recipe says, in `run_dir`; under torchrun, as one of its processes
    (see nmt.distributed)."""
    cluster, device = distributed.join(recipe.train.device)
    try:
        with _caches_in(Path(run_dir) / "cache"):
            result = _train(recipe, Path(run_dir), resume, overwrite, cluster, device)
        cluster.barrier()
        return result
    finally:
        distributed.leave(cluster)


def _train(
    recipe: Recipe,
    run_dir: Path,
    resume: bool,
    overwrite: bool,
    cluster: Cluster,
    device: torch.device,
) -> TrainResult:
    """The loop: epochs of seeded token batches, one update per `train.accumulate` batches,
    validation every `train.valid_every` updates, stop requests honoured between updates."""
    run = _Run.start(recipe, run_dir, resume, overwrite, cluster, device)
    progress = run.progress
    with _StopRequests() as stop:
        while not run.finished(stop):
            batches = run.epoch_batches()
            bar = tqdm(
                total=len(batches),
                initial=progress.batch_in_epoch,
                unit="batch",
                desc=f"epoch {progress.epoch + 1}",
                dynamic_ncols=True,
                mininterval=1.0,
                leave=False,
                disable=not cluster.is_main,
            )
            while progress.batch_in_epoch < len(batches) and not run.finished(stop):
                start = progress.batch_in_epoch
                chosen = batches[start : start + run.config.accumulate]  # one update's batches
                if run.update(chosen):  # False: a non-finite loss, the update skipped
                    run.log(bar)
                    if progress.step % run.config.valid_every == 0:
                        run.validate()
                bar.update(len(chosen))
            bar.close()
            if progress.batch_in_epoch >= len(batches):
                progress.epoch, progress.batch_in_epoch = progress.epoch + 1, 0
        stopped_early = run.stopper.patience_ran_out(progress)
        if not progress.history or progress.history[-1]["step"] != progress.step:
            run.validate()  # at the end too, unless this step was just validated
        run.finished(stop)  # a signal during the final validation still ends with its exit code
    return run.result(stopped_early)


class _Run:
    """One training run's state and its named steps: start (or resume), update, log, validate
    and save. `_train` above is the loop over them."""

    def __init__(
        self,
        recipe: Recipe,
        run_dir: Path,
        cluster: Cluster,
        device: torch.device,
        data: PreparedData,
        model: Seq2Seq,
        progress: Progress,
        resumed: bool,
    ):
        self.recipe, self.config, self.run_dir = recipe, recipe.train, run_dir
        self.cluster, self.device = cluster, device
        self.train_text, self.dev_text, self.tokenizer, self.train_data, self.dev_data = data
        self.model, self.progress = model, progress
        self.optimizer = build_optimizer(model.parameters(), self.config)
        self.updater = Updater(model, self.optimizer, self.config, device, cluster)
        # Validation decodes greedily with fixed settings: the recipe's `decode` section is for
        # translation time, and a sampled or shortlisted dev BLEU would steer early stopping
        # at random.
        self.translator = Translator(model, self.tokenizer, VALIDATION_DECODING, device)
        self.stopper = _Stopper(
            self.config.max_steps,
            self.config.max_epochs,
            self.config.patience,
            parse_duration(self.config.max_time) if self.config.max_time else 0.0,
        )
        self.metrics: _MetricsFile | None = None  # opened once the run directory agrees with
        self.board = None  # the checkpoint it continues from
        self.saved_at = _position(progress) if resumed else None  # where `last` stands
        self.rate = learning_rate(self.config, max(progress.step, 1), progress.plateau_decays)
        self.window_start = time.perf_counter()
        # Computed once (per epoch with subword sampling): a pass over the corpus's offsets.
        self.source_lengths = self.train_data.src_lengths
        self.target_lengths = self.train_data.tgt_lengths
        self.deterministic_data = self.train_data  # what subword sampling resegments
        self.segmented_epoch = -1  # the epoch `train_data` was sampled for
        self.started = 0.0

    # ---------------------------------------------------------------- start or resume

    @classmethod
    def start(
        cls,
        recipe: Recipe,
        run_dir: Path,
        resume: bool,
        overwrite: bool,
        cluster: Cluster,
        device: torch.device,
    ) -> "_Run":
        """Run directory, then data: corpus → subwords → encoded, filtered arrays (rank 0
        first); then the model, from `checkpoints/last` when resuming."""
        if not cluster.is_main:
            log.setLevel(logging.WARNING)  # rank 0 speaks for the run
        torch.manual_seed(recipe.seed)
        if recipe.train.threads:
            torch.set_num_threads(recipe.train.threads)

        def set_up() -> tuple[bool | None, PreparedData]:
            resuming = None
            if cluster.is_main:
                resuming = prepare_run_dir(run_dir, recipe, resume, overwrite)
                _log_to_file(run_dir / LOG)
            return resuming, prepare_data(recipe, run_dir)

        resuming, data = cluster.main_first(set_up)
        resume = bool(cluster.from_main(resuming))  # rank 0's answer
        tokenizer = data.tokenizer
        model = Seq2Seq(recipe.model, tokenizer.source_vocab_size, tokenizer.target_vocab_size)
        model.to(device)
        run = cls(recipe, run_dir, cluster, device, data, model, Progress(), resume)
        if resume:
            run.restore()
        elif cluster.is_main:
            write_manifest(run_dir, recipe, [run.train_text, run.dev_text], tokenizer, model)
        if cluster.is_main:
            forget_after(run_dir, run.progress)  # first: it frees what a crash left behind
            # On resume too: train.keep_best may have grown, the disk filled meanwhile.
            check_disk_space(run_dir, model, recipe.train.keep_best)
            if resume:  # recorded once it goes on
                record_resumption(run_dir, recipe, run.progress.step)
            run.metrics = _MetricsFile(run_dir / METRICS)
            run.board = _tensorboard(run_dir)
        log.info(
            "model: %s parameters on %s%s",
            f"{model.parameter_count:,}",
            device,
            f", {cluster.world_size} processes" if cluster.distributed else "",
        )
        run.started = time.perf_counter() - run.progress.elapsed_s
        run.stopper.started = run.started
        run.window_start = time.perf_counter()  # the first log window measures training only
        if cluster.is_main and resume:
            complete_commit(run_dir, run.progress, run.save)
        return run

    def restore(self) -> None:
        """Weights, optimizer, RNG and position from `checkpoints/last`."""
        tensors, meta = load_checkpoint(self.run_dir / CHECKPOINTS / "last")
        restore(tensors, meta, self.model, self.optimizer)
        self.progress.__dict__.update(Progress(**meta["progress"]).__dict__)
        if meta.get("grad_scaler"):
            self.updater.scaler.load_state_dict(meta["grad_scaler"])
        self.rate = learning_rate(
            self.config, max(self.progress.step, 1), self.progress.plateau_decays
        )
        self.saved_at = _position(self.progress)  # `last` holds exactly this position
        log.info(
            "resumed at step %d (epoch %d, batch %d)",
            self.progress.step,
            self.progress.epoch + 1,
            self.progress.batch_in_epoch,
        )

    # ---------------------------------------------------------------- one update

    def epoch_batches(self) -> list[np.ndarray]:
        """This epoch's batches: token buckets in an order seeded by the epoch (of the epoch's
        own segmentation, with subword regularisation)."""
        self._resegment()
        return make_batches(
            self.source_lengths,
            self.target_lengths,
            self.config.batch_tokens,
            self.config.batch_sentences,
            self.recipe.seed,
            self.progress.epoch,
        )

    def _resegment(self) -> None:
        """With `tokenizer.sampling_alpha`, this epoch's segmentation of the training pairs,
        sampled from the recipe's seed and the epoch: a resumed run samples the same one."""
        tokenizer = self.recipe.tokenizer
        if not tokenizer.sampling_alpha or self.segmented_epoch == self.progress.epoch:
            return
        self.train_data = sample_split(
            self.train_text,
            self.deterministic_data,
            self.tokenizer,
            tokenizer.sampling_alpha,
            -1 if tokenizer.type == "bpe" else tokenizer.sampling_nbest,  # BPE: no n best
            (self.recipe.seed * 100_003 + self.progress.epoch) % 2**32,
            self.recipe.data.max_len,
        )
        self.source_lengths = self.train_data.src_lengths
        self.target_lengths = self.train_data.tgt_lengths
        self.segmented_epoch = self.progress.epoch
        if self.cluster.is_main:
            report_sampled_length(self.train_data, self.deterministic_data, tokenizer)

    def update(self, chosen: list[np.ndarray]) -> bool:
        """One optimizer update over `chosen` batches, their loss normalised by all their
        target tokens (with EOS, on all processes together); each process takes its share of
        every batch. False when the loss was not finite and the update skipped."""
        progress, config = self.progress, self.config
        tokens = sum(int(self.target_lengths[indices].sum()) + len(indices) for indices in chosen)
        group = [
            _collate_share(self.train_data, self.cluster.share(indices), self.device)
            for indices in chosen
        ]
        self.rate = learning_rate(config, progress.step + 1, progress.plateau_decays)
        set_learning_rate(self.optimizer, self.rate)
        try:
            loss = self.updater(group, tokens)
        except torch.cuda.OutOfMemoryError:
            raise NmtError(
                f"out of memory on {self.device} at step {progress.step + 1} with batches of "
                f"train.batch_tokens={config.batch_tokens}: lower train.batch_tokens (e.g. to "
                f"{config.batch_tokens // 2}) and raise train.accumulate to keep the same "
                f"effective batch"
            ) from None
        progress.batch_in_epoch += len(group)
        if loss is None:  # stop after several in a row
            progress.nonfinite += 1
            log.warning(
                "step %d: non-finite loss, update skipped (%d in a row)",
                progress.step + 1,
                progress.nonfinite,
            )
            if progress.nonfinite >= MAX_NONFINITE:
                raise NmtError(
                    f"training diverged: {progress.nonfinite} non-finite losses in a row at step "
                    f"{progress.step + 1}; checkpoints/last (step "
                    f"{self.saved_at[0] if self.saved_at else 0}) is from before it. Lower "
                    f"train.lr or set train.clip_norm, then --resume"
                )
            return False
        progress.nonfinite = 0
        progress.step += 1
        progress.window_loss += loss
        progress.window_tokens += tokens
        return True

    # ---------------------------------------------------------------- log

    def log(self, bar: tqdm) -> None:
        """Every `train.log_every` updates: a metrics row, the progress bar, TensorBoard."""
        progress = self.progress
        if progress.step % self.config.log_every:
            return
        if self.cluster.is_main:
            seconds = time.perf_counter() - self.window_start
            speed = progress.window_tokens / max(seconds, 1e-9)
            loss = progress.window_loss / progress.window_tokens
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{speed:,.0f}", lr=f"{self.rate:.1e}")
            assert self.metrics is not None  # rank 0 opened it in `start`
            self.metrics.write(
                step=progress.step,
                epoch=progress.epoch + 1,
                kind="train",
                loss=round(loss, 4),
                lr=self.rate,
                target_tokens_per_s=round(speed),
                elapsed_s=self._elapsed(),
            )
            _log_to_file_only(
                f"step {progress.step} (epoch {progress.epoch + 1}): loss {loss:.3f}, "
                f"lr {self.rate:.1e}, {speed:,.0f} target tokens/s"
            )
            if self.board:
                self.board.add_scalar("train_loss", loss, progress.step)
                self.board.add_scalar("lr", self.rate, progress.step)
        progress.window_loss, progress.window_tokens = 0.0, 0
        self.window_start = time.perf_counter()

    # ---------------------------------------------------------------- validate and record

    def validate(self) -> None:
        """Dev scores, recorded, then written at one commit point (see `_commit`); the other
        processes follow rank 0's early-stopping and schedule state."""
        if self.cluster.is_main:
            result = validation(
                self.model, self.translator, self.dev_text, self.dev_data, self.config, self.device
            )
            recorded, outcome = record_validation(self.progress, result, self.config)
            self.progress.__dict__.update(recorded.__dict__)
            self._commit(result, outcome)
        if self.cluster.distributed:
            self.progress.__dict__.update(self.cluster.from_main(dict(self.progress.__dict__)))

    def _commit(self, result: dict[str, float], outcome: "ValidationOutcome") -> None:
        """The metrics row, then `last` recording the validation: the commit point, after which
        every other file follows from it (complete_commit writes what a crash left unwritten
        when the run resumes). Then `best`, the step-N checkpoint, and the deletions."""
        progress, config = self.progress, self.config
        assert self.metrics is not None  # rank 0 opened it in `start`
        self.metrics.write(
            step=progress.step,
            epoch=progress.epoch + 1,
            kind="valid",
            elapsed_s=self._elapsed(),
            **result,
        )
        log.info(
            "step %d: dev loss %.3f, ppl %.2f, BLEU %.2f, chrF %.2f%s",
            progress.step,
            result["dev_loss"],
            result["dev_ppl"],
            result["dev_bleu"],
            result["dev_chrf"],
            " (best)"
            if outcome.improved
            else f" (best {_best_text(progress, config)} at step {progress.best_step})",
        )
        self.save("last")
        if outcome.improved:
            self.save("best")
        if outcome.kept:
            self.save(f"step-{progress.step}")
        for step in outcome.dropped:
            delete_checkpoint(self.run_dir / CHECKPOINTS / f"step-{step}")
        if self.board:
            for key, number in result.items():
                self.board.add_scalar(key, number, progress.step)
            self.board.flush()  # its own timer flushes only every 2 minutes; commands end abruptly
        plot_learning_curves(self.run_dir / METRICS, self.run_dir / CURVES)

    # ---------------------------------------------------------------- save

    def save(self, name: str) -> None:
        """Write checkpoints/NAME (rank 0): weights, optimizer, RNG and the position."""
        if not self.cluster.is_main:
            return
        self.progress.elapsed_s = time.perf_counter() - self.started
        scaler = self.updater.scaler
        path = self.run_dir / CHECKPOINTS / name
        try:
            save_checkpoint(
                path,
                self.model,
                {
                    "progress": self.progress.__dict__,
                    "spm_sha256": self.tokenizer.sha256,
                    "source_vocab_size": self.tokenizer.source_vocab_size,
                    "target_vocab_size": self.tokenizer.target_vocab_size,
                    "grad_scaler": scaler.state_dict() if scaler.is_enabled() else None,
                },
                self.optimizer,
            )
        except OSError as error:
            raise NmtError(
                f"{path}: cannot write the checkpoint ({error.strerror}); the "
                f"checkpoints already there are intact"
            ) from None
        if name == "last":
            self.saved_at = _position(self.progress)

    # ---------------------------------------------------------------- between updates

    def finished(self, stop: "_StopRequests") -> bool:
        """A safe point, between updates: honour a stop request (save `last`, leave with the
        signal's exit code), then say whether training is done (rank 0's clock decides
        `max_time`)."""
        if self.cluster.any(stop.requested):
            if self.saved_at != _position(self.progress):
                self.save("last")
            log.info(
                "interrupted at step %d; saved checkpoints/last (continue with --resume)",
                self.progress.step,
            )
            self.cluster.barrier()  # no process leaves while rank 0 still writes
            stop.exit()
        return self.cluster.from_main(self.stopper.done(self.progress))

    def result(self, stopped_early: bool) -> TrainResult:
        progress, config = self.progress, self.config
        elapsed = time.perf_counter() - self.started
        log.info(
            "finished after %d steps in %.0f s; best dev %s %s at step %d%s",
            progress.step,
            elapsed,
            config.early_stopping,
            _best_text(progress, config),
            progress.best_step,
            " (early stop)" if stopped_early else "",
        )
        best = progress.best
        if best is not None and config.early_stopping == "loss":
            best = -best  # recorded negated, so that higher is better for every metric
        return TrainResult(
            self.run_dir,
            progress.step,
            progress.best_step,
            best,
            config.early_stopping,
            elapsed,
            stopped_early,
        )

    def _elapsed(self) -> float:
        return round(time.perf_counter() - self.started, 1)


def report_sampled_length(
    sampled: EncodedSplit, fixed: EncodedSplit, config: TokenizerConfig
) -> float:
    """Log how many subwords an epoch's sampled segmentation has against the deterministic one,
    and warn when it is so much longer that training text no longer looks like what
    translation sees (unigram sampling with a small α over all segmentations nears
    characters: on Multi30k, α 0.1 doubles the subwords, 0.3 adds 12%). Returns the ratio."""
    fixed_count = int(fixed.src_lengths.sum() + fixed.tgt_lengths.sum())
    ratio = int(sampled.src_lengths.sum() + sampled.tgt_lengths.sum()) / max(fixed_count, 1)
    settings = f"tokenizer.sampling_alpha {config.sampling_alpha}"
    if config.type != "bpe":
        settings += f", sampling_nbest {config.sampling_nbest}"
    message = f"subword sampling ({settings}): {ratio:.2f}× the deterministic subwords"
    if ratio > SAMPLED_LENGTH_WARNING:
        log.warning(
            "%s; training text this fragmented is unlike what translation sees, and an epoch "
            "takes that much longer: %s segments closer to it",
            message,
            "a smaller sampling_alpha (the BPE-dropout rate)"
            if config.type == "bpe"
            else "a larger sampling_alpha or a sampling_nbest such as 64",
        )
    else:
        log.info(message)
    return ratio


class Updater:
    """One optimizer update over a group of batches (gradient accumulation), with mixed
    precision when the recipe asks for it (bf16 on CUDA and CPUs, fp16 on CUDA)."""

    def __init__(
        self,
        model: Seq2Seq,
        optimizer: torch.optim.Optimizer,
        config: TrainConfig,
        device: torch.device,
        cluster: Cluster = Cluster(),
    ):
        self.model, self.optimizer, self.config, self.cluster = model, optimizer, config, cluster
        # The loss module, or DDP around it (whose `no_sync` the type of `wrap` does not show).
        self.loss: Any = distributed.wrap(
            TrainingLoss(model, config.label_smoothing), cluster, device
        )
        self.device_type = device.type
        # bf16 autocast on CUDA and on CPUs; fp16 (with its loss scaling) on CUDA only.
        self.mixed = config.precision == "bf16" or (
            device.type == "cuda" and config.precision == "fp16"
        )
        if config.precision == "fp16" and not self.mixed:
            log.warning("train.precision=fp16 needs CUDA; training in fp32 on %s", device)
        if self.mixed and device.type == "cpu" and cpu_has_bf16() is False:
            log.warning(
                "train.precision=bf16: this CPU has no bfloat16 instructions (AMX or "
                "AVX512-BF16); PyTorch emulates them, slower than fp32"
            )
        self.dtype = torch.bfloat16 if config.precision == "bf16" else torch.float16
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.mixed and config.precision == "fp16"
        )

    def __call__(self, group: list[Batch | None], tokens: int) -> float | None:
        """Apply one update; return the group's summed loss over all processes, or None, and
        nothing applied, when it is not finite. `tokens`: the target tokens of the whole group
        on all processes, which the loss is normalised by."""
        total = 0.0
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(group):
            last = i == len(group) - 1
            with nullcontext() if last or not self.cluster.distributed else self.loss.no_sync():
                with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.mixed):
                    loss_sum = self.loss(batch)
                value = self.cluster.sum(float(loss_sum.detach()))  # every process must agree
                if not math.isfinite(value):
                    return None
                # DDP averages gradients over processes; scaled by their number, the result is
                # the gradient of the mean loss over the global batch.
                self.scaler.scale(loss_sum * self.cluster.world_size / tokens).backward()
            total += value
        self.scaler.unscale_(self.optimizer)
        if self.config.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return total


class TrainingLoss(torch.nn.Module):
    """A batch's summed training loss as a module's forward, the shape DDP wraps. A process
    whose share of a batch is empty still takes part, with a zero loss over every parameter."""

    def __init__(self, model: Seq2Seq, label_smoothing: float):
        super().__init__()
        self.model, self.label_smoothing = model, label_smoothing

    def forward(self, batch: Batch | None) -> torch.Tensor:
        if batch is None:
            return torch.stack([p.sum() for p in self.model.parameters()]).sum() * 0.0
        return batch_loss(self.model, batch, self.label_smoothing)


def _collate_share(data: EncodedSplit, indices: np.ndarray, device: torch.device) -> Batch | None:
    if len(indices) == 0:
        return None
    return collate(data, indices).to(device)


@torch.no_grad()
def validation(
    model: Seq2Seq,
    translator: Translator,
    dev_text: TextSplit,
    dev_data: EncodedSplit,
    config,
    device: torch.device,
) -> dict[str, float]:
    """Dev loss and perplexity (teacher-forced, no smoothing), greedy BLEU and chrF."""
    model.eval()
    total, tokens = 0.0, 0
    for indices in make_batches(
        dev_data.src_lengths,
        dev_data.tgt_lengths,
        config.batch_tokens,
        config.batch_sentences,
        0,
        0,
    ):
        batch = collate(dev_data, indices).to(device)
        total += float(batch_loss(model, batch, 0.0))
        tokens += batch.target_tokens
    sources, references = dev_text.sources, dev_text.targets
    if config.valid_max_sentences:
        sources = sources[: config.valid_max_sentences]
        references = references[: config.valid_max_sentences]
    hypotheses = [h.text for h in translator.translate(sources)]
    loss = total / max(tokens, 1)
    return {
        "dev_loss": round(loss, 4),
        "dev_ppl": round(math.exp(min(loss, 50)), 2),
        "dev_bleu": round(corpus_bleu(hypotheses, references), 2),
        "dev_chrf": round(corpus_chrf(hypotheses, references), 2),
    }


class _StopRequests:
    """Ctrl-C and SIGTERM during training ask the loop to stop at its next safe point (between
    updates, after a validation's checkpoints are written), never inside an optimizer step or a
    save, so the saved position says exactly what has been done. A second signal stops at once,
    as kill -9 would: the run then resumes from its last complete checkpoint, still exactly."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signal: int | None = None
        self.previous: dict[int, Any] = {}  # the handlers to put back

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def __enter__(self) -> "_StopRequests":
        if threading.current_thread() is threading.main_thread():  # signals reach only it
            self.previous = {number: signal.signal(number, self._handle) for number in self.SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame) -> None:
        if self.signal is not None:
            self._raise(number)
        self.signal = number
        # A raw write: the signal may have interrupted a write to stderr, which logging would
        # enter again (a "reentrant call" error).
        os.write(
            2,
            b"\nnmt-train: stopping after the update or validation under way, then "
            b"saving checkpoints/last; a second Ctrl-C stops at once (--resume then "
            b"continues from the last checkpoint)\n",
        )

    def exit(self) -> None:
        """Leave training as the signal asked: KeyboardInterrupt, or Terminated for SIGTERM."""
        self._raise(self.signal if self.signal is not None else signal.SIGINT)

    @staticmethod
    def _raise(number: int) -> None:
        raise Terminated() if number == signal.SIGTERM else KeyboardInterrupt()


def _position(progress: Progress) -> tuple[int, int, int]:
    """Where training stands in the data: skipped updates move it without a step."""
    return progress.step, progress.epoch, progress.batch_in_epoch


class _Stopper:
    def __init__(self, max_steps: int, max_epochs: int, patience: int, max_seconds: float):
        self.max_steps, self.max_epochs, self.patience = max_steps, max_epochs, patience
        self.max_seconds, self.started = max_seconds, time.perf_counter()

    def patience_ran_out(self, progress: Progress) -> bool:
        return self.patience > 0 and progress.bad_validations >= self.patience

    def done(self, progress: Progress) -> bool:
        return bool(
            (self.max_steps and progress.step >= self.max_steps)
            or (self.max_epochs and progress.epoch >= self.max_epochs)
            or self.patience_ran_out(progress)
            or (
                self.max_seconds
                and progress.step > 0
                and time.perf_counter() - self.started >= self.max_seconds
            )
        )


class _MetricsFile:
    """metrics.csv: one row per log interval (`train`) and per validation (`valid`)."""

    def __init__(self, path: Path):
        self.path = path
        if not path.is_file():
            with open(path, "w", newline="") as handle:
                csv.DictWriter(handle, METRICS_FIELDS).writeheader()

    def write(self, **row) -> None:
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, METRICS_FIELDS).writerow(row)


def _best_text(progress: Progress, config) -> str:
    if progress.best is None:
        return "-"
    return f"{-progress.best:.3f}" if config.early_stopping == "loss" else f"{progress.best:.2f}"


@dataclass
class ValidationOutcome:
    """What one validation changes on disk, decided before anything is written."""

    improved: bool  # it becomes checkpoints/best
    kept: bool  # it becomes checkpoints/step-N
    dropped: list[int]  # step-N checkpoints it pushes out of the kept set


def record_validation(
    progress: Progress, result: dict[str, float], config: TrainConfig
) -> tuple[Progress, ValidationOutcome]:
    """The bookkeeping of one validation, as a pure function: `progress` with `result` entered
    (history, best, patience, the plateau schedule, the kept step-N set of the
    `train.keep_best` best validations), and what that changes on disk. `progress` itself is
    left as it was."""
    value = (
        -result["dev_loss"]
        if config.early_stopping == "loss"
        else result[f"dev_{config.early_stopping}"]
    )
    new = dataclasses.replace(
        progress,
        history=[*progress.history, {"step": progress.step, **result}],
        kept=[list(entry) for entry in progress.kept],
    )
    improved = progress.best is None or value > progress.best
    if improved:
        new.best, new.best_step, new.bad_validations, new.plateau_wait = value, new.step, 0, 0
    else:
        new.bad_validations += 1
        new.plateau_wait += 1
        if config.schedule == "plateau" and new.plateau_wait >= config.plateau_patience:
            new.plateau_decays, new.plateau_wait = new.plateau_decays + 1, 0
    entry = [value, new.step]
    ranked = sorted([*new.kept, entry], key=lambda item: -item[0])
    kept = config.keep_best > 0 and entry in ranked[: config.keep_best]
    dropped = []
    if kept:
        new.kept = ranked[: config.keep_best]
        dropped = [int(step) for _, step in ranked[config.keep_best :]]
    return new, ValidationOutcome(improved, kept, dropped)


def _tensorboard(run_dir: Path):
    """A TensorBoard writer into RUN_DIR/tensorboard when tensorboard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


# ------------------------------------------------------------------ run directory


def prepare_run_dir(run_dir: Path, recipe: Recipe, resume: bool, overwrite: bool) -> bool:
    """Create the run directory, refusing to mix two runs in one or to replace a file that nmt
    did not write. Returns whether training resumes (not when there is no checkpoint yet)."""
    stored = run_dir / RECIPE
    if resume and overwrite:
        raise NmtError("--resume and --overwrite exclude each other")
    if resume:
        if not holds_run(run_dir):
            raise NmtError(f"{run_dir}: nothing to resume (not an nmt run directory)")
        previous = Recipe.load(stored)
        for section in ("data", "tokenizer", "model"):
            if getattr(previous, section) != getattr(recipe, section):
                raise NmtError(
                    f"{run_dir}: the recipe's {section} section differs from the run's "
                    f"({stored}); resume with the same {section}, or start a new run"
                )
        if not checkpoint_exists(run_dir / CHECKPOINTS / "last"):
            log.warning("%s: no checkpoint yet; starting from the beginning", run_dir)
            resume = False
    elif holds_run(run_dir):
        if not overwrite:
            raise NmtError(
                f"{run_dir}: already holds a run; pass --resume to continue it or "
                f"--overwrite to start it again"
            )
        remove_run(run_dir)
    else:
        for name in (*RUN_FILES, *RUN_FOLDERS, CHECKPOINTS):
            path = run_dir / name
            if path.exists() and not (path.is_dir() and not any(path.iterdir())):
                raise NmtError(
                    f"{path}: exists and was not written by an nmt run; nmt writes "
                    f"its own {name} there, so choose another --run-dir or move it"
                )
    try:
        (run_dir / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        atomic_write_text(stored, RUN_HEADER + recipe.to_yaml())
    except OSError as error:
        raise NmtError(f"{run_dir}: cannot write the run directory: {error.strerror}") from None
    return resume


def remove_run(run_dir: Path) -> None:
    """Delete what nmt wrote in `run_dir` (see RUN_FILES), leaving everything else."""
    checkpoints = run_dir / CHECKPOINTS
    try:
        for name in RUN_FOLDERS:
            shutil.rmtree(run_dir / name, ignore_errors=True)
        for path in [*run_dir.glob(".*.tmp"), *checkpoints.glob(".*.tmp")]:
            path.unlink(missing_ok=True)
        if checkpoints.is_dir():
            delete_checkpoint_files(checkpoints)
            if not any(checkpoints.iterdir()):
                checkpoints.rmdir()
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
    except OSError as error:
        raise NmtError(
            f"{run_dir}: cannot remove the previous run for --overwrite: "
            f"{error.strerror} ({error.filename})"
        ) from None


@contextmanager
def _caches_in(folder: Path) -> Iterator[None]:
    """Point the caches that libraries write on their own into the run directory while it
    trains, unless the user chose where they go: matplotlib's font cache, and the one PyTorch's
    optimizers create in the system's temporary folder (its compiler cache). The environment is
    put back afterwards (matplotlib reads its variable once per process, at first use)."""
    chosen = {name: os.environ.get(name) for name in _LIBRARY_CACHES}
    for name, value in chosen.items():
        if value is None:
            os.environ[name] = str(folder / _LIBRARY_CACHES[name])
    try:
        yield
    finally:
        for name, value in chosen.items():
            if value is None:
                os.environ.pop(name, None)


_LIBRARY_CACHES = {"MPLCONFIGDIR": "matplotlib", "TORCHINDUCTOR_CACHE_DIR": "torchinductor"}


def check_disk_space(run_dir: Path, model: Seq2Seq, keep_best: int) -> None:
    """Refuse to start when the disk cannot hold the run's checkpoints: better now than at hour 3.

    A checkpoint holds the weights and Adam's two moments; a run keeps best, last and the
    `keep_best` step-N ones, plus one being written. The checkpoints a resumed run already
    has count as space it will reuse.
    """
    checkpoint_bytes = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    needed = (3 + keep_best) * checkpoint_bytes - training_weights_bytes(run_dir / CHECKPOINTS)
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise NmtError(
            f"{run_dir}: {free / 2**20:,.0f} MiB free on this disk, but the run's "
            f"checkpoints need about {needed / 2**20:,.0f} MiB; free space or choose "
            f"another --run-dir"
        )


def forget_after(run_dir: Path, progress: Progress) -> None:
    """Make the run directory agree with the checkpoint training continues from.

    After a crash, metrics.csv may hold rows from beyond the last checkpoint (they will be made
    again), checkpoints/step-N files that the checkpoint does not know, and temporary files of an
    interrupted write. Nothing here is lost that the resumed run does not write again.
    """
    kept = {f"step-{int(step)}" for _, step in progress.kept}
    for path in (run_dir / CHECKPOINTS).glob("step-*.json"):
        if path.stem not in kept:
            delete_checkpoint(path.with_suffix(""))
    for folder in (run_dir, run_dir / CHECKPOINTS):
        for path in folder.glob(".*.tmp"):
            path.unlink(missing_ok=True)
    delete_unnamed_weights(run_dir / CHECKPOINTS)
    metrics = run_dir / METRICS
    if metrics.is_file():
        with open(metrics, newline="") as handle:
            rows = [
                row
                for row in csv.DictReader(handle)
                if row.get("elapsed_s")
                and row["step"].isdigit()
                and int(row["step"]) <= progress.step
            ]
        text = io.StringIO()
        writer = csv.DictWriter(text, METRICS_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(metrics, text.getvalue())


def complete_commit(run_dir: Path, progress: Progress, save) -> None:
    """Write what a crash left unwritten after `last` recorded a validation (the commit point):
    its `best` and its step-N checkpoint, from the weights `last` holds, which are that
    validation's. After this, `best` holds the weights of the best recorded score and the
    step-N checkpoints are exactly the recorded ones (`forget_after` removed the others)."""
    if not progress.history or progress.history[-1]["step"] != progress.step:
        return  # `last` was saved between validations; every validation's writes are complete
    checkpoints = run_dir / CHECKPOINTS
    wanted = (
        [f"step-{progress.step}"]
        if any(int(step) == progress.step for _, step in progress.kept)
        else []
    )
    if progress.best_step == progress.step:
        wanted.append("best")
    for name in wanted:
        if checkpoint_step(checkpoints / name) != progress.step:
            log.info(
                "completing checkpoints/%s of step %d, interrupted before", name, progress.step
            )
            save(name)


def write_manifest(
    run_dir: Path, recipe: Recipe, splits: list[TextSplit], tokenizer: Tokenizer, model: Seq2Seq
) -> None:
    """manifest.json: what ran, on what, from which data, and where each recipe value came from."""
    manifest: dict[str, Any] = {
        "created": _now(),
        "resumed": [],  # see `record_resumption`
        "recipe_file": str(recipe.source_path) if recipe.source_path else None,
        "versions": _versions(),
        "git_commit": _git_commit(),
        "data": {str(path): sha256_file(path) for split in splits for path in split.files},
        "subwords": {path.name: sha256_file(path) for path in tokenizer.files},
        "parameters": model.parameter_count,
        "provenance": dict(sorted(recipe.provenance.items())),
    }
    atomic_write_text(run_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def record_resumption(run_dir: Path, recipe: Recipe, step: int) -> None:
    """Add to manifest.json's `resumed` what goes on from `step`: the code, the packages and
    the recipe's provenance, which may differ from the first start's (the recipe's train and
    decode sections may change on --resume). A manifest that cannot be read is left alone."""
    path = run_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text("utf-8"))
        manifest.setdefault("resumed", []).append(  # (older runs' manifests have none)
            {
                "at_step": step,
                "time": _now(),
                "git_commit": _git_commit(),
                "versions": _versions(),
                "provenance": dict(sorted(recipe.provenance.items())),
            }
        )
    except (OSError, ValueError, TypeError, AttributeError):  # not JSON, or not an object
        log.warning("%s: unreadable; this resumption is not recorded in it", path)
        return
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("nmt", "torch", "sentencepiece", "sacrebleu", "datasets", "safetensors"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _git_commit() -> str | None:
    """The commit of the nmt source tree, when it is a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def _log_to_file_only(message: str) -> None:
    """A training row for train.log, which the console already shows in the progress bar."""
    if not log.isEnabledFor(logging.INFO):
        return
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, message, (), None)
    for handler in log.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _log_to_file(path: Path) -> None:
    for handler in list(log.handlers):
        if isinstance(handler, logging.FileHandler):
            log.removeHandler(handler)
            handler.close()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
