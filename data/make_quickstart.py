"""Generate the quickstart corpus: German number words and dates → English.

A real translation task in miniature that needs attention and reordering:
"dreiundzwanzig" (three-and-twenty) → "twenty-three"; "am dritten März" → "on March third".
Run from the repository root (needs num2words and babel, which nmt itself does not):

    pip install num2words==0.5.14 babel==2.19.0
    python data/make_quickstart.py

It rewrites data/quickstart/{train,dev,test}.{de,en}; the output is the same for the same seed
(with these versions of num2words and babel; tests/test_scripts.py checks it).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from babel.dates import get_month_names
from num2words import num2words

NOUNS = [  # (German plural, English plural)
    ("Katzen", "cats"),
    ("Hunde", "dogs"),
    ("Bücher", "books"),
    ("Häuser", "houses"),
    ("Kinder", "children"),
    ("Äpfel", "apples"),
    ("Autos", "cars"),
    ("Tage", "days"),
    ("Jahre", "years"),
    ("Menschen", "people"),
    ("Vögel", "birds"),
    ("Stühle", "chairs"),
]
PHRASES = [  # (German, English) frames around a counted noun
    ("{n} {noun}", "{n} {noun}"),
    ("ich habe {n} {noun}", "i have {n} {noun}"),
    ("wir sehen {n} {noun}", "we see {n} {noun}"),
    ("es gibt {n} {noun}", "there are {n} {noun}"),
]


def number(rng: random.Random) -> int:
    """Mostly small numbers, some up to a million, as in text."""
    digits = rng.choice([1, 2, 2, 3, 3, 4, 4, 5, 6])
    return rng.randrange(2 if digits == 1 else 10 ** (digits - 1), 10**digits)


def cardinal(rng: random.Random) -> tuple[str, str]:
    n = number(rng)
    return num2words(n, lang="de"), num2words(n, lang="en")


def counted(rng: random.Random) -> tuple[str, str]:
    n = number(rng)
    noun_de, noun_en = rng.choice(NOUNS)
    frame_de, frame_en = rng.choice(PHRASES)
    return (
        frame_de.format(n=num2words(n, lang="de"), noun=noun_de),
        frame_en.format(n=num2words(n, lang="en"), noun=noun_en),
    )


def date(rng: random.Random) -> tuple[str, str]:
    day, month, year = rng.randint(1, 28), rng.randint(1, 12), rng.randint(1900, 2099)
    month_de = get_month_names("wide", locale="de")[month]
    month_en = get_month_names("wide", locale="en")[month]
    day_de = num2words(day, lang="de", to="ordinal") + "n"  # dative: "am dritten"
    day_en = num2words(day, lang="en", to="ordinal")
    return (
        f"am {day_de} {month_de} {num2words(year, lang='de', to='year')}",
        f"on {month_en} {day_en}, {num2words(year, lang='en', to='year')}",
    )


def generate(count: int, rng: random.Random, taken: set[str]) -> list[tuple[str, str]]:
    pairs = []
    while len(pairs) < count:
        source, target = rng.choice([cardinal, counted, counted, date, date])(rng)
        if source not in taken:
            taken.add(source)
            pairs.append((source, target))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=Path(__file__).parent / "quickstart", type=Path)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--train", type=int, default=12000)
    parser.add_argument("--dev", type=int, default=500)
    parser.add_argument("--test", type=int, default=500)
    args = parser.parse_args()
    rng, taken = random.Random(args.seed), set()
    args.out.mkdir(parents=True, exist_ok=True)
    # Test and dev first, so no test sentence can appear in training.
    for split in ("test", "dev", "train"):
        pairs = generate(getattr(args, split), rng, taken)
        for side, lang in ((0, "de"), (1, "en")):
            (args.out / f"{split}.{lang}").write_text(
                "".join(p[side] + "\n" for p in pairs), encoding="utf-8"
            )
        print(f"{split}: {len(pairs)} pairs")


if __name__ == "__main__":
    main()
