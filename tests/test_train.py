"""Training-loop behaviour: exact resume, Ctrl-C, and what a run directory guarantees."""

import shutil

import numpy as np
import pytest
import torch

from nmt.checkpoint import load_checkpoint
from nmt.errors import NmtError
from nmt.files import sha256_file
from nmt.recipe import Recipe
from nmt.training import train
from nmt.translate import Translator

STEPS = ["train.max_steps=8", "train.valid_every=4", "model.dropout=0.2", "train.log_every=1"]


def losses(run_dir):
    rows = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    return [row.split(",")[3] for row in rows if ",train," in row]


@pytest.mark.parametrize(
    "extra",
    [
        [],
        [
            "train.accumulate=2",
            "train.schedule=rsqrt",
            "train.warmup_steps=3",
            "train.optimizer=adamw",
            "train.weight_decay=0.01",
        ],
        # Small-data regularisers over three epochs of 3 updates (batches of 4,000 tokens), so
        # that the run resumed after update 4 resegments epoch 2 as the unbroken run did.
        [
            "tokenizer.sampling_alpha=0.3",
            "model.source_word_dropout=0.1",
            "model.target_word_dropout=0.1",
            "model.locked_dropout=true",
            "train.batch_tokens=4000",
            "data.max_len=40",
        ],
    ],
    ids=["adam", "accumulate-rsqrt-adamw", "regularised"],
)
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
    import signal

    run_dir = tmp_path / "run"
    calls = {"n": 0}
    original = torch.optim.Adam.step

    def interrupted_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C inside the third update
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        train(Recipe.load(tiny_recipe, STEPS), run_dir)
    _, meta = load_checkpoint(run_dir / "checkpoints" / "last")
    assert meta["progress"]["step"] == 3  # the update it landed in is finished, then saved
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
    with pytest.raises(NmtError, match="spm.model: not the SentencePiece model checkpoint"):
        Translator.from_run(first)


def test_every_filtered_pair_is_a_clear_error(tiny_recipe, tmp_path):
    with pytest.raises(NmtError, match="every pair was filtered out"):
        train(Recipe.load(tiny_recipe, ["data.max_len=1"]), tmp_path / "run")


def test_accumulation_schedule_keep_best_average_and_curves(tiny_recipe, tmp_path, capsys):
    from nmt.cli import average_main

    run_dir = tmp_path / "run"
    result = train(
        Recipe.load(
            tiny_recipe,
            [
                "train.max_steps=6",
                "train.valid_every=1",
                "train.accumulate=2",
                "train.keep_best=2",
                "train.schedule=plateau",
                "train.plateau_patience=1",
                "train.early_stopping=chrf",
                "train.patience=0",
                "train.optimizer=sgd",
                "train.momentum=0.9",
                "train.lr=0.5",
            ],
        ),
        run_dir,
    )
    _, meta = load_checkpoint(run_dir / "checkpoints" / "last")
    progress = meta["progress"]
    # 6 updates of 2 batches each took the first 12 batches of the first epoch (it has 13)
    assert (progress["step"], progress["epoch"], progress["batch_in_epoch"]) == (6, 0, 12)
    history = progress["history"]
    assert result.metric == "chrf" and result.best == max(h["dev_chrf"] for h in history)
    # Plateau: one decay per validation without improvement.
    worse = sum(
        1
        for a, b in zip(history, history[1:])
        if b["dev_chrf"] <= max(h["dev_chrf"] for h in history[: history.index(b)])
    )
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


@pytest.mark.parametrize(
    "variant",
    [
        ["model.attention=bahdanau", "model.decoder_cell=gru"],
        [
            "model.attention=luong-dot",
            "model.hidden_size=12",
            "model.decoder_hidden_size=24",
            "model.decoder_init=last",
            "model.encoder_cell=rnn",
        ],
        [
            "model.attention=luong-general",
            "model.input_feeding=false",
            "model.decoder_layers=2",
            "model.tie_embeddings=true",
            "model.tie_output=true",
            "model.embedding_size=24",
        ],
    ],
)
def test_variants_train_and_translate_from_recipe_keys(tiny_recipe, tmp_path, variant):
    """Each variant's keys reach the network the run trains and translation loads: its cells,
    layers, attention score, input feeding and tied weights."""
    run_dir = tmp_path / "run"
    recipe = Recipe.load(tiny_recipe, ["train.max_steps=2", *variant])
    train(recipe, run_dir)
    translator = Translator.from_run(run_dir)
    found = translator.translate(["zwei Katzen", "am dritten März"], beam=2)
    assert len(found) == 2 and all(h.tokens for h in found)
    config, model = recipe.model, translator.model
    cells = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}
    assert type(model.encoder.rnn) is cells[config.encoder_cell]
    assert type(model.decoder.rnn) is cells[config.decoder_cell]
    assert model.decoder.rnn.num_layers == config.decoder_layers
    scores = {"bahdanau": "AdditiveAttention", "luong-dot": "DotAttention"}
    assert type(model.decoder.attention).__name__ == scores.get(
        config.attention, "GeneralAttention"
    )
    context = 2 * config.hidden_size if config.flow == "bahdanau" else 0  # Bahdanau: c_t in
    feed = config.decoder_hidden_size if config.input_feeding else 0
    assert model.decoder.rnn.input_size == config.embedding_size + context + feed
    target = model.target_embedding.weight
    assert (model.output.weight is target) == config.tie_output
    assert (model.source_embedding.weight is target) == config.tie_embeddings


