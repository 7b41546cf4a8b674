"""Any input gives a valid result or a clean NmtError, never a traceback."""

import argparse
import contextlib
import io
import json
import os
import shutil
import string
import sys
import tempfile
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from nmt.checkpoint import load_checkpoint
from nmt.cli import average_main, score_main, serve_main, train_main, translate_main
from nmt.data.corpus import load_split, read_lines
from nmt.errors import NmtError
from nmt.recipe import DataConfig, Recipe

KEYS = [
    "name",
    "seed",
    "data",
    "model",
    "train",
    "decode",
    "tokenizer",
    "model.hidden_size",
    "train.lr",
    "decode.beam",
    "model.attention",
    "data.format",
    "tokenizer.vocab_size",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=20),
)
YAMLISH = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(KEYS + ["x", "hidden_size", "beam", "lr"]), inner, max_size=5
        ),
    ),
    max_leaves=12,
)
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


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
@given(
    structure=st.dictionaries(
        st.sampled_from(["data", "model", "train", "decode", "tokenizer", "name", "seed", "junk"]),
        YAMLISH,
        max_size=4,
    ),
    overrides=st.lists(
        st.tuples(st.sampled_from(KEYS + ["model.x", "a.b.c", ""]), st.text(max_size=12)),
        max_size=3,
    ),
)
def test_recipe_structures_and_overrides(structure, overrides):
    try:
        Recipe.from_dict(structure, overrides=dict(overrides))
    except NmtError:
        pass


@FUZZ
@given(
    source=st.binary(max_size=200),
    target=st.binary(max_size=200),
    layout=st.sampled_from(["text", "tsv", "jsonl"]),
)
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


# ------------------------------------------------------------------ the commands
#
# Argument lists drawn from each command's real parser (every option, with typed boundary
# values and junk) over files of random bytes, run in-process against a tiny trained run: the
# command exits 0 with sane output, or 2 with one line `PROG: error: ...`; nothing else.


class File(str):
    """A file name in the example's own folder (resolved when the command runs)."""


RUN = File("<run>")  # the tiny trained run
GOOD_DE = "drei\nam vierten Mai\nsiebzehn Katzen\n"
GOOD_EN = "three\non May fourth\nseventeen cats\n"
DIAGNOSIS = {
    "line": 1,
    "flags": ["low-confidence"],
    "source": "drei",
    "output": "three",
    "under_attended": [],
    "over_attended": [],
    "repeated_ngrams": [],
    "length_ratio": 1.0,
    "mean_log_prob": -2.5,
}
INPUTS = [
    File(name)
    for name in (
        "in",
        "other",
        "good.de",
        "good.en",
        "empty",
        "missing",
        "folder",
        "a-file/x",
        "diagnoses",
        "bad-diagnoses",
    )
] + [""]
OUTPUTS = [
    File(name)
    for name in (
        "out",
        "out2",
        "in",
        "good.en",
        "folder",
        "a-file/x",
        "<run>/recipe.yaml",
        "<run>/checkpoints/best.json",
    )
] + [""]
NAMES = [
    "best",
    "last",
    "step-1",
    "step-2",
    "averaged",
    "best.avg",
    "x.y.z",
    "missing",
    "",
    "../x",
    File("elsewhere"),
    ".hidden",
    "step-x",
    "a/b",
    "ü",
]  # File: an absolute path
POOLS = {  # values of options that are not numbers or choices, by argparse dest
    "model": st.sampled_from([RUN] * 4 + [File("missing"), File("in"), File("folder"), ""]),
    "checkpoint": st.sampled_from(NAMES),
    "checkpoints": st.sampled_from(NAMES),
    "device": st.sampled_from(["auto", "cpu", "cuda", "cuda:9", "tpu", ""]),
    "curves": st.sampled_from(
        [RUN, File("curves"), File("folder"), File("missing"), File("in"), ""]
    ),
    "plot_attention": st.sampled_from([File("plots"), File("in"), File("a-file/x"), ""]),
    **dict.fromkeys(
        ["input", "ref", "prefix_file", "dev_src", "dev_ref", "source", "diagnostics"],
        st.sampled_from(INPUTS),
    ),
    **dict.fromkeys(["output", "attention", "diagnose", "json", "html"], st.sampled_from(OUTPUTS)),
}
SLOW_WHEN_HUGE = {"max_len_a", "max_len_b", "samples"}  # huge: slow (as asked), not wrong
JUNK = st.sampled_from(["", "x", "1e999", "0x10", "²", "--", "-inf"]) | st.text(max_size=4)
INTS = st.sampled_from(["-1", "0", "1", "2", "3", "120", "121", str(2**63), str(10**30)])
FLOATS = st.sampled_from(["-1", "0", "0.5", "1", "1e-300", "1e308", "nan", "inf"])


