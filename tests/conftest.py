"""Shared fixtures: a small slice of the bundled corpus and a tiny recipe that trains in seconds."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from nmt.model.seq2seq import Seq2Seq
from nmt.recipe import ModelConfig

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "data" / "quickstart"

TINY_RECIPE = """\
name: tiny
seed: 3
data:
  root: corpus
  src_lang: de
  tgt_lang: en
tokenizer:
  vocab_size: 120
model:
  embedding_size: 16
  hidden_size: 16
  decoder_hidden_size: 24
  dropout: 0.0
train:
  batch_tokens: 600
  max_steps: 12
  valid_every: 6
  log_every: 3
decode:
  beam: 3
"""


def write_slice(directory: Path, train: int = 400, dev: int = 30) -> Path:
    """Copy the first lines of the quickstart corpus into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("dev", dev), ("test", dev)):
        for lang in ("de", "en"):
            lines = (QUICKSTART / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()
            (directory / f"{split}.{lang}").write_text(
                "\n".join(lines[:count]) + "\n", encoding="utf-8"
            )
    return directory


@pytest.fixture
def tiny_recipe(tmp_path: Path) -> Path:
    write_slice(tmp_path / "corpus")
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_RECIPE, encoding="utf-8")
    return path


def trained_run(base: Path) -> Path:
    """A tiny run trained for two steps in `base` (corpus, recipe, run), keeping both
    validations as step-1 and step-2 for nmt-average."""
    from nmt.recipe import Recipe
    from nmt.training import train

    write_slice(base / "corpus")
    (base / "tiny.yaml").write_text(TINY_RECIPE, encoding="utf-8")
    train(
        Recipe.load(
            base / "tiny.yaml", ["train.max_steps=2", "train.valid_every=1", "train.keep_best=2"]
        ),
        base / "run",
    )
    return base / "run"


def tiny_model(vocab: int = 11, seed: int = 0, **changes) -> Seq2Seq:
    """A small randomly initialised model in eval mode, for search and masking tests."""
    torch.manual_seed(seed)
    settings = dict(embedding_size=8, hidden_size=6, decoder_hidden_size=12, dropout=0.0)
    settings.update(changes)
    return Seq2Seq(ModelConfig(**settings), vocab, vocab).eval()


class Server:
    """`nmt-serve` in a subprocess on a free 127.0.0.1 port, read from its log line."""

    def __init__(self, run: Path, *flags: str, prelude: str = ""):
        """`prelude`: Python run in the server's process first (e.g. to hold a search)."""
        self.process = subprocess.Popen(
            [sys.executable, "-c", prelude + "from nmt.cli import serve_main; serve_main()",
             "-m", str(run), "--port", "0", "--threads", "1", *flags],
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        self.log = []
        for line in self.process.stderr:
            self.log.append(line)
            if "serving on http://" in line:
                self.port = int(line.rsplit(":", 1)[1].split("/")[0])
                break
        else:
            raise AssertionError("nmt-serve did not start:\n" + "".join(self.log))
        # Keep reading its log, or a server that logs much would block on a full pipe.
        self.reader = threading.Thread(target=lambda: self.log.extend(self.process.stderr))
        self.reader.start()

    def request(self, method: str, path: str, body: object = None, raw: bytes | None = None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        connection.request(method, path, data, {"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = response.status, json.loads(response.read() or b"null")
        connection.close()
        return answer

    def stop(self, *signals: int) -> int:
        """Send the signals (SIGTERM by default; 0: none), one after another; the exit code."""
        for sig in signals or (signal.SIGTERM,):
            if sig:
                self.process.send_signal(sig)
        code = self.process.wait(timeout=60)
        self.reader.join()
        return code
