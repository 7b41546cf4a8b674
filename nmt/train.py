"""Training: the whole loop in one place.

recipe → corpus → subwords → batches → model → Adam steps, with validation (loss, perplexity,
greedy BLEU on dev) every `train.valid_every` updates, best/last checkpoints and early stopping.
Everything a run makes lives in its run directory, so it can be resumed, translated from and
reproduced from that directory alone.
"""

from __future__ import annotations

import csv
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
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nmt import distributed
from nmt.checkpoint import (atomic_write_text, checkpoint_exists, delete_checkpoint,
                            load_checkpoint, restore,
                            save_checkpoint, sha256_file)
from nmt.data.batching import Batch, collate, make_batches
from nmt.data.corpus import EncodedSplit, TextSplit, encode_split, load_split
from nmt.data.subwords import PAD, Tokenizer
from nmt.distributed import Cluster
from nmt.errors import NmtError, Terminated
from nmt.evaluate import corpus_bleu, corpus_chrf
from nmt.loss import output_loss
from nmt.model.seq2seq import Seq2Seq
from nmt.optim import build_optimizer, learning_rate, set_learning_rate
from nmt.plots import plot_learning_curves
from nmt.recipe import Recipe, TrainConfig, parse_duration
from nmt.translate import Translator

log = logging.getLogger("nmt")
MAX_NONFINITE = 5  # non-finite losses in a row before training stops
METRICS_FIELDS = ["step", "epoch", "kind", "loss", "lr", "target_tokens_per_s", "dev_loss",
                  "dev_ppl", "dev_bleu", "dev_chrf", "elapsed_s"]


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


@dataclass
class TrainResult:
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
    return output_loss(attentional[real], model.output.weight, model.output.bias,
                       batch.target_out[real], label_smoothing)


def train(recipe: Recipe, run_dir: str | Path, resume: bool = False,
          overwrite: bool = False) -> TrainResult:
    """Train a model as the recipe says, in `run_dir`; under torchrun, as one of its processes
    (see nmt.distributed)."""
    cluster, device = distributed.join(recipe.train.device)
    try:
        result = _train(recipe, Path(run_dir), resume, overwrite, cluster, device)
        cluster.barrier()
        return result
    finally:
        distributed.leave(cluster)


