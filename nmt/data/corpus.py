"""Parallel corpora: read, validate, encode into subword ids, filter, and cache.

Every format ends up as a Hugging Face `datasets.Dataset` with `src` and `tgt` text columns.
Plain-text corpora are streamed, CHUNK_LINES lines at a time, into an Arrow file in the run's
cache and memory-mapped from there; their subword ids are encoded chunk by chunk into flat
binary arrays, memory-mapped too. So memory stays flat however large the corpus, and a second
run (or a resume) reuses both instead of reading and tokenizing again.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import random
import shutil
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np

from nmt.errors import NmtError
from nmt.files import sha256_file
from nmt.recipe import DataConfig

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa

log = logging.getLogger("nmt")
CHUNK_LINES = 100_000  # lines read, encoded and written at a time: bounds the memory used


def _datasets():
    """Hugging Face datasets, imported when a corpus is read: translating never needs it, and
    it costs a second to import."""
    import datasets

    datasets.disable_progress_bars()  # nmt draws its own; per-file bars would only add noise
    return datasets


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

    def sample(self, size: int, seed: int) -> tuple[list[str], list[str]]:
        """At most `size` pairs, drawn with a seeded RNG (all of them, in order, if fewer)."""
        if len(self.dataset) <= size:
            return self.sources, self.targets
        rows = sorted(random.Random(seed).sample(range(len(self.dataset)), size))
        table = self.dataset.data.table.take(rows)
        return table.column("src").to_pylist(), table.column("tgt").to_pylist()


@dataclass
class FilterCounts:
    """How many training pairs were dropped, and why."""

    kept: int = 0
    empty: int = 0
    too_long: int = 0
    bad_ratio: int = 0

    def describe(self) -> str:
        return (
            f"kept {self.kept} pairs; dropped {self.empty} empty, {self.too_long} over-long, "
            f"{self.bad_ratio} with an extreme length ratio"
        )


def split_files(config: DataConfig, root: Path, split: str) -> list[Path]:
    """The files a split is read from, in the recipe's layout."""
    if config.format == "text":
        return [root / f"{split}.{config.src_lang}", root / f"{split}.{config.tgt_lang}"]
    if config.format == "tsv":
        return [root / f"{split}.tsv"]
    if config.format == "jsonl":
        return [root / f"{split}.jsonl"]
    return []


def load_split(
    config: DataConfig, root: Path, split: str, cache_dir: Path | None = None
) -> TextSplit:
    """Read one split (`train`, `dev`, ...) in the format the recipe names. Plain text is
    streamed into a memory-mapped Arrow file under `cache_dir` (in memory without one)."""
    files = split_files(config, root, split)
    for path in files:
        if not path.is_file():
            raise NmtError(
                f"{path}: data file not found (data.root={config.root}, "
                f"data.format={config.format}, split {split!r})"
            )
    if config.format == "text":
        return _load_text(files, split, cache_dir)
    if config.format == "tsv":
        sources, targets = _read_tsv(files[0])
    elif config.format == "jsonl":
        sources, targets = _read_jsonl(files[0], config.src_lang, config.tgt_lang)
    else:
        sources, targets = _read_hub(config, split, cache_dir)
    digest = hashlib.sha256()
    for line in (*sources, *targets):
        digest.update(line.encode("utf-8", "surrogatepass") + b"\n")
    dataset = _datasets().Dataset.from_dict({"src": sources, "tgt": targets})
    return TextSplit(split, dataset, files, digest.hexdigest())


def _load_text(files: list[Path], split: str, cache_dir: Path | None) -> TextSplit:
    import pyarrow as pa

    digest = hashlib.sha256("".join(sha256_file(path) for path in files).encode()).hexdigest()
    schema = pa.schema([("src", pa.string()), ("tgt", pa.string())])
    if cache_dir is None:
        table = pa.Table.from_batches(list(_text_batches(files, schema)), schema)
        return TextSplit(split, _datasets().Dataset(table), files, digest)
    path = cache_dir / f"text-{split}-{digest[:16]}.arrow"
    if not path.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for batch in _text_batches(files, schema):
                writer.write_batch(batch)
        tmp.rename(path)
    dataset = _datasets().Dataset.from_file(str(path), in_memory=False)
    return TextSplit(split, dataset, files, digest)