def test_time_budget_stops_after_validating_and_saving(tiny_recipe, tmp_path):
    result = train(
        Recipe.load(tiny_recipe, ["train.max_time=0.000001s", "train.max_steps=50"]),
        tmp_path / "run",
    )
    assert result.steps == 1  # the budget is checked after each update
    _, meta = load_checkpoint(tmp_path / "run" / "checkpoints" / "last")
    assert meta["progress"]["history"][-1]["step"] == 1
    with pytest.raises(NmtError, match="train.max_time must be a duration"):
        Recipe.load(tiny_recipe, ["train.max_time=soon"])


@pytest.mark.parametrize(
    "signal_name, exit_code, said", [("SIGTERM", 143, "terminated"), ("SIGINT", 130, "interrupted")]
)
def test_a_stop_signal_saves_and_exits_with_its_code(
    tiny_recipe, tmp_path, monkeypatch, capsys, signal_name, exit_code, said
):
    """SIGTERM (kill) and SIGINT (Ctrl-C) in the middle of an update: the update finishes, is
    saved, and the command exits with the shell's code for the signal (143, 130)."""
    import os
    import signal

    from nmt.cli import train_main

    number = getattr(signal, signal_name)
    before = signal.getsignal(number)

    original = torch.optim.Adam.step
    calls = {"n": 0}

    def terminated_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), number)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", terminated_step)
    with pytest.raises(SystemExit) as code:
        train_main([str(tiny_recipe), "--run-dir", str(tmp_path / "run"), *STEPS])
    assert code.value.code == exit_code
    assert capsys.readouterr().err.rstrip().endswith(f"nmt-train: {said}")
    _, meta = load_checkpoint(tmp_path / "run" / "checkpoints" / "last")
    assert meta["progress"]["step"] == 3  # the signal arrived in the third update, finished first
    assert signal.getsignal(number) is before  # the handler is put back


def test_non_finite_losses_are_skipped_then_stop_training(tiny_recipe, tmp_path, monkeypatch):
    import nmt.training as training

    original = training.batch_loss
    calls = {"n": 0}

    def sometimes_nan(model, batch, smoothing):  # training updates 3 and 8+ see a NaN loss
        loss = original(model, batch, smoothing)
        if not model.training:
            return loss
        calls["n"] += 1
        return loss * float("nan") if calls["n"] == 3 or calls["n"] >= 8 else loss

    monkeypatch.setattr(training, "batch_loss", sometimes_nan)
    with pytest.raises(NmtError, match="5 non-finite losses in a row at step 7"):
        train(
            Recipe.load(tiny_recipe, ["train.max_steps=40", "train.valid_every=2"]),
            tmp_path / "run",
        )
    # Update 3 was skipped, 4-7 became steps 3-6; the last checkpoint (step 6) is from before
    # the fault and holds no NaN.
    tensors, meta = load_checkpoint(tmp_path / "run" / "checkpoints" / "last")
    assert meta["progress"]["step"] == 6
    assert all(torch.isfinite(t).all() for k, t in tensors.items() if k.startswith("model."))


def test_overlong_input_lines_are_cut_with_a_warning(tiny_recipe, tmp_path, caplog):
    train(Recipe.load(tiny_recipe, ["train.max_steps=2", "data.max_len=12"]), tmp_path / "run")
    translator = Translator.from_run(tmp_path / "run")
    long_line = " ".join(["zweiundzwanzig Katzen"] * 50)
    with caplog.at_level("WARNING", logger="nmt"):
        hyps = translator.translate(["zwei Katzen", long_line, "\x00\x07 drei"], beam=2)
    assert len(hyps) == 3
    assert "line(s) 2: longer than the 12 subword tokens" in caplog.text


def _rows_without_timing(run_dir):
    import csv

    with open(run_dir / "metrics.csv", newline="") as handle:
        return [
            {k: v for k, v in row.items() if k not in ("target_tokens_per_s", "elapsed_s")}
            for row in csv.DictReader(handle)
        ]


def _another_value(field):
    """A valid value of a `decode` key other than its default."""
    default, meta = field.default, field.metadata
    if isinstance(default, bool):
        return not default
    if meta.get("choices"):
        return next(choice for choice in meta["choices"] if choice != default)
    if isinstance(default, int):
        return default + 2
    return default / 2 if default > 0 else 0.3


