"""Faults: kill -9 at random moments, full or unwritable disks, out of memory, stray writes."""

import csv
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nmt.checkpoint import load_checkpoint
from nmt.errors import NmtError
from nmt.recipe import Recipe
from nmt.training import train
from nmt.translate import Translator

ROOT = Path(__file__).resolve().parent.parent
# Many small validations, so that kills also land in checkpoint writes and validation; kept
# step-N checkpoints, a log window longer than one update and the plateau schedule, so that a
# resume has all of them to restore.
FAST = [
    "train.max_steps=30",
    "train.valid_every=3",
    "train.log_every=2",
    "train.threads=1",
    "model.dropout=0.2",
    "train.keep_best=2",
    "train.early_stopping=chrf",
    "train.schedule=plateau",
    "train.plateau_patience=1",
    "train.patience=0",
]


def start_training(recipe: Path, run_dir: Path, *extra: str, env=None, cwd=None):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nmt",
            "train",
            str(recipe),
            "--run-dir",
            str(run_dir),
            *FAST,
            *extra,
        ],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def training_rows(run_dir: Path) -> list[tuple]:
    """metrics.csv without its timing columns: what must match between runs."""
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [
            (r["step"], r["kind"], r["loss"], r["lr"], r["dev_loss"], r["dev_bleu"])
            for r in csv.DictReader(handle)
        ]


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    """A run that nobody interrupts, made in a sandbox with its own HOME, TMPDIR and cwd."""
    from conftest import TINY_RECIPE, write_slice

    base = tmp_path_factory.mktemp("unbroken")
    write_slice(base / "corpus")
    recipe = base / "tiny.yaml"
    recipe.write_text(TINY_RECIPE, encoding="utf-8")
    sandbox = {name: base / name for name in ("home", "tmp", "work")}
    for folder in sandbox.values():
        folder.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("XDG_", "HF_", "MPL")) and key not in ("HOME", "TMPDIR")
    }
    env.update(HOME=str(sandbox["home"]), TMPDIR=str(sandbox["tmp"]), PYTHONPATH=str(ROOT))
    corpus_before = sorted(p.name for p in (base / "corpus").iterdir())
    started = time.perf_counter()
    process = start_training(recipe, Path("run"), env=env, cwd=sandbox["work"])
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return {
        "recipe": recipe,
        "run": sandbox["work"] / "run",
        "seconds": time.perf_counter() - started,
        "sandbox": sandbox,
        "corpus_before": corpus_before,
        "corpus": base / "corpus",
    }


def test_a_run_writes_only_inside_its_run_directory(unbroken):
    sandbox = unbroken["sandbox"]
    assert sorted(p.name for p in sandbox["work"].iterdir()) == ["run"]
    assert list(sandbox["home"].rglob("*")) == []  # no caches: matplotlib, datasets, torch
    assert list(sandbox["tmp"].rglob("*")) == []
    assert sorted(p.name for p in unbroken["corpus"].iterdir()) == unbroken["corpus_before"]


def test_kill_9_at_random_moments_then_resume_loses_nothing(unbroken, tmp_path):
    """Kill the trainer at random instants, resume each time: the end is the unbroken run.
    At least one kill must land after training wrote a checkpoint past step 0 and before its
    end, so that a resume continues from the middle (not only starts afresh)."""
    run_dir = tmp_path / "run"
    draw = random.Random(7)
    killed_at = []  # the step of `last` each kill left
    for attempt in range(5):
        process = start_training(unbroken["recipe"], run_dir, *(["--resume"] if attempt else []))
        try:
            process.wait(timeout=draw.uniform(0.3, 0.9) * unbroken["seconds"])
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            last = run_dir / "checkpoints" / "last.json"
            step = json.loads(last.read_text())["progress"]["step"] if last.exists() else 0
            killed_at.append(step)
        else:
            assert process.returncode == 0, process.stderr.read()
            break
        process.stderr.close()
    assert any(0 < step < 30 for step in killed_at), killed_at
    final = start_training(unbroken["recipe"], run_dir, "--resume")
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err

    from test_interrupts import assert_same, outcome

    assert training_rows(run_dir) == training_rows(unbroken["run"])
    assert_same(outcome(run_dir), outcome(unbroken["run"]))  # history, best, kept set, weights
    for meta in (run_dir / "checkpoints").glob("*.json"):
        load_checkpoint(meta.with_suffix(""))  # every checkpoint whole and verified
    assert not list(run_dir.rglob("*.tmp"))
    assert len(list((run_dir / "checkpoints").glob("*.safetensors"))) == len(
        list((run_dir / "checkpoints").glob("*.json"))
    )


