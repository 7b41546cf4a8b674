"""Bad input through the commands: one line naming the file, line or key, and exit code 2."""

import errno
import io
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from nmt.checkpoint import (
    average_checkpoints,
    checkpoint_exists,
    delete_checkpoint,
    load_checkpoint,
)
from nmt.cli import average_main, score_main, train_main, translate_main
from nmt.errors import NmtError
from nmt.recipe import Recipe
from nmt.training import train


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
    from conftest import trained_run

    return trained_run(tmp_path_factory.mktemp("trained"))


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
    "vocabulary-too-large": (
        lambda corpus: None,
        ["tokenizer.vocab_size=5000"],
        ["tokenizer.vocab_size", "at most"],
    ),
}


@pytest.mark.parametrize("fault", CORPUS_FAULTS, ids=list(CORPUS_FAULTS))
def test_bad_corpora(tiny_recipe, tmp_path, capsys, fault):
    damage, overrides, expected = CORPUS_FAULTS[fault]
    damage(tiny_recipe.parent / "corpus")
    message = fails_cleanly(
        train_main, [tiny_recipe, "--run-dir", tmp_path / "run", *overrides], capsys
    )
    assert all(part in message for part in expected), message


def test_a_run_directory_holding_another_run_is_refused(trained, capsys):
    recipe = trained.parent / "tiny.yaml"
    message = fails_cleanly(
        train_main, [recipe, "--run-dir", trained, "model.hidden_size=32"], capsys
    )
    assert str(trained) in message and "--resume" in message and "--overwrite" in message
    message = fails_cleanly(
        train_main, [recipe, "--run-dir", trained, "--resume", "model.hidden_size=32"], capsys
    )
    assert "model section differs" in message


def test_translate_refuses_missing_and_foreign_run_directories(tmp_path, capsys):
    message = fails_cleanly(translate_main, ["-m", tmp_path / "nowhere"], capsys)
    assert "nowhere" in message
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8\xff")
    message = fails_cleanly(translate_main, ["-m", tmp_path / "photos"], capsys)
    assert "photos" in message and "not an nmt run directory" in message


def test_a_checkpoint_whose_vocabulary_does_not_match_its_sentencepiece_model(
    trained, tmp_path, capsys
):
    other = tmp_path / "other"
    train(
        Recipe.load(
            trained.parent / "tiny.yaml",
            ["train.max_steps=1", "train.valid_every=1", "tokenizer.vocab_size=100"],
        ),
        other,
    )
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    shutil.copy(other / "spm.model", copy / "spm.model")
    message = fails_cleanly(
        translate_main, ["-m", copy, "-i", trained.parent / "corpus" / "test.de"], capsys
    )
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


def one_line_error(main, argv, capsys) -> str:
    """Run a command that must refuse its arguments before doing any work: its whole stderr is
    the one line of the error (no usage dump, no progress bar)."""
    with pytest.raises(SystemExit) as exit_code:
        main([str(a) for a in argv])
    _, err = capsys.readouterr()
    assert exit_code.value.code == 2, err
    prog = f"nmt-{main.__name__.removesuffix('_main')}"
    assert len(err.splitlines()) == 1 and err.startswith(f"{prog}: error: "), err
    return err.strip()


