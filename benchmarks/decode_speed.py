"""Decoding speed with quality beside it: sentences/s and target tokens/s of greedy search and
beam search on a test set, each with its BLEU, so no speed is bought with quality unseen.

    python benchmarks/decode_speed.py runs/multi30k_de_en                 # test_2016_flickr
    python benchmarks/decode_speed.py RUN_DIR --src test.de --ref test.en --beams 1 5 --device cuda
    python benchmarks/decode_speed.py RUN_DIR --quantize int8 --shortlist 10
    python benchmarks/decode_speed.py RUN_DIR --beams 5 --stopping first   # beam search's fast rule
    python benchmarks/decode_speed.py RUN_DIR --beams 5 --precision bf16   # bfloat16 products

By default the test set is SPLIT.SRC / SPLIT.TGT in the run's data.root. The last line printed is
a one-line summary.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from nmt import Recipe, Translator
from nmt.data.corpus import read_lines
from nmt.scoring.metrics import corpus_bleu

from hardware import describe, rates_line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--split", default="test_2016_flickr")
    parser.add_argument("--src", type=Path)
    parser.add_argument("--ref", type=Path)
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: default)")
    parser.add_argument("--quantize", choices=["int8"], help="int8 linear layers (CPU)")
    parser.add_argument(
        "--shortlist",
        type=int,
        default=0,
        help="translations per source token of a vocabulary shortlist (0: off)",
    )
    parser.add_argument(
        "--shortlist-frequent",
        type=int,
        default=200,
        help="frequent target tokens in the shortlist",
    )
    parser.add_argument(
        "--inter-threads",
        type=int,
        help="batches searched at once, sharing the threads (default: the run's "
        "decode.inter_threads; 0: automatic)",
    )
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        help="bf16: bfloat16 matrix products (default: the run's decode.precision)",
    )
    parser.add_argument(
        "--stopping",
        choices=["exact", "first"],
        help="beam search's stopping rule (default: the run's decode.stopping)",
    )
    args = parser.parse_args()
    if (args.src is None) != (args.ref is None):
        parser.error("--src and --ref go together (or neither: --split)")
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = Recipe.load(args.run_dir / "recipe.yaml")
    root = Path(recipe.data.root)
    src = args.src or root / f"{args.split}.{recipe.data.src_lang}"
    ref = args.ref or root / f"{args.split}.{recipe.data.tgt_lang}"
    sources, references = read_lines(src), read_lines(ref)

    started = time.perf_counter()
    translator = Translator.from_run(args.run_dir, device=args.device, quantize=args.quantize or "")
    if args.shortlist:
        translator.lexicon  # loaded (or built, the first time) before anything is timed
    load_s = time.perf_counter() - started
    options = dict(
        shortlist=args.shortlist,
        shortlist_frequent=args.shortlist_frequent,
        stopping=args.stopping,
        precision=args.precision,
        inter_threads=args.inter_threads,
        sample=False,
    )
    translator.translate(sources[:32], beam=1, **options)  # warm-up
    settings = translator.settings(**options, batch_size=args.batch_size)
    at_once = translator.inter_threads(settings, len(sources))
    print(describe(translator.device))
    print(rates_line(translator.device))
    print(
        f"{len(sources)} sentences from {src}; device {translator.device}, "
        f"{torch.get_num_threads()} threads, {at_once} batch(es) at once, "
        f"{platform.processor() or platform.machine()}; "
        f"model loaded in {load_s:.1f} s; stopping rule "
        f"{args.stopping or translator.decode.stopping}, precision "
        f"{args.precision or translator.decode.precision}"
        + (", int8 weights" if args.quantize else "")
    )
    summary = []
    for beam in args.beams:
        started = time.perf_counter()
        hyps = translator.translate(sources, beam=beam, batch_size=args.batch_size, **options)
        seconds = time.perf_counter() - started
        tokens = sum(len(h.tokens) + 1 for h in hyps)
        bleu = corpus_bleu([h.text for h in hyps], references)
        name = "greedy" if beam == 1 else f"beam {beam}"
        print(
            f"{name:>8}: {len(sources) / seconds:7.1f} sentences/s, {tokens / seconds:8.0f} "
            f"target tokens/s, {seconds:6.2f} s, BLEU {bleu:.2f}"
        )
        summary.append(f"{name} {len(sources) / seconds:.1f} sent/s BLEU {bleu:.2f}")
    print("decode_speed: " + "; ".join(summary))


if __name__ == "__main__":
    main()
