"""Bad input through the commands: one line naming the file, line or key, and exit code 2."""

import shutil

import pytest

from nmt.cli import train_main, translate_main
from nmt.recipe import Recipe
from nmt.train import train


def fails_cleanly(main, argv, capsys) -> str:
    """Run a command that must refuse its input; return its one-line message (progress lines
    logged before the fault was found may precede it)."""
    with pytest.raises(SystemExit) as exit_code:
        main([str(a) for a in argv])
    _, err = capsys.readouterr()
    assert exit_code.value.code == 2, err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert err.rstrip().endswith(errors[0]), err  # the last thing said
    return errors[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained run to translate with."""
    from conftest import TINY_RECIPE, write_slice

    base = tmp_path_factory.mktemp("trained")
    write_slice(base / "corpus")
    (base / "tiny.yaml").write_text(TINY_RECIPE, encoding="utf-8")
    train(Recipe.load(base / "tiny.yaml", ["train.max_steps=2", "train.valid_every=2"]),
          base / "run")
    return base / "run"


def replace_line(path, number, text):
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


RECIPE_FAULTS = {
    "yaml-syntax": ("model: [1,\n", ["tiny.yaml:2:1", "YAML syntax error"]),
    "unknown-key": ("model:\n  hiden_size: 8\n", ["model.hiden_size", "model.hidden_size"]),
    "wrong-type": ("model:\n  hidden_size: big\n", ["model.hidden_size", "integer"]),
    "out-of-range": ("model:\n  dropout: 1.5\n", ["model.dropout", "1.5"]),
}


@pytest.mark.parametrize("fault", RECIPE_FAULTS, ids=list(RECIPE_FAULTS))
def test_bad_recipes(tiny_recipe, tmp_path, capsys, fault):
    text, expected = RECIPE_FAULTS[fault]
    tiny_recipe.write_text(text, encoding="utf-8")
    message = fails_cleanly(train_main, [tiny_recipe, "--run-dir", tmp_path / "run"], capsys)
    assert all(part in message for part in expected), message


def _missing(corpus):
    (corpus / "train.en").unlink()


def _uneven(corpus):
    with open(corpus / "train.de", "a", encoding="utf-8") as handle:
        handle.write("ein Satz zu viel\n")


def _bad_utf8(corpus):
    lines = (corpus / "train.de").read_bytes().split(b"\n")
    lines[2] = b"gr\xfc\xdfe"  # Latin-1, not UTF-8
    (corpus / "train.de").write_bytes(b"\n".join(lines))


def _empty(corpus):
    for lang in ("de", "en"):
        (corpus / f"train.{lang}").write_text("")


CORPUS_FAULTS = {
    "missing-file": (_missing, [], ["train.en"]),
    "line-counts-differ": (_uneven, [], ["train.de", "train.en", "401", "400"]),
    "invalid-utf8": (_bad_utf8, [], ["train.de:3", "UTF-8"]),
    "empty-corpus": (_empty, [], ["train", "empty"]),
    "every-pair-filtered": (lambda corpus: None, ["data.max_len=1"], ["data.max_len"]),
    "vocabulary-too-large": (lambda corpus: None, ["tokenizer.vocab_size=5000"],
                             ["tokenizer.vocab_size", "at most"]),
}


@pytest.mark.parametrize("fault", CORPUS_FAULTS, ids=list(CORPUS_FAULTS))
def test_bad_corpora(tiny_recipe, tmp_path, capsys, fault):
    damage, overrides, expected = CORPUS_FAULTS[fault]
    damage(tiny_recipe.parent / "corpus")
    message = fails_cleanly(train_main, [tiny_recipe, "--run-dir", tmp_path / "run",
                                         *overrides], capsys)
    assert all(part in message for part in expected), message


def test_a_run_directory_holding_another_run_is_refused(trained, capsys):
    recipe = trained.parent / "tiny.yaml"
    message = fails_cleanly(train_main, [recipe, "--run-dir", trained, "model.hidden_size=32"],
                            capsys)
    assert str(trained) in message and "--resume" in message and "--overwrite" in message
    message = fails_cleanly(train_main, [recipe, "--run-dir", trained, "--resume",
                                         "model.hidden_size=32"], capsys)
    assert "model section differs" in message


def test_translate_refuses_missing_and_foreign_run_directories(tmp_path, capsys):
    message = fails_cleanly(translate_main, ["-m", tmp_path / "nowhere"], capsys)
    assert "nowhere" in message
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8\xff")
    message = fails_cleanly(translate_main, ["-m", tmp_path / "photos"], capsys)
    assert "photos" in message and "not an nmt run directory" in message


def test_a_checkpoint_whose_vocabulary_does_not_match_its_sentencepiece_model(
        trained, tmp_path, capsys):
    other = tmp_path / "other"
    train(Recipe.load(trained.parent / "tiny.yaml", ["train.max_steps=1", "train.valid_every=1",
                                                     "tokenizer.vocab_size=100"]), other)
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    shutil.copy(other / "spm.model", copy / "spm.model")
    message = fails_cleanly(translate_main, ["-m", copy, "-i", trained.parent / "corpus" /
                                             "test.de"], capsys)
    assert "spm.model" in message


def test_a_binary_file_as_input_is_refused(trained, tmp_path, capsys):
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    message = fails_cleanly(translate_main, ["-m", trained, "-i", binary], capsys)
    assert "model.bin" in message and "binary file" in message


def test_control_characters_and_nul_bytes_are_translated(trained, tmp_path, capsys):
    source = tmp_path / "odd.de"
    source.write_text("drei\x00zwei\nvier\x07\x1b[31m fünf\n\x0c\n\u200bsieben\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_code:
        translate_main(["-m", str(trained), "--beam", "2", "-i", str(source)])
    out, err = capsys.readouterr()
    assert exit_code.value.code == 0, err
    assert len(out.split("\n")) == 5  # four lines and the final newline: one output per input