OPTION_FAULTS = {  # flags that cannot work alone or together: refused, naming the flags
    "min-len-over-max-len": (
        ["--min-len", 50],
        ["--min-len 50", "more than 11", "decode.max_len_a + decode.max_len_b"],
    ),
    "min-len-over-given-max-len": (
        ["--min-len", 9, "--max-len-a", 0, "--max-len-b", 8],
        ["--min-len 9", "more than 8", "--max-len-a + --max-len-b"],
    ),
    "top-p-zero": (["--sample", "--top-p", 0], ["--top-p", "above 0"]),
    "nbest-over-beam": (["--nbest", 4, "--beam", 2], ["--nbest 4", "--beam"]),
    "negative-top-k": (["--sample", "--top-k", -1], ["--top-k", "at least 0"]),
    "temperature-zero": (["--sample", "--temperature", 0], ["--temperature", "above 0"]),
    "nan": (["--alpha", "nan"], ["--alpha", "finite"]),
    "infinity": (["--max-len-a", "inf"], ["--max-len-a", "finite"]),
    "beam-over-vocabulary": (["--beam", 100000], ["--beam 100000", "vocabulary"]),
    "samples-over-memory": (["--sample", "--nbest", 10**12], ["--nbest", "GiB"]),
    "seed-too-big": (["--sample", "--seed", 2**70], ["--seed", "at most"]),
    "sampling-option-without-sampling": (["--top-p", 0.5], ["--top-p", "--sample"]),
    "beam-with-sampling": (["--sample", "--beam", 3], ["--beam", "not to sampling"]),
    "default-beam-with-sampling": (["--sample", "--beam", 5], ["--beam", "not to sampling"]),
    "default-seed-without-sampling": (["--seed", 1], ["--seed", "--sample"]),
    "temperature-without-sampling": (["--temperature", 0.7], ["--temperature", "--sample"]),
    "top-k-without-sampling": (["--top-k", 5], ["--top-k", "--sample"]),
    "beta-with-sampling": (["--sample", "--beta", 0.2], ["--beta", "not to sampling"]),
    "beta-with-greedy": (["--beam", 1, "--beta", 0.2], ["--beta", "greedy", "--beam 1"]),
    "distinct-tokens-run-out": (
        ["--no-repeat-ngram", 1, "--min-len", 200, "--max-len-b", 300],
        ["--min-len 200", "--no-repeat-ngram 1"],
    ),
    "not-a-number": (["--beam", "five"], ["--beam", "invalid int value"]),
    "checkpoint-path": (["--checkpoint", "../../elsewhere/best"], ["--checkpoint", "not a path"]),
    "plot-lines-alone": (["--plot-lines", 1], ["--plot-lines", "--plot-attention"]),
    "dev-set-without-tune": (["--dev-src", "x.de"], ["--dev-src", "--tune"]),
}


@pytest.mark.parametrize("fault", OPTION_FAULTS, ids=list(OPTION_FAULTS))
def test_translate_refuses_options_that_cannot_work(trained, capsys, fault):
    flags, expected = OPTION_FAULTS[fault]
    message = one_line_error(
        translate_main, ["-m", trained, "-i", trained.parent / "corpus" / "test.de", *flags], capsys
    )
    assert all(part in message for part in expected), message


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"min_len": 50}, "decode.min_len"),
        ({"top_p": 0.0, "sample": True}, "decode.top_p"),
        ({"alpha": float("nan")}, "decode.alpha"),
        ({"beam": 10**6}, "decode.beam"),
        ({"temperature": 0.0, "sample": True}, "decode.temperature"),
        ({"max_len_a": float("inf")}, "decode.max_len_a"),
        ({"nbest": 3, "beam": 2}, "nbest 3 needs decode.beam 3"),
        ({"sample": True, "beam": 5}, "decode.beam applies to search, not to sampling"),
        ({"sample": True, "coverage_penalty": 0.2}, "decode.coverage_penalty applies to search"),
        ({"top_p": 0.5}, "decode.top_p applies to sampling only; add sample=True"),
        ({"seed": 1}, "decode.seed applies to sampling only"),
        ({"beam": 1, "coverage_penalty": 0.2}, "not to greedy search"),
    ],
)
def test_translate_keywords_are_checked_like_recipe_values(trained, options, expected):
    from nmt.translate import Translator

    with pytest.raises(NmtError, match=expected):
        Translator.from_run(trained).nbest(["drei"], **options)


def test_prefixes_must_match_the_lines_one_to_one(trained):
    from nmt.translate import Translator

    with pytest.raises(NmtError, match="2 prefixes for 3 lines"):
        Translator.from_run(trained).nbest(["drei", "vier", "fünf"], prefixes=["a", "b"])


def test_samples_beyond_memory_are_refused_even_for_empty_lines(trained):
    from nmt.translate import Translator

    with pytest.raises(NmtError, match="GiB"):
        Translator.from_run(trained).nbest(["", ""], nbest=10**30, sample=True)


