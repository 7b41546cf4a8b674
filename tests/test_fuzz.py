"""Any input gives a valid result or a clean NmtError, never a traceback."""

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nmt.data.corpus import load_split
from nmt.errors import NmtError
from nmt.recipe import DataConfig, Recipe

KEYS = ["name", "seed", "data", "model", "train", "decode", "tokenizer", "model.hidden_size",
        "train.lr", "decode.beam", "model.attention", "data.format", "tokenizer.vocab_size"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True), st.text(max_size=20))
YAMLISH = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS + ["x", "hidden_size",
                                                                         "beam", "lr"]),
                                                 inner, max_size=5)), max_leaves=12)
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(text=st.text(alphabet=string.printable + "äö€\t\x00", max_size=300))
def test_recipe_text_loads_or_fails_cleanly(tmp_path, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        Recipe.load(path)
    except NmtError as error:
        assert "\n" not in str(error).strip() or "YAML" in str(error)


@FUZZ
@given(structure=st.dictionaries(st.sampled_from(["data", "model", "train", "decode",
                                                  "tokenizer", "name", "seed", "junk"]),
                                 YAMLISH, max_size=4),
       overrides=st.lists(st.tuples(st.sampled_from(KEYS + ["model.x", "a.b.c", ""]),
                                    st.text(max_size=12)), max_size=3))
def test_recipe_structures_and_overrides(structure, overrides):
    try:
        Recipe.from_dict(structure, overrides=dict(overrides))
    except NmtError:
        pass


@FUZZ
@given(source=st.binary(max_size=200), target=st.binary(max_size=200),
       layout=st.sampled_from(["text", "tsv", "jsonl"]))
def test_corpus_reader_accepts_or_rejects_cleanly(tmp_path, source, target, layout):
    if layout == "text":
        (tmp_path / "train.de").write_bytes(source)
        (tmp_path / "train.en").write_bytes(target)
    else:
        (tmp_path / f"train.{layout}").write_bytes(source + target)
    try:
        split = load_split(DataConfig(format=layout), tmp_path, "train")
    except NmtError:
        return
    assert len(split.sources) == len(split.targets)
