"""What one request to nmt-serve may ask, and how much work the server keeps waiting.

Its own module, free of the web stack and torch, so that `nmt-serve --help` shows the defaults
without loading either.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_sentences: int = 64  # sentences per request
    max_chars: int = 1000  # characters per sentence
    max_body: int = 1 << 20  # bytes per request body
    max_beam: int = 50  # beam size, and samples per sentence
    max_output: int = 400  # output length limit in subwords (max_len_a · |x| + max_len_b)
    max_work: int = 100_000  # hypothesis steps a request may ask: sentences × beam × max_output
    max_connections: int = 256  # open connections; beyond, uvicorn answers 503
    max_pending: int = 1024  # sentences waiting or being searched; beyond: 503
    max_wait: float = 0.005  # seconds a request waits for others to be batched with


DEFAULT_LIMITS = Limits()