def test_empty_and_uneven_files_are_refused(trained, tmp_path, capsys):
    empty, two, three = tmp_path / "blank.en", tmp_path / "two.en", tmp_path / "three.de"
    empty.write_text("")  # (named so that "empty" in a message can only be the message's)
    two.write_text("a\nb\n")
    three.write_text("drei\nvier\nfünf\n")
    for argv, expected in (
        (["-r", empty, "-i", empty], [str(empty), "an empty file"]),
        (["-r", two, "-i", empty], [str(empty), "an empty file"]),
        (["-r", two, "-i", three], [str(three), "3 lines", str(two)]),
        (["-r", two, "-i", two, "-s", three], [str(three), "3 lines"]),
    ):
        message = fails_cleanly(score_main, argv, capsys)
        assert all(part in message for part in expected), message
    for argv, expected in (
        (["-i", three, "--ref", empty], [str(empty), "an empty file"]),
        (["-i", empty, "--ref", empty], [str(empty), "an empty file"]),
        (["-i", three, "--ref", two], [str(two), "2 lines"]),
        (["--tune", "--dev-src", empty, "--dev-ref", empty], [str(empty), "an empty file"]),
        (["--tune", "--dev-src", three, "--dev-ref", two], [str(two), "2 lines"]),
        (["-i", three, "--prefix-file", two], [str(two), "2 lines"]),
        (["-i", three, "--prefix-file", empty], [str(empty), "0 lines"]),
    ):
        message = one_line_error(translate_main, ["-m", trained, *argv], capsys)
        assert all(part in message for part in expected), message


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"eins\ngr\xfc\xdfe\n", "<stdin>:2: invalid UTF-8 (byte 0xfc)"),
        (bytes(range(256)) * 4, "<stdin>: a binary file"),
    ],
)
@pytest.mark.parametrize("output", [False, True])
def test_stdin_is_checked_like_a_file(
    trained, tmp_path, capsys, monkeypatch, data, expected, output
):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    message = fails_cleanly(
        translate_main, ["-m", trained, *(["-o", tmp_path / "out.en"] if output else [])], capsys
    )
    assert expected in message, message
    assert not (tmp_path / "out.en").exists()