def test_an_unwritable_run_directory_is_refused_before_training(tiny_recipe, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(NmtError, match="cannot write the run directory"):
        train(Recipe.load(tiny_recipe), blocker / "run")


def test_a_disk_too_small_for_the_checkpoints_is_refused(tiny_recipe, tmp_path, monkeypatch):
    import shutil
    from types import SimpleNamespace

    monkeypatch.setattr(
        shutil,
        "disk_usage",
        lambda path: SimpleNamespace(total=10**6, used=10**6 - 1000, free=1000),
    )
    with pytest.raises(NmtError, match="free on this disk, but the run's checkpoints need"):
        train(Recipe.load(tiny_recipe), tmp_path / "run")
    assert not list((tmp_path / "run" / "checkpoints").iterdir())  # nothing trained


def test_resuming_checks_the_disk_for_the_checkpoints_it_adds(tiny_recipe, tmp_path, monkeypatch):
    """A resumed run reuses the space of the checkpoints it has: with exactly that much free
    it goes on; keeping 20 more step-N checkpoints than the disk holds is refused at once."""
    import shutil
    from types import SimpleNamespace

    from nmt.training import check_disk_space

    steps = ["train.max_steps=2", "train.valid_every=1", "train.keep_best=2"]
    train(Recipe.load(tiny_recipe, steps), tmp_path / "run")
    checkpoints = tmp_path / "run" / "checkpoints"
    held = sum(path.stat().st_size for path in checkpoints.glob("*.safetensors"))
    model = Translator.from_run(tmp_path / "run").model
    one = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    needed = (3 + 2) * one - held  # what best, last, two step-N and one being written add
    (checkpoints / "best.avg.0123456789ab.safetensors").write_bytes(bytes(10**6))  # not reused
    for free in (needed, needed - 1):
        monkeypatch.setattr(
            shutil, "disk_usage", lambda path: SimpleNamespace(total=10**9, used=0, free=free)
        )
        if free == needed:
            check_disk_space(tmp_path / "run", model, 2)
        else:
            with pytest.raises(NmtError, match="free on this disk"):
                check_disk_space(tmp_path / "run", model, 2)
    (checkpoints / "best.avg.0123456789ab.safetensors").unlink()
    more = [*steps, "train.max_steps=3", "train.keep_best=22"]
    with pytest.raises(NmtError, match="free on this disk, but the run's checkpoints need"):
        train(Recipe.load(tiny_recipe, more), tmp_path / "run", resume=True)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["resumed"] == []  # a resumption that did not go on is not recorded


@pytest.mark.parametrize("failing", ["last", "best", "step-6"])
def test_disk_full_during_a_save_keeps_every_checkpoint_whole(
    tiny_recipe, tmp_path, monkeypatch, failing
):
    """The disk fills while a validation writes `last`, `best` or its step-N checkpoint (in
    that order): training stops with a one-line error, every checkpoint already there still
    loads as it was, and `--resume` then ends where an unbroken run ends."""
    import nmt.files as files

    run_dir = tmp_path / "run"
    settings = ["train.valid_every=2", "train.early_stopping=loss", "train.keep_best=3"]
    train(Recipe.load(tiny_recipe, [*settings, "train.max_steps=4"]), run_dir)
    checkpoints = run_dir / "checkpoints"
    kept = {path.stem: path.read_bytes() for path in checkpoints.glob("*.json")}
    assert {"last", "best", "step-4"} <= set(kept)
    real_write, refused = files.atomic_write_bytes, []

    def full_disk(path, data):
        if path.suffix == ".safetensors" and path.name.startswith(f"{failing}."):
            refused.append(path.name)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, data)

    monkeypatch.setattr(files, "atomic_write_bytes", full_disk)
    longer = Recipe.load(tiny_recipe, [*settings, "train.max_steps=8"])
    with pytest.raises(NmtError, match="No space left on device.*intact") as caught:
        train(longer, run_dir, resume=True)
    assert refused and "\n" not in str(caught.value)
    for name, meta in kept.items():  # a checkpoint not yet replaced is the same; each loads
        path = checkpoints / name
        load_checkpoint(path)
        if name not in ("last", "best") or name == failing:
            assert (checkpoints / f"{name}.json").read_bytes() == meta, name
    assert not list(run_dir.rglob("*.tmp"))
    monkeypatch.setattr(files, "atomic_write_bytes", real_write)
    train(longer, run_dir, resume=True)
    train(longer, tmp_path / "unbroken")
    resumed, _ = load_checkpoint(checkpoints / "last")
    unbroken, _ = load_checkpoint(tmp_path / "unbroken" / "checkpoints" / "last")
    assert all(torch.equal(resumed[key], unbroken[key]) for key in unbroken if "model." in key)


def test_out_of_memory_names_the_batch_size_key(tiny_recipe, tmp_path, monkeypatch):
    from nmt.training import Updater

    def no_memory(self, *args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Updater, "__call__", no_memory)
    with pytest.raises(NmtError) as caught:
        train(Recipe.load(tiny_recipe), tmp_path / "run")
    message = str(caught.value)
    assert "out of memory" in message and "train.batch_tokens=600" in message
    assert "train.accumulate" in message and "\n" not in message


def test_resume_before_the_first_checkpoint_starts_from_the_beginning(tiny_recipe, tmp_path):
    from nmt.training import prepare_run_dir

    recipe = Recipe.load(tiny_recipe, ["train.max_steps=4", "train.valid_every=2"])
    prepare_run_dir(tmp_path / "run", recipe, resume=False, overwrite=False)  # then: kill -9
    (tmp_path / "run" / "checkpoints" / ".last.json.x1.tmp").write_text("{")  # a torn write
    result = train(recipe, tmp_path / "run", resume=True)
    assert result.steps == 4
    assert not list((tmp_path / "run").rglob("*.tmp"))