def _train(recipe: Recipe, run_dir: Path, resume: bool, overwrite: bool, cluster: Cluster,
           device: torch.device) -> TrainResult:
    if not cluster.is_main:
        log.setLevel(logging.WARNING)  # rank 0 speaks for the run
    _keep_caches_in(run_dir / "cache")
    torch.manual_seed(recipe.seed)
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    config = recipe.train

    # ---- run directory, then data: corpus → subwords → encoded, filtered arrays (rank 0 first)
    def setup():
        resuming = None
        if cluster.is_main:
            resuming = prepare_run_dir(run_dir, recipe, resume, overwrite)
            _log_to_file(run_dir / "train.log")
        return resuming, prepare_data(recipe, run_dir)

    resume, data = cluster.main_first(setup)
    resume = cluster.from_main(resume)
    train_text, dev_text, tokenizer, train_data, dev_data = data

    # ---- model and optimizer
    model = Seq2Seq(recipe.model, tokenizer.source_vocab_size, tokenizer.target_vocab_size)
    model.to(device)
    optimizer = build_optimizer(model.parameters(), config)
    update = Updater(model, optimizer, config, device, cluster)
    scaler = update.scaler
    progress = Progress()
    if resume:
        tensors, meta = load_checkpoint(run_dir / "checkpoints" / "last")
        restore(tensors, meta, model, optimizer)
        progress = Progress(**meta["progress"])
        if meta.get("grad_scaler"):
            scaler.load_state_dict(meta["grad_scaler"])
        log.info("resumed at step %d (epoch %d, batch %d)", progress.step, progress.epoch + 1,
                 progress.batch_in_epoch)
    elif cluster.is_main:
        write_manifest(run_dir, recipe, [train_text, dev_text], tokenizer, model)
        check_disk_space(run_dir, model, config.keep_best)
    if cluster.is_main:
        forget_after(run_dir, progress)
    log.info("model: %s parameters on %s%s", f"{model.parameter_count:,}", device,
             f", {cluster.world_size} processes" if cluster.distributed else "")

    translator = Translator(model, tokenizer, recipe.decode, device)
    stopper = _Stopper(config.max_steps, config.max_epochs, config.patience,
                       parse_duration(config.max_time) if config.max_time else 0.0)
    metrics = _MetricsFile(run_dir / "metrics.csv") if cluster.is_main else None
    board = _tensorboard(run_dir) if cluster.is_main else None
    started = time.perf_counter() - progress.elapsed_s
    stopper.started = started

    def checkpoint(name: str) -> None:
        if not cluster.is_main:
            return
        progress.elapsed_s = time.perf_counter() - started
        try:
            save_checkpoint(run_dir / "checkpoints" / name, model,
                            {"progress": progress.__dict__, "spm_sha256": tokenizer.sha256,
                             "source_vocab_size": tokenizer.source_vocab_size,
                             "target_vocab_size": tokenizer.target_vocab_size,
                             "grad_scaler": scaler.state_dict() if scaler.is_enabled() else None},
                            optimizer)
        except OSError as error:
            raise NmtError(f"{run_dir / 'checkpoints' / name}: cannot write the checkpoint "
                           f"({error.strerror}); the checkpoints already there are intact") from None

    def validate() -> None:
        if cluster.is_main:
            validate_on_main()
        if cluster.distributed:  # the others follow rank 0's early-stopping and schedule state
            progress.__dict__.update(cluster.from_main(dict(progress.__dict__)))

    def validate_on_main() -> None:
        result = validation(model, translator, dev_text, dev_data, config, device)
        value = -result["dev_loss"] if config.early_stopping == "loss" else \
            result[f"dev_{config.early_stopping}"]
        improved = progress.best is None or value > progress.best
        if improved:
            progress.best, progress.best_step, progress.bad_validations = value, progress.step, 0
            progress.plateau_wait = 0
        else:
            progress.bad_validations += 1
            progress.plateau_wait += 1
            if config.schedule == "plateau" and progress.plateau_wait >= config.plateau_patience:
                progress.plateau_decays, progress.plateau_wait = progress.plateau_decays + 1, 0
        progress.history.append({"step": progress.step, **result})
        metrics.write(step=progress.step, epoch=progress.epoch + 1, kind="valid",
                      elapsed_s=round(time.perf_counter() - started, 1), **result)
        if board:
            for key, number in result.items():
                board.add_scalar(key, number, progress.step)
        log.info("step %d: dev loss %.3f, ppl %.2f, BLEU %.2f, chrF %.2f%s", progress.step,
                 result["dev_loss"], result["dev_ppl"], result["dev_bleu"], result["dev_chrf"],
                 " (best)" if improved else f" (best {_best_text(progress, config)} at step "
                                                f"{progress.best_step})")
        checkpoint("last")
        if improved:
            checkpoint("best")
        _keep_best(run_dir / "checkpoints", progress, value, config.keep_best, checkpoint)
        plot_learning_curves(run_dir / "metrics.csv", run_dir / "curves.png")

    window_loss, window_tokens, window_start = 0.0, 0, time.perf_counter()
    stopped_early, skipped = False, 0
    previous_handler = _terminate_on_sigterm()
    rate = learning_rate(config, max(progress.step, 1), progress.plateau_decays)
    def finished() -> bool:
        return cluster.from_main(stopper.done(progress))  # rank 0's clock decides max_time

    # Computed once: the lengths are a pass over the whole corpus's offsets.
    source_lengths, target_lengths = train_data.src_lengths, train_data.tgt_lengths
    try:
        while not finished():
            batches = make_batches(source_lengths, target_lengths,
                                   config.batch_tokens, config.batch_sentences, recipe.seed,
                                   progress.epoch)
            bar = tqdm(total=len(batches), initial=progress.batch_in_epoch, unit="batch",
                       desc=f"epoch {progress.epoch + 1}", dynamic_ncols=True, mininterval=1.0,
                       leave=False, disable=not cluster.is_main)
            while progress.batch_in_epoch < len(batches) and not finished():
                # One update: `accumulate` batches, their loss normalised by all their tokens;
                # each process takes its share of every batch.
                chosen = batches[progress.batch_in_epoch:progress.batch_in_epoch + config.accumulate]
                tokens = sum(int(target_lengths[indices].sum()) + len(indices)
                             for indices in chosen)  # with EOS, on all processes together
                group = [_collate_share(train_data, cluster.share(indices), device)
                         for indices in chosen]
                rate = learning_rate(config, progress.step + 1, progress.plateau_decays)
                set_learning_rate(optimizer, rate)
                try:
                    result = update(group, tokens)
                except torch.cuda.OutOfMemoryError:
                    raise NmtError(
                        f"out of memory on {device} at step {progress.step + 1} with batches of "
                        f"train.batch_tokens={config.batch_tokens}: lower train.batch_tokens "
                        f"(e.g. to {config.batch_tokens // 2}) and raise train.accumulate to keep "
                        f"the same effective batch") from None
                if result is None:  # a non-finite loss: skip this update; stop after several
                    progress.batch_in_epoch += len(group)
                    bar.update(len(group))
                    skipped += 1
                    log.warning("step %d: non-finite loss, update skipped (%d in a row)",
                                progress.step + 1, skipped)
                    if skipped >= MAX_NONFINITE:
                        raise NmtError(
                            f"training diverged: {skipped} non-finite losses in a row at step "
                            f"{progress.step + 1}; checkpoints/last (step "
                            f"{progress.history[-1]['step'] if progress.history else 0}) is "
                            f"from before it. Lower train.lr or set train.clip_norm, then "
                            f"--resume")
                    continue
                skipped = 0
                window_loss += result
                progress.step += 1
                progress.batch_in_epoch += len(group)
                window_tokens += tokens
                bar.update(len(group))
                if progress.step % config.log_every == 0 and cluster.is_main:
                    seconds = time.perf_counter() - window_start
                    speed = window_tokens / max(seconds, 1e-9)
                    bar.set_postfix(loss=f"{window_loss / window_tokens:.3f}",
                                    tok_s=f"{speed:,.0f}", lr=f"{rate:.1e}")
                    metrics.write(step=progress.step, epoch=progress.epoch + 1, kind="train",
                                  loss=round(window_loss / window_tokens, 4), lr=rate,
                                  target_tokens_per_s=round(speed),
                                  elapsed_s=round(time.perf_counter() - started, 1))
                    if board:
                        board.add_scalar("train_loss", window_loss / window_tokens, progress.step)
                        board.add_scalar("lr", rate, progress.step)
                    window_loss, window_tokens, window_start = 0.0, 0, time.perf_counter()
                if progress.step % config.valid_every == 0:
                    validate()
            bar.close()
            if progress.batch_in_epoch >= len(batches):
                progress.epoch, progress.batch_in_epoch = progress.epoch + 1, 0
        stopped_early = stopper.patience_ran_out(progress)
        if not progress.history or progress.history[-1]["step"] != progress.step:
            validate()
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (Terminated)
        checkpoint("last")
        log.info("interrupted at step %d; saved checkpoints/last (continue with --resume)",
                 progress.step)
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    elapsed = time.perf_counter() - started
    log.info("finished after %d steps in %.0f s; best dev %s %s at step %d%s", progress.step,
             elapsed, config.early_stopping, _best_text(progress, config), progress.best_step,
             " (early stop)" if stopped_early else "")
    best = -progress.best if config.early_stopping == "loss" else progress.best
    return TrainResult(run_dir, progress.step, progress.best_step, best, config.early_stopping,
                       elapsed, stopped_early)