def test_diagnose_lines_longer_than_training_and_runs_of_any_corpus_format(
    trained, tmp_path, capsys
):
    long_line = tmp_path / "long.de"
    long_line.write_text(" ".join(["dreiundzwanzig"] * 200) + "\nvier\n")
    tsv_run = tmp_path / "tsv-run"  # the same run, as if trained from a TSV corpus
    shutil.copytree(trained, tsv_run)
    (tsv_run / "diagnostics.json").unlink(missing_ok=True)  # the norms come from its dev set
    recipe = yaml.safe_load((tsv_run / "recipe.yaml").read_text())
    corpus = Path(recipe["data"]["root"])
    (tmp_path / "tsv").mkdir()
    (tmp_path / "tsv" / "dev.tsv").write_text(
        "".join(
            f"{de}\t{en}\n"
            for de, en in zip(
                (corpus / "dev.de").read_text().splitlines(),
                (corpus / "dev.en").read_text().splitlines(),
            )
        )
    )
    recipe["data"].update(format="tsv", root=str(tmp_path / "tsv"))
    (tsv_run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    for run in (trained, tsv_run):
        diagnosed = tmp_path / f"{run.name}.jsonl"
        with pytest.raises(SystemExit) as exit_code:
            translate_main(
                [
                    "-m",
                    str(run),
                    "-i",
                    str(long_line),
                    "-o",
                    str(tmp_path / "out.en"),
                    "--diagnose",
                    str(diagnosed),
                ]
            )
        _, err = capsys.readouterr()
        assert exit_code.value.code == 0, err
        assert [json.loads(line)["line"] for line in diagnosed.read_text().splitlines()] == [1, 2]


DIAGNOSTICS_FAULTS = {
    "not-json": ("flagged: line 1\n", ":1: invalid JSON"),
    "not-an-object": ("[1, 2]\n", ":1: expected a JSON object"),
    "no-flags": ('{"line": 1}\n', "'flags'"),
    "wrong-type": ('{"line": 1, "flags": "low-confidence"}\n', "'flags' must be a list"),
    "line-out-of-range": (None, "line 99 is outside the 2 lines"),
}


@pytest.mark.parametrize("fault", DIAGNOSTICS_FAULTS, ids=list(DIAGNOSTICS_FAULTS))
def test_malformed_diagnostics_files_are_refused(tmp_path, capsys, fault):
    text, expected = DIAGNOSTICS_FAULTS[fault]
    good = {
        "line": 99,
        "flags": ["low-confidence"],
        "source": "drei",
        "output": "three",
        "under_attended": [],
        "over_attended": [{"word": "drei", "attention": 3.1}],
        "repeated_ngrams": [],
        "length_ratio": 1.0,
        "mean_log_prob": -2.5,
    }
    diagnostics = tmp_path / "diag.jsonl"
    diagnostics.write_text(text or json.dumps(good) + "\n")
    (tmp_path / "hyp.en").write_text("three\nfour\n")
    message = fails_cleanly(
        score_main,
        [
            "-r",
            tmp_path / "hyp.en",
            "-i",
            tmp_path / "hyp.en",
            "--diagnostics",
            diagnostics,
            "--html",
            tmp_path / "report.html",
        ],
        capsys,
    )
    assert str(diagnostics) in message and expected in message, message
    assert not (tmp_path / "report.html").exists()


@pytest.mark.parametrize(
    "text, expected",
    [
        (b"step,kind\n1,train\n", "metrics.csv: no column 'loss'"),
        (
            b"step,kind,loss,dev_loss,dev_bleu\n1,train,2.5,,\n2,valid,,1.5\n",
            "metrics.csv:3: not a row",
        ),
        (b"step,kind\n\xff\n", "metrics.csv:2: invalid UTF-8"),
        (b"step,kind,loss\n", "metrics.csv: no rows yet"),
    ],
)
def test_a_damaged_metrics_csv_is_named(tmp_path, capsys, text, expected):
    (tmp_path / "metrics.csv").write_bytes(text)
    message = fails_cleanly(score_main, ["--curves", tmp_path], capsys)
    assert expected in message, message


def test_outputs_are_checked_before_translating_and_never_replace_inputs(trained, tmp_path, capsys):
    source = tmp_path / "in.de"
    source.write_text("drei\nvier\n")
    (tmp_path / "a-file").write_text("")
    for flags, expected in (
        (["-o", tmp_path], "a folder"),
        (["-o", tmp_path / "a-file" / "out.en"], "cannot write there"),
        (["-o", source], "an input of this command (-i)"),
        (["--ref", source, "-o", tmp_path / "." / "in.de"], "(-i)"),
        (["--attention", source], "(-i)"),
        (["-o", tmp_path / "x", "--diagnose", tmp_path / "x"], "(-o)"),
        (["-o", trained / "checkpoints" / "best.json"], "part of the nmt run"),
        (["-o", trained / "checkpoints" / "new.txt"], "part of the nmt run"),
        (["-o", trained / "recipe.yaml"], f"-m {trained}"),
        (["--plot-attention", tmp_path / "a-file"], "not a folder"),
    ):
        message = one_line_error(translate_main, ["-m", trained, "-i", source, *flags], capsys)
        assert expected in message, message
    assert source.read_text() == "drei\nvier\n"
    message = one_line_error(score_main, ["-r", source, "-i", source, "--json", source], capsys)
    assert "(-r)" in message and source.read_text() == "drei\nvier\n"
    both = tmp_path / "report"
    message = one_line_error(
        score_main, ["-r", source, "-i", source, "--json", both, "--html", both], capsys
    )
    assert "(--json)" in message and not both.exists()


@pytest.mark.parametrize(
    "name", ["recipe.yaml", "manifest.json", "spm.model", "metrics.csv", "checkpoints/best.json"]
)
def test_no_output_replaces_what_training_made_even_of_a_run_not_named(
    trained, tmp_path, capsys, name
):
    """A run's records and checkpoints are refused as outputs whether or not the command was
    given that run (nmt-score reads none without --analyze)."""
    kept = (trained / name).read_bytes()
    source = tmp_path / "in.de"
    source.write_text("drei\n")
    for command, argv in (
        (score_main, ["-r", source, "-i", source, "--json", trained / name]),
        (score_main, ["-r", source, "-i", source, "--html", trained / name]),
        (translate_main, ["-m", trained, "-i", source, "--diagnose", trained / name]),
    ):
        message = one_line_error(command, argv, capsys)
        assert f"part of the nmt run in {trained.resolve()}" in message or (
            command is translate_main and "an input of this command (-m" in message
        ), message
    assert (trained / name).read_bytes() == kept
    # What commands write into a run is theirs to write: a user's notes beside it, too.
    with pytest.raises(SystemExit) as exit_code:
        score_main([str(a) for a in ["-r", source, "-i", source, "--json", trained / "notes.json"]])
    assert exit_code.value.code == 0 and (trained / "notes.json").is_file()
    (trained / "notes.json").unlink()


def test_links_do_not_hide_a_runs_files_from_the_output_check(trained, tmp_path):
    """A run whose checkpoints/ links to another disk, a record that is itself a link, a path
    through a link to the run, the checkpoints folder itself, and every file and folder nmt
    writes in a run: each is found to be the run's."""
    from nmt.run_dir import record_of

    run = tmp_path / "run"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns("checkpoints"))
    (tmp_path / "elsewhere").mkdir()
    (run / "checkpoints").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "log.txt").write_text("")
    (run / "train.log").unlink()
    (run / "train.log").symlink_to(tmp_path / "log.txt")
    (tmp_path / "alias").symlink_to(run)
    for path in (
        run / "checkpoints" / "best.json",
        run / "checkpoints",
        run / "train.log",
        tmp_path / "alias" / "recipe.yaml",
        run / "decode.yaml",
        run / "lexicon.safetensors",
        run / "cache" / "anything.bin",
        run / "tensorboard",
    ):
        assert record_of(path) is not None, path
    assert record_of(run / "notes.txt") is None and record_of(tmp_path / "log.txt") is None
    (tmp_path / "loop").symlink_to(tmp_path / "loop")  # resolving it fails: no traceback
    assert record_of(tmp_path / "loop" / "x") is None


