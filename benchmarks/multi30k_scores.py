"""A Multi30k run's scores in every form papers report them: one README table row per split.

    python benchmarks/multi30k_scores.py runs/multi30k_de_en                    # one model
    python benchmarks/multi30k_scores.py runs/de_en_seed1 runs/de_en_seed2 --ensemble

For test_2016_flickr and val (the run's data.root), beam 5 (or --beam): cased detokenized
sacreBLEU (the headline, comparable with sacreBLEU figures), chrF, and lowercased sacreBLEU
(`nmt-score -lc`; its 13a tokenization is close to the Moses tokenization of papers that
report lowercased tokenized BLEU, so it is the nearest comparable number). With several runs,
each alone, then (--ensemble) all of them as one ensemble (`-m A -m B`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nmt import Recipe, Translator
from nmt.data.corpus import read_lines
from nmt.scoring.metrics import ScoreOptions, score

SPLITS = ("test_2016_flickr", "val")
FORMS = {  # column → how it is scored
    "BLEU": ScoreOptions(),
    "BLEU -lc": ScoreOptions(lowercase=True),
}


def scores(translator: Translator, sources: list[str], references: list[str], beam: int) -> dict:
    hypotheses = [h.text for h in translator.translate(sources, beam=beam, progress=True)]
    row = {}
    for name, options in FORMS.items():
        report = score(hypotheses, [references], options)
        row[name] = report["BLEU"]
        if name == "BLEU":
            row["chrF"] = report["chrF"]
            row["signature"] = report.metrics[0].signature
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--ensemble", action="store_true", help="also all runs as one ensemble")
    args = parser.parse_args()
    recipe = Recipe.load(args.runs[0] / "recipe.yaml")
    root, src, tgt = Path(recipe.data.root), recipe.data.src_lang, recipe.data.tgt_lang
    models = [[run] for run in args.runs] + ([args.runs] if args.ensemble else [])
    print(f"{src}→{tgt}, beam {args.beam}, checkpoint {args.checkpoint}")
    print("| model | split | BLEU | chrF | BLEU -lc |")
    print("| --- | --- | --- | --- | --- |")
    signature = ""
    for runs in models:
        translator = Translator.from_runs(runs, args.checkpoint)
        name = " + ".join(run.name for run in runs)
        for split in SPLITS:
            sources = read_lines(root / f"{split}.{src}")
            references = read_lines(root / f"{split}.{tgt}")
            row = scores(translator, sources, references, args.beam)
            signature = row["signature"]
            print(
                f"| {name} | {split} | {row['BLEU']:.2f} | {row['chrF']:.2f} | {row['BLEU -lc']:.2f} |"
            )
    print(f"BLEU: {signature}; -lc: the same with case:lc")


if __name__ == "__main__":
    main()