def test_decode_keys_stay_at_translation_time(tiny_recipe, tmp_path):
    """Validation decodes greedily with fixed settings whatever the recipe's `decode` section
    says: a shortlist must not need a lexicon, sampling must not make dev BLEU random."""
    import dataclasses

    from nmt.recipe import DecodeConfig

    changed = [
        f"decode.{field.name}={_another_value(field)}" for field in dataclasses.fields(DecodeConfig)
    ]
    steps = ["train.max_steps=6", "train.valid_every=2", "model.dropout=0.2"]
    recipe = Recipe.load(tiny_recipe, [*steps, *changed])
    assert all(
        getattr(recipe.decode, field.name) != field.default
        for field in dataclasses.fields(DecodeConfig)
    )  # every key really changed
    train(Recipe.load(tiny_recipe, steps), tmp_path / "plain")
    train(recipe, tmp_path / "decoded")
    assert _rows_without_timing(tmp_path / "decoded") == _rows_without_timing(tmp_path / "plain")
    assert (tmp_path / "decoded" / "checkpoints" / "best.json").is_file()


def test_overwrite_removes_only_what_nmt_wrote(tiny_recipe, tmp_path):
    run_dir = tmp_path / "exp1"
    steps = ["train.max_steps=2", "train.valid_every=2"]
    train(Recipe.load(tiny_recipe, steps), run_dir)
    (run_dir / "notes.md").write_text("what I tried\n")
    (run_dir / "data").mkdir()
    (run_dir / "data" / "extra.de").write_text("eins\n")
    checkpoints = run_dir / "checkpoints"
    (checkpoints / "README").write_text("mine\n")
    (checkpoints / "theirs.json").write_text("{}")
    (checkpoints / "model.safetensors").write_bytes(b"theirs")
    (checkpoints / "old.0123456789ab.safetensors").write_bytes(b"orphan of nmt's naming")
    train(Recipe.load(tiny_recipe, steps), run_dir, overwrite=True)
    assert (run_dir / "notes.md").read_text() == "what I tried\n"
    assert (run_dir / "data" / "extra.de").read_text() == "eins\n"
    assert (checkpoints / "README").read_text() == "mine\n"
    assert (checkpoints / "theirs.json").read_text() == "{}"
    assert (checkpoints / "model.safetensors").read_bytes() == b"theirs"
    assert not (checkpoints / "old.0123456789ab.safetensors").exists()
    # What nmt wrote is a fresh run's: no rows or weights of the first run are left.
    train(Recipe.load(tiny_recipe, steps), tmp_path / "fresh")
    assert _rows_without_timing(run_dir) == _rows_without_timing(tmp_path / "fresh")
    ours, _ = load_checkpoint(checkpoints / "last")
    fresh, _ = load_checkpoint(tmp_path / "fresh" / "checkpoints" / "last")
    assert ours.keys() == fresh.keys() and all(torch.equal(ours[k], fresh[k]) for k in fresh)
    Translator.from_run(run_dir).translate(["eins"])


def test_overwrite_removes_what_translation_added_to_the_run(tiny_recipe, tmp_path):
    """Tuned decoding, the shortlist's lexicon and the diagnostics' norms belong to the old
    model: a retrained run that kept them would decode with another model's settings."""
    from nmt.scoring.diagnostics import dev_norms
    from nmt.translate import save_tuned_decoding

    run_dir = tmp_path / "exp"
    steps = ["train.max_steps=2", "train.valid_every=1", "train.keep_best=2"]
    train(Recipe.load(tiny_recipe, steps), run_dir)
    save_tuned_decoding(run_dir, {"beam": 1})
    translator = Translator.from_run(run_dir)
    translator.translate(["eins zwei"], shortlist=5)  # builds lexicon.safetensors
    dev_norms(translator, run_dir)
    added = ["decode.yaml", "lexicon.safetensors", "diagnostics.json"]
    assert all((run_dir / name).is_file() for name in added)
    train(
        Recipe.load(tiny_recipe, ["train.max_steps=1", "train.valid_every=1"]),
        run_dir,
        overwrite=True,
    )
    assert [name for name in added if (run_dir / name).exists()] == []
    assert not list((run_dir / "checkpoints").glob("step-2*"))
    rows = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    assert max(int(row.split(",")[0]) for row in rows) == 1


def test_a_folder_with_the_users_own_files_is_never_overwritten(tiny_recipe, tmp_path):
    """The user's recipe kept as exp1/recipe.yaml is not a run: nmt refuses to write over it,
    --overwrite included; a folder with only other files of the user's is fine to train in."""
    exp = tmp_path / "exp1"
    exp.mkdir()
    mine = tiny_recipe.read_text().replace("root: corpus", f"root: {tiny_recipe.parent / 'corpus'}")
    (exp / "recipe.yaml").write_text(mine)
    for overwrite in (False, True):
        with pytest.raises(NmtError, match="recipe.yaml: exists and was not written by an nmt"):
            train(Recipe.load(exp / "recipe.yaml", ["train.max_steps=1"]), exp, overwrite=overwrite)
    assert (exp / "recipe.yaml").read_text() == mine
    (exp / "checkpoints").mkdir()  # another tool's folder beside the recipe: still not a run
    (exp / "checkpoints" / "model.safetensors").write_bytes(b"theirs")
    with pytest.raises(NmtError, match="exists and was not written by an nmt run"):
        train(Recipe.load(exp / "recipe.yaml", ["train.max_steps=1"]), exp, overwrite=True)
    assert (exp / "recipe.yaml").read_text() == mine
    assert (exp / "checkpoints" / "model.safetensors").read_bytes() == b"theirs"
    with pytest.raises(NmtError, match="nothing to resume"):
        train(Recipe.load(exp / "recipe.yaml"), exp, resume=True)
    notes = tmp_path / "exp2"
    notes.mkdir()
    (notes / "notes.md").write_text("plan\n")
    train(Recipe.load(exp / "recipe.yaml", ["train.max_steps=1"]), notes)
    assert (notes / "notes.md").read_text() == "plan\n"


