import re
from pathlib import Path

import pytest
import yaml

from nmt.errors import NmtError
from nmt.recipe import Recipe

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_and_file_values_and_provenance(tmp_path):
    recipe = Recipe.load(write(tmp_path, "model:\n  hidden_size: 64\n"))
    assert recipe.model.hidden_size == 64
    assert recipe.model.encoder_cell == "lstm"
    assert recipe.name == "r"  # the file's stem when the recipe has no name
    assert recipe.provenance["model.hidden_size"] == "file"
    assert recipe.provenance["model.encoder_cell"] == "default"


def test_overrides_win_and_are_recorded(tmp_path):
    recipe = Recipe.load(
        write(tmp_path, "train:\n  max_steps: 10\n"),
        [
            "train.max_steps=200",
            "model.attention=luong-general",
            "train.lr=3e-4",
            "model.decoder_init=zeros",
        ],
    )
    assert recipe.train.max_steps == 200
    assert recipe.model.attention == "luong-general"
    assert recipe.train.lr == pytest.approx(3e-4)
    assert recipe.model.decoder_init == "zeros"
    assert recipe.provenance["train.max_steps"] == "override"


@pytest.mark.parametrize(
    "text, message",
    [
        ("modle:\n  hidden_size: 3\n", "unknown key modle; did you mean model?"),
        (
            "model:\n  hiden_size: 3\n",
            "unknown key model.hiden_size; did you mean model.hidden_size?",
        ),
        ("model:\n  hidden_size: big\n", "model.hidden_size must be an integer, not 'big'"),
        ("model:\n  hidden_size: 0\n", "model.hidden_size must be at least 1"),
        ("model:\n  dropout: 1.5\n", "model.dropout must be at most 0.95"),
        ("model:\n  attention: luong-dott\n", "did you mean luong-dot?"),
        ("model:\n  bidirectional: 1\n", "model.bidirectional must be true or false"),
        ("model: 3\n", "model must be a section"),
        ("- a\n- b\n", "a recipe is a mapping"),
        (
            "model:\n  attention: luong-dot\n  hidden_size: 10\n  decoder_hidden_size: 10\n",
            "a dot score needs decoder_hidden_size (10) equal to the encoder output size (20)",
        ),
        (
            "model:\n  decoder_init: last\n  hidden_size: 10\n  decoder_hidden_size: 12\n",
            "model.decoder_init: last needs decoder_hidden_size (12) equal to the encoder output",
        ),
        (
            "model:\n  tie_output: true\n  embedding_size: 8\n  decoder_hidden_size: 12\n",
            "model.tie_output needs model.embedding_size (8) = model.decoder_hidden_size (12)",
        ),
        (
            "tokenizer:\n  joint: false\nmodel:\n  tie_embeddings: true\n",
            "model.tie_embeddings needs a joint vocabulary (tokenizer.joint: true)",
        ),
        (
            "data:\n  max_len: 100\ntrain:\n  batch_tokens: 100\n",
            "train.batch_tokens (100) must exceed data.max_len (100)",
        ),
        ("data:\n  format: hub\n", "data.hub_name is required with data.format: hub"),
        ("train:\n  max_time: soon\n", "train.max_time must be a duration such as 75m"),
    ],
)
def test_bad_recipes_name_file_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(NmtError) as error:
        Recipe.load(path)
    assert message in str(error.value)
    assert str(path) in str(error.value)


def test_yaml_syntax_error_has_line_and_column(tmp_path):
    path = write(tmp_path, "model:\n  hidden_size: 3\n  cell: [lstm\n")
    with pytest.raises(NmtError, match=r"r\.yaml:\d+:\d+: YAML syntax error"):
        Recipe.load(path)


def test_bad_overrides(tmp_path):
    path = write(tmp_path, "")
    with pytest.raises(NmtError, match="did you mean train.max_steps"):
        Recipe.load(path, ["train.max_step=3"])
    with pytest.raises(NmtError, match="expected KEY=VALUE"):
        Recipe.load(path, ["train.max_steps"])
    with pytest.raises(NmtError, match="train.max_steps must be an integer"):
        Recipe.load(path, ["train.max_steps=many"])


def test_missing_recipe_file(tmp_path):
    with pytest.raises(NmtError, match="recipe file not found"):
        Recipe.load(tmp_path / "nope.yaml")


def test_round_trip_through_yaml(tmp_path):
    recipe = Recipe.load(
        write(tmp_path, "name: x\nmodel:\n  decoder_cell: gru\n"), ["decode.beam=7"]
    )
    again = Recipe.load(write(tmp_path, recipe.to_yaml()))
    assert again == recipe


