"""Recipes: one YAML file that drives data, tokenizer, model, training and decoding.

A recipe is loaded into frozen dataclasses. Every field carries its documentation and its
constraints, so validation, error messages and the README's recipe reference come from one place.
Errors always name the dotted key and the file; an unknown key suggests the nearest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from nmt.errors import NmtError


SHORTLIST_WIDTH = 50  # translations per source token a run's lexicon keeps


def option(
    default: Any,
    help: str,
    *,
    choices: tuple | None = None,
    min: float | None = None,
    max: float | None = None,
    flag: str | None = None,
) -> Any:
    """A recipe field with its documentation and constraints attached. `flag`: a `decode`
    key's command-line spelling where it is not --KEY-WITH-DASHES (nmt-translate's flags are
    made from these fields)."""
    return field(
        default=default,
        metadata={"help": help, "choices": choices, "min": min, "max": max, "flag": flag},
    )


@dataclass(frozen=True)
class DataConfig:
    """The `data` section: where the parallel corpus is, its layout, and which pairs training
    drops."""

    root: str = option(
        ".",
        "Folder holding the corpus files. A relative path in the recipe "
        "is relative to the recipe file; one given as an override, to the "
        "current directory.",
    )
    format: str = option(
        "text",
        "Corpus layout: `text` (one file per language, `SPLIT.LANG`), "
        "`tsv` (`SPLIT.tsv`, source<TAB>target), `jsonl` (`SPLIT.jsonl`, "
        '`{"translation": {LANG: ...}}`) or `hub` (a Hugging Face dataset).',
        choices=("text", "tsv", "jsonl", "hub"),
    )
    src_lang: str = option("de", "Source language code (file suffix / translation key).")
    tgt_lang: str = option("en", "Target language code.")
    train: str = option("train", "Name of the training split.")
    dev: str = option("dev", "Name of the development split (validation during training).")
    hub_name: str = option("", "With `format: hub`: the dataset's name on the Hugging Face hub.")
    hub_config: str = option("", "With `format: hub`: the dataset's configuration, e.g. `de-en`.")
    max_len: int = option(
        100,
        "Training pairs with more subword tokens than this on either side "
        "are dropped (and counted in the log).",
        min=1,
    )
    max_ratio: float = option(
        9.0,
        "Training pairs whose subword length ratio exceeds this are "
        "dropped (and counted in the log); 9 as in Moses' "
        "clean-corpus-n.",
        min=1.0,
    )


@dataclass(frozen=True)
class TokenizerConfig:
    """The `tokenizer` section: the SentencePiece subword vocabulary (or two) learnt from the
    training data."""

    type: str = option("unigram", "SentencePiece model type.", choices=("unigram", "bpe"))
    vocab_size: int = option(
        8000, "Subword vocabulary size (per vocabulary when not joint).", min=8
    )
    joint: bool = option(True, "One vocabulary shared by source and target, trained on both sides.")
    character_coverage: float = option(
        1.0,
        "Share of characters SentencePiece must cover (0.9995 suits large alphabets).",
        min=0.5,
        max=1.0,
    )
    max_sentences: int = option(
        1_000_000,
        "SentencePiece trains on at most this many sentences (a seeded sample of the "
        "training data; with a joint vocabulary, of both sides' sentences together).",
        min=1,
    )
    sampling_alpha: float = option(
        0.0,
        "Subword regularisation (Kudo, 2018): each epoch segments the training text anew by "
        "SentencePiece's sampling, seeded by the recipe's seed and the epoch. Unigram: the "
        "smoothing α of the sampled segmentations' probabilities (small α: more varied, and "
        "longer: drawn from all segmentations, α 0.1 doubles Multi30k's subwords, 0.3 adds 12%; "
        "from the 64 best, α 0.1 adds 11%, Kudo's setting; each epoch's log gives the factor "
        "and warns past 1.5×); BPE: the BPE-dropout rate (Provilkov et al., 2020; 0.1 is "
        "common). "
        "Validation and translation segment deterministically. Each epoch's segmentation is "
        "held in memory (8 bytes per subword of the training data) and made on one thread "
        "(SentencePiece's samples are reproducible only so). 0: off.",
        min=0.0,
        max=1.0,
    )
    sampling_nbest: int = option(
        -1,
        "Unigram sampling draws from the n best segmentations (2 or more); -1: from all of them.",
        min=-1,
    )


# name: (score, flow). The score classes and both flows, with their papers' formulas, are in
# nmt/model/attention.py and nmt/model/decoder.py; the table is here because validation
# resolves a preset's score (`Recipe.check`), and this layer may not import the model.
ATTENTION_PRESETS = {
    "bahdanau": ("additive", "bahdanau"),
    "luong-dot": ("dot", "luong"),
    "luong-general": ("general", "luong"),
    "luong-concat": ("additive", "luong"),
}


@dataclass(frozen=True)
class ModelConfig:
    """The `model` section: cells, sizes, attention and initialisation of the network.
    `score` and `flow` resolve the attention preset and its overrides."""

    encoder_cell: str = option(
        "lstm", "Recurrent cell of the encoder.", choices=("lstm", "gru", "rnn")
    )
    decoder_cell: str = option(
        "lstm", "Recurrent cell of the decoder.", choices=("lstm", "gru", "rnn")
    )
    embedding_size: int = option(256, "Size of source and target embeddings.", min=1)
    hidden_size: int = option(
        256,
        "Encoder hidden size, per direction: a bidirectional encoder outputs twice this.",
        min=1,
    )
    encoder_layers: int = option(1, "Stacked encoder layers.", min=1)
    bidirectional: bool = option(True, "Read the source in both directions.")
    decoder_hidden_size: int = option(256, "Decoder hidden size.", min=1)
    decoder_layers: int = option(1, "Stacked decoder layers.", min=1)
    attention: str = option(
        "bahdanau",
        "A classic attention design, setting `attention_score` "
        "and `attention_flow`: `bahdanau` (additive, Bahdanau "
        "flow; Bahdanau et al., 2015), `luong-dot`, "
        "`luong-general` and `luong-concat` (additive) with the "
        "Luong flow (Luong et al., 2015).",
        choices=tuple(ATTENTION_PRESETS),
    )
    attention_score: str = option(
        "",
        "Overrides the preset's score (empty: the preset's): "
        "`additive` v·tanh(W·q + U·m), `dot` q·m, or `general` "
        "q·W·m.",
        choices=("", "additive", "dot", "general"),
    )
    attention_flow: str = option(
        "",
        "Overrides the preset's flow (empty: the preset's): "
        "`luong` (the current decoder state queries the memory; "
        "the context joins it after the recurrent step) or "
        "`bahdanau` (the previous state queries; the context is "
        "an input of the recurrent step).",
        choices=("", "luong", "bahdanau"),
    )
    input_feeding: bool = option(
        True,
        "Feed the previous attentional vector tanh(W[c; h]) into "
        "the next decoder step (Luong et al., 2015).",
    )
    decoder_init: str = option(
        "bridge",
        "The decoder's first state: `bridge` (a learned "
        "projection of the encoder's final state), `last` (that "
        "state as it is; sizes must match) or `zeros`.",
        choices=("bridge", "last", "zeros"),
    )
    dropout: float = option(
        0.3, "Dropout on embeddings, between layers and before the output layer.", min=0.0, max=0.95
    )
    locked_dropout: bool = option(
        False,
        "Variational dropout (Gal & Ghahramani, 2016): the dropout masks of the recurrent "
        "network's inputs (the embeddings) and outputs (the encoder's states, which it then also "
        "drops, and the decoder's attentional vectors) are drawn once per sentence and shared "
        "by all its time steps, not drawn anew at each step. Same `dropout` rate; between "
        "stacked layers dropout stays per step.",
    )
    source_word_dropout: float = option(
        0.0,
        "In training, each source subword is replaced by <unk> with this probability "
        "(word dropout): the model learns not to lean on any single token, which helps most "
        "when data is small.",
        min=0.0,
        max=0.5,
    )
    target_word_dropout: float = option(
        0.0,
        "In training, each target subword the decoder is fed (teacher forcing; the words it "
        "predicts are left alone) is replaced by <unk> with this probability.",
        min=0.0,
        max=0.5,
    )
    tie_embeddings: bool = option(
        False, "Source and target share one embedding matrix (needs `tokenizer.joint`)."
    )
    tie_output: bool = option(
        False,
        "Share the output layer's weights with the target embeddings "
        "(needs `embedding_size` = `decoder_hidden_size`).",
    )
    init: str = option(
        "pytorch",
        "Weight initialisation: `pytorch` (PyTorch's defaults; "
        "embeddings N(0, 1/embedding_size)), `uniform` (±`init_range`) "
        "or `xavier` (Glorot uniform matrices, zero biases).",
        choices=("pytorch", "uniform", "xavier"),
    )
    init_range: float = option(0.1, "Range of `init: uniform`.", min=0.0)
    orthogonal_recurrent: bool = option(False, "Orthogonal initialisation of recurrent weights.")
    forget_bias: float = option(
        0.0, "Added to the LSTM forget-gate biases after initialisation (1.0 is a common choice)."
    )

    @property
    def score(self) -> str:
        """The attention score: `attention_score`, else the preset's."""
        return self.attention_score or ATTENTION_PRESETS[self.attention][0]

    @property
    def flow(self) -> str:
        """The attention flow: `attention_flow`, else the preset's."""
        return self.attention_flow or ATTENTION_PRESETS[self.attention][1]

    @property
    def memory_size(self) -> int:
        return self.hidden_size * (2 if self.bidirectional else 1)