def test_resume_reuses_the_runs_sentencepiece_model(tiny_recipe, tmp_path, monkeypatch):
    """A resumed run segments with the model it trained (retraining could give another
    vocabulary, for instance after the corpus changed), so SentencePiece is not trained again."""
    from nmt.data.subwords import JOINT_MODEL, Tokenizer

    steps = ["train.max_steps=2", "train.valid_every=2"]
    train(Recipe.load(tiny_recipe, steps), tmp_path / "run")
    before = sha256_file(tmp_path / "run" / JOINT_MODEL)

    def refuse(*args, **kwargs):
        raise AssertionError("SentencePiece trained again on --resume")

    monkeypatch.setattr(Tokenizer, "train", refuse)
    longer = Recipe.load(tiny_recipe, ["train.max_steps=4", "train.valid_every=2"])
    result = train(longer, tmp_path / "run", resume=True)
    assert result.steps == 4 and sha256_file(tmp_path / "run" / JOINT_MODEL) == before


def test_a_crash_between_the_two_sentencepiece_models_resumes(tiny_recipe, tmp_path, monkeypatch):
    import nmt.data.subwords as subwords

    real_write = subwords.atomic_write_bytes

    def crash_after_source(path, data):
        real_write(path, data)
        if path.name == subwords.SOURCE_MODEL:
            raise SystemExit("killed")

    monkeypatch.setattr(subwords, "atomic_write_bytes", crash_after_source)
    separate = [
        "tokenizer.joint=false",
        "tokenizer.vocab_size=100",
        "train.max_steps=2",
        "train.valid_every=2",
    ]
    with pytest.raises(SystemExit):
        train(Recipe.load(tiny_recipe, separate), tmp_path / "run")
    assert (tmp_path / "run" / subwords.SOURCE_MODEL).is_file()
    monkeypatch.undo()
    result = train(Recipe.load(tiny_recipe, separate), tmp_path / "run", resume=True)
    assert result.steps == 2
    assert (tmp_path / "run" / subwords.TARGET_MODEL).is_file()


def test_an_overwrite_cut_short_can_be_done_again(tiny_recipe, tmp_path, monkeypatch):
    """The stored recipe, which marks the folder as a run, is removed last."""
    import nmt.training as training

    steps = ["train.max_steps=2", "train.valid_every=2"]
    train(Recipe.load(tiny_recipe, steps), tmp_path / "run")
    real = training.delete_checkpoint_files

    def killed(folder):
        real(folder)
        raise SystemExit("killed")

    monkeypatch.setattr(training, "delete_checkpoint_files", killed)
    with pytest.raises(SystemExit):
        train(Recipe.load(tiny_recipe, steps), tmp_path / "run", overwrite=True)
    monkeypatch.undo()
    assert train(Recipe.load(tiny_recipe, steps), tmp_path / "run", overwrite=True).steps == 2


def _bookkeeping(**changes):
    from nmt.recipe import TrainConfig

    return TrainConfig(
        **{
            "keep_best": 2,
            "schedule": "plateau",
            "plateau_patience": 2,
            "early_stopping": "bleu",
            **changes,
        }
    )


def _scores(bleu, loss=1.0):
    return {"dev_loss": loss, "dev_ppl": 2.7, "dev_bleu": bleu, "dev_chrf": 50.0}


def test_validation_bookkeeping_is_a_pure_function():
    """Best, patience, the plateau schedule and the kept step-N set from (progress, scores,
    config) alone; the progress given is left as it was."""
    from nmt.training import Progress, record_validation

    config = _bookkeeping()
    progress, outcomes = Progress(), []
    for step, bleu in [(10, 20.0), (20, 25.0), (30, 24.0), (40, 23.0), (50, 22.0), (60, 26.0)]:
        progress.step = step
        before = repr(progress)
        progress, outcome = record_validation(progress, _scores(bleu), config)
        assert repr(progress) != before
        outcomes.append(outcome)
    assert [o.improved for o in outcomes] == [True, True, False, False, False, True]
    assert [o.kept for o in outcomes] == [True, True, True, False, False, True]
    assert [o.dropped for o in outcomes] == [[], [], [10], [], [], [30]]
    assert progress.best == 26.0 and progress.best_step == 60 and progress.bad_validations == 0
    assert progress.plateau_decays == 1  # after the 2nd validation without improvement (step 40)
    assert progress.plateau_wait == 0 and progress.kept == [[26.0, 60], [25.0, 20]]
    assert [row["step"] for row in progress.history] == [10, 20, 30, 40, 50, 60]