def prepare_data(recipe: Recipe, run_dir: Path
                 ) -> tuple[TextSplit, TextSplit, Tokenizer, EncodedSplit, EncodedSplit]:
    """Read train and dev, train (or reuse) SentencePiece in `run_dir`, encode and filter."""
    root = Path(recipe.data.root)
    train_text = load_split(recipe.data, root, recipe.data.train, run_dir / "cache")
    dev_text = load_split(recipe.data, root, recipe.data.dev, run_dir / "cache")
    for split in (train_text, dev_text):
        if len(split.dataset) == 0:
            raise NmtError(f"{_describe(split)}: the {split.name} split is empty")
    if Tokenizer.exists(run_dir):
        tokenizer = Tokenizer.load(run_dir)
    else:
        log.info("training SentencePiece (%s, %d pieces%s)", recipe.tokenizer.type,
                 recipe.tokenizer.vocab_size, ", joint" if recipe.tokenizer.joint else "")
        sources, targets = train_text.sample(recipe.tokenizer.max_sentences, recipe.seed)
        tokenizer = Tokenizer.train(recipe.tokenizer, sources, targets, run_dir, recipe.seed)
    train_data, counts = encode_split(train_text, tokenizer, run_dir / "cache",
                                      recipe.data.max_len, recipe.data.max_ratio)
    log.info("training data: %s", counts.describe())
    if counts.kept == 0:
        raise NmtError(f"{_describe(train_text)}: every pair was filtered out "
                       f"(see data.max_len={recipe.data.max_len}, "
                       f"data.max_ratio={recipe.data.max_ratio})")
    dev_data, _ = encode_split(dev_text, tokenizer, run_dir / "cache")
    return train_text, dev_text, tokenizer, train_data, dev_data