@dataclass(frozen=True)
class TrainConfig:
    """The `train` section: batching, optimizer, learning-rate schedule, validation, stopping,
    device and precision."""

    batch_tokens: int = option(
        4096,
        "Token budget of a batch: sentences × longest side (padding included) stays within it.",
        min=1,
    )
    batch_sentences: int = option(
        0, "If above 0, batches hold this many sentences instead of a token budget.", min=0
    )
    optimizer: str = option(
        "adam",
        "`adam`, `adamw` (decoupled weight decay) or `sgd` (with `momentum`).",
        choices=("adam", "adamw", "sgd"),
    )
    lr: float = option(1e-3, "Peak learning rate.", min=0.0)
    weight_decay: float = option(
        0.0, "Weight decay (L2 for adam and sgd, decoupled for adamw).", min=0.0
    )
    momentum: float = option(0.0, "Momentum of `sgd`.", min=0.0, max=1.0)
    schedule: str = option(
        "constant",
        "Learning-rate schedule after warm-up: `constant`, "
        "`plateau` (× `decay` after `plateau_patience` validations "
        "without improvement), `rsqrt` (lr·sqrt(warmup/step), the "
        "inverse square root) or `exponential` (× `decay` every "
        "`decay_steps` updates).",
        choices=("constant", "plateau", "rsqrt", "exponential"),
    )
    warmup_steps: int = option(0, "Linear warm-up from 0 to `lr` over this many updates.", min=0)
    decay: float = option(
        0.5, "Factor of the `plateau` and `exponential` schedules.", min=0.0, max=1.0
    )
    decay_steps: int = option(1000, "Updates per `decay` of the `exponential` schedule.", min=1)
    plateau_patience: int = option(
        2, "Validations without improvement before `plateau` decays.", min=1
    )
    min_lr: float = option(0.0, "The learning rate never goes below this.", min=0.0)
    accumulate: int = option(
        1,
        "Batches whose gradients are summed into one update: an "
        "effective batch of `accumulate` × `batch_tokens`.",
        min=1,
    )
    clip_norm: float = option(
        1.0, "Clip the gradient's global norm to this (0 turns clipping off).", min=0.0
    )
    label_smoothing: float = option(
        0.1, "Label smoothing of the cross-entropy loss.", min=0.0, max=0.99
    )
    max_steps: int = option(0, "Stop after this many updates (0: no limit).", min=0)
    max_epochs: int = option(
        20, "Stop after this many passes over the training data (0: no limit).", min=0
    )
    max_time: str = option(
        "",
        "Stop after this much training time, e.g. `75m`, `2h`, `90s` (a bare number is "
        "minutes), validating and saving first; empty: no limit.",
    )
    valid_every: int = option(
        500,
        "Validate (loss, perplexity, greedy BLEU on dev) every N updates "
        "and at the end of training.",
        min=1,
    )
    valid_max_sentences: int = option(
        0, "Validate BLEU on at most this many dev sentences (0: all).", min=0
    )
    early_stopping: str = option(
        "bleu",
        "Dev metric that picks the best checkpoint and drives "
        "early stopping and the `plateau` schedule (BLEU and "
        "chrF of greedy search).",
        choices=("bleu", "chrf", "loss"),
    )
    keep_best: int = option(
        0,
        "Also keep this many best checkpoints as `checkpoints/step-N` "
        "(for `nmt-average`), besides `best` and `last`.",
        min=0,
    )
    patience: int = option(
        5, "Stop after this many validations without improvement (0: never).", min=0
    )
    log_every: int = option(50, "Write a metrics row every N updates.", min=1)
    device: str = option("auto", "`auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:N`.")
    precision: str = option(
        "fp32",
        "`bf16`: mixed precision with bfloat16 autocast, on CUDA and on CPUs (where the CPU has "
        "AMX or AVX512-BF16; emulated, slower than fp32, elsewhere), with float32 weights, "
        "optimizer state and checkpoints. Measured on CPUs (benchmarks/README.md): 1.65–1.92× "
        "fp32's speed on an AMD Zen 5 (Multi30k de→en, 30 epochs: test BLEU 0.16 above fp32's, "
        "val 0.44 below, one seed each); 1.1× on an Intel Xeon with AMX (18 epochs: test 0.9 "
        "below). `fp16`: CUDA only, with loss scaling.",
        choices=("fp32", "bf16", "fp16"),
    )
    threads: int = option(0, "CPU threads for PyTorch (0: PyTorch's default).", min=0)


