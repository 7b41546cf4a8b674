"""The shipped scripts: every .py file parses on the oldest supported Python, and the Multi30k
download (data/get_multi30k.py) works against a local mirror, offline."""

from __future__ import annotations

import gzip
import http.server
import importlib.util
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import TINY_RECIPE, write_slice

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "data" / "get_multi30k.py"


def _ruff() -> list[str]:
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    if shutil.which("ruff"):
        return [shutil.which("ruff")]
    pytest.skip("needs ruff (pip install -e '.[test]')")


def test_shipped_python_files_parse_as_python_3_10_and_pass_pyflakes():
    """The check of .ci/run, with pyproject.toml's [tool.ruff] (target-version py310)."""
    ruff = _ruff()
    result = subprocess.run(
        [*ruff, "check", "--no-cache", "nmt", "tests", "data", "benchmarks", "docs"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # ... and the configuration really checks 3.10's grammar: 3.12-only syntax is reported.
    snippet = subprocess.run(
        [
            *ruff,
            "check",
            "--no-cache",
            "--config",
            str(ROOT / "pyproject.toml"),
            "--stdin-filename",
            "snippet.py",
            "-",
        ],
        input="x = f\"{'\\n'}\"\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert snippet.returncode == 1 and "Python 3.10" in snippet.stdout, snippet.stdout


@pytest.fixture
def get_multi30k():
    """The script as a module (loaded here, not at collection, so that the checks above run even
    where it does not import)."""
    spec = importlib.util.spec_from_file_location("get_multi30k", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# What data/README.md promises, in the order fetched.
NAMES = [
    f"{split}.{lang}"
    for split in ("train", "val", "test_2016_flickr")
    for lang in ("de", "en", "fr", "cs")
]


def _text(name: str) -> bytes:
    return "".join(f"{name} Satz {i}: Größe ✓\n" for i in range(3 + len(name))).encode()


@pytest.fixture
def mirror(monkeypatch):
    """A Multi30k mirror on 127.0.0.1: `files` maps NAME.gz to bytes (absent: 404); names in
    `truncated` announce their full length but the connection closes halfway."""
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    files = {f"{name}.gz": gzip.compress(_text(name)) for name in NAMES}
    truncated: set[str] = set()
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            name = self.path.rsplit("/", 1)[-1]
            requests.append(name)
            if name not in files:
                self.send_error(404)
                return
            body = files[name]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if name in truncated else body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/multi30k/raw/", files, truncated, requests
    server.shutdown()
    server.server_close()


def test_get_multi30k_writes_every_file_and_a_rerun_fetches_only_the_missing(
    tmp_path, mirror, capsys, get_multi30k
):
    url, _, _, requests = mirror
    target = tmp_path / "multi30k"
    assert get_multi30k.main([str(target), "--base-url", url]) == 0
    assert sorted(p.name for p in target.iterdir()) == sorted(NAMES)  # nothing else, no temps
    for name in NAMES:
        assert (target / name).read_bytes() == _text(name)
    lines = len(_text("val.en").splitlines())
    assert f"{target / 'val.en'}: {lines} lines" in capsys.readouterr().out
    assert requests == [f"{name}.gz" for name in NAMES]
    (target / "test_2016_flickr.cs").unlink()
    requests.clear()
    assert get_multi30k.main([str(target), "--base-url", url]) == 0
    assert requests == ["test_2016_flickr.cs.gz"]  # the complete ones are kept, not fetched
    assert (target / "test_2016_flickr.cs").read_bytes() == _text("test_2016_flickr.cs")
    assert f"{target / 'train.de'}: already there, kept" in capsys.readouterr().out


@pytest.mark.parametrize("fault", ["missing", "cut connection", "corrupt gzip"])
def test_get_multi30k_failure_is_one_line_and_leaves_no_partial_file(tmp_path, mirror, fault):
    url, files, truncated, requests = mirror
    if fault == "missing":
        del files["val.fr.gz"]
    elif fault == "cut connection":
        truncated.add("val.fr.gz")
    else:
        files["val.fr.gz"] = files["val.fr.gz"][:-12]  # served whole, but the stream ends early
    target = tmp_path / "multi30k"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(target), "--base-url", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"get_multi30k.py: error: {url}val.fr.gz: "), (
        result.stderr
    )
    assert {
        "missing": "HTTP 404",
        "cut connection": "incomplete or corrupt download",
        "corrupt gzip": "incomplete or corrupt download",
    }[fault] in lines[0]
    before = NAMES[: NAMES.index("val.fr")]
    assert sorted(p.name for p in target.iterdir()) == sorted(before)  # no val.fr, no temp file
    for name in before:
        assert (target / name).read_bytes() == _text(name)
    # Mended, a second run fetches what is missing and only that.
    files["val.fr.gz"] = gzip.compress(_text("val.fr"))
    truncated.clear()
    requests.clear()
    assert (
        subprocess.run(
            [sys.executable, str(SCRIPT), str(target), "--base-url", url],
            capture_output=True,
            timeout=60,
        ).returncode
        == 0
    )
    assert requests == [f"{name}.gz" for name in NAMES[len(before) :]]
    assert sorted(p.name for p in target.iterdir()) == sorted(NAMES)


def test_get_multi30k_write_failure_leaves_no_file(
    tmp_path, mirror, monkeypatch, capsys, get_multi30k
):
    url = mirror[0]

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(get_multi30k.os, "replace", full_disk)
    target = tmp_path / "multi30k"
    assert get_multi30k.main([str(target), "--base-url", url]) == 1
    error = capsys.readouterr().err
    assert (
        error == f"get_multi30k.py: error: {target / NAMES[0]}: cannot write: "
        "No space left on device\n"
    )
    assert list(target.iterdir()) == []


def test_get_multi30k_help_names_the_base_url(get_multi30k):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "--base-url" in result.stdout
    assert get_multi30k.BASE.startswith("https://raw.githubusercontent.com/multi30k/dataset/")


def _multi30k_run(base: Path, name: str, overrides: list[str]) -> Path:
    """A tiny run whose corpus has Multi30k's split names, trained for two updates."""
    from nmt.recipe import Recipe
    from nmt.training import train

    corpus = base / "corpus"
    if not corpus.exists():
        write_slice(corpus)
        for lang in ("de", "en"):
            (corpus / f"dev.{lang}").rename(corpus / f"val.{lang}")
            (corpus / f"test.{lang}").rename(corpus / f"test_2016_flickr.{lang}")
    (base / "tiny.yaml").write_text(
        TINY_RECIPE.replace("root: corpus", f"root: {corpus}"),
        encoding="utf-8",
    )
    recipe = Recipe.load(base / "tiny.yaml", ["data.dev=val", "train.max_steps=2", *overrides])
    train(recipe, base / name)
    return base / name


def test_multi30k_scores_names_each_runs_changes_and_groups_seeds(tmp_path, capsys, monkeypatch):
    """The ablation table: a row per run and split with the BLEU a separate scoring gives, the
    setting read from the runs' recipes (a seed alone is no change), and per setting the mean
    over seeds with its range and its gain over the first run's setting."""
    from nmt import Translator
    from nmt.data.corpus import read_lines
    from nmt.scoring.metrics import corpus_bleu, corpus_chrf

    runs = [
        _multi30k_run(tmp_path, "base_s3", []),
        _multi30k_run(tmp_path, "base_s4", ["seed=4"]),
        _multi30k_run(tmp_path, "wd_s3", ["model.source_word_dropout=0.2"]),
    ]
    module = _benchmark("multi30k_scores", monkeypatch)
    argv = ["multi30k_scores.py", *map(str, runs), "--beam", "2", "--ensemble"]
    monkeypatch.setattr(sys, "argv", argv)
    module.main()
    out = capsys.readouterr().out.splitlines()
    tests = {}
    for run in runs:
        hyps = [
            h.text
            for h in Translator.from_runs([run]).translate(
                read_lines(tmp_path / "corpus/test_2016_flickr.de"), beam=2
            )
        ]
        references = read_lines(tmp_path / "corpus/test_2016_flickr.en")
        tests[run.name] = corpus_bleu(hyps, references)
        chrf = corpus_chrf(hyps, references)  # not 0, as two updates' BLEU is
        row = next(line for line in out if line.startswith(f"| {run.name} |") and "test_" in line)
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[1] == {"wd_s3": "model.source_word_dropout=0.2"}.get(
            run.name, "as the first run"
        )
        assert cells[2] == ("4" if run.name == "base_s4" else "3")
        assert cells[3].startswith("2 (0 epochs + 2 batches), ")  # two updates of the first
        assert float(cells[5]) == pytest.approx(tests[run.name], abs=0.005)
        assert float(cells[6]) == pytest.approx(chrf, abs=0.005) and chrf > 0
    base_mean = (tests["base_s3"] + tests["base_s4"]) / 2
    base_line = next(line for line in out if line.startswith("| as the first run | 2 |"))
    assert f"{base_mean:.2f} ({min(tests['base_s3'], tests['base_s4']):.2f}–" in base_line
    changed = next(line for line in out if line.startswith("| model.source_word_dropout=0.2 | 1"))
    assert f"{tests['wd_s3'] - base_mean:+.2f}" in changed
    ensemble = [line for line in out if line.startswith("| base_s3 + base_s4 + wd_s3 | ensemble")]
    assert len(ensemble) == 2  # test and val, and not counted as a seed in the summary
    assert out[0] == "de→en, beam 2, length normalization gnmt α 0.6, checkpoint best"
    # --alpha searches every run (and the ensemble) with that α, and the first line says so.
    searches = []
    translate = Translator.translate

    def spy(self, lines, **options):
        searches.append(options)
        return translate(self, lines, **options)

    monkeypatch.setattr(Translator, "translate", spy)
    monkeypatch.setattr(sys, "argv", [*argv, "--alpha", "2.5"])
    module.main()
    assert capsys.readouterr().out.splitlines()[0] == (
        "de→en, beam 2, length normalization gnmt α 2.5, checkpoint best"
    )
    assert len(searches) == 2 * (len(runs) + 1)  # test and val, each run and the ensemble
    assert all(
        (options["beam"], options["length_norm"], options["alpha"]) == (2, "gnmt", 2.5)
        for options in searches
    )
    monkeypatch.setattr(Translator, "translate", translate)
    monkeypatch.setattr(sys, "argv", [*argv, "--length-norm", "none", "--alpha", "1"])
    with pytest.raises(SystemExit, match="--alpha 1.0: no length normalization has no α"):
        module.main()
    monkeypatch.setattr(sys, "argv", [*argv[:-1], "--length-norm", "avg"])
    module.main()
    assert capsys.readouterr().out.splitlines()[0] == (
        "de→en, beam 2, length normalization avg α 0.6, checkpoint best"
    )
    # A run of the other direction is refused, naming it, before anything is scored.
    reverse = _multi30k_run(tmp_path, "en_de", ["data.src_lang=en", "data.tgt_lang=de"])
    monkeypatch.setattr(sys, "argv", ["multi30k_scores.py", str(runs[0]), str(reverse)])
    with pytest.raises(SystemExit, match=f"{reverse}: translates en→de, not de→en"):
        module.main()
    assert "| base_s3 |" not in capsys.readouterr().out


def _benchmark(name: str, monkeypatch):
    """benchmarks/NAME.py as a module (they import each other as the folder's scripts do), with
    the matrix-multiply rate stubbed where they print it: measuring it takes seconds and proves
    nothing here."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import hardware

    monkeypatch.setattr(hardware, "matmul_rate", lambda device, dtype=None, **_: 1e11)
    return importlib.import_module(name)


def test_hardware_prints_the_cpu_and_its_matmul_rates(monkeypatch, capsys):
    hardware = _benchmark("hardware", monkeypatch)
    hardware.main()
    cpu, rates = capsys.readouterr().out.splitlines()[:2]
    assert cpu.startswith("CPU ") and "PyTorch capability" in cpu and "bf16 in hardware:" in cpu
    assert rates == "matmul 2048²: fp32 100 GFLOP/s, bf16 100 GFLOP/s (1.0×)"


def test_decode_speed_prints_each_search_with_its_bleu_then_a_summary(
    tmp_path, monkeypatch, capsys
):
    from nmt import Translator
    from nmt.data.corpus import read_lines
    from nmt.scoring.metrics import corpus_bleu

    run = _multi30k_run(tmp_path, "run", [])
    decode_speed = _benchmark("decode_speed", monkeypatch)
    argv = ["decode_speed.py", str(run), "--beams", "1", "2", "--stopping", "first"]
    monkeypatch.setattr(sys, "argv", [*argv, "--batch-size", "8", "--inter-threads", "1"])
    decode_speed.main()
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("CPU ") and out[1].startswith("matmul 2048²")
    assert "30 sentences from" in out[2] and "stopping rule first" in out[2]
    assert "1 batch(es) at once" in out[2]
    sources = read_lines(tmp_path / "corpus/test_2016_flickr.de")
    references = read_lines(tmp_path / "corpus/test_2016_flickr.en")
    translator = Translator.from_run(run)
    for line, name, beam in ((out[3], "greedy", 1), (out[4], "beam 2", 2)):
        hyps = translator.translate(sources, beam=beam, stopping="first")
        bleu = corpus_bleu([h.text for h in hyps], references)
        assert line.strip().startswith(f"{name}: ") and "sentences/s" in line, line
        assert line.endswith(f"BLEU {bleu:.2f}"), line
    assert out[5].startswith("decode_speed: greedy ") and len(out) == 6
    monkeypatch.setattr(sys, "argv", [*argv, "--src", str(tmp_path / "corpus/val.de")])
    with pytest.raises(SystemExit):  # a source without its reference would score against another
        decode_speed.main()
    assert "--src and --ref go together" in capsys.readouterr().err


def test_train_speed_prints_tokens_memory_and_the_share_of_the_matmul_rate(
    tmp_path, monkeypatch, capsys
):
    write_slice(tmp_path / "corpus")
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE, encoding="utf-8")
    train_speed = _benchmark("train_speed", monkeypatch)
    monkeypatch.setattr(train_speed, "matmul_rate", lambda device, dtype=None, **_: 1e11)
    argv = ["train_speed.py", str(tmp_path / "tiny.yaml"), "--steps", "2", "--warmup", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    train_speed.main()
    out = capsys.readouterr().out.splitlines()
    assert out[-5].startswith("CPU ")
    assert "parameters on cpu" in out[-4] and "2 updates after 1 warm-up" in out[-4]
    assert out[-3].startswith("target tokens/s ") and "peak process memory" in out[-3]
    assert "of the measured float32 matmul rate 100 GFLOP/s" in out[-2]
    assert out[-1].startswith("train_speed: ") and "% of matmul peak" in out[-1]


def test_the_reference_recipe_loads_and_has_the_size_the_benchmarks_say():
    """benchmarks/reference.yaml (train_speed.py, scaling.sh): 8.5M parameters with Multi30k's
    8,000 joint subwords, as benchmarks/README.md says."""
    from nmt.model.seq2seq import Seq2Seq
    from nmt.recipe import Recipe

    recipe = Recipe.load(ROOT / "benchmarks" / "reference.yaml")
    assert recipe.tokenizer.vocab_size == 8000 and recipe.tokenizer.joint
    model = Seq2Seq(recipe.model, 8000, 8000)
    assert round(model.parameter_count / 1e6, 1) == 8.5


def test_the_quickstart_data_is_as_its_readme_says():
    """data/README.md: 12,000 / 500 / 500 pairs, line-aligned; dev and test sentences never
    occur in train; each example in the table is a pair of its split."""
    quickstart = ROOT / "data" / "quickstart"
    read = lambda name: (quickstart / name).read_text(encoding="utf-8").splitlines()  # noqa: E731
    sides = {
        split: (read(f"{split}.de"), read(f"{split}.en")) for split in ("train", "dev", "test")
    }
    assert {split: len(de) for split, (de, _) in sides.items()} == {
        "train": 12000,
        "dev": 500,
        "test": 500,
    }
    assert all(len(de) == len(en) for de, en in sides.values())
    for held_out in ("dev", "test"):
        for side in (0, 1):
            assert not set(sides[held_out][side]) & set(sides["train"][side])
    readme = (ROOT / "data" / "README.md").read_text(encoding="utf-8")
    for split in ("train", "dev", "test"):
        row = next(line for line in readme.splitlines() if line.startswith(f"| {split} |"))
        source, target = (part.strip().strip("`") for part in row.split("|")[-2].split("→"))
        pairs = set(zip(*sides[split]))
        assert (source, target) in pairs, f"data/README.md's {split} example is not a {split} pair"


def test_make_quickstart_makes_exactly_the_shipped_files(tmp_path):
    """data/make_quickstart.py with its default seed rewrites data/quickstart byte for byte
    (with the generator libraries pinned in setup.cfg's test extras), so the shipped corpus is
    the one its script and README describe; another seed makes another corpus."""
    for generator in ("num2words", "babel"):
        pytest.importorskip(generator, reason="needs pip install -e '.[test]'")
    script = ROOT / "data" / "make_quickstart.py"
    for seed, out in (("7", tmp_path / "seed7"), ("8", tmp_path / "seed8")):
        subprocess.run(
            [sys.executable, str(script), "--out", str(out), "--seed", seed],
            check=True,
            capture_output=True,
            timeout=120,
        )
    shipped = sorted(path.name for path in (ROOT / "data" / "quickstart").iterdir())
    assert sorted(path.name for path in (tmp_path / "seed7").iterdir()) == shipped
    for name in shipped:
        made = (tmp_path / "seed7" / name).read_bytes()
        assert made == (ROOT / "data" / "quickstart" / name).read_bytes(), name
    assert (tmp_path / "seed8" / "test.de").read_bytes() != (
        tmp_path / "seed7" / "test.de"
    ).read_bytes()


def test_serve_load_measures_each_level_of_clients_then_stops_the_server(
    tmp_path, monkeypatch, capsys
):
    pytest.importorskip("fastapi")
    run = _multi30k_run(tmp_path, "run", [])
    serve_load = _benchmark("serve_load", monkeypatch)
    argv = ["serve_load.py", str(run), "--clients", "1", "2", "--seconds", "0.5"]
    monkeypatch.setattr(sys, "argv", [*argv, "--threads", "1", "--beam", "1"])
    serve_load.main()
    out = capsys.readouterr().out.splitlines()
    rows = {line.split("|")[1].strip(): line.split("|") for line in out if line.startswith("| ")}
    assert set(rows) >= {"1", "2"}
    assert all(int(rows[clients][2]) > 0 for clients in ("1", "2"))  # requests answered
    assert out[-1].startswith("summary: 1 clients ") and "; 2 clients " in out[-1]


@pytest.mark.parametrize("parts", ["cell", "attention", "both"])
def test_train_speeds_compile_trial_reaches_the_functions_training_calls(parts, monkeypatch):
    """--compile swaps module attributes; a model that bound them elsewhere would make the
    trial a silent no-op. torch.compile is stubbed by a wrapper that counts calls."""
    from conftest import tiny_model
    from nmt.model import attention, cells
    from nmt.training import batch_loss
    from test_model import padded_batch

    import torch

    monkeypatch.setattr(cells, "step", cells.step)  # restored after the test
    monkeypatch.setattr(attention.Attention, "forward", attention.Attention.forward)
    calls = []

    def counting(function, **options):
        def compiled(*args, **kwargs):
            calls.append(function.__name__)
            return function(*args, **kwargs)

        return compiled

    monkeypatch.setattr(torch, "compile", counting)
    train_speed = _benchmark("train_speed", monkeypatch)
    train_speed.compile_parts(parts)
    batch_loss(tiny_model(attention="luong-concat", input_feeding=True), padded_batch(), 0.1)
    expected = {"cell": {"step"}, "attention": {"forward"}, "both": {"step", "forward"}}[parts]
    assert set(calls) == expected
