"""The files of a run directory, named once: what nmt-train writes there (and `--overwrite`
removes), which of them record the run (no command's output may replace them), and how a folder
is known to be a run. Needs no torch, so the commands check their outputs before loading it."""

from __future__ import annotations

import json
import os
from pathlib import Path

RECIPE = "recipe.yaml"  # the resolved recipe that ran; marks the folder as a run
MANIFEST = "manifest.json"
JOINT_MODEL = "spm.model"  # SentencePiece: one model for both languages, or one each
SOURCE_MODEL, TARGET_MODEL = "spm.src.model", "spm.tgt.model"
METRICS = "metrics.csv"
LOG = "train.log"
CURVES = "curves.png"
TUNED = "decode.yaml"  # decoding defaults chosen by `nmt-translate --tune`, over the recipe's
LEXICON = "lexicon.safetensors"  # the shortlist's lexicon, built on first use
DIAGNOSTICS = "diagnostics.json"  # the dev set's norms for `--diagnose`, a cache
CHECKPOINTS = "checkpoints"

# What nmt writes in a run directory: `--overwrite` removes these and nothing else, so notes,
# data or a recipe of the user's kept beside them survive.
RUN_FILES = (
    MANIFEST,
    JOINT_MODEL,
    SOURCE_MODEL,
    TARGET_MODEL,
    METRICS,
    LOG,
    CURVES,
    TUNED,
    LEXICON,
    DIAGNOSTICS,
    RECIPE,
)  # the recipe last: it marks the folder as a run until the end
RUN_FOLDERS = ("cache", "tensorboard")  # made whole by nmt and the libraries it points there
# A command's output may replace none of these in any run, nor anything inside the folders.
PROTECTED_FOLDERS = (CHECKPOINTS, *RUN_FOLDERS)
# The first line of the recipe a run stores: a recipe.yaml of the user's is never taken for one.
RUN_HEADER = "# nmt run: the resolved recipe this run trains with (written by nmt-train)\n"


def holds_run(run_dir: Path) -> bool:
    """Whether nmt-train made `run_dir`: its stored recipe begins with RUN_HEADER (or, for runs
    made before the header existed, nmt's manifest.json lies beside it)."""
    try:
        with open(run_dir / RECIPE, encoding="utf-8", errors="replace") as handle:
            if handle.readline() == RUN_HEADER:
                return True
    except OSError:  # missing, or unreadable: the manifest may still say
        pass
    try:
        return "provenance" in json.loads((run_dir / MANIFEST).read_text("utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def record_of(path: Path) -> Path | None:
    """The run directory a write to `path` would change (one of its RUN_FILES, or anything in
    its PROTECTED_FOLDERS), if any: looked for along the path as given and as resolved, so a
    symbolic link in either place does not hide the run."""
    forms = [Path(os.path.abspath(path))]
    try:
        forms.append(path.resolve())
    except (OSError, RuntimeError):  # a loop of links: the path as given must do
        pass
    for form in forms:
        for folder in (form, *form.parents):
            if folder.name in PROTECTED_FOLDERS and holds_run(folder.parent):
                return folder.parent
        if form.name in RUN_FILES and holds_run(form.parent):
            return form.parent
    return None