@dataclass(frozen=True)
class DecodeConfig:
    """The `decode` section: how `nmt-translate` searches or samples by default (its flags
    override these keys)."""

    beam: int = option(5, "Beam size; 1 is greedy search.", min=1)
    length_norm: str = option(
        "gnmt",
        "Length normalization of finished hypotheses: `none`, `avg` "
        "(log P / |y|^alpha) or `gnmt` (log P / ((5+|y|)/6)^alpha); "
        "|y| counts the end-of-sentence token.",
        choices=("none", "avg", "gnmt"),
    )
    alpha: float = option(0.6, "Strength of the length normalization.", min=0.0, max=10.0)
    max_len_a: float = option(
        1.5, "Outputs stop at max_len_a · |source tokens| + max_len_b tokens.", min=0.0
    )
    max_len_b: int = option(10, "See `max_len_a`.", min=1)
    stopping: str = option(
        "exact",
        "When beam search stops a sentence before its length limit: "
        "`exact` once no hypothesis left in the beam can still beat "
        "the n-th best finished one (the result of running the beam "
        "to the limit), `first` once `beam` hypotheses have finished "
        "(a better one may still be in the beam). `exact` is the "
        "default: on Multi30k it gains 0.15 BLEU for 4-14% more "
        "search time (benchmarks/README.md).",
        choices=("exact", "first"),
    )
    batch_size: int = option(64, "Sentences translated together.", min=1)
    inter_threads: int = option(
        0,
        "Batches searched at once on a CPU, sharing PyTorch's threads (CTranslate2's "
        "`inter_threads`): a search step is many small products, which two threads share "
        "poorly, so two batches at once, one thread each, keep both busy. 0: 2 where PyTorch "
        "has exactly 2 threads (measured), else 1; never more than the batches at least half "
        "full. Outputs are those of one batch at a time (in float32 up to rounding: each batch "
        "has fewer threads); time and memory (a batch per thread) differ "
        "(benchmarks/README.md).",
        min=0,
    )
    precision: str = option(
        "fp32",
        "`bf16`: search with a bfloat16 copy of the model (log-probabilities and scores in "
        "float32). Its matrix products are several times faster on CPUs with AMX or "
        "AVX512-BF16 (emulated and slower elsewhere), but a whole translation of Multi30k's "
        "test set took 4.7 s against 5.3 s in float32 and 2.8 s with int8 weights and a "
        "shortlist on an Intel Xeon with AMX, 3.7–4.5 s with a shortlist against 3.5–4.0 s "
        "with int8 and a shortlist on an AMD Zen 5 (benchmarks/README.md): int8 with a "
        "shortlist stays the fast CPU setting. "
        "Outputs depend on the batch, as with int8; not with int8 weights.",
        choices=("fp32", "bf16"),
    )
    coverage_penalty: float = option(
        0.0,
        "GNMT coverage penalty β: adds β·Σ_i log(min(total "
        "attention on source token i, 1)) to beam scores, "
        "favouring outputs that cover the whole source.",
        min=0.0,
        max=10.0,
        flag="--beta",
    )
    min_len: int = option(0, "Outputs have at least this many subword tokens.", min=0)
    no_repeat_ngram: int = option(
        0, "No n-gram of this size occurs twice in an output (0: off).", min=0
    )
    shortlist: int = option(
        0,
        "Score only a shortlist of target tokens per batch: the "
        "`shortlist_frequent` most frequent ones, this many likeliest "
        "other translations of each source token (IBM Model 1, fitted on "
        "the training data on first use, kept as RUN/lexicon.safetensors) "
        "and, with a joint vocabulary, the source tokens; 0: the whole "
        "vocabulary. Faster search for a little BLEU (benchmarks/README.md); "
        "outputs then depend on the batch a sentence is in.",
        min=0,
        max=SHORTLIST_WIDTH,
    )
    shortlist_frequent: int = option(200, "See `shortlist`.", min=0)
    sample: bool = option(
        False,
        "Sample outputs instead of searching (`nbest` samples per "
        "input), from `temperature`, `top_k` and `top_p`.",
    )
    temperature: float = option(
        1.0,
        "Sampling temperature: below 1 sharpens the distribution, "
        "towards 0 approaches greedy search.",
        min=0.0,
    )
    top_k: int = option(0, "Sample only among the k most probable tokens (0: all).", min=0)
    top_p: float = option(
        1.0,
        "Sample only within the smallest set of tokens whose probability "
        "reaches p (nucleus sampling; 1: all).",
        min=0.0,
        max=1.0,
    )
    seed: int = option(
        1,
        "Seed of sampling. A line's samples are seeded by it and the line's number, so the "
        "same seed and input give the same samples, from a file or stdin, at any batch size "
        "(a shortlist, int8 or bf16 make them depend on the batch, as they do search).",
        min=-(2**63),
        max=2**64 - 1,
    )


