"""nmt-serve's page in a real browser: Debian's headless Chromium, driven by selenium through
chromium-driver (nothing downloaded). Skipped where they are not installed, as .ci/run
installs them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from conftest import QUICKSTART, ROOT, Server, trained_run

pytest.importorskip("selenium")
pytest.importorskip("fastapi")

spec = importlib.util.spec_from_file_location("screenshot", ROOT / "docs" / "screenshot.py")
assert spec and spec.loader
screenshot = importlib.util.module_from_spec(spec)
spec.loader.exec_module(screenshot)

SENTENCES = (QUICKSTART / "test.de").read_text(encoding="utf-8").splitlines()[:3]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if screenshot.find_browser() is None:
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    running = Server(trained_run(tmp_path_factory.mktemp("page")), "--threads", "1")
    yield running
    assert running.stop() == 0, "".join(running.log)


def expected(server, lines: list[str], beam: int) -> list[list]:
    """What the API answers for the page's two searches: beam (the page's choice) and greedy."""
    status, found = server.request("POST", "/translate", {"text": lines, "beam": beam})
    _, greedy = server.request("POST", "/translate", {"text": lines, "beam": 1})
    assert status == 200
    return [found["translations"], greedy["translations"]]


def test_the_page_translates_and_draws_attention_and_the_beam(server, tmp_path: Path):
    page = screenshot.PageDriver(f"http://127.0.0.1:{server.port}/")
    try:
        shown = page.translate(SENTENCES, beam=3)
        beam, greedy = expected(server, SENTENCES, 3)
        assert [row[1] for row in shown["rows"]] == SENTENCES
        assert [row[2] for row in shown["rows"]] == [t["text"] for t in beam]
        assert [row[3] for row in shown["rows"]] == [f"{t['score']:.3f}" for t in beam]
        assert [row[4] for row in shown["rows"]] == [t["text"] for t in greedy]
        # The heatmap of sentence 1: a row per output subword and EOS, a cell per source one.
        assert shown["heatmap_rows"] == beam[0]["length"] + 1
        assert shown["heatmap_cells"] == shown["heatmap_rows"] * shown["heatmap_columns"] > 0
        assert shown["steps"] >= 1 and shown["nbest_rows"] == 3
        assert shown["overflow"] <= 0  # nothing wider than the window
        assert page.console_errors() == []
        page.screenshot(tmp_path / "page.png")
        assert (tmp_path / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        page.close()


def test_the_page_fits_a_phone_screen_and_shows_server_errors(server):
    page = screenshot.PageDriver(f"http://127.0.0.1:{server.port}/", width=390, height=844)
    try:
        shown = page.translate(SENTENCES[:1], beam=2)
        assert shown["rows"][0][2] == expected(server, SENTENCES[:1], 2)[0][0]["text"]
        assert shown["overflow"] <= 0  # wide tables scroll inside their own box
        with pytest.raises(AssertionError, match="beam"):
            page.translate(SENTENCES[:1], beam=0)  # the server's 422, shown on the page
    finally:
        page.close()