def parser_of(main) -> argparse.ArgumentParser:
    """A command's real parser, caught as the command starts parsing."""
    caught = []

    def catch(self, *args, **kwargs):
        caught.append(self)
        raise LookupError  # stops the command here

    with (
        mock.patch.object(argparse.ArgumentParser, "parse_args", catch),
        mock.patch.object(argparse.ArgumentParser, "parse_intermixed_args", catch),
        contextlib.suppress(LookupError),
    ):
        main([])
    return caught[0]


def option_values(action: argparse.Action, pools: dict) -> st.SearchStrategy[list[str]]:
    """Values for one option: of its type or from `pools` by its dest, sometimes junk."""
    if action.nargs == 0:
        return st.just([])
    if action.choices:
        typed = st.sampled_from(list(action.choices))
    elif action.type is int:
        typed = (
            st.sampled_from(["-1", "0", "1", "2", "5", "30"])
            if action.dest in SLOW_WHEN_HUGE
            else INTS | st.integers(-2, 6).map(str)
        )
    elif action.type is float:
        typed = (
            FLOATS.filter(lambda v: v != "1e308")
            if action.dest in SLOW_WHEN_HUGE
            else FLOATS | st.floats(-1, 3).map(repr)
        )
    else:
        typed = pools.get(action.dest, JUNK)
    one = st.integers(0, 3).flatmap(lambda k: JUNK if k == 3 else typed)  # mostly typed
    if action.nargs == "+":
        return st.lists(one, min_size=1, max_size=3)
    return one.map(lambda value: [value])


@st.composite
def arguments(
    draw, parser: argparse.ArgumentParser, *usual: list, pools: dict = POOLS
) -> list[str]:
    """`usual` arguments (most of the time, each value one of those given), then a few of the
    parser's options with values drawn by type, or from `pools` by argparse dest."""
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    argv = (
        [draw(st.sampled_from(value)) if isinstance(value, list) else value for value in usual]
        if draw(st.integers(0, 9))
        else []
    )
    for action in draw(st.lists(st.sampled_from(options), max_size=5, unique=True)):
        argv += [draw(st.sampled_from(action.option_strings)), *draw(option_values(action, pools))]
    return argv


CONTENTS = st.one_of(
    st.binary(max_size=60),
    st.sampled_from(
        [
            b"",
            b"\n\n",
            GOOD_DE.encode(),
            GOOD_EN.encode(),
            b"drei\x00vier\n",
            b"gr\xfc\xdfe\n",
            bytes(range(256)),
            ("dreiundzwanzig " * 150).encode(),
            b"drei\r\nvier\r\n",
            b"\xef\xbb\xbfdrei\n",
            json.dumps(DIAGNOSIS).encode() + b"\n",
        ]
    ),
)


@pytest.fixture(scope="module")
def commands(tmp_path_factory):
    """The tiny trained run the commands are fuzzed against, and the parsers."""
    from conftest import trained_run

    return trained_run(tmp_path_factory.mktemp("commands"))


def run_command(
    main, argv: list, folder: Path, run: Path, stdin: bytes = b""
) -> tuple[int, str, str]:
    """A command in-process: (exit code, stdout, stderr); any exception fails the test."""

    def resolve(value: str) -> str:
        if not isinstance(value, File):
            return value
        return (
            str(run) if value == RUN else str(folder / value).replace(f"{folder}/<run>", str(run))
        )

    out, err = io.StringIO(), io.StringIO()
    home = os.getcwd()
    os.chdir(folder)  # relative names (junk values) land in the example's folder
    try:
        with (
            mock.patch.object(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin))),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            pytest.raises(SystemExit) as exit_code,
        ):
            main([resolve(value) for value in argv])
    finally:
        os.chdir(home)
    event(f"exit {exit_code.value.code}")  # pytest --hypothesis-show-statistics
    return exit_code.value.code, out.getvalue(), err.getvalue()


