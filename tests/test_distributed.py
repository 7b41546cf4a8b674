"""Two gloo processes under torchrun train exactly like one process with the same global batch."""

import csv
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from nmt.checkpoint import load_checkpoint
from nmt.distributed import Cluster
from nmt.recipe import Recipe
from nmt.training import train

# Gradient accumulation too, so that both DDP paths (no_sync, then sync) run.
SETTINGS = ["train.valid_every=3", "train.log_every=1", "train.accumulate=2", "train.threads=1"]


def torchrun(recipe, run_dir, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "nmt",
            "train",
            str(recipe),
            "--run-dir",
            str(run_dir),
            *SETTINGS,
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[:3000]
    return result


def rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_two_processes_equal_one_process_with_the_same_global_batch(tiny_recipe, tmp_path):
    single = tmp_path / "single"
    train(Recipe.load(tiny_recipe, [*SETTINGS, "train.max_steps=6"]), single)

    pair = tmp_path / "pair"
    first = torchrun(tiny_recipe, pair, "train.max_steps=3")
    assert first.stdout.count("best dev bleu") == 1  # rank 0 alone reports
    torchrun(tiny_recipe, pair, "train.max_steps=6", "--resume")  # a distributed resume

    ours, theirs = rows(pair), rows(single)
    assert [(r["step"], r["kind"]) for r in ours] == [(r["step"], r["kind"]) for r in theirs]
    for mine, reference in zip(ours, theirs):
        for key in ("loss", "lr", "dev_loss"):
            if reference[key]:
                assert float(mine[key]) == pytest.approx(float(reference[key]), abs=2e-4), key
    a, _ = load_checkpoint(pair / "checkpoints" / "last")
    b, _ = load_checkpoint(single / "checkpoints" / "last")
    for key, value in b.items():
        if key.startswith("model."):
            torch.testing.assert_close(a[key], value, rtol=1e-4, atol=1e-5)
    log = (pair / "train.log").read_text()
    assert "2 processes" in log and log.count("resumed at step 3") == 1  # one writer


def test_every_process_stops_when_rank_0_says_so():
    """Whether training is done (early stopping, `max_time` by rank 0's clock) is rank 0's
    answer on every process: a rank whose own clock or counters disagree follows it, or it
    would wait for its partner in the next update forever."""
    from types import SimpleNamespace

    from nmt.training import _Run

    class Rank1(Cluster):
        def any(self, flag):
            return flag

        def from_main(self, value):
            return not value  # rank 0 decided otherwise

    run = SimpleNamespace(
        cluster=Rank1(1, 2),
        stopper=SimpleNamespace(done=lambda progress: False),
        progress=None,
    )
    stop = SimpleNamespace(requested=False)
    assert _Run.finished(run, stop) is True
    run.stopper = SimpleNamespace(done=lambda progress: True)
    assert _Run.finished(run, stop) is False


def test_two_processes_stop_early_together(tiny_recipe, tmp_path):
    """With a rate of 0 no validation beats the first, so patience 1 stops both processes
    after the second validation, at the same step, and torchrun ends cleanly."""
    stop = ["train.lr=0", "train.valid_every=1", "train.max_steps=50", "train.accumulate=1"]
    stopped = torchrun(tiny_recipe, tmp_path / "patience", *stop, "train.patience=1")
    assert "early stop" in stopped.stdout + stopped.stderr
    _, meta = load_checkpoint(tmp_path / "patience" / "checkpoints" / "last")
    assert meta["progress"]["step"] == 2


def test_each_process_takes_its_share_of_every_batch():
    batch = np.arange(7)
    shares = [Cluster(rank, 2).share(batch) for rank in range(2)]
    assert sorted(np.concatenate(shares).tolist()) == list(range(7))
    assert [len(share) for share in shares] == [4, 3]


def test_sigterm_to_torchrun_stops_both_processes_at_one_safe_point(tiny_recipe, tmp_path):
    """torchrun passes SIGTERM to each process; they stop at the same update boundary, rank 0
    saves `last`, both exit 143, and --resume ends where an unbroken run ends."""
    import select
    import signal

    steps = ["train.max_steps=120", "train.valid_every=60"]
    accumulate = Recipe.load(tiny_recipe, SETTINGS).train.accumulate
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", "-m", "nmt", "train", str(tiny_recipe)]
    command += ["--run-dir", str(tmp_path / "pair"), *SETTINGS, *steps]
    # torchrun waits this long for its processes after passing a signal on (30 s by default)
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCH_ELASTIC_SHUTDOWN_TIMEOUT="120")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    seen = b""
    try:
        # Rank 0 draws its progress bar after the first safe point, a collective call that
        # both processes reach with their signal handlers installed; the signal goes once the
        # bar (which counts batches, `accumulate` to an update) shows two updates done, so
        # that the resume continues from the middle.
        while not any(
            int(done) >= 2 * accumulate for done in re.findall(rb"epoch 1: .*?\| (\d+)/", seen)
        ):
            ready, _, _ = select.select([process.stderr], [], [], 120)
            assert ready, seen.decode(errors="replace")[-2000:]
            chunk = os.read(process.stderr.fileno(), 65536)
            assert chunk, seen.decode(errors="replace")[-2000:]  # it ended before training
            seen += chunk
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=180)
    finally:  # never leave a torchrun behind: it takes its processes down with it
        if process.poll() is None:
            process.terminate()
            try:
                process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
    err = (seen + rest).decode(errors="replace")
    assert err.count("nmt-train: terminated") == 2, err[-3000:]
    _, meta = load_checkpoint(tmp_path / "pair" / "checkpoints" / "last")
    stopped_at = meta["progress"]["step"]
    assert 2 <= stopped_at < 120 and f"interrupted at step {stopped_at}" in err

    torchrun(tiny_recipe, tmp_path / "pair", *steps, "--resume")
    single = tmp_path / "single"
    train(Recipe.load(tiny_recipe, [*SETTINGS, *steps]), single)
    ours, theirs = rows(tmp_path / "pair"), rows(single)
    assert [(r["step"], r["kind"]) for r in ours] == [(r["step"], r["kind"]) for r in theirs]
    for mine, reference in zip(ours, theirs):
        assert float(mine["loss"] or 0) == pytest.approx(float(reference["loss"] or 0), abs=2e-4)