def test_validation_bookkeeping_leaves_its_input_alone_and_follows_the_config():
    from nmt.training import Progress, record_validation

    start = Progress(step=5, best=30.0, best_step=3, kept=[[30.0, 3]], history=[{"step": 3}])
    copy = repr(start)
    after, outcome = record_validation(start, _scores(10.0), _bookkeeping(keep_best=0))
    assert repr(start) == copy  # nothing of the input changed, lists included
    assert not outcome.improved and not outcome.kept and after.kept == [[30.0, 3]]
    assert after.bad_validations == 1 and after.plateau_decays == 0
    after, outcome = record_validation(
        Progress(step=1, best=-2.0),
        _scores(0.0, loss=1.5),
        _bookkeeping(early_stopping="loss", schedule="constant"),
    )
    assert outcome.improved and after.best == -1.5  # a lower loss is better
    after, _ = record_validation(
        Progress(step=1, best=-1.0, plateau_wait=1),
        _scores(0.0, 1.5),
        _bookkeeping(early_stopping="loss", schedule="constant"),
    )
    assert after.plateau_decays == 0 and after.plateau_wait == 2  # no plateau schedule


def test_a_resumed_run_knows_which_step_its_last_checkpoint_holds(
    tiny_recipe, tmp_path, monkeypatch
):
    """After --resume, the divergence error names the step `last` holds (not step 0)."""
    import nmt.training as training

    train(Recipe.load(tiny_recipe, ["train.max_steps=4", "train.valid_every=2"]), tmp_path / "run")
    original = training.batch_loss

    def always_nan(model, batch, smoothing):
        loss = original(model, batch, smoothing)
        return loss * float("nan") if model.training else loss

    monkeypatch.setattr(training, "batch_loss", always_nan)
    with pytest.raises(NmtError, match=r"checkpoints/last \(step 4\) is from before it"):
        train(
            Recipe.load(tiny_recipe, ["train.max_steps=40", "train.valid_every=2"]),
            tmp_path / "run",
            resume=True,
        )


def test_subword_sampling_segments_each_epoch_anew_and_validation_does_not(
    tiny_recipe, tmp_path, monkeypatch
):
    """With tokenizer.sampling_alpha each epoch's training pairs are segmented by sampling,
    seeded by the epoch (the same epoch twice: the same segmentation), the pairs themselves
    unchanged (their text decodes back, through the rows filtering kept, chunk by chunk); the
    dev set keeps its deterministic segmentation."""
    import nmt.data.corpus as corpus
    from nmt.data.corpus import sample_split
    from nmt.data.prepare import prepare_data

    monkeypatch.setattr(corpus, "CHUNK_LINES", 7)  # many chunks, in encoding and in sampling
    recipe = Recipe.load(tiny_recipe, ["tokenizer.sampling_alpha=0.2", "data.max_len=8"])
    train_text, dev_text, tokenizer, fixed, dev = prepare_data(recipe, tmp_path / "run")
    assert len(fixed) < len(train_text.dataset)  # filtering dropped pairs: rows matter
    assert not np.array_equal(fixed.rows, np.arange(len(fixed)))
    assert [dev.target(i).tolist() for i in range(len(dev))] == tokenizer.encode_target(
        dev_text.targets
    )
    epochs = [sample_split(train_text, fixed, tokenizer, 0.2, -1, seed, 100) for seed in (1, 2, 1)]
    assert np.array_equal(epochs[0].tgt_values, epochs[2].tgt_values)  # seeded
    # The few short pairs this filter keeps have few segmentations: two seeds may agree, so
    # other seeds are compared until one differs.
    others = [
        sample_split(train_text, fixed, tokenizer, 0.2, -1, seed, 100) for seed in range(2, 9)
    ]
    segmented = [(e.src_values.tolist(), e.tgt_values.tolist()) for e in others]
    first = (epochs[0].src_values.tolist(), epochs[0].tgt_values.tolist())
    assert any(other != first for other in segmented)
    assert any(
        other != (fixed.src_values.tolist(), fixed.tgt_values.tolist()) for other in segmented
    )
    sources, targets = train_text.sources, train_text.targets
    for i in range(len(fixed)):
        for sampled in epochs:
            assert tokenizer.decode_target(sampled.target(i).tolist()) == targets[fixed.rows[i]]
            assert tokenizer.source.decode(sampled.source(i).tolist()) == sources[fixed.rows[i]]
    # A sample longer than max_len keeps the deterministic segmentation.
    short = sample_split(train_text, fixed, tokenizer, 0.01, -1, 1, 8)
    assert (short.src_lengths <= 8).all() and (short.tgt_lengths <= 8).all()
    # BPE: BPE-dropout.
    bpe = Recipe.load(tiny_recipe, ["tokenizer.type=bpe", "tokenizer.sampling_alpha=0.1"])
    text, _, bpe_tokenizer, bpe_fixed, _ = prepare_data(bpe, tmp_path / "bpe")
    dropped = sample_split(text, bpe_fixed, bpe_tokenizer, 0.1, -1, 1, 100)
    assert dropped.tgt_lengths.sum() > bpe_fixed.tgt_lengths.sum()  # merges skipped: more pieces