def assert_clean(prog: str, code: int, err: str, allowed: tuple[int, ...] = (0,)) -> None:
    """Exit 0 (or another `allowed` code), or 2 with one error line, the last thing said."""
    assert "Traceback" not in err, err
    if code == 2:
        errors = [line for line in err.splitlines() if ": error: " in line]
        assert len(errors) == 1 and errors[0].startswith(f"{prog}: error: "), err
        assert err.rstrip().endswith(errors[0]), err
    else:
        assert code in allowed, (code, err)


def run_files(run: Path) -> list[Path]:
    """What a run is made of: no command but nmt-train may change these."""
    return [run / name for name in ("recipe.yaml", "spm.model", "manifest.json", "metrics.csv")] + [
        *(run / "checkpoints").iterdir()
    ]


def example_folder(contents: tuple[bytes, bytes]) -> tempfile.TemporaryDirectory:
    """A fresh folder with the files the options name, "in" and "other" drawn."""
    holder = tempfile.TemporaryDirectory()
    folder = Path(holder.name)
    for name, data in (
        ("in", contents[0]),
        ("other", contents[1]),
        ("good.de", GOOD_DE.encode()),
        ("good.en", GOOD_EN.encode()),
        ("empty", b""),
        ("a-file", b""),
        ("diagnoses", json.dumps(DIAGNOSIS).encode() + b"\n"),
        ("bad-diagnoses", json.dumps({**DIAGNOSIS, "line": 99}).encode()),
    ):
        (folder / name).write_bytes(data)
    (folder / "folder").mkdir()
    (folder / "curves").mkdir()  # a run's folder whose metrics.csv is drawn
    (folder / "curves" / "metrics.csv").write_bytes(contents[1])
    return holder


COMMAND_FUZZ = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@COMMAND_FUZZ
@given(data=st.data(), contents=st.tuples(CONTENTS, CONTENTS), stdin=CONTENTS)
def test_translate_command_fuzzed(commands, data, contents, stdin):
    parser = parser_of(translate_main)
    argv = data.draw(arguments(parser, "-m", RUN, "-i", [File("in"), File("good.de")]))
    kept = {p: p.read_bytes() for p in run_files(commands)}
    with example_folder(contents) as name:
        code, out, err = run_command(translate_main, argv, Path(name), commands, stdin)
        assert_clean("nmt-translate", code, err, allowed=(0, 1) if "--self-check" in argv else (0,))
        assert {p: p.read_bytes() for p in run_files(commands)} == kept
        (commands / "decode.yaml").unlink(missing_ok=True)  # --tune's: each example alone
        args = parser.parse_args([str(a) for a in argv]) if code == 0 else None
        if args and not (args.tune or args.self_check):  # one output line per input line
            lines = (
                len(read_lines(Path(name) / args.input))
                if args.input
                else stdin.count(b"\n") + (not stdin.endswith(b"\n") and stdin != b"")
            )
            text = (Path(name) / args.output).read_text() if args.output else out
            assert text.count("\n") == lines * args.nbest, (text, err)


@COMMAND_FUZZ
@given(data=st.data(), contents=st.tuples(CONTENTS, CONTENTS))
def test_score_command_fuzzed(commands, data, contents):
    parser = parser_of(score_main)
    argv = data.draw(
        arguments(
            parser,
            "-r",
            [File("good.en")] * 3 + [File("in"), File("empty")],
            "-i",
            [File("good.de")] * 3 + [File("in"), File("empty")],
            "--samples",
            "2",
        )
    )
    kept = {p: p.read_bytes() for p in run_files(commands)}
    with example_folder(contents) as name:
        code, out, err = run_command(score_main, argv, Path(name), commands)
        assert_clean("nmt-score", code, err)
        assert {p: p.read_bytes() for p in run_files(commands)} == kept
        args = parser.parse_args([str(a) for a in argv]) if code == 0 else None
        if args and not args.curves:
            assert out.count("BLEU") >= len(args.input), out


