"""Interruptions at every kind of point end where an unbroken run ends.

A signal (Ctrl-C, SIGTERM) is honoured at the next safe point, so it may arrive anywhere: inside
an optimizer step, a validation or a checkpoint write. A crash (kill -9, power cut) may come at
any instant: before or after each file write, inside validation, inside an optimizer step. Either
way `--resume` must give the unbroken run's metrics rows, validation history, kept step-N set,
best checkpoint and final weights. These tests instrument the points deterministically;
tests/test_faults.py kills real processes at random moments.
"""

from __future__ import annotations

import csv
import shutil
import signal
from pathlib import Path

import pytest
import torch

import nmt.files
import nmt.training as training
from nmt.checkpoint import load_checkpoint
from nmt.errors import Terminated
from nmt.recipe import Recipe
from nmt.training import train


# Early stopping on chrF, which this tiny model improves on and off: some validations become
# `best`, some are pushed out of the kept set, and the plateau schedule decays the rate.
SETTINGS = [
    "train.max_steps=15",
    "train.valid_every=3",
    "train.log_every=2",
    "train.keep_best=2",
    "train.early_stopping=chrf",
    "train.schedule=plateau",
    "train.plateau_patience=1",
    "train.patience=0",
    "model.dropout=0.3",
    "train.threads=1",
]


class Crash(BaseException):
    """The process dies here: nothing after this instant runs, no handler saves anything."""


def metrics_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [
            {k: v for k, v in row.items() if k not in ("target_tokens_per_s", "elapsed_s")}
            for row in csv.DictReader(handle)
        ]


def outcome(run_dir: Path) -> dict:
    """Everything that must equal the unbroken run's."""
    checkpoints = run_dir / "checkpoints"
    last, meta = load_checkpoint(checkpoints / "last")
    best, best_meta = load_checkpoint(checkpoints / "best")
    progress = meta["progress"]
    kept = sorted(int(step) for _, step in progress["kept"])
    on_disk = sorted(
        int(p.name[len("step-") : -len(".json")]) for p in checkpoints.glob("step-*.json")
    )
    assert on_disk == kept, "the kept step-N set on disk is not the recorded one"
    assert best_meta["progress"]["step"] == progress["best_step"], (
        "checkpoints/best does not hold the best recorded validation"
    )
    kept_weights = {}
    for step in kept:
        tensors, step_meta = load_checkpoint(checkpoints / f"step-{step}")
        assert step_meta["progress"]["step"] == step
        kept_weights[step] = {k: v for k, v in tensors.items() if k.startswith("model.")}
    assert not list(run_dir.rglob("*.tmp"))
    for weights in checkpoints.glob("*.safetensors"):  # no orphans of interrupted writes
        assert (checkpoints / f"{weights.name.split('.')[0]}.json").is_file(), weights
    return {
        "metrics": metrics_rows(run_dir),
        "history": progress["history"],
        "kept": progress["kept"],
        "best": (progress["best"], progress["best_step"]),
        "plateau": (
            progress["plateau_decays"],
            progress["plateau_wait"],
            progress["bad_validations"],
        ),
        "last": {k: v for k, v in last.items() if k.startswith(("model.", "optimizer."))},
        "best_weights": {k: v for k, v in best.items() if k.startswith("model.")},
        "kept_weights": kept_weights,
    }


def assert_same(ours: dict, theirs: dict) -> None:
    for key in ("metrics", "history", "kept", "best", "plateau"):
        assert ours[key] == theirs[key], key
    for key in ("last", "best_weights"):
        assert ours[key].keys() == theirs[key].keys()
        for name, value in theirs[key].items():
            assert torch.equal(ours[key][name], value), (key, name)
    assert ours["kept_weights"].keys() == theirs["kept_weights"].keys()
    for step, weights in theirs["kept_weights"].items():
        for name, value in weights.items():
            assert torch.equal(ours["kept_weights"][step][name], value), (step, name)


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    """The run nobody interrupts, and the list of files it writes, in order."""
    from conftest import TINY_RECIPE, write_slice

    base = tmp_path_factory.mktemp("interrupts")
    write_slice(base / "corpus")
    recipe = base / "tiny.yaml"
    recipe.write_text(TINY_RECIPE, encoding="utf-8")
    writes: list[str] = []
    real_write = nmt.files.atomic_write_bytes

    def recording(path, data):
        writes.append(Path(path).name)
        real_write(path, data)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(nmt.files, "atomic_write_bytes", recording)
        train(Recipe.load(recipe, SETTINGS), base / "run")
    result = outcome(base / "run")
    history = result["history"]
    # The scenario exercises what the tests are about.
    assert result["plateau"][0] >= 1, "no plateau decay"
    assert (
        sum(
            1
            for i, row in enumerate(history)
            if row["dev_chrf"] > max(h["dev_chrf"] for h in history[:i] or [row])
        )
        >= 1
    )
    assert len(history) > 2 and len(result["kept"]) == 2
    return {"recipe": recipe, "outcome": result, "writes": writes}