def test_subword_sampling_reports_how_much_longer_it_makes_the_text(tiny_recipe, tmp_path, caplog):
    """Each epoch's log says how many subwords sampling gave against the deterministic
    segmentation; past 1.5× it warns, naming the keys that segment closer."""
    from types import SimpleNamespace

    from nmt.data.corpus import sample_split
    from nmt.data.prepare import prepare_data
    from nmt.training import report_sampled_length

    recipe = Recipe.load(tiny_recipe, ["tokenizer.sampling_alpha=0.05"])
    train_text, _, tokenizer, fixed, _ = prepare_data(recipe, tmp_path / "run")
    sampled = sample_split(train_text, fixed, tokenizer, 0.05, -1, 1, 100)
    expected = (sampled.src_lengths.sum() + sampled.tgt_lengths.sum()) / (
        fixed.src_lengths.sum() + fixed.tgt_lengths.sum()
    )
    caplog.set_level("INFO", logger="nmt")
    assert report_sampled_length(sampled, fixed, recipe.tokenizer) == pytest.approx(expected)
    assert expected > 1.0 and f"{expected:.2f}× the deterministic subwords" in caplog.text

    def split(lengths):
        return SimpleNamespace(src_lengths=np.array(lengths), tgt_lengths=np.array(lengths))

    for lengths, warned in (([3, 3], False), ([3, 4], True)):  # 1.5× and 1.75× of [2, 2]
        caplog.clear()
        report_sampled_length(split(lengths), split([2, 2]), recipe.tokenizer)
        (record,) = caplog.records
        assert (record.levelname == "WARNING") == warned
        assert "sampling_alpha 0.05, sampling_nbest -1" in record.getMessage()
        assert ("a larger sampling_alpha or a sampling_nbest" in record.getMessage()) == warned
    # BPE's rate is a dropout rate: more of it fragments more, so the advice is the other way.
    caplog.clear()
    bpe = Recipe.load(tiny_recipe, ["tokenizer.type=bpe", "tokenizer.sampling_alpha=0.4"])
    report_sampled_length(split([3, 4]), split([2, 2]), bpe.tokenizer)
    assert "sampling_alpha 0.4)" in caplog.text and "a smaller sampling_alpha" in caplog.text
    # Training reports every epoch's factor.
    caplog.clear()
    options = [*STEPS, "tokenizer.sampling_alpha=0.3", "train.batch_tokens=4000"]  # 3 epochs
    train(Recipe.load(tiny_recipe, options), tmp_path / "r")
    assert caplog.text.count("× the deterministic subwords") == 3


def test_a_regularised_run_translates_deterministically(tiny_recipe, tmp_path):
    run = tmp_path / "run"
    options = ["tokenizer.sampling_alpha=0.3", "model.source_word_dropout=0.2", *STEPS]
    train(Recipe.load(tiny_recipe, options), run)
    translator = Translator.from_run(run)
    lines = ["drei", "am vierten Mai"]
    assert [h.text for h in translator.translate(lines)] == [
        h.text for h in translator.translate(lines)
    ]


def test_each_epoch_is_resegmented_with_its_own_seed_and_a_resumed_one_with_the_same(
    tiny_recipe, tmp_path, monkeypatch
):
    import nmt.training as training

    seen: list[tuple[str, int]] = []
    real = training.sample_split

    def recording(split, encoded, tokenizer, alpha, nbest, seed, max_len):
        seen.append((run_name, seed))
        return real(split, encoded, tokenizer, alpha, nbest, seed, max_len)

    monkeypatch.setattr(training, "sample_split", recording)
    options = [*STEPS, "tokenizer.sampling_alpha=0.3", "train.batch_tokens=4000"]  # 3 epochs
    run_name = "straight"
    train(Recipe.load(tiny_recipe, options), tmp_path / "straight")
    straight = [seed for name, seed in seen if name == "straight"]
    assert len(straight) == 3 and len(set(straight)) == 3  # one segmentation per epoch
    run_name = "halves"
    train(Recipe.load(tiny_recipe, [*options, "train.max_steps=4"]), tmp_path / "halves")
    train(Recipe.load(tiny_recipe, options), tmp_path / "halves", resume=True)
    halves = [seed for name, seed in seen if name == "halves"]
    assert halves == straight[:2] + straight[1:]  # epoch 2 again after the resume, as before


def test_bf16_training_on_a_cpu_tracks_fp32_and_keeps_fp32_checkpoints(tiny_recipe, tmp_path):
    """train.precision=bf16 trains on a CPU under bfloat16 autocast (emulated where the CPU has
    no bf16 instructions). Tolerance: each logged loss within 2% of fp32's over 8 updates; the
    weights, optimizer state and checkpoints stay float32."""
    for precision in ("fp32", "bf16"):
        train(
            Recipe.load(tiny_recipe, [*STEPS, f"train.precision={precision}"]), tmp_path / precision
        )
    fp32, bf16 = (
        [float(x) for x in losses(tmp_path / name)] for name in ("fp32", "bf16")
    )  # fmt: skip
    assert len(bf16) == 8 and bf16 != fp32  # it did run in bf16
    assert bf16 == pytest.approx(fp32, rel=0.02)
    tensors, _ = load_checkpoint(tmp_path / "bf16" / "checkpoints" / "last")
    assert {t.dtype for k, t in tensors.items() if t.is_floating_point()} == {torch.float32}


