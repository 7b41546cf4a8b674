"""SentencePiece subwords: trained from the recipe, stored in the run directory.

Special ids are fixed for every model nmt trains: pad=0, unk=1, bos=2, eos=3.
Text goes in raw and comes out detokenized; SentencePiece handles whitespace itself.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
from pathlib import Path

import sentencepiece as spm

from nmt.files import atomic_write_bytes, sha256_file
from nmt.errors import NmtError
from nmt.recipe import TokenizerConfig
from nmt.run_dir import JOINT_MODEL, SOURCE_MODEL, TARGET_MODEL

PAD, UNK, BOS, EOS = 0, 1, 2, 3
# SentencePiece's trained model depends on its thread count, so it is fixed: the same recipe then
# gives the same subwords on a laptop and on a 64-core server.
TRAINING_THREADS = 2


class Tokenizer:
    """Source and target SentencePiece models (the same object when the vocabulary is joint)."""

    def __init__(self, source_path: Path, target_path: Path):
        self.source_path, self.target_path = Path(source_path), Path(target_path)
        self.source = _load_processor(self.source_path)
        self.target = (
            self.source
            if self.target_path == self.source_path
            else _load_processor(self.target_path)
        )
        digest = hashlib.sha256()
        for path in dict.fromkeys([self.source_path, self.target_path]):
            digest.update(sha256_file(path).encode())
        self.sha256 = digest.hexdigest()

    @property
    def source_vocab_size(self) -> int:
        return self.source.get_piece_size()

    @property
    def target_vocab_size(self) -> int:
        return self.target.get_piece_size()

    @property
    def files(self) -> list[Path]:
        return list(dict.fromkeys([self.source_path, self.target_path]))

    def encode_source(self, lines: list[str]) -> list[list[int]]:
        return self.source.encode(lines, num_threads=os.cpu_count() or 1)

    def encode_target(self, lines: list[str]) -> list[list[int]]:
        return self.target.encode(lines, num_threads=os.cpu_count() or 1)

    def encode_sampled(
        self, sources: list[str], targets: list[str], alpha: float, nbest: int, seed: int
    ) -> tuple[list[list[int]], list[list[int]]]:
        """Both sides segmented by SentencePiece's sampling (unigram: α and the n best; BPE:
        BPE-dropout at rate α). One thread, after seeding SentencePiece's generator: the same
        seed gives the same segmentation (with several threads it would not)."""
        spm.set_random_generator_seed(seed)
        return tuple(  # type: ignore[return-value]
            processor.encode(
                lines,
                enable_sampling=True,
                alpha=alpha,
                nbest_size=nbest,
                num_threads=1,
            )
            for processor, lines in ((self.source, sources), (self.target, targets))
        )

    def decode_target(self, ids: list[int]) -> str:
        return self.target.decode(ids)

    def source_pieces(self, ids: list[int]) -> list[str]:
        return [self.source.id_to_piece(i) for i in ids]

    def target_pieces(self, ids: list[int]) -> list[str]:
        return [self.target.id_to_piece(i) for i in ids]

    # ------------------------------------------------------------ construction

    @classmethod
    def load(cls, directory: Path) -> "Tokenizer":
        """The tokenizer stored in a run directory."""
        directory = Path(directory)
        if (directory / JOINT_MODEL).is_file():
            return cls(directory / JOINT_MODEL, directory / JOINT_MODEL)
        if (directory / SOURCE_MODEL).is_file() and (directory / TARGET_MODEL).is_file():
            return cls(directory / SOURCE_MODEL, directory / TARGET_MODEL)
        raise NmtError(
            f"{directory}: no SentencePiece model ({JOINT_MODEL}, or "
            f"{SOURCE_MODEL} and {TARGET_MODEL})"
        )

    @classmethod
    def exists(cls, directory: Path) -> bool:
        """Whether `directory` holds a whole tokenizer (a crash can leave half of a pair)."""
        return (directory / JOINT_MODEL).is_file() or (
            (directory / SOURCE_MODEL).is_file() and (directory / TARGET_MODEL).is_file()
        )

    @classmethod
    def train(
        cls,
        config: TokenizerConfig,
        sources: list[str],
        targets: list[str],
        directory: Path,
        seed: int,
    ) -> "Tokenizer":
        """Train SentencePiece on the training data and store the model(s) in `directory`."""
        if config.joint:
            path = directory / JOINT_MODEL
            atomic_write_bytes(path, _train_model(config, [*sources, *targets], seed))
            return cls(path, path)
        # A crash between the two writes leaves half a pair, which `exists` does not count: the
        # run trains both again when it resumes.
        source, target = _train_model(config, sources, seed), _train_model(config, targets, seed)
        atomic_write_bytes(directory / SOURCE_MODEL, source)
        atomic_write_bytes(directory / TARGET_MODEL, target)
        return cls(directory / SOURCE_MODEL, directory / TARGET_MODEL)


def looks_segmented(lines: list[str]) -> bool:
    """True when input seems already split into subwords (▁ pieces or BPE's @@ joints)."""
    words = [word for line in lines[:1000] for word in line.split()]
    if not words:
        return False
    marked = sum(1 for word in words if word.startswith("\u2581") or word.endswith("@@"))
    return marked / len(words) > 0.2


def _load_processor(path: Path) -> spm.SentencePieceProcessor:
    processor = spm.SentencePieceProcessor()
    try:
        processor.load(str(path))
    except (OSError, RuntimeError) as error:
        raise NmtError(f"{path}: not a SentencePiece model ({error})") from None
    return processor


def _train_model(config: TokenizerConfig, lines: list[str], seed: int) -> bytes:
    """A SentencePiece model trained on `lines`, as the bytes of its file."""
    lines = [line for line in lines if line.strip()]
    if len(lines) > config.max_sentences:  # a seeded sample keeps runs reproducible
        lines = random.Random(seed).sample(lines, config.max_sentences)
    if not lines:
        raise NmtError("tokenizer: the training data has no non-empty lines to learn subwords from")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=model,
            vocab_size=config.vocab_size,
            model_type=config.type,
            character_coverage=config.character_coverage,
            pad_id=PAD,
            unk_id=UNK,
            bos_id=BOS,
            eos_id=EOS,
            shuffle_input_sentence=False,
            input_sentence_size=0,
            num_threads=TRAINING_THREADS,
            minloglevel=2,
            max_sentence_length=1 << 16,
        )
    except RuntimeError as error:
        message = str(error)
        limit = re.search(r"value <= (\d+)", message)
        if limit:
            raise NmtError(
                f"tokenizer.vocab_size: {config.vocab_size} is more than SentencePiece "
                f"can build from this corpus; use at most {limit.group(1)}"
            ) from None
        raise NmtError(f"tokenizer: SentencePiece failed: {message.splitlines()[0]}") from None
    return model.getvalue()
