"""The whole path through the three commands on a tiny corpus: train → translate → score."""

import contextlib
import dataclasses
import io
import json
import re
import shutil
import os
import subprocess
import sys
import typing

import pytest
import yaml

from nmt.cli import score_main, train_main, translate_main
from nmt.files import sha256_file
from nmt.translate import Translator

from conftest import ROOT


def run(main, argv, capsys):
    with pytest.raises(SystemExit) as code:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code.value.code, out, err


def test_train_translate_score(tiny_recipe, tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "runs" / "tiny"  # the default run directory, runs/NAME
    monkeypatch.chdir(tmp_path)
    code, out, err = run(
        train_main, [tiny_recipe, "train.max_steps=8", "train.valid_every=4"], capsys
    )
    assert code == 0, err
    assert "best dev bleu" in out
    for name in (
        "recipe.yaml",
        "manifest.json",
        "spm.model",
        "metrics.csv",
        "train.log",
        "checkpoints/best.json",
        "checkpoints/last.json",
    ):
        assert (run_dir / name).is_file(), name
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["provenance"]["train.max_steps"] == "override"
    assert manifest["provenance"]["model.embedding_size"] == "file"
    assert manifest["provenance"]["model.encoder_cell"] == "default"
    assert len(manifest["data"]) == 4 and all(len(h) == 64 for h in manifest["data"].values())
    if shutil.which("git") and (ROOT / ".git").exists():  # the code's commit, when a checkout
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True)
        assert manifest["git_commit"] == head.stdout.decode().strip()
    assert manifest["subwords"] == {"spm.model": sha256_file(run_dir / "spm.model")}
    assert manifest["parameters"] == Translator.from_run(run_dir).model.parameter_count > 0
    assert all(manifest["versions"][package] for package in ("torch", "sentencepiece", "sacrebleu"))
    metrics = (run_dir / "metrics.csv").read_text().splitlines()
    assert metrics[0].startswith("step,epoch,kind") and sum(",valid," in m for m in metrics) == 2
    trained_at = [int(m.split(",")[0]) for m in metrics if ",train," in m]
    assert trained_at == [3, 6]  # a row every train.log_every (3) updates
    rows = [line for line in (run_dir / "train.log").read_text().splitlines() if "loss" in line]
    logged = [
        (row.split(" INFO step ")[1].split()[0].rstrip(":"), "tokens/s" in row) for row in rows
    ]
    assert logged == [("3", True), ("4", False), ("6", True), ("8", False)]  # trained, validated
    assert "target tokens/s" not in err  # the console has them in the progress bar

    # A second run into the same directory is refused; --resume continues it.
    code, _, err = run(train_main, [tiny_recipe, "--run-dir", run_dir], capsys)
    assert code == 2 and "already holds a run" in err
    code, out, err = run(
        train_main,
        [
            tiny_recipe,
            "--run-dir",
            run_dir,
            "--resume",
            "train.max_steps=10",
            "train.valid_every=4",
            "train.patience=5",
        ],
        capsys,
    )
    assert code == 0, err
    assert "(10 steps" in out
    resumed = json.loads((run_dir / "manifest.json").read_text())
    assert not manifest["resumed"] and resumed == {**manifest, "resumed": resumed["resumed"]}
    [entry] = resumed["resumed"]  # what goes on from update 8: its code, packages and recipe
    assert entry["at_step"] == 8 and entry["versions"] == manifest["versions"]
    assert manifest["provenance"]["train.patience"] != "override"
    assert entry["provenance"]["train.patience"] == "override"

    corpus = tiny_recipe.parent / "corpus"
    source = (corpus / "test.de").read_text().splitlines()[:6]
    (tmp_path / "in.de").write_text("\n".join(source[:3] + [""] + source[3:]) + "\n")
    output = tmp_path / "out.en"
    code, out, err = run(
        translate_main, ["-m", run_dir, "--beam", 3, "-i", tmp_path / "in.de", "-o", output], capsys
    )
    assert code == 0, err
    lines = output.read_text().split("\n")
    assert len(lines) == 8 and lines[3] == "" and lines[-1] == ""
    # The command and the Python API agree.
    translator = Translator.from_run(run_dir)
    assert [h.text for h in translator.translate(source[:3], beam=3)] == lines[:3]

    code, out, err = run(
        translate_main,
        ["-m", run_dir, "-m", run_dir, "--beam", 3, "-i", tmp_path / "in.de"],
        capsys,
    )
    assert code == 0 and out.split("\n") == lines  # an ensemble of a model with itself

    code, out, err = run(
        translate_main, ["-m", run_dir, "--beam", 3, "--nbest", 2, "-i", tmp_path / "in.de"], capsys
    )
    assert code == 0, err
    nbest = out.splitlines()
    assert len(nbest) == 14 and nbest[0].startswith("0 ||| ") and nbest[-1].startswith("6 ||| ")

    def translate(*flags):
        """nmt-translate of in.de with the run and these flags: (exit code, stdout, stderr)."""
        return run(translate_main, ["-m", run_dir, "-i", tmp_path / "in.de", *flags], capsys)

    sampled = [translate("--sample", "--nbest", 3, "--seed", 4, "--top-k", 5) for _ in range(2)]
    assert sampled[0][0] == 0 and sampled[0][1] == sampled[1][1]
    assert len(sampled[0][1].splitlines()) == 21
    code, _, err = translate("--beam", 0)
    assert code == 2 and "--beam must be at least 1" in err

    # Each line's prefix (none where empty) begins its output: words the quickstart corpus
    # never has, so the model cannot say them unforced; lines without one translate as without
    # --prefix-file.
    prefixes = ["purple hat", "", "green boat", "", "", "", "wild fox"]
    (tmp_path / "prefix.en").write_text("\n".join(prefixes) + "\n")
    code, out, err = translate("--beta", 0.2, "--prefix-file", tmp_path / "prefix.en")
    assert code == 0, err
    forced = out.split("\n")
    code, out, err = translate("--beta", 0.2)
    unforced = out.split("\n")
    for number, prefix in enumerate(prefixes):
        if prefix:
            assert forced[number].startswith(prefix) and not unforced[number].startswith(prefix)
        else:
            assert forced[number] == unforced[number]

    attention, again = tmp_path / "attention.jsonl", tmp_path / "again.en"
    code, out, err = translate("-o", again, "--attention", attention)
    assert code == 0, err
    records = [json.loads(line) for line in attention.read_text().splitlines()]
    assert len(records) == 7 and records[3]["attention"] == []
    first = records[0]
    assert len(first["attention"]) == len(first["target"])
    assert all(len(row) == len(first["source"]) for row in first["attention"])
    assert abs(sum(first["attention"][0]) - 1) < 1e-3

    code, out, err = translate(
        "-o", again, "--plot-attention", tmp_path / "plots", "--plot-lines", 1, 4, 5
    )
    assert code == 0, err  # line 4 is empty: nothing to draw
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["line-1.png", "line-5.png"]
    diagnosed = tmp_path / "diagnose.jsonl"
    code, out, err = translate("-o", again, "--diagnose", diagnosed)
    assert code == 0, err
    entries = [json.loads(line) for line in diagnosed.read_text().splitlines()]
    assert [e["line"] for e in entries] == [1, 2, 3, 5, 6, 7]  # line 4 is empty
    assert all(
        set(e["flags"])
        <= {"under-translation", "over-translation", "length-ratio", "low-confidence"}
        for e in entries
    )
    assert (run_dir / "diagnostics.json").is_file()  # the dev set's norms, computed once
    (run_dir / "curves.png").unlink()
    code, out, err = run(score_main, ["--curves", run_dir], capsys)
    assert code == 0 and (run_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"

    code, out, err = run(
        translate_main,
        ["-m", run_dir, "--self-check", "--beam", 3, "--batch-size", 4, "-i", tmp_path / "in.de"],
        capsys,
    )
    assert code == 0, err
    assert "7 lines, 0 differences between batch size 1 and 4" in out

    code, out, err = run(
        translate_main,
        ["-m", run_dir, "--quantize", "int8", "--beam", 2, "-i", tmp_path / "in.de"],
        capsys,
    )
    assert code == 0, err
    assert len(out.splitlines()) == 7  # one line out per line in, int8 or not

    dev = tiny_recipe.parent / "corpus"
    code, out, err = run(
        translate_main,
        [
            "-m",
            run_dir,
            "--tune",
            "--dev-src",
            dev / "dev.de",
            "--dev-ref",
            dev / "dev.en",
            "--beams",
            1,
            2,
            "--alphas",
            0.5,
        ],
        capsys,
    )
    assert code == 0, err
    table = [row for row in out.splitlines()[1:] if not row.startswith("saved")]
    assert len(table) == 4  # greedy, then beam 2 with none, avg 0.5, gnmt 0.5
    bleus = [float(row.split()[3]) for row in table]
    assert bleus == sorted(bleus, reverse=True)
    best = table[0].split()
    saved = yaml.safe_load((run_dir / "decode.yaml").read_text())
    assert saved == {"beam": int(best[0]), "length_norm": best[1], "alpha": float(best[2])}
    assert Translator.from_run(run_dir).decode.beam == int(best[0])
    # A bare nmt-translate searches as decode.yaml says (beam 1 or 2, where the recipe's is 3,
    # so --nbest 3 alone is refused); flags still override it.
    in_de = tmp_path / "in.de"
    inputs = in_de.read_text().splitlines()
    code, out, err = run(translate_main, ["-m", run_dir, "-i", in_de], capsys)
    assert code == 0 and out.splitlines() == [
        h.text for h in Translator.from_run(run_dir).translate(inputs)
    ]
    code, out, err = run(translate_main, ["-m", run_dir, "--nbest", 3, "-i", in_de], capsys)
    assert code == 2 and f"needs decode.beam 3 or more (it is {best[0]})" in err, err
    code, out, err = run(
        translate_main, ["-m", run_dir, "--beam", 3, "--nbest", 3, "-i", in_de], capsys
    )
    assert code == 0 and len(out.splitlines()) == 3 * len(inputs)
    (run_dir / "decode.yaml").unlink()

    reference = tmp_path / "ref.en"
    reference.write_text("\n".join(lines[:3] + ["", "x", "y", "z"]) + "\n")
    report = tmp_path / "report.json"
    code, out, err = run(score_main, ["-r", reference, "-i", output, "--json", report], capsys)
    assert code == 0, err
    assert "BLEU" in out and "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp" in out
    assert json.loads(report.read_text())["systems"][str(output)]["metrics"][0]["name"] == "BLEU"

    # A reader that goes away early (| head -1) ends the command quietly.
    (tmp_path / "many.de").write_text((source[0] + "\n") * 3000)
    piped = subprocess.run(
        [
            "bash",
            "-c",
            f"set -o pipefail; {sys.executable} -m nmt translate "
            f"-m {run_dir} --beam 1 < {tmp_path / 'many.de'} | head -1",
        ],
        capture_output=True,
        text=True,
    )
    assert piped.returncode == 0 and len(piped.stdout.splitlines()) == 1
    assert "Traceback" not in piped.stderr and "Error" not in piped.stderr

    # stdin → stdout, as in a shell pipe.
    monkeypatch.setattr(
        sys, "stdin", io.TextIOWrapper(io.BytesIO("".join(s + "\n" for s in source[:2]).encode()))
    )
    code, out, err = run(translate_main, ["-m", run_dir, "--beam", 1], capsys)
    assert code == 0, err
    greedy = [h.text for h in translator.translate(source[:2], beam=1)]
    assert out.splitlines() == greedy


def test_user_errors_are_one_line_with_exit_code_2(tiny_recipe, tmp_path, capsys):
    code, _, err = run(train_main, [tiny_recipe, "model.hiden_size=3"], capsys)
    assert code == 2
    assert err.strip() == (
        "nmt-train: error: override model.hiden_size: unknown key "
        "model.hiden_size; did you mean model.hidden_size?"
    )
    code, _, err = run(translate_main, ["-m", tmp_path], capsys)
    assert code == 2 and "not an nmt run directory" in err and len(err.splitlines()) == 1
    code, _, err = run(score_main, ["-r", tmp_path / "missing", "-i", tiny_recipe], capsys)
    assert code == 2 and "missing" in err


def test_console_scripts_are_installed():
    """The five commands the README uses are entry points of the installed package (a typo in
    setup.cfg would break them all), and `python -m nmt` reaches the same functions."""
    from importlib.metadata import entry_points

    import nmt.cli

    installed = {e.name: e for e in entry_points(group="console_scripts") if e.name[:4] == "nmt-"}
    for command in ("train", "translate", "score", "average", "serve"):
        assert installed[f"nmt-{command}"].load() is getattr(nmt.cli, f"{command}_main")
    result = subprocess.run(
        [sys.executable, "-m", "nmt", "score", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "sacreBLEU" in result.stdout


@pytest.mark.parametrize(
    "call, whole_program",
    [
        ("from nmt.cli import translate_main; translate_main()", True),  # a console script
        ("from nmt.cli import main; main()", True),  # python -m nmt
        ("from nmt.cli import translate_main; translate_main(sys.argv[1:])", False),  # an API
        ("from nmt.cli import main; main(sys.argv[1:])", False),
    ],
)
def test_a_command_run_as_a_program_skips_the_interpreters_teardown(
    small_run, tmp_path, call, whole_program
):
    """A command that is the whole process ends with its outputs written and closed but
    without the interpreter's teardown of torch (~0.4 s, as much as a short translation), both
    as a console script and as `python -m nmt`; called with arguments from Python, it exits
    as any function would (SystemExit), so the caller's own cleanup still runs. Only a command
    that is the whole process freezes what it loaded out of the garbage collector's passes
    (`_loading`); a caller's collector is left as it was."""
    output = tmp_path / "out.en"
    source = tmp_path / "in.de"
    source.write_text("Ein Hund läuft.\n", encoding="utf-8")
    argv = ["-m", str(small_run), "--beam", "1", "-i", str(source), "-o", str(output)]
    if "main(" in call and "translate_main" not in call:
        argv = ["translate", *argv]
    script = (
        "import atexit, gc, sys\n"
        "import nmt.cli as cli\n"
        "exit_now = cli._exit_now\n"
        "def watched(code):\n"
        "    print('collector', gc.get_freeze_count() > 0, gc.isenabled())\n"
        "    exit_now(code)\n"
        "cli._exit_now = watched\n"
        "atexit.register(lambda: print('teardown', gc.get_freeze_count() > 0, gc.isenabled()))\n"
        f"{call}\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    expected = "collector True True" if whole_program else "teardown False True"
    assert result.stdout.splitlines()[-1] == expected
    assert output.read_text(encoding="utf-8").count("\n") == 1


def test_loading_pauses_the_collector_and_freezes_only_in_a_process_the_command_owns(monkeypatch):
    """`_loading` touches the garbage collector only when the command is the whole process,
    and gives it back running (with what was loaded frozen) even when loading fails or is
    interrupted; garbage
    that loading made (a quantized model's float layers, in cycles) is collected, not frozen
    for the life of the process."""
    import gc
    import weakref

    import nmt.cli as cli
    from nmt.errors import NmtError

    class Layer:  # stands for a module in a reference cycle, as torch's modules are
        pass

    before, enabled = gc.get_freeze_count(), gc.isenabled()
    monkeypatch.setattr(cli, "_owns_process", False)
    with cli._loading():
        assert gc.isenabled()
    assert gc.isenabled() and gc.get_freeze_count() == before
    monkeypatch.setattr(cli, "_owns_process", True)
    try:
        with cli._loading():
            assert not gc.isenabled()
            kept, dropped = Layer(), Layer()
            kept.me, dropped.me = kept, dropped  # both in cycles; only `kept` stays referenced
            dropped_ref = weakref.ref(dropped)
            del dropped
        assert dropped_ref() is None  # collected on the way out, not frozen
        assert gc.isenabled() and gc.get_freeze_count() > before
        frozen = gc.get_freeze_count()
        with pytest.raises(NmtError, match="damaged"), cli._loading():
            raise NmtError("a damaged checkpoint")
        assert gc.isenabled() and gc.get_freeze_count() >= frozen
        with pytest.raises(KeyboardInterrupt), cli._loading():  # Ctrl-C while loading
            raise KeyboardInterrupt
        assert gc.isenabled()
    finally:
        if before == 0:
            gc.unfreeze()
        if not enabled:
            gc.disable()


@pytest.mark.parametrize(
    "command, argv",
    [
        ("translate_main", ["-m", "missing-run", "-i", "/dev/null"]),
        ("score_main", ["-r", "REF", "-i", "HYP", "-s", "SRC", "--analyze", "-m", "missing-run"]),
        ("serve_main", ["-m", "missing-run"]),
        ("train_main", ["missing-recipe.yaml"]),
    ],
)
def test_commands_load_inside_the_collector_pause(monkeypatch, tmp_path, command, argv):
    """nmt-translate, nmt-score --analyze and nmt-serve load their model inside `_loading`
    (nmt-serve imports its web stack in one too), and nmt-train imports PyTorch in one; each
    then stops on a missing file."""
    import nmt.cli as cli
    from nmt.translate import Translator

    if command == "serve_main":
        pytest.importorskip("fastapi")
    entered: list[bool] = []
    active = [False]
    real = cli._loading

    @contextlib.contextmanager
    def recorded():
        with real():
            entered.append(True)
            active[0] = True
            try:
                yield
            finally:
                active[0] = False

    loaded_inside: list[bool] = []
    real_from_runs = Translator.from_runs.__func__

    def from_runs(cls, *args, **kwargs):
        loaded_inside.append(active[0])
        return real_from_runs(cls, *args, **kwargs)

    monkeypatch.setattr(cli, "_loading", recorded)
    monkeypatch.setattr(Translator, "from_runs", classmethod(from_runs))
    monkeypatch.chdir(tmp_path)
    for name in ("REF", "HYP", "SRC"):
        (tmp_path / name).write_text("a\n", encoding="utf-8")
    with pytest.raises(SystemExit) as stop:
        getattr(cli, command)(argv)
    assert stop.value.code == 2
    assert entered == [True] * (2 if command == "serve_main" else 1)
    assert loaded_inside == ([] if command == "train_main" else [True])


# The options of nmt-translate that are not keys of DecodeConfig, written out in nmt/cli.py.
HAND_WRITTEN = {
    "-h",
    "--help",
    "-m",
    "--model",
    "--checkpoint",
    "-i",
    "--input",
    "-o",
    "--output",
    "--nbest",
    "--prefix-file",
    "--scores",
    "--ref",
    "--attention",
    "--plot-attention",
    "--plot-lines",
    "--diagnose",
    "--self-check",
    "--tune",
    "--dev-src",
    "--dev-ref",
    "--beams",
    "--alphas",
    "--device",
    "--quantize",
}


def listed_options(help_text: str) -> list[str]:
    """The option strings `--help` lists, in order (not those its explanations mention)."""
    return [
        word.rstrip(",")
        for line in help_text.splitlines()
        if re.match(r"  -", line)
        for word in line.strip().split("  ")[0].split()
        if word.startswith("-")
    ]


def decode_group(parser):
    return next(group for group in parser._action_groups if group.title == "decoding options")


def test_translate_help_lists_exactly_the_decode_options_from_their_metadata(capsys):
    from nmt.cli import _translate_parser
    from nmt.recipe import DecodeConfig

    code, out, _ = run(translate_main, ["--help"], capsys)
    assert code == 0
    fields = dataclasses.fields(DecodeConfig)
    flags = [f.metadata["flag"] or "--" + f.name.replace("_", "-") for f in fields]
    assert "--beta" in flags and "--length-norm" in flags and "--sample" in flags
    listed = listed_options(out)
    assert len(listed) == len(set(listed)) and set(listed) == HAND_WRITTEN | set(flags)
    actions = decode_group(_translate_parser())._group_actions
    assert [a.dest for a in actions] == [f.name for f in fields]  # one flag per field
    hints = typing.get_type_hints(DecodeConfig)
    for action, f, flag in zip(actions, fields, flags):
        assert action.option_strings == [flag]
        assert action.choices == f.metadata["choices"]
        assert action.type is (None if hints[f.name] in (bool, str) else hints[f.name])
        assert action.nargs == (0 if hints[f.name] is bool else None) and action.default is None
        default = str(f.default).lower() if hints[f.name] is bool else f.default
        assert action.help.split()[0] == f.metadata["help"].split()[0]
        assert action.help.endswith(f"(recipe default {default})"), action.help


def test_a_new_decode_field_becomes_a_flag_without_a_cli_edit(monkeypatch, tmp_path, capsys):
    import nmt.cli
    from nmt.errors import NmtError
    from nmt.recipe import DecodeConfig, option

    extended = dataclasses.make_dataclass(
        "Extended",
        [
            ("new_knob", int, option(3, "A new knob. Said at length.", min=0)),
            ("louder", bool, option(False, "Louder than `new_knob`.", flag="--loud")),
        ],
        bases=(DecodeConfig,),
        frozen=True,
    )
    monkeypatch.setattr(nmt.cli, "DecodeConfig", extended)
    code, out, _ = run(translate_main, ["--help"], capsys)
    assert code == 0
    assert listed_options(out)[-2:] == ["--new-knob", "--loud"]  # the last fields, listed last
    assert [a.dest for a in decode_group(nmt.cli._translate_parser())._group_actions] == [
        f.name for f in dataclasses.fields(extended)
    ]
    assert "--new-knob N" in out and "A new knob (recipe default 3)" in out
    assert "Louder than --new-knob (recipe default false)" in out

    seen = {}

    class Stub:  # a Translator that records what the command asks of it
        def settings(self, nbest, labels, **options):
            seen.update(nbest=nbest, labels=labels, options=options)
            raise NmtError("stub: stop here")

    monkeypatch.setattr(Translator, "from_runs", classmethod(lambda cls, *args: Stub()))
    code, _, err = run(
        translate_main,
        ["-m", tmp_path, "--new-knob", 7, "--loud", "--beta", 0.5, "--nbest", 2],
        capsys,
    )
    assert code == 2 and "stub: stop here" in err
    names = [f.name for f in dataclasses.fields(extended)]
    assert seen["options"] == {
        **dict.fromkeys(names),
        "new_knob": 7,
        "louder": True,
        "coverage_penalty": 0.5,
    }
    assert seen["nbest"] == 2 and seen["labels"]["nbest"] == "--nbest"
    assert seen["labels"]["new_knob"] == "--new-knob" and seen["labels"]["louder"] == "--loud"
    assert seen["labels"]["coverage_penalty"] == "--beta"


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    from conftest import trained_run

    return trained_run(tmp_path_factory.mktemp("cli"))


@pytest.fixture
def source_file(small_run, tmp_path):
    """The tiny corpus's test sources with an empty line among them, as in.de."""
    lines = (small_run.parent / "corpus" / "test.de").read_text(encoding="utf-8").splitlines()
    path = tmp_path / "in.de"
    path.write_text("\n".join(lines[:3] + [""] + lines[3:8]) + "\n", encoding="utf-8")
    return path


def test_scores_are_each_outputs_score_tab_its_text(small_run, source_file, capsys):
    lines = source_file.read_text(encoding="utf-8").splitlines()
    code, out, err = run(
        translate_main, ["-m", small_run, "--scores", "--beam", 2, "-i", source_file], capsys
    )
    assert code == 0, err
    expected = Translator.from_run(small_run).translate(lines, beam=2)
    rows = [row.split("\t") for row in out.splitlines()]
    assert [text for _, text in rows] == [h.text for h in expected]
    assert [float(score) for score, _ in rows] == [
        pytest.approx(h.score, abs=1e-4) for h in expected
    ]
    assert rows[3] == ["0.0000", ""]  # the empty line


def test_ref_prints_the_report_and_keeps_stdout_for_the_translations(
    small_run, source_file, tmp_path, capsys
):
    """--ref FILE: the report after translating; with -o on stdout, without -o on stderr, so
    that a pipe gets the translations only."""
    from nmt.scoring.metrics import corpus_bleu

    reference = small_run.parent / "corpus" / "test.en"
    refs = reference.read_text(encoding="utf-8").splitlines()
    refs = refs[:3] + [""] + refs[3:8]
    (tmp_path / "ref.en").write_text("\n".join(refs) + "\n", encoding="utf-8")
    flags = ["-m", small_run, "-i", source_file, "--ref", tmp_path / "ref.en"]
    code, out, err = run(translate_main, [*flags, "-o", tmp_path / "out.en"], capsys)
    assert code == 0, err
    outputs = (tmp_path / "out.en").read_text(encoding="utf-8").splitlines()
    assert "nrefs:1|case:mixed|eff:no|tok:13a" in out
    bleu = re.search(r"BLEU\S*\s*=?\s*([0-9.]+)", out)
    assert bleu and float(bleu.group(1)) == pytest.approx(corpus_bleu(outputs, refs), abs=0.01)
    code, out, err = run(translate_main, flags, capsys)
    assert code == 0 and out.splitlines() == outputs
    assert "nrefs:1|case:mixed|eff:no|tok:13a" in err


def test_self_check_exits_1_naming_each_difference(small_run, source_file, capsys, monkeypatch):
    """A search whose results depend on the batch (simulated: scores moved in batches) is
    reported line by line on stderr, counted on stdout, and exits 1."""
    real_nbest = Translator.nbest

    def batch_dependent(self, lines, *args, **options):
        found = real_nbest(self, lines, *args, **options)
        if options.get("batch_size") != 1:
            for hyps, line in zip(found, lines):
                for h in hyps if line.strip() else []:
                    h.score += 1e-3
        return found

    monkeypatch.setattr(Translator, "nbest", batch_dependent)
    flags = ["-m", small_run, "--self-check", "--batch-size", 4, "-i", source_file]
    code, out, err = run(translate_main, flags, capsys)
    assert code == 1
    differences = int(re.search(r"(\d+) differences", out).group(1))
    assert differences == 8  # every line but the empty one
    assert (
        len([e for e in err.splitlines() if e.startswith("nmt-translate: self-check: line")]) == 8
    )


def test_self_check_reads_the_first_200_lines(small_run, tmp_path, capsys, monkeypatch):
    """Beam search runs twice over each checked line: a long input is sampled, not all run."""
    checked = []
    monkeypatch.setattr(
        Translator, "self_check", lambda self, lines, **_: checked.extend(lines) or []
    )
    long_input = tmp_path / "long.de"
    long_input.write_text("".join(f"Zeile {i}\n" for i in range(205)))
    code, out, err = run(
        translate_main, ["-m", small_run, "--self-check", "-i", long_input], capsys
    )
    assert code == 0, err
    assert checked == [f"Zeile {i}" for i in range(200)] and out.startswith("self-check: 200 lines")


def test_an_interactive_line_is_answered_while_stdin_stays_open(small_run):
    """From a pipe that is still open, the line typed so far is translated at once (its chunk
    ends when no more input is waiting), not when a chunk fills or the input ends."""
    import select

    process = subprocess.Popen(
        [sys.executable, "-m", "nmt", "translate", "-m", str(small_run), "--beam", "1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        process.stdin.write("Ein Hund läuft.\n".encode())
        process.stdin.flush()
        ready, _, _ = select.select([process.stdout], [], [], 120)
        assert ready, "no answer while stdin is open"
        answer = process.stdout.readline().decode().rstrip("\n")
        assert (
            answer == Translator.from_run(small_run).translate(["Ein Hund läuft."], beam=1)[0].text
        )
    finally:
        process.stdin.close()
        assert process.wait(timeout=120) == 0


@pytest.mark.parametrize("nbest", [1, 3])
def test_the_same_seed_gives_the_same_samples_from_stdin_in_chunks_or_a_file(
    small_run, tmp_path, capsys, monkeypatch, nbest
):
    """Reading stdin, each chunk ends when no more input is waiting (an interactive pipe can
    deliver every line on its own); samples are seeded by line number, so they equal those of
    the whole file at once, at any batch size."""
    import nmt.cli

    source = (small_run.parent / "corpus" / "test.de").read_text(encoding="utf-8")
    (tmp_path / "in.de").write_text(source, encoding="utf-8")
    flags = ["-m", small_run, "--sample", "--seed", 7, "--nbest", nbest]
    code, whole, err = run(translate_main, [*flags, "-i", tmp_path / "in.de"], capsys)
    assert code == 0, err
    monkeypatch.setattr(nmt.cli, "_input_waiting", lambda stream: False)  # one line per chunk
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(source.encode())))
    code, streamed, err = run(translate_main, [*flags, "--batch-size", 4], capsys)
    assert code == 0, err
    # The same words; n-best lines end in a score, which batching moves by float rounding.
    split = lambda out: [line.rsplit(" ||| ", 1) for line in out.splitlines()]  # noqa: E731
    assert [row[0] for row in split(streamed)] == [row[0] for row in split(whole)]
    for streamed_row, whole_row in zip(split(streamed), split(whole)):
        if nbest > 1:
            assert float(streamed_row[1]) == pytest.approx(float(whole_row[1]), abs=1e-3)
    assert len(whole.splitlines()) == nbest * len(source.splitlines())
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(source.encode())))
    code, reseeded, err = run(translate_main, [*flags[:4], 8, *flags[5:]], capsys)
    assert code == 0 and reseeded != whole  # another seed: other samples


def test_score_analyze_on_the_command_line(small_run, tmp_path, capsys):
    """nmt-score --analyze -m RUN -s SRC [--beams]: the shares of search, model and limit
    errors (summing to the differing sentences), and with --beams one row per beam width
    whose BLEU is that beam's; without -s it is a one-line error."""
    from nmt.scoring.metrics import corpus_bleu

    corpus = small_run.parent / "corpus"
    sources = (corpus / "test.de").read_text(encoding="utf-8").splitlines()[:8]
    refs = (corpus / "test.en").read_text(encoding="utf-8").splitlines()[:8]
    translator = Translator.from_run(small_run)
    greedy = [h.text for h in translator.translate(sources, beam=1)]
    for name, lines in (("src.de", sources), ("ref.en", refs), ("greedy.en", greedy)):
        (tmp_path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    flags = ["-r", tmp_path / "ref.en", "-i", tmp_path / "greedy.en", "--analyze", "-m", small_run]
    code, out, err = run(score_main, [*flags, "-s", tmp_path / "src.de", "--beams", 1, 2], capsys)
    assert code == 0, err
    assert f"error analysis of {tmp_path / 'greedy.en'} (length normalization" in out
    head = re.search(
        r"(\d+) sentences, (\d+) differ.*?(\d+) search.*?(\d+) model.*?(\d+) limit", out
    )
    assert head, out
    total, differ, search, model, limit = map(int, head.groups())
    assert total == 8 and search + model + limit == differ
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+[12] +\d", line)]
    assert [int(row[0]) for row in rows] == [1, 2]
    assert float(rows[0][1]) == pytest.approx(corpus_bleu(greedy, refs), abs=0.01)
    assert sum(float(share.rstrip("%")) for share in rows[0][3:6]) in (
        0.0,
        pytest.approx(100, abs=0.2),
    )
    code, _, err = run(score_main, flags, capsys)
    assert code == 2 and "--analyze needs -m RUN_DIR and -s SOURCE" in err


def test_already_segmented_input_gets_a_warning(small_run, tmp_path, capsys):
    """Input that looks like SentencePiece pieces (▁) is translated, with a warning on stderr
    that nmt segments plain text itself; plain text gets none."""
    (tmp_path / "pieces.de").write_text("\u2581ein \u2581hund \u2581läuft\n\u2581zwei\n")
    (tmp_path / "plain.de").write_text("ein hund läuft\nzwei\n")
    code, out, err = run(translate_main, ["-m", small_run, "-i", tmp_path / "pieces.de"], capsys)
    assert code == 0 and len(out.splitlines()) == 2
    assert "looks already segmented" in err
    code, out, err = run(translate_main, ["-m", small_run, "-i", tmp_path / "plain.de"], capsys)
    assert code == 0 and "segmented" not in err


def test_search_flags_reach_the_search_and_shape_its_outputs(
    small_run, source_file, capsys, monkeypatch
):
    """Each search flag reaches the search (the flags' parsing is checked above; this is the
    way on from the settings to the search); those that shape outputs here visibly do."""
    import nmt.translate

    calls = []

    def spy(name):
        real = getattr(nmt.translate, name)

        def recorded(*args, **kwargs):
            found = real(*args, **kwargs)
            calls.append((name, args, kwargs, found))
            return found

        monkeypatch.setattr(nmt.translate, name, recorded)

    for name in ("beam_search", "greedy_search", "sample"):
        spy(name)

    def searched(*flags):
        calls.clear()
        code, out, err = run(translate_main, ["-m", small_run, "-i", source_file, *flags], capsys)
        assert code == 0, err
        assert len(calls) == 1  # the 8 non-empty lines fit one batch
        name, args, kwargs, found = calls[0]
        return name, kwargs, [h.tokens for hyps in found for h in hyps], out

    has_repeats = lambda tokens: len(set(tokens)) < len(tokens)  # noqa: E731
    _, _, outputs, _ = searched("--beam", 3)
    assert any(has_repeats(tokens) for tokens in outputs)  # the case the rule below removes
    assert max(len(tokens) for tokens in outputs) > 4  # longer than --max-len-b 2 below
    _, kwargs, outputs, _ = searched("--beam", 3, "--no-repeat-ngram", 1)
    assert not any(has_repeats(tokens) for tokens in outputs)
    _, _, outputs, _ = searched("--beam", 3, "--max-len-a", 0, "--max-len-b", 2)
    assert max(len(tokens) for tokens in outputs) == 2
    # The barely trained model never ends early, so --min-len cannot show in its outputs (the
    # rule itself is tested in test_search.py); it must reach the search's rules.
    _, kwargs, _, _ = searched("--beam", 3, "--min-len", 6, "--no-repeat-ngram", 2)
    assert (kwargs["rules"].min_len, kwargs["rules"].no_repeat_ngram) == (6, 2)
    name, kwargs, _, _ = searched("--beam", 3, "--stopping", "first", "--beta", 0.3)
    assert name == "beam_search" and kwargs["stopping"] == "first"
    assert kwargs["coverage_penalty"] == 0.3
    name, kwargs, _, _ = searched("--beam", 3, "--length-norm", "avg", "--alpha", 0.25)
    assert (kwargs["length_norm"], kwargs["alpha"]) == ("avg", 0.25)
    name, _, greedy, greedy_out = searched("--beam", 1)
    assert name == "greedy_search"
    name, _, top_1, top_1_out = searched("--sample", "--top-k", 1, "--seed", 5)
    assert name == "sample" and top_1 == greedy and top_1_out == greedy_out


def test_stdin_is_translated_in_bounded_chunks_reading_no_further(small_run, capsys, monkeypatch):
    """From a pipe that never runs dry, stdin is translated in chunks of 16 batches, and a chunk
    is translated before the lines after it are read: memory stays bounded however long the
    input; the outputs are those of the whole input at once."""
    import nmt.cli

    lines = [f"zeile {i} mit drei vier" for i in range(100)]
    data = ("\n".join(lines) + "\n").encode()
    stdin = io.TextIOWrapper(io.BytesIO(data))
    monkeypatch.setattr(sys, "stdin", stdin)
    monkeypatch.setattr(nmt.cli, "_input_waiting", lambda stream: True)
    seen = []
    real_nbest = Translator.nbest

    def recorded(self, chunk, *args, **kwargs):
        seen.append((len(chunk), stdin.buffer.tell()))
        return real_nbest(self, chunk, *args, **kwargs)

    monkeypatch.setattr(Translator, "nbest", recorded)
    code, out, err = run(translate_main, ["-m", small_run, "--beam", 1, "--batch-size", 2], capsys)
    assert code == 0, err
    assert [size for size, _ in seen] == [32, 32, 32, 4]
    assert seen[0][1] == len(("\n".join(lines[:32]) + "\n").encode())  # nothing read ahead
    monkeypatch.undo()
    expected = Translator.from_run(small_run).translate(lines, beam=1)
    assert out.splitlines() == [h.text for h in expected]


def test_score_with_several_references(tmp_path, capsys):
    """Each -r is one more reference set: the scores are sacreBLEU's with all of them (nrefs:2),
    higher here than with either alone; a set of another length is refused, naming it."""
    import sacrebleu

    hyps = ["a cat sits on the mat", "the dog runs"]
    refs = [["the cat sits on the mat", "a dog runs fast"], ["a cat is on the mat", "the dog runs"]]
    files = []
    for name, lines in (("hyp", hyps), ("ref1", refs[0]), ("ref2", refs[1])):
        files.append(tmp_path / f"{name}.en")
        files[-1].write_text("\n".join(lines) + "\n")
    hyp, ref1, ref2 = files
    code, out, err = run(
        score_main, ["-r", ref1, "-r", ref2, "-i", hyp, "--json", tmp_path / "s.json"], capsys
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "s.json").read_text())["systems"][str(hyp)]["metrics"]
    scores = {m["name"]: m for m in metrics}
    assert scores["BLEU"]["score"] == pytest.approx(sacrebleu.corpus_bleu(hyps, refs).score, 1e-3)
    assert scores["chrF"]["score"] == pytest.approx(sacrebleu.corpus_chrf(hyps, refs).score, 1e-3)
    assert scores["TER"]["score"] == pytest.approx(sacrebleu.corpus_ter(hyps, refs).score, 1e-3)
    assert all(m["signature"].startswith("nrefs:2|") for m in metrics)
    for alone in refs:
        assert scores["BLEU"]["score"] > sacrebleu.corpus_bleu(hyps, [alone]).score
    ref2.write_text("one line\n")
    code, _, err = run(score_main, ["-r", ref1, "-r", ref2, "-i", hyp], capsys)
    assert code == 2 and str(ref2) in err and "1 line" in err, err


def test_plot_attention_draws_every_non_empty_line_by_default(
    small_run, source_file, tmp_path, capsys
):
    """Without --plot-lines, one heatmap per translated line, named by its line number; the
    empty line 4 has nothing to draw."""
    plots = tmp_path / "attention"
    flags = ["-m", small_run, "--beam", 1, "-i", source_file, "--plot-attention", plots]
    code, _, err = run(translate_main, flags, capsys)
    assert code == 0, err
    assert sorted(p.name for p in plots.iterdir()) == [
        f"line-{n}.png" for n in (1, 2, 3, 5, 6, 7, 8, 9)
    ]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in plots.iterdir())


def test_output_length_limits_scale_with_the_sources_subwords(small_run, source_file):
    """max_len_a · |source subwords| + max_len_b, the source's appended EOS not counted."""
    import torch

    from nmt.recipe import DecodeConfig, check_decoding
    from nmt.translate import length_limits

    assert length_limits(DecodeConfig(max_len_a=2, max_len_b=1), torch.tensor([4])).tolist() == [7]
    assert length_limits(DecodeConfig(max_len_a=1.5, max_len_b=1), torch.tensor([4])).tolist() == [
        5
    ]
    for a, b in ((1e308, 10**30), (1.5, 10**400), (1e308, 10**308)):  # any size: no overflow
        huge = DecodeConfig(max_len_a=a, max_len_b=b)
        check_decoding(huge, "option")
        assert length_limits(huge, torch.tensor([1, 4])).tolist() == [2**62, 2**62]
    translator = Translator.from_run(small_run)
    lines = [line for line in source_file.read_text(encoding="utf-8").splitlines() if line]
    sources = translator.tokenizer.encode_source(lines)
    found = translator.nbest(lines, beam=3, max_len_a=1, max_len_b=1)
    lengths = [(len(hyps[0].tokens), len(source) + 1) for hyps, source in zip(found, sources)]
    assert all(output <= source for output, source in lengths), lengths
    assert any(output == source for output, source in lengths)  # the untrained model runs on
    assert len({source for _, source in lengths}) > 1  # limits of several sizes were tried


INTERRUPT_AT = {  # where the Ctrl-C lands: the third batch's search, or inside -o's write
    "search": (
        "search, calls = t.Translator._search, []\n"
        "def interrupted(self, *args, **kwargs):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 3:\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "    return search(self, *args, **kwargs)\n"
        "t.Translator._search = interrupted\n"
    ),
    "write": (  # between writing the temporary file's bytes and making them durable
        "fsync = os.fsync\n"
        "def interrupted(fd):\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    fsync(fd)\n"
        "os.fsync = interrupted\n"
    ),
}


@pytest.mark.parametrize("where, inter_threads", [("search", "1"), ("search", "2"), ("write", "1")])
def test_ctrl_c_while_translating_exits_130_and_keeps_the_earlier_output(
    small_run, tmp_path, where, inter_threads
):
    """Ctrl-C in the middle of a translation (at its third batch, from inside the search, so
    it is sure to land there; or inside the write of `-o`) ends nmt-translate with 130, whether
    the batches are searched one at a time or two at once, and `-o`'s earlier file stays as it
    was, with nothing else left beside it."""
    lines = (small_run.parent / "corpus" / "train.de").read_text(encoding="utf-8").splitlines()
    source, output = tmp_path / "in.de", tmp_path / "out.en"
    source.write_text("\n".join(lines[:200]) + "\n", encoding="utf-8")
    output.write_text("an earlier translation\n", encoding="utf-8")
    script = (
        "import os, signal, nmt.translate as t\n"
        + INTERRUPT_AT[where]
        + "from nmt.cli import translate_main; translate_main()\n"
    )
    argv = ["-m", small_run, "-i", source, "-o", output, "--beam", "1", "--batch-size", "4"]
    result = subprocess.run(
        [sys.executable, "-c", script, *map(str, argv), "--inter-threads", inter_threads],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
        timeout=300,
    )
    assert result.returncode == 130, result.stderr
    assert "nmt-translate: interrupted" in result.stderr and "Traceback" not in result.stderr
    assert output.read_text(encoding="utf-8") == "an earlier translation\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.de", "out.en"]