def _text_batches(files: list[Path], schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """The two sides of a text corpus, CHUNK_LINES lines at a time, checked as they are read."""
    import pyarrow as pa

    with open(files[0], "rb") as source, open(files[1], "rb") as target:
        done = 0
        while True:
            sources, targets = list(islice(source, CHUNK_LINES)), list(islice(target, CHUNK_LINES))
            if len(sources) != len(targets):
                counts = [
                    done + len(sources) + sum(1 for _ in source),
                    done + len(targets) + sum(1 for _ in target),
                ]
                raise NmtError(
                    f"{files[0]} has {counts[0]} lines but {files[1]} has "
                    f"{counts[1]}; a parallel corpus needs one line per sentence pair"
                )
            if not sources:
                return
            yield pa.record_batch(
                [_decode(files[0], sources, done), _decode(files[1], targets, done)], schema=schema
            )
            done += len(sources)


def _decode(path: Path, raw_lines: list[bytes], first: int) -> list[str]:
    """UTF-8 lines without their line ends (and without a BOM at the start of the file)."""
    lines = []
    for number, raw in enumerate(raw_lines, first + 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise _not_utf8(path, number, raw[error.start], b"\0" in raw) from None
        if number == 1 and line.startswith("\ufeff"):
            line = line[1:]
        lines.append(line.rstrip("\n").rstrip("\r"))
    return lines


def _not_utf8(path: Path, line: int, byte: int, binary: bool) -> NmtError:
    if binary:
        return NmtError(
            f"{path}: a binary file, not text (NUL bytes and invalid UTF-8 by line {line})"
        )
    return NmtError(f"{path}:{line}: invalid UTF-8 (byte 0x{byte:02x}); convert the file to UTF-8")


def read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 file; invalid UTF-8 is reported with its line number.

    Only '\\n' ends a line (as for `wc -l`), so the count matches the other side of the corpus.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise NmtError(f"{path}: cannot read: {error.strerror}") from None
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return _decode(path, lines, 0)


def decode_stream(name: str, stream: Iterable[bytes]) -> Iterator[str]:
    """Lines of a byte stream (stdin) as they come, checked as `read_lines` checks a file's;
    `name` stands for the file in errors."""
    for number, raw in enumerate(stream):
        yield _decode(Path(name), [raw], number)[0]


def _read_tsv(path: Path) -> tuple[list[str], list[str]]:
    sources, targets = [], []
    for number, line in enumerate(read_lines(path), start=1):
        fields = line.split("\t")
        if len(fields) != 2:
            raise NmtError(
                f"{path}:{number}: expected 2 tab-separated fields "
                f"(source, target), found {len(fields)}"
            )
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
            raise NmtError(
                f'{path}:{number}: expected {{"translation": {{"{src_lang}": ..., '
                f'"{tgt_lang}": ...}}}}'
            ) from None
    return sources, targets


def _read_hub(
    config: DataConfig, split: str, cache_dir: Path | None
) -> tuple[list[str], list[str]]:
    """A dataset from the Hugging Face hub in its `translation` layout (needs the network once).

    Its download is cached in the run's cache (a run writes nothing outside its directory), and
    no code that comes with a dataset is ever run."""
    load_dataset = _datasets().load_dataset
    options: dict = {"cache_dir": str(cache_dir / "hub") if cache_dir else None}
    if "trust_remote_code" in inspect.signature(load_dataset).parameters:
        options["trust_remote_code"] = False  # datasets < 4 could run a dataset's own script
    try:
        dataset = load_dataset(config.hub_name, config.hub_config or None, split=split, **options)
    except Exception as error:  # the hub raises many types; all mean "cannot get this data"
        raise NmtError(
            f"data.hub_name={config.hub_name}: cannot load split {split!r}: "
            f"{str(error).splitlines()[0]}"
        ) from None
    if "translation" not in dataset.column_names:
        raise NmtError(
            f"data.hub_name={config.hub_name}: no 'translation' column "
            f"(has {', '.join(dataset.column_names)})"
        )
    pairs = dataset["translation"]
    try:
        return [p[config.src_lang] for p in pairs], [p[config.tgt_lang] for p in pairs]
    except KeyError as missing:
        raise NmtError(
            f"data.hub_name={config.hub_name}: no language {missing} in its translations"
        ) from None


# ------------------------------------------------------------------ encoded corpora


@dataclass
class EncodedSplit:
    """Subword ids of one split as flat arrays with offsets (memory-mapped from the run's
    cache, or in memory), and the text row each pair came from."""

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
        return self.src_values[self.src_offsets[i] : self.src_offsets[i + 1]]

    def target(self, i: int) -> np.ndarray:
        return self.tgt_values[self.tgt_offsets[i] : self.tgt_offsets[i + 1]]

    rows: np.ndarray  # each pair's row in the text split (filtering drops some)

    ARRAYS = {
        "src_values": np.int32,
        "src_offsets": np.int64,
        "tgt_values": np.int32,
        "tgt_offsets": np.int64,
        "rows": np.int64,
    }

    @classmethod
    def open(cls, directory: Path) -> "EncodedSplit":
        """Memory-map the arrays `encode_split` wrote: nothing is read until it is used."""
        arrays = {}
        for name, dtype in cls.ARRAYS.items():
            path = directory / f"{name}.bin"
            arrays[name] = (
                np.memmap(path, dtype=dtype, mode="r")
                if path.stat().st_size
                else np.zeros(0, dtype=dtype)
            )
        return cls(**arrays)


def encode_split(
    split: TextSplit,
    tokenizer,
    cache_dir: Path,
    max_len: int | None = None,
    max_ratio: float | None = None,
) -> tuple[EncodedSplit, FilterCounts]:
    """Encode a split into subword ids, dropping bad pairs when limits are given (training).

    CHUNK_LINES pairs at a time are encoded and appended to flat id arrays with offsets, stored
    under `cache_dir` and keyed by the text, the SentencePiece model and the limits, so a
    changed file or tokenizer never reuses a stale cache.
    """
    key = hashlib.sha256(
        json.dumps([split.digest, tokenizer.sha256, max_len, max_ratio]).encode()
    ).hexdigest()[:16]
    path = cache_dir / f"{split.name}-{key}"
    counts_path = path / "filter_counts.json"
    if counts_path.is_file() and all(
        (path / f"{name}.bin").is_file() for name in EncodedSplit.ARRAYS
    ):  # not an older layout
        return EncodedSplit.open(path), FilterCounts(**json.loads(counts_path.read_text()))

    tmp = path.with_name(path.name + ".tmp")
    for stale in (tmp, path):  # left behind by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)
    counts = FilterCounts()
    lengths: dict[str, list[np.ndarray]] = {"src": [], "tgt": []}
    files = {name: open(tmp / f"{name}.bin", "wb") for name in EncodedSplit.ARRAYS}
    try:
        table = split.dataset.data.table
        for start in range(0, len(split.dataset), CHUNK_LINES):
            part = table.slice(start, CHUNK_LINES)
            sources = tokenizer.encode_source(part.column("src").to_pylist())
            targets = tokenizer.encode_target(part.column("tgt").to_pylist())
            kept = list(range(len(sources)))
            if max_len is not None:
                ratio = float("inf") if max_ratio is None else max_ratio
                kept = _keep_good_pairs(sources, targets, max_len, ratio, counts)
                sources, targets = [sources[i] for i in kept], [targets[i] for i in kept]
            (np.asarray(kept, dtype=np.int64) + start).tofile(files["rows"])
            counts.kept += len(sources)
            for side, ids in (("src", sources), ("tgt", targets)):
                lengths[side].append(np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)))
                np.fromiter(
                    chain.from_iterable(ids), dtype=np.int32, count=int(lengths[side][-1].sum())
                ).tofile(files[f"{side}_values"])
        for side in ("src", "tgt"):
            offsets = np.zeros(counts.kept + 1, dtype=np.int64)
            if lengths[side]:
                np.cumsum(np.concatenate(lengths[side]), out=offsets[1:])
            offsets.tofile(files[f"{side}_offsets"])
    finally:
        for handle in files.values():
            handle.close()
    (tmp / "filter_counts.json").write_text(json.dumps(counts.__dict__))
    tmp.rename(path)
    return EncodedSplit.open(path), counts