def resume_to_the_end(recipe: Path, run_dir: Path) -> None:
    train(Recipe.load(recipe, SETTINGS), run_dir, resume=True)


def checkpoint_writes(writes: list[str]) -> list[int]:
    """Indices (1-based) of the writes made during training proper, after the run directory
    is set up."""
    return list(range(writes.index("manifest.json") + 2, len(writes) + 1))


def write_kinds(writes: list[str]) -> dict[str, int]:
    """The first write of each kind of checkpoint file (last/best/step-N weights and JSON):
    all are made at the first validation. (curves.png is not among the recorded writes:
    plots.py writes it through its own import, and it is drawn again at every validation.)"""
    kinds: dict[str, int] = {}
    for i in checkpoint_writes(writes):
        name = writes[i - 1]
        kind = name.split(".")[0].split("-")[0] + (
            "" if name.endswith(".json") else "-" + name.rsplit(".", 1)[1]
        )
        kinds.setdefault(kind, i)
    return kinds


@pytest.fixture(scope="module")
def set_up(unbroken, tmp_path_factory):
    """A run that crashed right after writing its manifest: SentencePiece trained and the corpus
    encoded, no checkpoint yet. Resumed, it starts from the beginning and writes what the
    unbroken run writes, in the same order (so crash tests need not train SentencePiece again)."""
    run_dir = tmp_path_factory.mktemp("set-up") / "run"
    real_write = nmt.files.atomic_write_bytes

    def crash_after_manifest(path, data):
        real_write(path, data)
        if Path(path).name == "manifest.json":
            raise Crash

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(nmt.files, "atomic_write_bytes", crash_after_manifest)
        with pytest.raises(Crash):
            train(Recipe.load(unbroken["recipe"], SETTINGS), run_dir)
    return run_dir


def test_a_crash_at_any_write_resumes_into_the_unbroken_run(
    unbroken, set_up, tmp_path, monkeypatch
):
    """A crash just before every write of checkpoints and metrics, and after the last: every
    instant between two writes is one of these (what comes between them, deleting step-N files
    pushed out and drawing the curves, is done again on resume)."""
    real_write = nmt.files.atomic_write_bytes
    monkeypatch.setattr(training, "plot_learning_curves", lambda *paths: None)  # time only
    targets = checkpoint_writes(unbroken["writes"])
    for target, when in [*((target, "before") for target in targets), (targets[-1], "after")]:
        count = {"n": 0}

        def crashing(path, data):
            count["n"] += 1
            if count["n"] == target and when == "before":
                raise Crash
            real_write(path, data)
            if count["n"] == target and when == "after":
                raise Crash

        run_dir = tmp_path / f"{when}-{target}"
        shutil.copytree(set_up, run_dir)
        monkeypatch.setattr(nmt.files, "atomic_write_bytes", crashing)
        with pytest.raises(Crash):
            resume_to_the_end(unbroken["recipe"], run_dir)
        monkeypatch.setattr(nmt.files, "atomic_write_bytes", real_write)
        resume_to_the_end(unbroken["recipe"], run_dir)
        assert_same(outcome(run_dir), unbroken["outcome"])


def crash_inside(monkeypatch, where: str, at: int, action) -> None:
    """Call `action` in the `at`-th call of an optimizer step or of a validation's BLEU."""
    count = {"n": 0}
    if where == "optimizer":
        original = torch.optim.Adam.step

        def step(self, *args, **kwargs):
            count["n"] += 1
            if count["n"] == at:
                action()
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torch.optim.Adam, "step", step)
    else:
        original = training.corpus_bleu

        def bleu(*args, **kwargs):
            count["n"] += 1
            if count["n"] == at:
                action()
            return original(*args, **kwargs)

        monkeypatch.setattr(training, "corpus_bleu", bleu)