def test_data_root_is_relative_to_the_recipe_file_or_to_the_shell(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "r.yaml"
    path.write_text("data:\n  root: ../corpus\n")
    assert Path(Recipe.load(path).data.root) == (tmp_path / "corpus").resolve()
    override = Recipe.load(path, ["data.root=elsewhere"])
    assert Path(override.data.root) == (Path.cwd() / "elsewhere").resolve()


def test_every_key_is_documented_in_the_readme():
    """The README's recipe reference is generated from the recipe classes; it must stay in sync."""
    from nmt.recipe import reference_markdown

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    hint = "regenerate it with nmt.recipe.reference_markdown()"
    assert reference_markdown() in readme, hint


def test_every_row_of_the_key_reference_has_three_cells():
    """A help text with a bare `|` (|y| in a formula) would split its row into more cells."""
    import re

    from nmt.recipe import reference_markdown

    for row in reference_markdown().splitlines():
        assert len(re.findall(r"(?<!\\)\|", row)) == 4, row


def test_a_recipe_over_its_base(tmp_path):
    """`base:` names a recipe file (relative to the recipe's folder) whose sections the recipe
    changes key by key; bases may have bases; the base's data.root is relative to its own
    folder; the run is named by the recipe's file, not the base's name."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "corpus").mkdir()
    (shared / "root.yaml").write_text("name: root\nseed: 7\ndata: {root: corpus, max_len: 50}\n")
    (shared / "base.yaml").write_text(
        "base: root.yaml\nmodel: {hidden_size: 32, dropout: 0.4}\ntrain: {lr: 0.002}\n"
    )
    (tmp_path / "child.yaml").write_text(
        "base: shared/base.yaml\nmodel: {dropout: 0.1}\ndata: {src_lang: fr}\n"
    )
    recipe = Recipe.load(tmp_path / "child.yaml")
    assert recipe.name == "child" and recipe.seed == 7
    assert (recipe.model.hidden_size, recipe.model.dropout) == (32, 0.1)
    assert (recipe.data.max_len, recipe.data.src_lang, recipe.train.lr) == (50, "fr", 0.002)
    assert recipe.data.root == str(shared / "corpus")
    assert "\nbase:" not in "\n" + recipe.to_yaml()  # a run's copy stands on its own


@pytest.mark.parametrize(
    "files, message",
    [
        ({"a.yaml": "base: missing.yaml\n"}, "a.yaml: base missing.yaml: recipe file"),
        ({"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n"}, "name each other as bases"),
        ({"a.yaml": "base: a.yaml\n"}, "name each other as bases"),
        ({"a.yaml": "base: [1]\n"}, "base must name a recipe file"),
        ({"a.yaml": "base: b.yaml\n", "b.yaml": "model: {hiden_size: 3}\n"}, "b.yaml: unknown key"),
        ({"a.yaml": "base: b.yaml\n", "b.yaml": "model: [\n"}, "b.yaml:2:1: YAML syntax error"),
        (
            {"a.yaml": "base: b.yaml\n", "b.yaml": "model: {dropout: 2.0}\n"},
            "b.yaml: model.dropout",
        ),
    ],
)
def test_a_bad_base_is_one_error_naming_the_file(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(NmtError, match=re.escape(message)):
        Recipe.load(tmp_path / "a.yaml")


def test_the_six_multi30k_recipes_differ_only_in_direction():
    recipes = {
        path.stem: Recipe.load(path).to_dict()
        for path in sorted((ROOT / "recipes").glob("multi30k_*_*.yaml"))
        if path.stem != "multi30k_base"
    }
    assert set(recipes) == {
        f"multi30k_{s}_{t}"
        for s, t in (("de", "en"), ("en", "de"), ("en", "fr"), ("fr", "en"), ("en", "cs"), ("cs", "en"))
    }  # fmt: skip
    for name, recipe in recipes.items():
        _, source, target = name.split("_")
        assert (recipe["data"]["src_lang"], recipe["data"]["tgt_lang"]) == (source, target)
        for section in recipe:
            if section != "name":
                neutral = dict(recipe[section]) if isinstance(recipe[section], dict) else None
                if neutral is not None and section == "data":
                    neutral.pop("src_lang"), neutral.pop("tgt_lang")
                first = recipes["multi30k_de_en"][section]
                expected = (
                    {k: v for k, v in first.items() if k not in ("src_lang", "tgt_lang")}
                    if section == "data"
                    else first
                )
                assert (neutral if neutral is not None else recipe[section]) == expected, section


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["tokenizer.sampling_alpha=0.1", "tokenizer.sampling_nbest=1"], "sampling_nbest 1"),
        (["tokenizer.sampling_alpha=0.1", "tokenizer.sampling_nbest=0"], "sampling_nbest 0"),
        (["tokenizer.type=bpe", "tokenizer.sampling_alpha=0.6"], "at most 0.5"),
    ],
)
def test_subword_sampling_settings_that_cannot_work(tmp_path, overrides, message):
    (tmp_path / "r.yaml").write_text("data: {root: .}\n")
    with pytest.raises(NmtError, match=message):
        Recipe.load(tmp_path / "r.yaml", overrides)


def test_durations_take_seconds_minutes_hours_and_bare_minutes():
    from nmt.recipe import parse_duration

    assert [parse_duration(t) for t in ("90s", "75m", "2h", "1.5H", "30", " 10m ")] == [
        90,
        4500,
        7200,
        5400,
        1800,
        600,
    ]
    for bad in ("", "m", "-5m", "ten minutes", "nan", "infh", "1e999s"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_special_token_ids_are_fixed_as_the_readme_says():
    """Runs trained by older versions depend on these ids: they never change."""
    from nmt.data.subwords import BOS, EOS, PAD, UNK

    assert (PAD, UNK, BOS, EOS) == (0, 1, 2, 3)


def test_every_shipped_recipe_loads_and_the_readmes_example_is_the_quickstarts():
    """Each recipe under recipes/ is valid as shipped; the README's compact quickstart recipe
    says nothing the real file does not."""
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        Recipe.load(path)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    example = yaml.safe_load(
        readme.split("## Recipes", 1)[1].split("```yaml\n", 1)[1].split("```")[0]
    )
    shipped = yaml.safe_load((ROOT / "recipes" / "quickstart.yaml").read_text(encoding="utf-8"))
    for key, value in example.items():
        if isinstance(value, dict):
            for inner, setting in value.items():
                assert shipped[key][inner] == setting, f"README's {key}.{inner}"
        else:
            assert shipped[key] == value, f"README's {key}"