def test_an_output_that_fails_at_write_time_is_one_line(trained, tmp_path, capsys, monkeypatch):
    """The disk fills as the output is written (inside the real writer): one line, and the
    output file of an earlier run stays whole."""

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    (tmp_path / "in.de").write_text("drei\n")
    (tmp_path / "out.en").write_text("an earlier translation\n")
    message = fails_cleanly(
        translate_main, ["-m", trained, "-i", tmp_path / "in.de", "-o", tmp_path / "out.en"], capsys
    )
    assert message.endswith(f"-o {tmp_path / 'out.en'}: cannot write: {os.strerror(errno.ENOSPC)}")
    assert (tmp_path / "out.en").read_text() == "an earlier translation\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.de", "out.en"]
    message = fails_cleanly(
        score_main,
        ["-r", tmp_path / "in.de", "-i", tmp_path / "in.de", "--json", tmp_path / "report.json"],
        capsys,
    )
    assert "--json" in message and "cannot write" in message
    (tmp_path / "report.html").write_text("an earlier report\n")
    message = fails_cleanly(
        score_main,
        ["-r", tmp_path / "in.de", "-i", tmp_path / "in.de", "--html", tmp_path / "report.html"],
        capsys,
    )
    assert "--html" in message and "cannot write" in message
    assert (tmp_path / "report.html").read_text() == "an earlier report\n"


def test_average_refuses_names_that_clobber_checkpoints_or_leave_the_run(trained, capsys):
    before = {p.name: p.read_bytes() for p in (trained / "checkpoints").iterdir()}
    for name in ("best", "last", "step-1", "step-7", "../x", "/tmp/x", "", ".hidden"):
        message = one_line_error(average_main, ["-m", trained, "-o", name], capsys)
        assert f"-o {name}" in message or f"-o {name!r}" in message, message
    assert {p.name: p.read_bytes() for p in (trained / "checkpoints").iterdir()} == before