def sample_split(
    split: TextSplit,
    encoded: EncodedSplit,
    tokenizer,
    alpha: float,
    nbest: int,
    seed: int,
    max_len: int,
) -> EncodedSplit:
    """The pairs of `encoded` (as filtering kept them) segmented anew by SentencePiece's
    sampling (`Tokenizer.encode_sampled`) for one epoch of subword regularisation, CHUNK_LINES
    pairs at a time (chunk k seeded by `seed` and k), into arrays in memory. A side whose sample
    is longer than `max_len`, or empty, keeps its deterministic segmentation, so the pairs and
    their bounds stay those of `encoded`."""
    rows = np.asarray(encoded.rows)
    parts: dict[str, list[np.ndarray]] = {"src": [], "tgt": []}
    lengths: dict[str, list[np.ndarray]] = {"src": [], "tgt": []}
    table = split.dataset.data.table
    for chunk, start in enumerate(range(0, len(rows), CHUNK_LINES)):
        part = table.take(rows[start : start + CHUNK_LINES])
        sampled = tokenizer.encode_sampled(
            part.column("src").to_pylist(),
            part.column("tgt").to_pylist(),
            alpha,
            nbest,
            (seed * 1_000_003 + chunk) % 2**32,
        )
        for side, ids_list, fixed in zip(("src", "tgt"), sampled, (encoded.source, encoded.target)):
            chosen = [
                ids if 0 < len(ids) <= max_len else fixed(start + i).tolist()
                for i, ids in enumerate(ids_list)
            ]
            lengths[side].append(np.fromiter(map(len, chosen), np.int64, count=len(chosen)))
            parts[side].append(
                np.fromiter(
                    chain.from_iterable(chosen), np.int32, count=int(lengths[side][-1].sum())
                )
            )
    arrays: dict[str, np.ndarray] = {"rows": rows}
    for side in ("src", "tgt"):
        counts = np.concatenate(lengths[side]) if lengths[side] else np.zeros(0, np.int64)
        arrays[f"{side}_offsets"] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        arrays[f"{side}_values"] = (
            np.concatenate(parts[side]) if parts[side] else np.zeros(0, np.int32)
        )
    return EncodedSplit(**arrays)


def _keep_good_pairs(
    sources: list[list[int]],
    targets: list[list[int]],
    max_len: int,
    max_ratio: float,
    counts: FilterCounts,
) -> list[int]:
    """The pairs to keep: not empty, over-long or badly proportioned (each reason counted)."""
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
    return keep
