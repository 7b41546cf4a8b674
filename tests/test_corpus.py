import json
from pathlib import Path

import pytest

from nmt.data.corpus import encode_split, load_split, read_lines
from nmt.data.subwords import Tokenizer
from nmt.errors import NmtError
from nmt.recipe import DataConfig, TokenizerConfig


def test_text_pairs(tmp_path):
    (tmp_path / "train.de").write_text("eins\nzwei\n\n")
    (tmp_path / "train.en").write_text("one\ntwo\n\n")
    split = load_split(DataConfig(), tmp_path, "train")
    assert split.sources == ["eins", "zwei", ""]
    assert split.targets == ["one", "two", ""]


def test_line_counts_must_match(tmp_path):
    (tmp_path / "train.de").write_text("eins\nzwei\ndrei\n")
    (tmp_path / "train.en").write_text("one\ntwo\n")
    with pytest.raises(NmtError) as error:
        load_split(DataConfig(), tmp_path, "train")
    message = str(error.value)
    assert "train.de has 3 lines" in message and "train.en has 2" in message


def test_invalid_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "train.de"
    path.write_bytes(b"eins\nzwei\ndr\xffei\n")
    with pytest.raises(NmtError, match=r"train\.de:3: invalid UTF-8"):
        read_lines(path)


def test_only_newline_ends_a_line(tmp_path):
    path = tmp_path / "x"
    path.write_bytes("a\u2028b\r\nc\x0bd\n".encode())
    assert read_lines(path) == ["a\u2028b", "c\x0bd"]


def test_missing_file(tmp_path):
    with pytest.raises(NmtError, match=r"train\.de: data file not found"):
        load_split(DataConfig(), tmp_path, "train")


def test_tsv_and_jsonl(tmp_path):
    (tmp_path / "train.tsv").write_text("eins\tone\nzwei\ttwo\n")
    split = load_split(DataConfig(format="tsv"), tmp_path, "train")
    assert split.sources == ["eins", "zwei"] and split.targets == ["one", "two"]
    records = [
        {"translation": {"de": "eins", "en": "one"}},
        {"translation": {"en": "two", "de": "zwei"}},
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    split = load_split(DataConfig(format="jsonl"), tmp_path, "train")
    assert split.sources == ["eins", "zwei"] and split.targets == ["one", "two"]


def test_tsv_and_jsonl_errors_name_the_line(tmp_path):
    (tmp_path / "train.tsv").write_text("eins\tone\nzwei\n")
    with pytest.raises(NmtError, match=r"train\.tsv:2: expected 2 tab-separated fields"):
        load_split(DataConfig(format="tsv"), tmp_path, "train")
    (tmp_path / "train.jsonl").write_text('{"translation": {"de": "a", "en": "b"}}\n{oops\n')
    with pytest.raises(NmtError, match=r"train\.jsonl:2: invalid JSON"):
        load_split(DataConfig(format="jsonl"), tmp_path, "train")
    (tmp_path / "train.jsonl").write_text('{"translation": {"de": "a"}}\n')
    with pytest.raises(NmtError, match=r"train\.jsonl:1: expected"):
        load_split(DataConfig(format="jsonl"), tmp_path, "train")


def _tokenizer(tmp_path: Path, sources, targets, vocab_size=30) -> Tokenizer:
    return Tokenizer.train(TokenizerConfig(vocab_size=vocab_size), sources, targets, tmp_path, 1)


def test_filtering_counts_and_cache(tmp_path):
    sources = ["eins zwei drei", "", "vier", "fünf " * 30, "sechs sieben", "acht", "neun " * 18]
    targets = ["one two three", "nothing", "four", "five", "six seven", "eight " * 18, "nine"]
    (tmp_path / "train.de").write_text("\n".join(sources) + "\n")
    (tmp_path / "train.en").write_text("\n".join(targets) + "\n")
    split = load_split(DataConfig(), tmp_path, "train")
    tokenizer = _tokenizer(tmp_path, sources * 20, targets * 20)
    encoded, counts = encode_split(split, tokenizer, tmp_path / "cache", max_len=20, max_ratio=3)
    assert (counts.kept, counts.empty, counts.too_long, counts.bad_ratio) == (3, 1, 1, 2)
    assert counts.describe().endswith(
        "dropped 1 empty, 1 over-long, 2 with an extreme length ratio"
    )
    assert len(encoded) == 3
    assert tokenizer.target.decode(encoded.target(0).tolist()) == "one two three"
    # A second encoding is read from the cache, not tokenized again.
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 1
    again, counts_again = encode_split(split, tokenizer, tmp_path / "cache", 20, 3)
    assert counts_again == counts and (again.src_values == encoded.src_values).all()


def test_hub_format_reads_a_dataset_in_translation_layout(tmp_path, monkeypatch):
    """`format: hub` goes through datasets.load_dataset; a local folder stands in for the hub."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    hub = tmp_path / "my-dataset"
    hub.mkdir()
    records = [
        {"translation": {"de": "eins", "en": "one"}},
        {"translation": {"de": "zwei", "en": "two"}},
    ]
    (hub / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    config = DataConfig(format="hub", hub_name=str(hub))
    split = load_split(config, tmp_path, "train")
    assert split.sources == ["eins", "zwei"] and split.targets == ["one", "two"]
    with pytest.raises(NmtError, match="cannot load split 'validation'"):
        load_split(config, tmp_path, "validation")


@pytest.mark.parametrize("old_datasets", [True, False], ids=["datasets<4", "datasets>=4"])
def test_hub_data_is_cached_in_the_run_and_runs_no_remote_code(tmp_path, monkeypatch, old_datasets):
    """load_dataset gets the run's cache folder, and trust_remote_code=False where the
    installed datasets still has that option."""
    import nmt.data.corpus as corpus
    from nmt.recipe import DataConfig

    calls = []

    class Fake:
        column_names = ["translation"]

        def __getitem__(self, key):
            return [{"de": "eins", "en": "one"}]

    def load_old(path, name=None, split=None, cache_dir=None, trust_remote_code=None):
        calls.append({"where": (path, name, split), "cache_dir": cache_dir})
        calls[-1]["trust_remote_code"] = trust_remote_code
        return Fake()

    def load_new(path, name=None, split=None, cache_dir=None, **config_kwargs):
        assert not config_kwargs, config_kwargs  # datasets 4+ passes these to the builder
        calls.append({"where": (path, name, split), "cache_dir": cache_dir})
        return Fake()

    class FakeDatasets:
        load_dataset = staticmethod(load_old if old_datasets else load_new)

    monkeypatch.setattr(corpus, "_datasets", lambda: FakeDatasets)
    config = DataConfig(format="hub", hub_name="someone/pairs", hub_config="de-en")
    assert corpus._read_hub(config, "train", tmp_path / "cache") == (["eins"], ["one"])
    assert calls[0]["where"] == ("someone/pairs", "de-en", "train")  # hub_name, hub_config
    assert calls[0]["cache_dir"] == str(tmp_path / "cache" / "hub")
    if old_datasets:
        assert calls[0]["trust_remote_code"] is False