def test_bf16_translation_is_a_bfloat16_copy_and_refuses_int8(tiny_recipe, tmp_path):
    """precision bf16 searches (and force-decodes) with a bfloat16 copy made on first use and
    again after the weights change; scores, attention and coverage stay float32; every search
    kind works with it; int8 weights are refused."""
    run = tmp_path / "run"
    train(Recipe.load(tiny_recipe, STEPS), run)
    translator = Translator.from_run(run)
    lines = ["drei", "am vierten Mai", "siebzehn Katzen"]
    fp32 = translator.nbest(lines, nbest=2, beam=3)
    assert translator._bf16_model is None
    bf16 = translator.nbest(lines, nbest=2, beam=3, precision="bf16", keep_attention=True)
    copy = translator._bf16_model
    assert {p.dtype for p in copy.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in translator.model.parameters()} == {torch.float32}  # untouched
    assert [h.log_prob for hyps in bf16 for h in hyps] != [
        h.log_prob for hyps in fp32 for h in hyps
    ]
    assert all(h.attention.dtype == torch.float32 for hyps in bf16 for h in hyps)
    for options in (dict(beam=1), dict(beam=3, coverage_penalty=0.2), dict(beam=3, shortlist=5),
                    dict(sample=True, nbest=2)):  # fmt: skip
        found = translator.nbest(lines, precision="bf16", **options)
        assert all(isinstance(h.score, float) for hyps in found for h in hyps), options
        unrounded = translator.nbest(lines, **options)  # the same search in float32
        log_probs = [[h.log_prob for h in hyps] for hyps in found]
        assert log_probs != [[h.log_prob for h in hyps] for hyps in unrounded], options
    forced = translator.force(lines, [h[0].text for h in bf16], precision="bf16", beam=3)
    # bf16 rounds with the batch's shape (force's batch is not search's): close, not equal.
    assert [f.log_prob for f in forced] == pytest.approx([h[0].log_prob for h in bf16], rel=0.1)
    forced_fp32 = translator.force(lines, [h[0].text for h in bf16], beam=3)
    assert [f.log_prob for f in forced] != [f.log_prob for f in forced_fp32]  # bf16 was used
    with torch.no_grad():  # the weights change: a new copy
        next(translator.model.parameters()).add_(0.01)
    translator.translate(lines, precision="bf16")
    assert translator._bf16_model is not copy
    quantized = Translator.from_run(run, quantize="int8")
    with pytest.raises(NmtError, match="choose one"):
        quantized.translate(lines, precision="bf16")


def test_patience_stops_training_after_validations_without_improvement(
    tiny_recipe, tmp_path, monkeypatch
):
    """`train.patience: 2` with a dev BLEU that never improves after the first validation:
    training stops after validations 2 and 3, keeps step 1 as the best, and says it stopped
    early. The TensorBoard scalars (a stand-in writer here) are flushed at every validation,
    since a command's end does not wait for the writer's own two-minute flush."""
    import nmt.training

    class Board:
        def __init__(self):
            self.added, self.flushed = [], 0

        def add_scalar(self, key, number, step):
            self.added.append((key, step))

        def flush(self):
            self.flushed = len(self.added)

    board = Board()
    monkeypatch.setattr(nmt.training, "_tensorboard", lambda run_dir: board)
    monkeypatch.setattr(nmt.training, "corpus_bleu", lambda hyps, refs: 10.0)
    overrides = ["train.patience=2", "train.valid_every=1", "train.max_steps=50"]
    result = train(Recipe.load(tiny_recipe, overrides), tmp_path / "run")
    assert result.stopped_early and result.steps == 3
    assert (result.best_step, result.best) == (1, 10.0)
    _, meta = load_checkpoint(tmp_path / "run" / "checkpoints" / "last")
    assert meta["progress"]["step"] == 3
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[2] for row in rows[1:]].count("valid") == 3
    assert ("dev_bleu", 3) in board.added and board.flushed == len(board.added)


def test_tensorboard_when_installed_writes_inside_the_run_directory(
    tiny_recipe, tmp_path, monkeypatch
):
    """With tensorboard installed (a stand-in module here: it is not a dependency), the writer
    goes to RUN/tensorboard, never to its own default ./runs/DATE_HOST, and gets the training
    and validation scalars; --overwrite removes the folder with the rest of the run."""
    import sys
    import types

    writers = []

    class SummaryWriter:
        def __init__(self, log_dir=None):
            self.log_dir, self.added = log_dir, []
            writers.append(self)

        def add_scalar(self, key, number, step):
            self.added.append((key, step))

        def flush(self):
            pass

    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = SummaryWriter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    run = tmp_path / "run"
    steps = ["train.max_steps=4", "train.valid_every=2", "train.log_every=1"]
    train(Recipe.load(tiny_recipe, steps), run)
    (writer,) = writers
    assert writer.log_dir == str(run / "tensorboard")
    keys = {key for key, _ in writer.added}
    assert {"train_loss", "lr", "dev_bleu", "dev_chrf", "dev_loss"} <= keys
    assert ("dev_bleu", 2) in writer.added and ("dev_bleu", 4) in writer.added
    (run / "tensorboard").mkdir(exist_ok=True)  # the real writer makes it
    (run / "tensorboard" / "events.out").write_text("x")
    train(Recipe.load(tiny_recipe, steps), run, overwrite=True)
    assert not (run / "tensorboard" / "events.out").exists()


