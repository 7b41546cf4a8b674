"""Parallel corpora: read, validate, encode into subword ids, filter, and cache.

Every format ends up as a Hugging Face `datasets.Dataset` with `src` and `tgt` text columns;
encoded corpora are stored as Arrow files in the run directory, so a second run (or a resume)
memory-maps them instead of tokenizing again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from nmt.errors import NmtError
from nmt.recipe import DataConfig

log = logging.getLogger("nmt")
datasets.disable_progress_bars()  # nmt draws its own; per-file bars would only add noise


@dataclass
class TextSplit:
    """One split of a corpus as text, with the files it came from (for the manifest)."""

    name: str
    dataset: datasets.Dataset  # columns: src, tgt
    files: list[Path]
    digest: str  # SHA-256 of the text, the key of encoded caches

    @property
    def sources(self) -> list[str]:
        return self.dataset.data.column("src").to_pylist()

    @property
    def targets(self) -> list[str]:
        return self.dataset.data.column("tgt").to_pylist()


@dataclass
class FilterCounts:
    """How many training pairs were dropped, and why."""

    kept: int = 0
    empty: int = 0
    too_long: int = 0
    bad_ratio: int = 0

    def describe(self) -> str:
        return (f"kept {self.kept} pairs; dropped {self.empty} empty, {self.too_long} over-long, "
                f"{self.bad_ratio} with an extreme length ratio")


def split_files(config: DataConfig, root: Path, split: str) -> list[Path]:
    """The files a split is read from, in the recipe's layout."""
    if config.format == "text":
        return [root / f"{split}.{config.src_lang}", root / f"{split}.{config.tgt_lang}"]
    if config.format == "tsv":
        return [root / f"{split}.tsv"]
    if config.format == "jsonl":
        return [root / f"{split}.jsonl"]
    return []


def load_split(config: DataConfig, root: Path, split: str) -> TextSplit:
    """Read one split (`train`, `dev`, ...) in the format the recipe names."""
    files = split_files(config, root, split)
    for path in files:
        if not path.is_file():
            raise NmtError(f"{path}: data file not found (data.root={config.root}, "
                           f"data.format={config.format}, split {split!r})")
    if config.format == "text":
        sources, targets = read_lines(files[0]), read_lines(files[1])
        if len(sources) != len(targets):
            raise NmtError(f"{files[0]} has {len(sources)} lines but {files[1]} has "
                           f"{len(targets)}; a parallel corpus needs one line per sentence pair")
    elif config.format == "tsv":
        sources, targets = _read_tsv(files[0])
    elif config.format == "jsonl":
        sources, targets = _read_jsonl(files[0], config.src_lang, config.tgt_lang)
    else:
        sources, targets = _read_hub(config, split)
    digest = hashlib.sha256()
    for line in (*sources, *targets):
        digest.update(line.encode("utf-8", "surrogatepass") + b"\n")
    dataset = datasets.Dataset.from_dict({"src": sources, "tgt": targets})
    return TextSplit(split, dataset, files, digest.hexdigest())