@dataclass(frozen=True)
class Recipe:
    """A whole recipe: the sections, validated, plus where it and each value came from
    (`provenance`: file, override or default). `Recipe.load` reads one; `to_yaml` writes it
    back, resolved, as a run keeps it."""

    name: str = option(
        "run",
        "Name of the run; the default run directory is `runs/NAME`. A recipe file without "
        "`name:` is named after its file (`recipes/x.yaml`: `x`).",
    )
    seed: int = option(
        1234, "Seed for SentencePiece sampling, initialisation, dropout and batch order."
    )
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Where the corpus is."})
    tokenizer: TokenizerConfig = field(
        default_factory=TokenizerConfig, metadata={"help": "SentencePiece subwords."}
    )
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "The network."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "The training loop."})
    decode: DecodeConfig = field(
        default_factory=DecodeConfig, metadata={"help": "Search defaults of `nmt-translate`."}
    )
    # Where the recipe came from and where each value came from; not recipe keys themselves.
    source_path: Path | None = field(default=None, compare=False, repr=False)
    provenance: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    # ---------------------------------------------------------------- loading

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> "Recipe":
        """Read a recipe file and apply `key=value` overrides given after it."""
        path = Path(path)
        raw = _with_base(path, _read_recipe(path), (path.resolve(),))
        raw.setdefault("name", path.stem)
        override_values = parse_overrides(overrides)
        return cls.from_dict(raw, overrides=override_values, source=path)

    @classmethod
    def from_dict(
        cls, raw: dict, overrides: dict[str, Any] | None = None, source: Path | None = None
    ) -> "Recipe":
        """Build a validated recipe from nested dicts, recording where each value came from."""
        where = str(source) if source else "recipe"
        provenance: dict[str, str] = {}
        merged = _nested_copy(raw)
        _record(cls, merged, "", "file", provenance, where)
        for dotted, value in (overrides or {}).items():
            _set_dotted(cls, merged, dotted, value, where)
            provenance[dotted] = "override"
        recipe = _build(cls, merged, "", where, provenance)
        # Paths in a file are relative to that file; paths typed on the command line, to the
        # current directory. Stored resolved, so the run directory's copy works from anywhere.
        base = source.parent if source and provenance["data.root"] == "file" else Path.cwd()
        root = (base / Path(recipe.data.root).expanduser()).resolve()
        recipe = dataclasses.replace(
            recipe,
            data=dataclasses.replace(recipe.data, root=str(root)),
            source_path=source,
            provenance=provenance,
        )
        recipe.check(where)
        return recipe

    def check(self, where: str) -> None:
        """Rules that span several keys."""
        tokenizer = self.tokenizer
        if tokenizer.sampling_alpha and tokenizer.sampling_nbest in (0, 1):
            raise NmtError(
                f"{where}: tokenizer.sampling_nbest {tokenizer.sampling_nbest} leaves "
                f"SentencePiece nothing to sample from; use -1 (all) or 2 or more"
            )
        if tokenizer.type == "bpe" and tokenizer.sampling_alpha > 0.5:
            raise NmtError(
                f"{where}: tokenizer.sampling_alpha {tokenizer.sampling_alpha} would drop most "
                f"BPE merges (training on near-characters, translating on subwords); use at "
                f"most 0.5 (0.1 is common)"
            )
        model = self.model
        if model.score == "dot" and model.memory_size != model.decoder_hidden_size:
            raise NmtError(
                f"{where}: model.attention: a dot score needs decoder_hidden_size "
                f"({model.decoder_hidden_size}) equal to the encoder output size "
                f"({model.memory_size}); use a general or additive score, or change "
                f"the sizes"
            )
        if model.decoder_init == "last" and model.memory_size != model.decoder_hidden_size:
            raise NmtError(
                f"{where}: model.decoder_init: last needs decoder_hidden_size "
                f"({model.decoder_hidden_size}) equal to the encoder output size "
                f"({model.memory_size}); use bridge"
            )
        if model.tie_output and model.embedding_size != model.decoder_hidden_size:
            raise NmtError(
                f"{where}: model.tie_output needs model.embedding_size "
                f"({model.embedding_size}) = model.decoder_hidden_size "
                f"({model.decoder_hidden_size})"
            )
        if model.tie_embeddings and not self.tokenizer.joint:
            raise NmtError(
                f"{where}: model.tie_embeddings needs a joint vocabulary (tokenizer.joint: true)"
            )
        if self.train.batch_sentences == 0 and self.data.max_len + 1 > self.train.batch_tokens:
            raise NmtError(
                f"{where}: train.batch_tokens ({self.train.batch_tokens}) must exceed "
                f"data.max_len ({self.data.max_len}) so every pair fits in a batch"
            )
        if self.train.max_time:
            try:
                parse_duration(self.train.max_time)
            except ValueError:
                raise NmtError(
                    f"{where}: train.max_time must be a duration such as 75m, 2h or "
                    f"90s, not {self.train.max_time!r}"
                ) from None
        if self.data.format == "hub" and not self.data.hub_name:
            raise NmtError(f"{where}: data.hub_name is required with data.format: hub")
        check_decoding(self.decode, where)

    # ---------------------------------------------------------------- saving

    def to_dict(self) -> dict:
        """The recipe's keys and values, as they would be written in YAML."""
        return {
            f.name: (
                dataclasses.asdict(getattr(self, f.name))
                if dataclasses.is_dataclass(getattr(self, f.name))
                else getattr(self, f.name)
            )
            for f in recipe_fields(Recipe)
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


def with_changes(
    config: Any,
    changes: dict[str, Any],
    section: str,
    where: str = "option",
    labels: dict[str, str] | None = None,
) -> Any:
    """A copy of a recipe section with some keys changed, each checked like a recipe value.

    Errors name a key as `labels` spell it (a command's flags), else as SECTION.KEY."""
    fields = {f.name: f for f in recipe_fields(type(config))}
    hints = get_type_hints(type(config))
    checked = {}
    for key, value in changes.items():
        if key not in fields:
            raise _unknown_key(type(config), key, f"{section}.", where)
        checked[key] = _coerce(
            value, hints[key], fields[key], (labels or {}).get(key, f"{section}.{key}"), where
        )
    return dataclasses.replace(config, **checked)


LENGTH_CAP = 2**62  # output length limits stop here: any larger number means "no limit"


def check_decoding(decode: DecodeConfig, where: str, labels: dict[str, str] | None = None) -> None:
    """Decoding values that are each valid but cannot work together (or at all)."""

    def name(key: str) -> str:
        return (labels or {}).get(key, f"decode.{key}")

    # The limit of a one-token source, capped as search caps it (`length_limits`)
    shortest = math.floor(min(decode.max_len_a + min(decode.max_len_b, LENGTH_CAP), LENGTH_CAP))
    if decode.min_len > shortest:
        raise NmtError(
            f"{where}: {name('min_len')} {decode.min_len} is more than {shortest}, "
            f"the output length limit of a one-token source ({name('max_len_a')} + "
            f"{name('max_len_b')}); raise {name('max_len_b')} or lower "
            f"{name('min_len')}"
        )
    if decode.sample and decode.top_p == 0:
        raise NmtError(f"{where}: {name('top_p')} must be above 0 (0 leaves no token to sample)")
    if decode.sample and decode.temperature == 0:
        raise NmtError(
            f"{where}: {name('temperature')} must be above 0 to sample; for the most "
            f"probable output, search instead (beam 1 is greedy)"
        )


def parse_duration(text: str) -> float:
    """`75m` → 4500.0 seconds; units s, m, h (a bare number is minutes)."""
    text = text.strip().lower()
    unit = text[-1] if text and text[-1] in "smh" else "m"
    number = float(text[:-1] if text and text[-1] in "smh" else text)
    if not 0 <= number < float("inf"):  # nan and inf too: no limit is an empty max_time
        raise ValueError(text)
    return number * {"s": 1, "m": 60, "h": 3600}[unit]


def recipe_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of a recipe section that are recipe keys."""
    return [f for f in dataclasses.fields(cls) if f.name not in ("source_path", "provenance")]


def field_summary(f: dataclasses.Field) -> str:
    """A recipe key's help cut to its first sentence (one that ends before a capital or a
    `key`, so "e.g." ends none), for a flag's help or an API's field description."""
    return re.split(r"(?<=\.)\s+(?=[A-Z`])", f.metadata["help"], maxsplit=1)[0]


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`train.max_steps=200` → {"train.max_steps": 200}; values are read as YAML scalars."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise NmtError(f"override {item!r}: expected KEY=VALUE, e.g. train.max_steps=200")
        try:
            values[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            values[key.strip()] = text
    return values


# -------------------------------------------------------------------- internals


def _read_recipe(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NmtError(f"{path}: recipe file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise NmtError(f"{path}: cannot read recipe: {error}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise NmtError(f"{path}{where}: YAML syntax error: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise NmtError(f"{path}: a recipe is a mapping of sections, not a {type(raw).__name__}")
    return raw


def _with_base(path: Path, raw: dict, chain: tuple[Path, ...]) -> dict:
    """`raw` over the recipe its `base` key names (a file relative to `path`'s folder; bases
    may have bases), section by section: what a recipe sets replaces what its base sets. The
    base's own `data.root` stays relative to the base's folder."""
    if "base" not in raw:
        return raw
    base = raw.pop("base")
    if not isinstance(base, str) or not base.strip():
        raise NmtError(f"{path}: base must name a recipe file, not {base!r}")
    base_path = path.parent / base
    if base_path.resolve() in chain:
        raise NmtError(f"{path}: base {base}: the recipes name each other as bases")
    if not base_path.is_file():
        raise NmtError(f"{path}: base {base}: recipe file {base_path} not found")
    parent = _with_base(base_path, _read_recipe(base_path), (*chain, base_path.resolve()))
    parent.pop("name", None)  # a run is named by its own recipe (or that file's name)
    _record(Recipe, parent, "", "file", {}, str(base_path))  # its mistakes, named there:
    _build(Recipe, _nested_copy(parent), "", str(base_path), {})  # unknown keys, bad values
    data = parent.get("data")
    if isinstance(data, dict) and isinstance(data.get("root"), str):
        data["root"] = str((base_path.parent / Path(data["root"]).expanduser()).resolve())
    merged = _nested_copy(parent)
    for key, value in raw.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _nested_copy(raw: Any) -> Any:
    return {k: _nested_copy(v) for k, v in raw.items()} if isinstance(raw, dict) else raw


def _unknown_key(cls: type, key: Any, prefix: str, where: str) -> NmtError:
    names = [f.name for f in recipe_fields(cls)]
    close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
    hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(names)}"
    return NmtError(f"{where}: unknown key {prefix}{key}{hint}")


def _record(cls: type, raw: dict, prefix: str, origin: str, provenance: dict, where: str) -> None:
    """Mark every key present in `raw` as coming from `origin`; reject unknown keys."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in recipe_fields(cls)}
    for key, value in raw.items():
        if key not in fields:
            raise _unknown_key(cls, key, prefix, where)
        if dataclasses.is_dataclass(hints[key]):
            if not isinstance(value, dict):
                raise NmtError(
                    f"{where}: {prefix}{key} must be a section (a mapping of keys), not {value!r}"
                )
            _record(hints[key], value, f"{prefix}{key}.", origin, provenance, where)
        else:
            provenance[f"{prefix}{key}"] = origin


