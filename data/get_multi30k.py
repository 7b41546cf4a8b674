"""Download Multi30k task 1 (raw, untokenized) from the dataset's GitHub repository.

    python data/get_multi30k.py data/multi30k          # needs the network once

Writes train, val and test_2016_flickr in .de .en .fr .cs (where published), one sentence a line,
then train with:  nmt-train recipes/multi30k_de_en.yaml data.root=data/multi30k
If you already have a copy, skip this and point data.root at it.

Each file is written whole or not at all, and files already there are kept, so after a failed or
interrupted run, running it again fetches only what is missing. --base-url reads from a mirror (or
a local server) with the same layout: BASE_URL/train.de.gz, ... Errors are one line on stderr
(exit status 1).
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

BASE = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"
FILES = {
    "train": ("de", "en", "fr", "cs"),
    "val": ("de", "en", "fr", "cs"),
    "test_2016_flickr": ("de", "en", "fr", "cs"),
}


class DownloadError(Exception):
    """A file that could not be fetched or written; its message is one line."""


def download(target: Path, base_url: str = BASE, timeout: float = 60) -> list[Path]:
    """Fetches into `target` each file of FILES that is not there yet; returns those written."""
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DownloadError(f"{target}: cannot create: {error.strerror}") from None
    written = []
    for split, languages in FILES.items():
        for lang in languages:
            path = target / f"{split}.{lang}"
            if path.exists():
                print(f"{path}: already there, kept")
                continue
            url = f"{base_url.rstrip('/')}/{split}.{lang}.gz"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    text = gzip.decompress(response.read())
            except (OSError, EOFError, zlib.error, http.client.HTTPException, ValueError) as error:
                raise DownloadError(f"{url}: {_reason(error)}") from None
            _write_whole(path, text)
            lines = text.count(b"\n")
            print(f"{path}: {lines} lines")
            written.append(path)
    return written


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        reason = f"HTTP {error.code} {error.reason}"
    elif isinstance(error, urllib.error.URLError):
        reason = f"cannot connect: {error.reason}"
    elif isinstance(error, (EOFError, zlib.error, gzip.BadGzipFile, http.client.HTTPException)):
        reason = f"incomplete or corrupt download ({type(error).__name__}: {error})"
    else:
        reason = str(error) or type(error).__name__
    return " ".join(reason.split())


def _write_whole(path: Path, data: bytes) -> None:
    """Writes `data` to a temporary file beside `path`, then renames it: never half a file."""
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError as error:
        raise DownloadError(f"{path}: cannot write: {error.strerror}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Download the raw Multi30k task-1 files (train, val, test_2016_flickr in "
        "de, en, fr, cs). Files already in TARGET are kept; each file is written "
        "whole or not at all, so a rerun fetches only what is missing."
    )
    parser.add_argument(
        "target",
        nargs="?",
        default="data/multi30k",
        help="folder to write into (default: data/multi30k)",
    )
    parser.add_argument(
        "--base-url", default=BASE, help=f"where SPLIT.LANG.gz are fetched from (default: {BASE})"
    )
    args = parser.parse_args(argv)
    try:
        download(Path(args.target), args.base_url)
    except DownloadError as error:
        print(f"get_multi30k.py: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
