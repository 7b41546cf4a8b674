"""Download Multi30k task 1 (raw, untokenized) from the dataset's GitHub repository.

    python data/get_multi30k.py data/multi30k          # needs the network once

Writes train, val and test_2016_flickr in .de .en .fr .cs (where published), one sentence a line,
then train with:  nmt-train recipes/multi30k_de_en.yaml data.root=data/multi30k
If you already have a copy, skip this and point data.root at it.
"""

from __future__ import annotations

import gzip
import sys
import urllib.request
from pathlib import Path

BASE = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"
FILES = {"train": ("de", "en", "fr", "cs"), "val": ("de", "en", "fr", "cs"),
         "test_2016_flickr": ("de", "en", "fr", "cs")}


def main() -> None:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "data/multi30k")
    target.mkdir(parents=True, exist_ok=True)
    for split, languages in FILES.items():
        for lang in languages:
            url = f"{BASE}/{split}.{lang}.gz"
            with urllib.request.urlopen(url, timeout=60) as response:
                text = gzip.decompress(response.read())
            (target / f"{split}.{lang}").write_bytes(text)
            print(f"{target / f'{split}.{lang}'}: {text.count(b'\n')} lines")


if __name__ == "__main__":
    main()
