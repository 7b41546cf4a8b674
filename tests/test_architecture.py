"""The package's imports point one way, down the data flow, and never in a circle.

Every `import` in nmt/ counts, those inside functions too: a local import is for start-up time
(nmt-score must not load PyTorch), never a way around a cycle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "nmt"
# Bottom to top: a module may import its own layer and the layers below it. The package's
# __init__ (a lazy namespace over all of them) stands outside.
LAYERS = [
    ["nmt.errors", "nmt.files", "nmt.run_dir"],
    ["nmt.recipe"],
    ["nmt.device", "nmt.data"],
    ["nmt.model"],
    ["nmt.search", "nmt.loss", "nmt.optim", "nmt.checkpoint", "nmt.distributed"],
    ["nmt.scoring", "nmt.plots"],  # metrics, reports, the HTML page: no model needed
    ["nmt.translate"],
    ["nmt.scoring.analysis", "nmt.scoring.diagnostics"],
    ["nmt.training"],
    ["nmt.serving"],  # nmt-serve: the web API over the Translator
    ["nmt.cli", "nmt.__main__"],
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
    """The nmt modules a file imports (`from nmt.x import y` counts nmt.x.y when that is a
    module, else nmt.x; `from nmt import Name` counts the module the package takes Name from)."""
    from nmt import _WHERE

    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("nmt")}
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and node.module.startswith("nmt")
        ):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                if node.module == "nmt" and alias.name in _WHERE:
                    found.add(_WHERE[alias.name])
                else:
                    found.add(child if child in known else node.module)
    return found


def layer_of(module: str) -> int:
    """The layer of the longest prefix in LAYERS that names `module` or a package holding it."""
    matches = [
        (len(prefix), index)
        for index, layer in enumerate(LAYERS)
        for prefix in layer
        if module == prefix or module.startswith(prefix + ".")
    ]
    assert matches, f"{module} belongs to no layer: add it to LAYERS in {__file__}"
    return max(matches)[1]


def graph() -> dict[str, set[str]]:
    known = modules()
    return {
        name: imports(path, set(known)) - {name, "nmt"}
        for name, path in known.items()
        if name != "nmt"
    }


def test_every_import_points_down_the_layers():
    upward = [
        f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
        for module, targets in graph().items()
        for target in targets
        if layer_of(target) > layer_of(module)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    edges = graph()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(edges.get(module, ())):
            if state.get(target) == "open":
                cycle = path[path.index(target) :] + [target]
                raise AssertionError("import cycle: " + " → ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def test_the_check_sees_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The checks above can fail: on a planted cycle and a planted upward import."""
    import pytest

    planted = {"nmt.data.corpus": {"nmt.training"}, "nmt.training": {"nmt.data.corpus"}}
    monkeypatch.setattr(sys.modules[__name__], "graph", lambda: planted)
    with pytest.raises(AssertionError, match="imports nmt.training"):
        test_every_import_points_down_the_layers()
    with pytest.raises(AssertionError, match="import cycle"):
        test_no_import_cycles()


FILE_AND_YAML = ("yaml", "os", "pathlib", "io", "shutil", "tempfile", "pickle", "json")
FILE_AND_YAML += ("builtins", "nmt.files", "nmt.checkpoint", "nmt.data.corpus")


def test_the_model_knows_nothing_of_files_or_yaml():
    """nmt/model/ reads and writes nothing: no file, YAML or serialising module (`import os.path`
    and `from nmt import files` count), no open(), Path, torch.save or torch.load; weights come
    and go through nmt.checkpoint, recipes through the ModelConfig it is given."""
    forbidden = lambda name: any(  # noqa: E731
        name == module or name.startswith(module + ".") for module in FILE_AND_YAML
    )
    for path in sorted((PACKAGE / "model").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{path.name}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                names = []
            assert not any(map(forbidden, names)), f"{where} imports {names}"
            if isinstance(node, ast.Name):
                assert node.id not in ("open", "Path"), f"{where}: {node.id}"
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                call = f"{node.value.id}.{node.attr}"
                assert call not in ("torch.save", "torch.load"), f"{where}: {call}"


def test_plain_scoring_starts_without_torch_or_datasets(tmp_path):
    """`nmt-score -r REF -i HYP` needs sacreBLEU only: loading PyTorch would cost it a second."""
    import subprocess

    (tmp_path / "ref").write_text("a small dog runs\ntwo cats\n", encoding="utf-8")
    (tmp_path / "hyp").write_text("a dog runs\ntwo cats\n", encoding="utf-8")
    probe = (
        "import sys, contextlib, io\n"
        "from nmt.cli import score_main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        f"    score_main(['-r', {str(tmp_path / 'ref')!r}, '-i', {str(tmp_path / 'hyp')!r}])\n"
        "print(sorted(m for m in ('torch', 'datasets', 'pyarrow', 'sentencepiece')"
        " if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_translating_starts_without_sacrebleu_or_datasets(tmp_path):
    """`nmt-translate` imports neither: scoring (only `--tune` and `--ref` need it) and corpus
    loading would add a few tenths of a second to every translation's start."""
    import subprocess

    from conftest import trained_run

    run = trained_run(tmp_path)
    (tmp_path / "in.de").write_text("ein Hund\n", encoding="utf-8")
    probe = (
        "import sys\n"
        "from nmt.cli import translate_main\n"
        "try:\n"
        f"    translate_main(['-m', {str(run)!r}, '-i', {str(tmp_path / 'in.de')!r},"
        f" '-o', {str(tmp_path / 'out.en')!r}])\n"
        "except SystemExit as end:\n"
        "    print(end.code, sorted(m for m in ('sacrebleu', 'datasets', 'pyarrow')"
        " if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    assert done.stdout.split("\n")[-2] == "0 []", done.stdout + done.stderr
    assert (tmp_path / "out.en").read_text(encoding="utf-8").count("\n") == 1


# A function's length in statements, which the formatter's line breaks do not change: 40 is
# about 60 lines of this code. A longer function says why in its docstring.
LONGEST = 40


def test_long_functions_say_why():
    too_long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                statements = len(
                    {
                        inner.lineno
                        for inner in ast.walk(node)
                        if isinstance(inner, ast.stmt) and inner is not node
                    }
                )
                reason = "Why one long function" in (ast.get_docstring(node) or "")
                if statements > LONGEST and not reason:
                    too_long.append(
                        f"{path.relative_to(PACKAGE.parent)}:{node.lineno} "
                        f"{node.name} ({statements} statements)"
                    )
    assert not too_long, "split these, or say why in the docstring:\n" + "\n".join(too_long)


def test_the_package_namespace_gives_every_name_it_lists():
    """`from nmt import ...` for each public name, each from the module the namespace says."""
    import importlib

    import nmt

    for name in nmt.__all__:
        value = getattr(nmt, name)
        if name != "__version__":
            assert value is getattr(importlib.import_module(nmt._WHERE[name]), name), name
    assert dir(nmt) == sorted(nmt.__all__)