def _set_dotted(cls: type, raw: dict, dotted: str, value: Any, where: str) -> None:
    parts = dotted.split(".")
    section_cls, node, prefix = cls, raw, ""
    for part in parts[:-1]:
        hints = get_type_hints(section_cls)
        if part not in hints or not dataclasses.is_dataclass(hints[part]):
            raise _unknown_key(section_cls, part, prefix, f"override {dotted}")
        section_cls, prefix = hints[part], f"{prefix}{part}."
        node = node.setdefault(part, {})
    if parts[-1] not in {f.name for f in recipe_fields(section_cls)}:
        raise _unknown_key(section_cls, parts[-1], prefix, f"override {dotted}")
    if dataclasses.is_dataclass(get_type_hints(section_cls)[parts[-1]]):
        raise NmtError(f"override {dotted}: is a section; override one of its keys instead")
    node[parts[-1]] = value


def _build(cls: type, raw: dict, prefix: str, where: str, provenance: dict) -> Any:
    hints = get_type_hints(cls)
    values = {}
    for f in recipe_fields(cls):
        key = f"{prefix}{f.name}"
        kind = hints[f.name]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            values[f.name] = _build(kind, raw.get(f.name) or {}, f"{key}.", where, provenance)
        elif f.name in raw:
            values[f.name] = _coerce(raw[f.name], kind, f, key, where)
        else:
            provenance.setdefault(key, "default")
    return cls(**values)