@pytest.mark.parametrize("where,at", [("optimizer", 5), ("optimizer", 7), ("validation", 2)])
def test_a_crash_inside_an_update_or_a_validation_resumes_exactly(
    unbroken, tmp_path, monkeypatch, where, at
):
    def die():
        raise Crash

    crash_inside(monkeypatch, where, at, die)
    with pytest.raises(Crash):
        train(Recipe.load(unbroken["recipe"], SETTINGS), tmp_path / "run")
    monkeypatch.undo()
    resume_to_the_end(unbroken["recipe"], tmp_path / "run")
    assert_same(outcome(tmp_path / "run"), unbroken["outcome"])


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("where,at", [("optimizer", 5), ("validation", 2)])
def test_a_signal_inside_an_update_or_a_validation_stops_at_the_next_safe_point(
    unbroken, tmp_path, monkeypatch, where, at, number
):
    """The update or validation the signal lands in is finished and saved, never half done."""
    crash_inside(monkeypatch, where, at, lambda: signal.raise_signal(number))
    expected = Terminated if number == signal.SIGTERM else KeyboardInterrupt
    with pytest.raises(expected):
        train(Recipe.load(unbroken["recipe"], SETTINGS), tmp_path / "run")
    monkeypatch.undo()
    _, meta = load_checkpoint(tmp_path / "run" / "checkpoints" / "last")
    progress = meta["progress"]
    if where == "optimizer":
        assert progress["step"] == at  # the step the signal landed in, complete
    else:  # the second validation (step 6), recorded, and its checkpoints written
        assert [row["step"] for row in progress["history"]] == [3, 6] and progress["step"] == 6
    assert (
        signal.getsignal(number) is signal.default_int_handler
        or signal.getsignal(number) is signal.SIG_DFL
    )  # the handler is put back
    resume_to_the_end(unbroken["recipe"], tmp_path / "run")
    assert_same(outcome(tmp_path / "run"), unbroken["outcome"])


@pytest.mark.parametrize("kind", ["last", "best", "step-safetensors", "step"])
def test_a_signal_inside_a_checkpoint_write_is_honoured_after_the_validation(
    unbroken, tmp_path, monkeypatch, kind
):
    target = write_kinds(unbroken["writes"])[kind]
    real_write = nmt.files.atomic_write_bytes
    count = {"n": 0}

    def signalled(path, data):
        count["n"] += 1
        if count["n"] == target:
            signal.raise_signal(signal.SIGINT)
        real_write(path, data)

    monkeypatch.setattr(nmt.files, "atomic_write_bytes", signalled)
    with pytest.raises(KeyboardInterrupt):
        train(Recipe.load(unbroken["recipe"], SETTINGS), tmp_path / "run")
    monkeypatch.undo()
    checkpoints = tmp_path / "run" / "checkpoints"
    for name in ("last", "best", "step-3"):  # the first validation's files, all of them
        _, meta = load_checkpoint(checkpoints / name)
        assert meta["progress"]["step"] == 3 and len(meta["progress"]["history"]) == 1, name
    resume_to_the_end(unbroken["recipe"], tmp_path / "run")
    assert_same(outcome(tmp_path / "run"), unbroken["outcome"])


def test_a_second_signal_stops_at_once_and_the_run_still_resumes_exactly(
    unbroken, tmp_path, monkeypatch
):
    def twice():
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)

    crash_inside(monkeypatch, "validation", 2, twice)
    with pytest.raises(KeyboardInterrupt):
        train(Recipe.load(unbroken["recipe"], SETTINGS), tmp_path / "run")
    monkeypatch.undo()
    _, meta = load_checkpoint(tmp_path / "run" / "checkpoints" / "last")
    assert meta["progress"]["step"] == 3  # nothing saved after the first validation's commit
    resume_to_the_end(unbroken["recipe"], tmp_path / "run")
    assert_same(outcome(tmp_path / "run"), unbroken["outcome"])