class Updater:
    """One optimizer update over a group of batches (gradient accumulation), with mixed
    precision on CUDA when the recipe asks for it."""

    def __init__(self, model: Seq2Seq, optimizer: torch.optim.Optimizer, config: TrainConfig,
                 device: torch.device, cluster: Cluster = Cluster()):
        self.model, self.optimizer, self.config, self.cluster = model, optimizer, config, cluster
        self.loss = distributed.wrap(TrainingLoss(model, config.label_smoothing), cluster, device)
        self.device_type = device.type
        self.mixed = device.type == "cuda" and config.precision != "fp32"
        if config.precision != "fp32" and not self.mixed:
            log.warning("train.precision=%s needs CUDA; training in fp32 on %s",
                        config.precision, device)
        self.dtype = torch.bfloat16 if config.precision == "bf16" else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.mixed and
                                           config.precision == "fp16")

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
            return sum(parameter.sum() for parameter in self.model.parameters()) * 0.0
        return batch_loss(self.model, batch, self.label_smoothing)


def _collate_share(data: EncodedSplit, indices: np.ndarray, device: torch.device) -> Batch | None:
    if len(indices) == 0:
        return None
    return collate(data, indices).to(device)


@torch.no_grad()
def validation(model: Seq2Seq, translator: Translator, dev_text: TextSplit,
               dev_data: EncodedSplit, config, device: torch.device) -> dict[str, float]:
    """Dev loss and perplexity (teacher-forced, no smoothing), greedy BLEU and chrF."""
    model.eval()
    total, tokens = 0.0, 0
    for indices in make_batches(dev_data.src_lengths, dev_data.tgt_lengths, config.batch_tokens,
                                config.batch_sentences, 0, 0):
        batch = collate(dev_data, indices).to(device)
        total += float(batch_loss(model, batch, 0.0))
        tokens += batch.target_tokens
    sources, references = dev_text.sources, dev_text.targets
    if config.valid_max_sentences:
        sources = sources[:config.valid_max_sentences]
        references = references[:config.valid_max_sentences]
    hypotheses = [h.text for h in translator.translate(sources, beam=1)]
    loss = total / max(tokens, 1)
    return {"dev_loss": round(loss, 4), "dev_ppl": round(math.exp(min(loss, 50)), 2),
            "dev_bleu": round(corpus_bleu(hypotheses, references), 2),
            "dev_chrf": round(corpus_chrf(hypotheses, references), 2)}


def _terminate_on_sigterm():
    """Turn SIGTERM into Terminated (a KeyboardInterrupt), so it saves like Ctrl-C. Returns the
    previous handler to restore, or None where signals cannot be handled (not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def terminate(signum, frame):
        raise Terminated()

    return signal.signal(signal.SIGTERM, terminate)


class _Stopper:
    def __init__(self, max_steps: int, max_epochs: int, patience: int, max_seconds: float):
        self.max_steps, self.max_epochs, self.patience = max_steps, max_epochs, patience
        self.max_seconds, self.started = max_seconds, time.perf_counter()

    def patience_ran_out(self, progress: Progress) -> bool:
        return self.patience > 0 and progress.bad_validations >= self.patience

    def done(self, progress: Progress) -> bool:
        return bool((self.max_steps and progress.step >= self.max_steps)
                    or (self.max_epochs and progress.epoch >= self.max_epochs)
                    or self.patience_ran_out(progress)
                    or (self.max_seconds and progress.step > 0
                        and time.perf_counter() - self.started >= self.max_seconds))


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


def _keep_best(directory: Path, progress: Progress, value: float, keep: int, save) -> None:
    """Keep the `keep` best validations as checkpoints/step-N, deleting the ones pushed out."""
    ranked = sorted([*progress.kept, [value, progress.step]], key=lambda item: -item[0])
    if keep == 0 or [value, progress.step] not in ranked[:keep]:
        return
    progress.kept = ranked[:keep]
    save(f"step-{progress.step}")
    for _, step in ranked[keep:]:
        delete_checkpoint(directory / f"step-{int(step)}")


def _tensorboard(run_dir: Path):
    """A TensorBoard writer into RUN_DIR/tensorboard when tensorboard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _describe(split: TextSplit) -> str:
    return " + ".join(str(p) for p in split.files) or f"split {split.name!r}"


# ------------------------------------------------------------------ run directory