@COMMAND_FUZZ
@given(data=st.data())
def test_average_command_fuzzed(commands, data):
    parser = parser_of(average_main)
    argv = data.draw(
        arguments(parser, "-m", RUN, pools={**POOLS, "output": st.sampled_from(NAMES)})
    )
    checkpoints = commands / "checkpoints"
    kept = {p: p.read_bytes() for p in checkpoints.iterdir()}
    with example_folder((b"", b"")) as name:
        code, out, err = run_command(average_main, argv, Path(name), commands)
    assert_clean("nmt-average", code, err)
    for path, data_before in kept.items():  # training's checkpoints are never touched
        assert path.read_bytes() == data_before, path
    made = [p for p in checkpoints.iterdir() if p not in kept]
    if code == 0:
        args = parser.parse_args([str(a) for a in argv])
        load_checkpoint(checkpoints / args.output)
    for path in made:
        path.unlink()


OVERRIDE_KEYS = [
    "name",
    "seed",
    "data.root",
    "data.format",
    "tokenizer.vocab_size",
    "model.hidden_size",
    "model.attention",
    "train.lr",
    "train.max_time",
    "train.keep_best",
    "decode.beam",
    "decode.min_len",
    "decode.top_p",
    "nokey",
    "model",
    "train.lr.x",
    "",
]
OVERRIDES = st.builds(
    lambda key, value: f"{key}={value}" if value is not None else key,
    st.sampled_from(OVERRIDE_KEYS),
    st.none() | JUNK | FLOATS | INTS | st.sampled_from(["[1, 2]", "{a: 1}", "5m", "luong-dot"]),
)
RECIPES = [File(name) for name in ("tiny.yaml", "in", "other", "empty", "missing", "folder")]
RUN_DIRS = [
    File(name) for name in ("new-run", "run", "folder", "a-file", "a-file/x", "user-folder")
] + [""]


@COMMAND_FUZZ
@given(data=st.data(), contents=st.tuples(CONTENTS, CONTENTS))
def test_train_command_fuzzed(commands, data, contents, monkeypatch):
    """nmt-train's arguments up to training itself, which is stubbed: recipe files, KEY=VALUE
    overrides, --run-dir, --resume and --overwrite, against a folder holding a run, a folder
    of the user's, a file and nothing."""
    import nmt.training as training

    def set_up_only(recipe, run_dir, resume=False, overwrite=False):
        training.prepare_run_dir(Path(run_dir), recipe, resume, overwrite)
        return training.TrainResult(Path(run_dir), 0, 0, 0.0, "bleu", 0.0, False)

    monkeypatch.setattr(training, "train", set_up_only)
    parser = parser_of(train_main)
    argv = data.draw(
        arguments(
            parser,
            [File("tiny.yaml")] * 4 + RECIPES,
            pools={**POOLS, "run_dir": st.sampled_from(RUN_DIRS)},
        )
    )
    argv += data.draw(st.lists(OVERRIDES, max_size=3))
    with example_folder(contents) as name:
        folder = Path(name)
        recipe = (commands / "recipe.yaml").read_text(encoding="utf-8")
        (folder / "tiny.yaml").write_text(recipe, encoding="utf-8")
        shutil.copytree(commands, folder / "run", ignore=shutil.ignore_patterns("cache"))
        (folder / "user-folder").mkdir()
        (folder / "user-folder" / "recipe.yaml").write_text("mine\n")
        code, out, err = run_command(train_main, argv, folder, commands)
        assert_clean("nmt-train", code, err)
        assert (folder / "user-folder" / "recipe.yaml").read_text() == "mine\n"


@settings(COMMAND_FUZZ, max_examples=100)
@given(data=st.data())
def test_serve_command_fuzzed(commands, data, monkeypatch):
    """nmt-serve's arguments up to serving, which is stubbed: every combination of its options
    starts a server whose defaults it would take, or is one error line."""
    pytest.importorskip("fastapi")
    import nmt.serving.app as app

    started = []
    monkeypatch.setattr(app, "serve", lambda served, host, port: started.append(served))
    parser = parser_of(serve_main)
    hosts = st.sampled_from(["127.0.0.1", "::1", "localhost", "0.0.0.0", "256.1.1.1", ""])
    argv = data.draw(arguments(parser, "-m", RUN, pools={**POOLS, "host": hosts}))
    with example_folder((b"", b"")) as name:
        code, out, err = run_command(serve_main, argv, Path(name), commands)
    assert_clean("nmt-serve", code, err)
    assert len(started) == (code == 0)