def test_a_dotted_checkpoint_name_round_trips(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    best = (run / "checkpoints" / "best.json").read_bytes()
    with pytest.raises(SystemExit) as exit_code:
        average_main(["-m", str(run), "-c", "step-1", "step-2", "-o", "best.avg"])
    _, err = capsys.readouterr()
    assert exit_code.value.code == 0, err
    assert (run / "checkpoints" / "best.json").read_bytes() == best  # not best.json: best.avg
    assert checkpoint_exists(run / "checkpoints" / "best.avg")
    (tmp_path / "in.de").write_text("drei\nvierzehn\n")
    with pytest.raises(SystemExit) as exit_code:
        translate_main(["-m", str(run), "--checkpoint", "best.avg", "-i", str(tmp_path / "in.de")])
    out, err = capsys.readouterr()
    assert exit_code.value.code == 0, err
    from nmt.translate import Translator

    averaged = Translator.from_run(run, "best.avg").translate(["drei", "vierzehn"])
    assert out == "".join(h.text + "\n" for h in averaged)
    # Writing and deleting `best` leaves `best.avg` (whose files also begin with "best.") whole.
    average_checkpoints([run / "checkpoints" / "step-1"], run / "checkpoints" / "best")
    delete_checkpoint(run / "checkpoints" / "best")
    load_checkpoint(run / "checkpoints" / "best.avg")


def test_average_run_from_python_is_nmt_average(trained, tmp_path, capsys):
    """nmt.average_run writes what nmt-average writes (the step-N checkpoints the run kept,
    in step order), and refuses in the API's own words what the command refuses by flag."""
    import torch

    from nmt import average_run

    run, again = tmp_path / "run", tmp_path / "again"
    shutil.copytree(trained, run)
    shutil.copytree(trained, again)
    target = average_run(run)
    assert target == run / "checkpoints" / "averaged"
    with pytest.raises(SystemExit) as exit_code:
        average_main(["-m", str(again)])
    out, err = capsys.readouterr()
    assert exit_code.value.code == 0, err
    assert out.startswith("averaged step-1, step-2 into ")
    ours, meta = load_checkpoint(target)
    theirs, _ = load_checkpoint(again / "checkpoints" / "averaged")
    assert meta["averaged_from"] == ["step-1", "step-2"]
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    with pytest.raises(NmtError, match="^output best: training writes"):
        average_run(run, output="best")
    with pytest.raises(NmtError, match="^names step-1 step-1: a checkpoint named twice"):
        average_run(run, ["step-1", "step-1"])
    with pytest.raises(NmtError, match="^names: no checkpoints named"):
        average_run(run, [])
    assert load_checkpoint(average_run(run, "step-2", "one"))[1]["averaged_from"] == ["step-2"]
    (run / "checkpoints" / "blocked.json").mkdir()  # the new checkpoint cannot be written
    with pytest.raises(NmtError, match="blocked: cannot write"):
        average_run(run, output="blocked")


def test_an_error_quoting_a_file_name_with_a_newline_stays_one_line(trained, tmp_path, capsys):
    message = one_line_error(translate_main, ["-m", trained, "-i", tmp_path / "in\nput.de"], capsys)
    assert "in\\nput.de: cannot read" in message, message


@pytest.mark.parametrize(
    "flags",
    [
        ["--beam", 1, "--beta", 0],
        ["--temperature", 1.0],
        ["--top-k", 0, "--beam", 2],
        ["--top-p", 1.0],
        ["--sample", "--beta", 0],
    ],
)
def test_a_neutral_value_of_an_option_that_does_nothing_is_no_mistake(trained, capsys, flags):
    with pytest.raises(SystemExit) as code:
        translate_main(
            ["-m", str(trained), "-i", str(trained.parent / "corpus" / "test.de"), *map(str, flags)]
        )
    assert code.value.code == 0, capsys.readouterr().err


def test_dash_and_devices_are_stdin_and_stdout(trained, capsys, monkeypatch, tmp_path):
    """`-o -` and `-o /dev/stdout` write to standard output (a device is written in place,
    never renamed over); `-i -` reads standard input."""
    source = trained.parent / "corpus" / "test.de"
    with pytest.raises(SystemExit) as code:
        translate_main(["-m", str(trained), "-i", str(source), "-o", "-"])
    assert code.value.code == 0
    expected = capsys.readouterr().out
    assert len(expected.splitlines()) == len(source.read_text().splitlines())
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(source.read_bytes())))
    with pytest.raises(SystemExit) as code:
        translate_main(["-m", str(trained), "-i", "-"])
    assert code.value.code == 0 and capsys.readouterr().out == expected
    device = tmp_path / "device"
    os.mkfifo(device)  # a pipe stands for /dev/stdout: not a regular file
    reader = os.open(device, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(SystemExit) as code:
            translate_main(["-m", str(trained), "-i", str(source), "-o", str(device)])
        assert code.value.code == 0
        assert os.read(reader, 1 << 20).decode() == expected
    finally:
        os.close(reader)
    assert device.is_fifo()  # still the pipe, not a file renamed over it


@pytest.mark.parametrize("main", [translate_main, score_main])
def test_a_path_the_system_refuses_is_one_line(trained, capsys, main):
    """A name longer than the file system allows: the system's words, no traceback."""
    source = trained.parent / "corpus" / "test.de"
    long_name = str(trained.parent / ("x" * 300))
    argv = (
        ["-m", str(trained), "-i", long_name]
        if main is translate_main
        else ["-r", str(source), "-i", str(source), "--json", long_name]
    )
    message = one_line_error(main, argv, capsys)
    assert "x" * 300 in message