def prepare_run_dir(run_dir: Path, recipe: Recipe, resume: bool, overwrite: bool) -> None:
    """Create the run directory, refusing to mix two runs in one."""
    stored = run_dir / "recipe.yaml"
    if resume and overwrite:
        raise NmtError("--resume and --overwrite exclude each other")
    if resume:
        if not stored.is_file():
            raise NmtError(f"{run_dir}: nothing to resume (not an nmt run directory)")
        previous = Recipe.load(stored)
        for section in ("data", "tokenizer", "model"):
            if getattr(previous, section) != getattr(recipe, section):
                raise NmtError(f"{run_dir}: the recipe's {section} section differs from the run's "
                               f"({stored}); resume with the same {section}, or start a new run")
        if not checkpoint_exists(run_dir / "checkpoints" / "last"):
            log.warning("%s: no checkpoint yet; starting from the beginning", run_dir)
            resume = False
    elif stored.is_file():
        if not overwrite:
            raise NmtError(f"{run_dir}: already holds a run; pass --resume to continue it or "
                           f"--overwrite to start it again")
        shutil.rmtree(run_dir)
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise NmtError(f"{run_dir}: exists and is not an nmt run directory; choose another "
                       f"--run-dir")
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        atomic_write_text(stored, recipe.to_yaml())
    except OSError as error:
        raise NmtError(f"{run_dir}: cannot write the run directory: {error.strerror}") from None
    return resume


def _keep_caches_in(folder: Path) -> None:
    """Point the caches that libraries write on their own into the run directory, unless the
    user chose where they go: matplotlib's font cache, and the one PyTorch's optimizers create
    in the system's temporary folder (its compiler cache)."""
    os.environ.setdefault("MPLCONFIGDIR", str(folder / "matplotlib"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder / "torchinductor"))


def check_disk_space(run_dir: Path, model: Seq2Seq, keep_best: int) -> None:
    """Refuse to start when the disk cannot hold the run's checkpoints: better now than at hour 3.

    A checkpoint holds the weights and Adam's two moments; a run keeps best, last and the
    `keep_best` step-N ones, plus one being written.
    """
    checkpoint_bytes = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    needed = (3 + keep_best) * checkpoint_bytes
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise NmtError(f"{run_dir}: {free / 2**20:,.0f} MiB free on this disk, but the run's "
                       f"checkpoints need about {needed / 2**20:,.0f} MiB; free space or choose "
                       f"another --run-dir")


def forget_after(run_dir: Path, progress: Progress) -> None:
    """Make the run directory agree with the checkpoint training continues from.

    After a crash, metrics.csv may hold rows from beyond the last checkpoint (they will be made
    again), checkpoints/step-N files that the checkpoint does not know, and temporary files of an
    interrupted write. Nothing here is lost that the resumed run does not write again.
    """
    kept = {f"step-{int(step)}" for _, step in progress.kept}
    for path in (run_dir / "checkpoints").glob("step-*.json"):
        if path.stem not in kept:
            delete_checkpoint(path.with_suffix(""))
    for folder in (run_dir, run_dir / "checkpoints"):
        for path in folder.glob(".*.tmp"):
            path.unlink(missing_ok=True)
    metrics = run_dir / "metrics.csv"
    if metrics.is_file():
        with open(metrics, newline="") as handle:
            rows = [row for row in csv.DictReader(handle)
                    if row.get("elapsed_s") and row["step"].isdigit()
                    and int(row["step"]) <= progress.step]
        text = io.StringIO()
        writer = csv.DictWriter(text, METRICS_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(metrics, text.getvalue())


def write_manifest(run_dir: Path, recipe: Recipe, splits: list[TextSplit], tokenizer: Tokenizer,
                   model: Seq2Seq) -> None:
    """manifest.json: what ran, on what, from which data, and where each recipe value came from."""
    versions = {"python": platform.python_version()}
    for package in ("nmt", "torch", "sentencepiece", "sacrebleu", "datasets", "safetensors"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    manifest = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "recipe_file": str(recipe.source_path) if recipe.source_path else None,
        "versions": versions,
        "git_commit": _git_commit(),
        "data": {str(path): sha256_file(path) for split in splits for path in split.files},
        "subwords": {path.name: sha256_file(path) for path in tokenizer.files},
        "parameters": model.parameter_count,
        "provenance": dict(sorted(recipe.provenance.items())),
    }
    atomic_write_text(run_dir / "manifest.json", json.dumps(manifest, indent=2) + "\n")


def _git_commit() -> str | None:
    """The commit of the nmt source tree, when it is a git checkout."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def _log_to_file(path: Path) -> None:
    for handler in list(log.handlers):
        if isinstance(handler, logging.FileHandler):
            log.removeHandler(handler)
            handler.close()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)

