"""Defaults and choices the README quotes, checked against the code, and the device choice
(CUDA when present) checked without a GPU."""

from __future__ import annotations

import re

import pytest
import torch

from nmt.errors import NmtError

from conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_serve_limits_the_readme_quotes_are_the_defaults():
    from nmt.serving.limits import Limits

    quoted = dict(re.findall(r"`--(max-[a-z]+)` \(([\d,]+|1 MiB)\)", README))
    assert set(quoted) == {
        "max-sentences",
        "max-chars",
        "max-beam",
        "max-output",
        "max-work",
        "max-body",
        "max-pending",
        "max-connections",
    }
    for flag, value in quoted.items():
        expected = 1 << 20 if value == "1 MiB" else int(value.replace(",", ""))
        assert getattr(Limits(), flag.replace("-", "_")) == expected, flag


def test_the_command_defaults_the_readme_quotes():
    from nmt.cli import _score_parser, _serve_parser

    serve = _serve_parser().parse_args(["-m", "run"])
    assert "`--batch-wait` (5 ms" in README and serve.batch_wait == 5
    assert "127.0.0.1:8000" in README and (serve.host, serve.port) == ("127.0.0.1", 8000)
    score = _score_parser().parse_args(["-r", "ref", "-i", "hyp"])
    assert "(default 1000; 0 skips the table)" in README and score.samples == 1000
    assert "lowest sentence-level chrF, with source and reference (default 5)" in README
    assert score.worst == 5


def test_auto_picks_cuda_when_present_and_cuda_is_refused_without_it(monkeypatch):
    from nmt.device import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("cuda")
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(NmtError, match="'cuda': CUDA is not available"):
        pick_device("cuda")
    with pytest.raises(NmtError, match="'gpu0': expected auto, cpu, cuda or cuda:N"):
        pick_device("gpu0")


def test_each_distributed_process_takes_the_gpu_of_its_local_rank(monkeypatch):
    """Under torchrun (WORLD_SIZE, LOCAL_RANK), a process on a CUDA machine trains on
    cuda:LOCAL_RANK and makes it current; a process group the caller started is kept."""
    import torch.distributed as dist

    from nmt import distributed

    chosen: list[torch.device] = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    cluster, device = distributed.join("auto")
    assert device == torch.device("cuda", 1) and chosen == [device]
    assert (cluster.rank, cluster.world_size, cluster.owns_group) == (1, 2, False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cluster, device = distributed.join("auto")
    assert device == torch.device("cpu") and chosen == [torch.device("cuda", 1)]