def read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 file; invalid UTF-8 is reported with its line number.

    Only '\\n' ends a line (as for `wc -l`), so the count matches the other side of the corpus.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise NmtError(f"{path}: cannot read: {error.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        if b"\0" in data[:8192]:
            raise NmtError(f"{path}: a binary file, not text (NUL bytes and invalid UTF-8 by "
                           f"line {line})") from None
        raise NmtError(f"{path}:{line}: invalid UTF-8 (byte 0x{data[error.start]:02x}); "
                       f"convert the file to UTF-8") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def _read_tsv(path: Path) -> tuple[list[str], list[str]]:
    sources, targets = [], []
    for number, line in enumerate(read_lines(path), start=1):
        fields = line.split("\t")
        if len(fields) != 2:
            raise NmtError(f"{path}:{number}: expected 2 tab-separated fields "
                           f"(source, target), found {len(fields)}")
        sources.append(fields[0])
        targets.append(fields[1])
    return sources, targets


def _read_jsonl(path: Path, src_lang: str, tgt_lang: str) -> tuple[list[str], list[str]]:
    sources, targets = [], []
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            pair = record["translation"]
            sources.append(str(pair[src_lang]))
            targets.append(str(pair[tgt_lang]))
        except json.JSONDecodeError as error:
            raise NmtError(f"{path}:{number}: invalid JSON: {error.msg}") from None
        except (KeyError, TypeError):
            raise NmtError(f'{path}:{number}: expected {{"translation": {{"{src_lang}": ..., '
                           f'"{tgt_lang}": ...}}}}') from None
    return sources, targets


def _read_hub(config: DataConfig, split: str) -> tuple[list[str], list[str]]:
    """A dataset from the Hugging Face hub in its `translation` layout (needs the network once)."""
    try:
        dataset = datasets.load_dataset(config.hub_name, config.hub_config or None, split=split)
    except Exception as error:  # the hub raises many types; all mean "cannot get this data"
        raise NmtError(f"data.hub_name={config.hub_name}: cannot load split {split!r}: "
                       f"{str(error).splitlines()[0]}") from None
    if "translation" not in dataset.column_names:
        raise NmtError(f"data.hub_name={config.hub_name}: no 'translation' column "
                       f"(has {', '.join(dataset.column_names)})")
    pairs = dataset["translation"]
    try:
        return [p[config.src_lang] for p in pairs], [p[config.tgt_lang] for p in pairs]
    except KeyError as missing:
        raise NmtError(f"data.hub_name={config.hub_name}: no language {missing} in "
                       f"its translations") from None


# ------------------------------------------------------------------ encoded corpora

@dataclass
class EncodedSplit:
    """Subword ids of one split as flat arrays with offsets (zero-copy views of Arrow data)."""

    src_values: np.ndarray
    src_offsets: np.ndarray
    tgt_values: np.ndarray
    tgt_offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.src_offsets) - 1

    @property
    def src_lengths(self) -> np.ndarray:
        return np.diff(self.src_offsets)

    @property
    def tgt_lengths(self) -> np.ndarray:
        return np.diff(self.tgt_offsets)

    def source(self, i: int) -> np.ndarray:
        return self.src_values[self.src_offsets[i]:self.src_offsets[i + 1]]

    def target(self, i: int) -> np.ndarray:
        return self.tgt_values[self.tgt_offsets[i]:self.tgt_offsets[i + 1]]

    @classmethod
    def from_dataset(cls, dataset: datasets.Dataset) -> "EncodedSplit":
        def flat(column: str) -> tuple[np.ndarray, np.ndarray]:
            array = dataset.data.column(column).combine_chunks()
            offsets = array.offsets.to_numpy()
            return array.values.to_numpy(), offsets - offsets[0]
        src_values, src_offsets = flat("src_ids")
        tgt_values, tgt_offsets = flat("tgt_ids")
        return cls(src_values, src_offsets, tgt_values, tgt_offsets)


def encode_split(split: TextSplit, tokenizer, cache_dir: Path, max_len: int | None = None,
                 max_ratio: float | None = None) -> tuple[EncodedSplit, FilterCounts]:
    """Encode a split into subword ids, dropping bad pairs when limits are given (training).

    The result is cached under `cache_dir`, keyed by the text, the SentencePiece model and the
    limits, so a changed file or tokenizer never reuses a stale cache.
    """
    key = hashlib.sha256(json.dumps([split.digest, tokenizer.sha256, max_len,
                                     max_ratio]).encode()).hexdigest()[:16]
    path = cache_dir / f"{split.name}-{key}"
    counts_path = path / "filter_counts.json"
    if counts_path.is_file():
        dataset = datasets.load_from_disk(str(path))
        counts = FilterCounts(**json.loads(counts_path.read_text()))
        return EncodedSplit.from_dataset(dataset), counts

    sources = tokenizer.encode_source(split.sources)
    targets = tokenizer.encode_target(split.targets)
    counts = FilterCounts()
    if max_len is not None:
        keep = []
        for i, (src, tgt) in enumerate(zip(sources, targets)):
            if not src or not tgt:
                counts.empty += 1
            elif len(src) > max_len or len(tgt) > max_len:
                counts.too_long += 1
            elif max(len(src), len(tgt)) > max_ratio * min(len(src), len(tgt)):
                counts.bad_ratio += 1
            else:
                keep.append(i)
        sources = [sources[i] for i in keep]
        targets = [targets[i] for i in keep]
    counts.kept = len(sources)
    if not sources:  # nothing to store; the caller decides whether that is an error
        empty = np.zeros(0, dtype=np.int32)
        return EncodedSplit(empty, np.zeros(1, dtype=np.int64), empty,
                            np.zeros(1, dtype=np.int64)), counts
    dataset = datasets.Dataset.from_dict({"src_ids": sources, "tgt_ids": targets},
                                         features=datasets.Features({
                                             "src_ids": datasets.Sequence(datasets.Value("int32")),
                                             "tgt_ids": datasets.Sequence(datasets.Value("int32"))}))
    tmp = path.with_name(path.name + ".tmp")
    for stale in (tmp, path):  # left behind by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    dataset.save_to_disk(str(tmp))
    (tmp / "filter_counts.json").write_text(json.dumps(counts.__dict__))
    tmp.rename(path)
    return EncodedSplit.from_dataset(datasets.load_from_disk(str(path))), counts
