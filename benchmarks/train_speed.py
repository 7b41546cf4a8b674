"""Training speed of a recipe: target and source+target tokens/s, peak memory, and the model's
achieved FLOP/s as a share of this device's measured matrix-multiply rate.

    python benchmarks/train_speed.py benchmarks/reference.yaml data.root=../shared/data/multi30k
    python benchmarks/train_speed.py RECIPE [KEY=VALUE ...] --steps 50 --warmup 10 --device cuda
    python benchmarks/train_speed.py RECIPE --profile   # and where the time goes, by operator
    python benchmarks/train_speed.py RECIPE --compile both   # a torch.compile trial
    python benchmarks/train_speed.py benchmarks/reference.yaml train.precision=bf16   # bfloat16

It runs the real training update (nmt.training.Updater) on the recipe's batches, after a warm-up,
in a temporary directory. FLOPs are counted from the model's shapes: 2 per multiply-add, forward
and backward together taken as 3 × forward. The last line printed is a one-line summary.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

from nmt.data.batching import collate, make_batches
from nmt.device import pick_device
from nmt.model.seq2seq import Seq2Seq
from nmt.optim import build_optimizer
from nmt.recipe import ModelConfig, Recipe
from nmt.data.prepare import prepare_data
from nmt.training import Updater

from hardware import describe, matmul_rate


def forward_flops(
    config: ModelConfig, vocab: int, source_tokens: int, target_tokens: int, source_positions: int
) -> float:
    """FLOPs of one forward pass over a batch, from the shapes (dominant terms)."""
    gates = {"lstm": 4, "gru": 3, "rnn": 1}
    e, h, d = config.embedding_size, config.hidden_size, config.decoder_hidden_size
    m = config.memory_size
    directions = 2 if config.bidirectional else 1
    encoder = 0
    for layer in range(config.encoder_layers):
        inputs = e if layer == 0 else m
        encoder += directions * gates[config.encoder_cell] * h * (inputs + h)
    decoder_input = e + (d if config.input_feeding else 0) + (m if config.flow == "bahdanau" else 0)
    decoder = 0
    for layer in range(config.decoder_layers):
        inputs = decoder_input if layer == 0 else d
        decoder += gates[config.decoder_cell] * d * (inputs + d)
    keys = m * d if config.score in ("additive", "general") else 0
    per_query = d * d if config.score == "additive" else 0
    per_position = (2 * d if config.score == "additive" else d) + m  # scores + context
    combine, output = (d + m) * d, d * vocab
    multiply_adds = (
        source_tokens * (encoder + keys)
        + target_tokens * (decoder + per_query + combine + output)
        + target_tokens * source_positions * per_position
    )
    return 2.0 * multiply_adds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also print torch.profiler's table of the measured updates",
    )
    parser.add_argument(
        "--compile",
        choices=["cell", "attention", "both"],
        help="a torch.compile trial: compile the decoder's step (LSTM/GRU cell) "
        "and/or the attention, with dynamic shapes",
    )
    args = parser.parse_intermixed_args()
    if args.compile:
        compile_parts(args.compile)
    recipe = Recipe.load(args.recipe, args.overrides)
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    device = pick_device(args.device)
    torch.manual_seed(recipe.seed)
    with tempfile.TemporaryDirectory() as work:  # the encoded corpus is memory-mapped from it
        prepared = prepare_data(recipe, Path(work))
        tokenizer, data = prepared.tokenizer, prepared.train_data
        measure(recipe, args, device, tokenizer, data)


def compile_parts(parts: str) -> None:
    """Swap in torch.compile'd versions of the per-step functions (a trial: on this CPU it did
    not pay, see benchmarks/README.md, so nmt itself runs them eagerly)."""
    from nmt.model import attention, cells

    if parts in ("cell", "both"):
        cells.step = torch.compile(cells.step, dynamic=True)
    if parts in ("attention", "both"):
        attention.Attention.forward = torch.compile(attention.Attention.forward, dynamic=True)


def measure(
    recipe: Recipe, args: argparse.Namespace, device: torch.device, tokenizer, data
) -> None:
    model = Seq2Seq(recipe.model, tokenizer.source_vocab_size, tokenizer.target_vocab_size)
    model.to(device)
    update = Updater(model, build_optimizer(model.parameters(), recipe.train), recipe.train, device)
    batches = make_batches(
        data.src_lengths,
        data.tgt_lengths,
        recipe.train.batch_tokens,
        recipe.train.batch_sentences,
        recipe.seed,
        0,
    )
    needed = (args.warmup + args.steps) * recipe.train.accumulate
    batches = (batches * (needed // len(batches) + 1))[:needed]
    groups = [
        batches[i : i + recipe.train.accumulate] for i in range(0, needed, recipe.train.accumulate)
    ]
    target = source = 0
    flops = 0.0
    started = 0.0
    profiler = None
    for step, group in enumerate(groups):
        if step == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            if args.profile:
                profiler = torch.profiler.profile()
                profiler.__enter__()
            started = time.perf_counter()
        batch_group = [collate(data, indices).to(device) for indices in group]
        update(batch_group, sum(batch.target_tokens for batch in batch_group))
        if step >= args.warmup:
            for batch in batch_group:
                target += batch.target_tokens
                source += batch.source_tokens
                flops += 3 * forward_flops(
                    recipe.model,
                    tokenizer.target_vocab_size,
                    batch.source_tokens,
                    batch.target_tokens,
                    batch.source.size(1),
                )
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
        where = "GPU"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB
        where = "process"
    seconds = time.perf_counter() - started
    if profiler is not None:
        profiler.__exit__(None, None, None)
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    precision = recipe.train.precision
    low = precision == "bf16" or (precision == "fp16" and device.type == "cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    rate = matmul_rate(device, dtype if low else torch.float32)
    print(describe(device))
    print(
        f"{model.parameter_count:,} parameters on {device}, {torch.get_num_threads()} threads, "
        f"train.precision {precision}; {args.steps} updates after {args.warmup} warm-up"
    )
    print(
        f"target tokens/s {target / seconds:,.0f}; source+target tokens/s "
        f"{(source + target) / seconds:,.0f}; peak {where} memory {peak:.2f} GiB"
    )
    print(
        f"model {flops / seconds / 1e9:.1f} GFLOP/s ({flops / target / 1e6:.1f} MFLOP per "
        f"target token, forward+backward) = {100 * flops / seconds / rate:.0f}% of the "
        f"measured {str(dtype if low else torch.float32).split('.')[-1]} matmul rate "
        f"{rate / 1e9:.0f} GFLOP/s"
    )
    print(
        f"train_speed: {target / seconds:.0f} target tok/s, {(source + target) / seconds:.0f} "
        f"src+tgt tok/s, {100 * flops / seconds / rate:.0f}% of matmul peak, {peak:.2f} GiB"
    )


if __name__ == "__main__":
    main()
