"""Training-loop behaviour: exact resume, Ctrl-C, and what a run directory guarantees."""

import shutil

import pytest
import torch

from nmt.checkpoint import load_checkpoint
from nmt.errors import NmtError
from nmt.recipe import Recipe
from nmt.train import train
from nmt.translate import Translator

STEPS = ["train.max_steps=8", "train.valid_every=4", "model.dropout=0.2", "train.log_every=1"]


def losses(run_dir):
    rows = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    return [row.split(",")[3] for row in rows if ",train," in row]


@pytest.mark.parametrize("extra", [[], ["train.accumulate=2", "train.schedule=rsqrt",
                                         "train.warmup_steps=3", "train.optimizer=adamw",
                                         "train.weight_decay=0.01"]],
                         ids=["adam", "accumulate-rsqrt-adamw"])
def test_resume_continues_exactly(tiny_recipe, tmp_path, extra):
    straight = tmp_path / "straight"
    train(Recipe.load(tiny_recipe, [*STEPS, *extra]), straight)
    halves = tmp_path / "halves"
    train(Recipe.load(tiny_recipe, [*STEPS, *extra, "train.max_steps=4"]), halves)
    train(Recipe.load(tiny_recipe, [*STEPS, *extra]), halves, resume=True)
    assert losses(halves) == losses(straight) and len(losses(straight)) == 8
    a, _ = load_checkpoint(straight / "checkpoints" / "last")
    b, _ = load_checkpoint(halves / "checkpoints" / "last")
    for key in a:
        if key.startswith("model."):
            assert torch.equal(a[key], b[key]), key


def test_ctrl_c_leaves_a_checkpoint_to_resume_from(tiny_recipe, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    calls = {"n": 0}
    original = torch.optim.Adam.step

    def interrupted_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        train(Recipe.load(tiny_recipe, STEPS), run_dir)
    _, meta = load_checkpoint(run_dir / "checkpoints" / "last")
    assert meta["progress"]["step"] == 2
    monkeypatch.setattr(torch.optim.Adam, "step", original)
    result = train(Recipe.load(tiny_recipe, STEPS), run_dir, resume=True)
    assert result.steps == 8


def test_resume_refuses_a_different_model(tiny_recipe, tmp_path):
    run_dir = tmp_path / "run"
    train(Recipe.load(tiny_recipe, ["train.max_steps=2"]), run_dir)
    with pytest.raises(NmtError, match="model section differs"):
        train(Recipe.load(tiny_recipe, ["model.hidden_size=8"]), run_dir, resume=True)
    with pytest.raises(NmtError, match="nothing to resume"):
        train(Recipe.load(tiny_recipe), tmp_path / "empty", resume=True)


def test_translator_refuses_a_foreign_sentencepiece_model(tiny_recipe, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    train(Recipe.load(tiny_recipe, ["train.max_steps=2"]), first)
    train(Recipe.load(tiny_recipe, ["train.max_steps=2", "tokenizer.vocab_size=100"]), second)
    with pytest.raises(NmtError, match="an ensemble needs one shared vocabulary"):
        Translator.from_runs([first, second])
    shutil.copy(second / "spm.model", first / "spm.model")
    with pytest.raises(NmtError, match="SentencePiece model does not match"):
        Translator.from_run(first)


def test_every_filtered_pair_is_a_clear_error(tiny_recipe, tmp_path):
    with pytest.raises(NmtError, match="every pair was filtered out"):
        train(Recipe.load(tiny_recipe, ["data.max_len=1"]), tmp_path / "run")


def test_accumulation_schedule_keep_best_average_and_curves(tiny_recipe, tmp_path, capsys):
    from nmt.cli import average_main

    run_dir = tmp_path / "run"
    result = train(Recipe.load(tiny_recipe, [
        "train.max_steps=6", "train.valid_every=1", "train.accumulate=2", "train.keep_best=2",
        "train.schedule=plateau", "train.plateau_patience=1", "train.early_stopping=chrf",
        "train.patience=0", "train.optimizer=sgd", "train.momentum=0.9", "train.lr=0.5"]), run_dir)
    _, meta = load_checkpoint(run_dir / "checkpoints" / "last")
    progress = meta["progress"]
    assert progress["step"] == 6 and progress["epoch"] * 1000 + progress["batch_in_epoch"] >= 12
    history = progress["history"]
    assert result.metric == "chrf" and result.best == max(h["dev_chrf"] for h in history)
    # Plateau: one decay per validation without improvement.
    worse = sum(1 for a, b in zip(history, history[1:])
                if b["dev_chrf"] <= max(h["dev_chrf"] for h in history[:history.index(b)]))
    assert progress["plateau_decays"] == worse
    kept = sorted(p.stem for p in (run_dir / "checkpoints").glob("step-*.json"))
    best_two = sorted(history, key=lambda h: -h["dev_chrf"])[:2]
    assert len(kept) == 2 and sorted(f"step-{h['step']}" for h in best_two) == kept
    assert (run_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"

    with pytest.raises(SystemExit) as code:
        average_main(["-m", str(run_dir), "-o", "avg"])
    assert code.value.code == 0, capsys.readouterr().err
    averaged, _ = load_checkpoint(run_dir / "checkpoints" / "avg")
    parts = [load_checkpoint(run_dir / "checkpoints" / name)[0] for name in kept]
    key = "model.output.bias"
    assert torch.allclose(averaged[key], (parts[0][key] + parts[1][key]) / 2, atol=1e-6)
    Translator.from_run(run_dir, checkpoint="avg").translate(["zwei Katzen"])


@pytest.mark.parametrize("variant", [
    ["model.attention=bahdanau", "model.decoder_cell=gru"],
    ["model.attention=luong-dot", "model.hidden_size=12", "model.decoder_hidden_size=24",
     "model.decoder_init=last", "model.encoder_cell=rnn"],
    ["model.attention=luong-general", "model.input_feeding=false", "model.decoder_layers=2",
     "model.tie_embeddings=true", "model.tie_output=true", "model.embedding_size=24"],
])
def test_variants_train_and_translate_from_recipe_keys(tiny_recipe, tmp_path, variant):
    run_dir = tmp_path / "run"
    train(Recipe.load(tiny_recipe, ["train.max_steps=2", *variant]), run_dir)
    translator = Translator.from_run(run_dir)
    assert len(translator.translate(["zwei Katzen", "am dritten März"], beam=2)) == 2
