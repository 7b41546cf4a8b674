"""The README's Python: its example runs as shown, and every `nmt.…` name it gives exists."""

import contextlib
import importlib
import io
import re
from pathlib import Path

from conftest import trained_run

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_nmt_name_the_readme_gives_can_be_imported():
    names = set(re.findall(r"`(nmt(?:\.\w+)+)", README))
    assert len(names) >= 8  # the README names that many; a changed pattern must not pass empty
    for name in sorted(names):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):  # the longest importable module, then attributes
            try:
                found = importlib.import_module(".".join(parts[:cut]))
                break
            except ModuleNotFoundError:
                continue
        for attribute in parts[cut:]:
            assert hasattr(found, attribute), f"README's {name}: no {attribute}"
            found = getattr(found, attribute)


def test_the_readmes_python_example_runs(tmp_path):
    """On a tiny run standing in for runs/quickstart: it translates and prints a report."""
    [example] = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert '"runs/quickstart"' in example
    run = trained_run(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(example.replace('"runs/quickstart"', repr(str(run))), {})
    lines = printed.getvalue().splitlines()
    assert lines[1].split()[:2] == ["metric", "score"] and "BLEU" in printed.getvalue()
    float(lines[0].rsplit(" ", 1)[1])  # the translation's text, then its score
