from pathlib import Path

import pytest

from nmt.errors import NmtError
from nmt.recipe import Recipe


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