def test_an_epoch_limit_a_clip_norm_and_a_dev_subset_do_what_the_recipe_says(
    tiny_recipe, tmp_path, monkeypatch
):
    """train.max_epochs=1 alone stops after one pass over the training batches; clip_norm
    reaches the clipping at every update (0: no clipping); valid_max_sentences caps the dev
    sentences BLEU is computed on."""
    import nmt.training as training

    clipped, bleu_sizes = [], []
    real_clip, real_bleu = torch.nn.utils.clip_grad_norm_, training.corpus_bleu

    def clip(parameters, max_norm, *args, **kwargs):
        clipped.append(max_norm)
        return real_clip(parameters, max_norm, *args, **kwargs)

    def bleu(hypotheses, references, *args, **kwargs):
        bleu_sizes.append(len(hypotheses))
        return real_bleu(hypotheses, references, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    monkeypatch.setattr(training, "corpus_bleu", bleu)
    # (max_time: should the epoch limit break, the test ends in seconds, not at patience)
    settings = [
        "train.max_steps=0",
        "train.max_epochs=1",
        "train.valid_every=5",
        "train.max_time=2m",
    ]
    recipe = Recipe.load(
        tiny_recipe, [*settings, "train.clip_norm=0.25", "train.valid_max_sentences=7"]
    )
    train(recipe, tmp_path / "run")
    _, meta = load_checkpoint(tmp_path / "run" / "checkpoints" / "last")
    progress = meta["progress"]
    assert progress["epoch"] == 1 and progress["batch_in_epoch"] == 0
    batches = progress["step"]
    assert 5 < batches < 40  # one pass over 400 pairs in batches of 600 tokens
    assert clipped == [0.25] * batches
    assert bleu_sizes and set(bleu_sizes) == {7}  # of the slice's 30 dev sentences
    clipped.clear()
    train(Recipe.load(tiny_recipe, [*settings, "train.clip_norm=0"]), tmp_path / "unclipped")
    assert clipped == []


@pytest.mark.parametrize("has_bf16", [False, True])
def test_bf16_on_a_cpu_without_bf16_instructions_says_it_will_be_slow(
    tiny_recipe, tmp_path, monkeypatch, caplog, has_bf16
):
    """Issue 17: where the CPU has no AMX or AVX512-BF16, bf16 training and translation still
    run (PyTorch emulates) and the log says they will be slower than fp32; elsewhere, nothing."""
    import logging

    import nmt.training
    import nmt.translate

    monkeypatch.setattr(nmt.training, "cpu_has_bf16", lambda: has_bf16)
    monkeypatch.setattr(nmt.translate, "cpu_has_bf16", lambda: has_bf16)
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="nmt"):
        train(Recipe.load(tiny_recipe, ["train.max_steps=2", "train.precision=bf16"]), run)
        Translator.from_run(run).translate(["drei"], precision="bf16")
    warned = [r.getMessage() for r in caplog.records if "emulates them" in r.getMessage()]
    if has_bf16:
        assert warned == []
    else:
        assert [w.split(":")[0] for w in warned] == ["train.precision=bf16", "precision bf16"]
        assert all("slower than fp32" in w for w in warned)


def test_batches_of_a_sentence_count_reach_training(tiny_recipe, tmp_path):
    """`train.batch_sentences` 150 cuts the 400 training pairs into 3 batches an epoch (150,
    150, 100), where the token budget makes a different number."""
    epochs = ["train.max_epochs=2", "train.max_steps=0", "train.valid_every=100"]
    by_count = train(
        Recipe.load(tiny_recipe, [*epochs, "train.batch_sentences=150"]), tmp_path / "a"
    )
    assert by_count.steps == 6
    by_tokens = train(Recipe.load(tiny_recipe, epochs), tmp_path / "b")
    assert by_tokens.steps != 6


def test_fp16_without_cuda_trains_in_float32_and_says_so(tiny_recipe, tmp_path, caplog):
    """fp16 needs CUDA's loss scaling; on a CPU the run goes on in float32, exactly as asked
    for float32, after a warning."""
    steps = ["train.max_steps=3", "train.valid_every=3", "train.log_every=1"]
    with caplog.at_level("WARNING", logger="nmt"):
        train(Recipe.load(tiny_recipe, [*steps, "train.precision=fp16"]), tmp_path / "fp16")
    assert "train.precision=fp16 needs CUDA; training in fp32 on cpu" in caplog.text
    train(Recipe.load(tiny_recipe, steps), tmp_path / "fp32")
    assert losses(tmp_path / "fp16") == losses(tmp_path / "fp32") and losses(tmp_path / "fp32")
