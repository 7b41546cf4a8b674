"""A Multi30k run's scores in every form papers report them, and an ablation's table.

    python benchmarks/multi30k_scores.py runs/multi30k_de_en                    # one model
    python benchmarks/multi30k_scores.py runs/base_s1 runs/base_s2 runs/alpha_s1 runs/alpha_s2
    python benchmarks/multi30k_scores.py runs/de_en_seed1 runs/de_en_seed2 --ensemble

For test_2016_flickr and val (the run's data.root), beam 5 (or --beam) and, for every run, the
first run's length normalization (its decode.yaml's if `nmt-translate --tune` wrote one, else
its recipe's; --length-norm and --alpha set it; the first line says which): cased detokenized
sacreBLEU (the headline, comparable with sacreBLEU figures), chrF, and lowercased sacreBLEU
(`nmt-score -lc`; its 13a tokenization is close to the Moses tokenization of papers that
report lowercased tokenized BLEU, so it is the nearest comparable number). With several runs,
each alone, then (--ensemble) all of them as one ensemble (`-m A -m B`).

Each run's row says how it was trained (updates, epochs, minutes of training and validation,
the best checkpoint's update) and what its recipe sets differently from the first run's, read
from the runs' own recipe.yaml (and whether it trained on other files, from manifest.json):
the table cannot claim a change the run did not have. Runs that differ only in `seed` form one
setting; with several runs, a second table gives each setting's mean test BLEU, its
seed-to-seed range and its gain over the first run's setting. All runs must translate the same
direction.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from nmt import Recipe, Translator
from nmt.data.corpus import read_lines
from nmt.scoring.metrics import ScoreOptions, score

SPLITS = ("test_2016_flickr", "val")
FORMS = {  # column → how it is scored
    "BLEU": ScoreOptions(),
    "BLEU -lc": ScoreOptions(lowercase=True),
}
# Keys that say where, how fast or how long a run was made, not what was trained (the updates
# column shows how far it got), and the search settings this script sets alike for every run;
# `seed` groups runs.
NOT_A_SETTING = {
    "name",
    "seed",
    "data.root",
    "train.threads",
    "train.device",
    "train.log_every",
    "train.keep_best",
    "train.max_time",
    "train.max_steps",
    "decode.beam",
    "decode.length_norm",
    "decode.alpha",
}


def scores(translator: Translator, sources: list[str], references: list[str], search: dict) -> dict:
    hypotheses = [h.text for h in translator.translate(sources, progress=True, **search)]
    row: dict[str, Any] = {}
    for name, options in FORMS.items():
        report = score(hypotheses, [references], options)
        row[name] = report["BLEU"]
        if name == "BLEU":
            row["chrF"] = report["chrF"]
            row["signature"] = report.metrics[0].signature
    return row


def flat_settings(recipe: Recipe) -> dict[str, object]:
    """The recipe's keys as dotted names (`model.dropout`), without NOT_A_SETTING."""
    flat: dict[str, object] = {}
    for section, values in recipe.to_dict().items():
        items = values.items() if isinstance(values, dict) else [("", values)]
        for key, value in items:
            dotted = f"{section}.{key}" if key else section
            if dotted not in NOT_A_SETTING:
                flat[dotted] = value
    return flat


def setting(run: Path, recipe: Recipe, baseline_run: Path, baseline: Recipe) -> str:
    """What `recipe` sets differently from `baseline`, as `key=value` overrides, and whether it
    trained on other files than the baseline run (their hashes in manifest.json)."""
    ours, theirs = flat_settings(recipe), flat_settings(baseline)
    changed = [f"{key}={ours[key]}" for key in ours if ours[key] != theirs.get(key)]
    if training_files(run) != training_files(baseline_run):
        changed.append("other training or dev files")
    return " ".join(changed) or "as the first run"


def training_files(run: Path) -> list[str]:
    """The hashes of the files a run trained and validated on."""
    manifest = json.loads((run / "manifest.json").read_text("utf-8"))
    return sorted(manifest["data"].values())