def _coerce(value: Any, kind: Any, f: dataclasses.Field, key: str, where: str) -> Any:
    """Check one value's type and range; ints are accepted where floats are expected."""
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and _finite(value)
        value = float(value) if ok else value
    elif kind is str:
        ok = isinstance(value, (str, int, float)) and not isinstance(value, bool)
        value = str(value) if ok else value
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise NmtError(f"{where}: {key} must be {_type_name(kind)}, not {value!r}")
    meta = f.metadata
    if meta.get("choices") and value not in meta["choices"]:
        close = difflib.get_close_matches(str(value), meta["choices"], n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise NmtError(
            f"{where}: {key} must be one of {', '.join(meta['choices'])}, not {value!r}{hint}"
        )
    if meta.get("min") is not None and value < meta["min"]:
        raise NmtError(f"{where}: {key} must be at least {meta['min']}, not {value!r}")
    if meta.get("max") is not None and value > meta["max"]:
        raise NmtError(f"{where}: {key} must be at most {meta['max']}, not {value!r}")
    return value


def _finite(number: int | float) -> bool:
    """NaN, infinities and ints beyond a float's range are no value for a float key."""
    try:
        return math.isfinite(number)
    except OverflowError:
        return False


def _type_name(kind: Any) -> str:
    return {
        bool: "true or false",
        int: "an integer",
        float: "a finite number",
        str: "a string",
    }.get(kind, getattr(kind, "__name__", str(kind)))


def reference_markdown() -> str:
    """The README's recipe reference: every key, its default and meaning, from the fields."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for top in recipe_fields(Recipe):
        factory = top.default_factory
        section = factory() if callable(factory) and top.default is dataclasses.MISSING else None
        if section is None:
            rows.append(f"| `{top.name}` | `{top.default}` | {_cell(top.metadata['help'])} |")
            continue
        for f in recipe_fields(type(section)):
            default = getattr(section, f.name)
            shown = str(default).lower() if isinstance(default, bool) else default
            shown = '""' if shown == "" else shown
            names = [choice or '""' for choice in f.metadata.get("choices") or ()]
            choices = f" One of: {', '.join(names)}." if names else ""
            help_text = _cell(f.metadata["help"] + choices)
            rows.append(f"| `{top.name}.{f.name}` | `{shown}` | {help_text} |")
    return "\n".join(rows)


def _cell(text: str) -> str:
    """A Markdown table cell: a bare `|` (as in |y|) would end the cell and break the row."""
    return text.replace("|", "\\|")