def training(run: Path) -> str:
    """How far the run trained: updates (whole epochs, and batches of the next), minutes, and
    the best checkpoint's update."""
    progress = json.loads((run / "checkpoints" / "last.json").read_text("utf-8"))["progress"]
    partial = f" + {progress['batch_in_epoch']} batches" if progress["batch_in_epoch"] else ""
    return (
        f"{progress['step']:,} ({progress['epoch']} epochs{partial}), "
        f"{progress['elapsed_s'] / 60:.0f} min, best at {progress['best_step']:,}"
    )


def summary(rows: list[dict]) -> list[str]:
    """One line per setting: test BLEU mean and range over its seeds, gain over the first."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["setting"], []).append(row)
    test_split, val_split = SPLITS
    first = statistics.mean(row[test_split] for row in groups[rows[0]["setting"]])
    lines = [
        "| setting | seeds | test BLEU mean (min–max) | gain | val BLEU mean |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, group in groups.items():
        test = [row[test_split] for row in group]
        val = statistics.mean(row[val_split] for row in group)
        lines.append(
            f"| {name} | {len(group)} | {statistics.mean(test):.2f} ({min(test):.2f}–"
            f"{max(test):.2f}) | {statistics.mean(test) - first:+.2f} | {val:.2f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument(
        "--length-norm",
        choices=["none", "avg", "gnmt"],
        help="length normalization (default: the first run's decode.yaml, else its recipe's)",
    )
    parser.add_argument("--alpha", type=float, help="its α (default: as --length-norm)")
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--ensemble", action="store_true", help="also all runs as one ensemble")
    args = parser.parse_args()
    recipes = [Recipe.load(run / "recipe.yaml") for run in args.runs]
    root, src, tgt = Path(recipes[0].data.root), recipes[0].data.src_lang, recipes[0].data.tgt_lang
    for run, recipe in zip(args.runs, recipes):
        if (recipe.data.src_lang, recipe.data.tgt_lang) != (src, tgt):
            sys.exit(
                f"{run}: translates {recipe.data.src_lang}→{recipe.data.tgt_lang}, "
                f"not {src}→{tgt} as {args.runs[0]}"
            )
    models = [[run] for run in args.runs] + ([args.runs] if args.ensemble else [])
    search: dict[str, Any] = {"beam": args.beam}  # unset options: the first run's
    if args.length_norm:
        search["length_norm"] = args.length_norm
    if args.alpha is not None:
        search["alpha"] = args.alpha
    signature, singles = "", []
    for number, runs in enumerate(models):
        translator = Translator.from_runs(runs, args.checkpoint)
        if number == 0:  # the settings searched, as the first run's defaults complete them
            used = translator.settings(**search)
            if args.alpha is not None and used.length_norm == "none":
                sys.exit(
                    f"--alpha {args.alpha}: no length normalization has no α; add --length-norm"
                )
            search.update(length_norm=used.length_norm, alpha=used.alpha)
            print(
                f"{src}→{tgt}, beam {args.beam}, length normalization {used.length_norm} "
                f"α {used.alpha}, checkpoint {args.checkpoint}"
            )
            print(
                "| model | setting | seed | updates (epochs), time | split | BLEU | chrF | BLEU -lc |"
            )
            print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        alone = number < len(args.runs)  # the last of `models` may be the ensemble of all
        described = ("ensemble", "", "")
        if alone:
            recipe = recipes[number]
            described = (
                setting(runs[0], recipe, args.runs[0], recipes[0]),
                str(recipe.seed),
                training(runs[0]),
            )
        row_of_run: dict = {"setting": described[0]}
        for split in SPLITS:
            sources = read_lines(root / f"{split}.{src}")
            references = read_lines(root / f"{split}.{tgt}")
            row = scores(translator, sources, references, search)
            signature = row["signature"]
            row_of_run[split] = row["BLEU"]
            print(
                f"| {' + '.join(run.name for run in runs)} | {' | '.join(described)} | {split} "
                f"| {row['BLEU']:.2f} | {row['chrF']:.2f} | {row['BLEU -lc']:.2f} |"
            )
        if alone:
            singles.append(row_of_run)
    print(f"BLEU: {signature}; -lc: the same with case:lc")
    if len(singles) > 1:
        print("\n".join(summary(singles)))


if __name__ == "__main__":
    main()
