"""Checkpoints and run directories: safetensors weights plus JSON metadata, written atomically.

Nothing is ever unpickled. A checkpoint `NAME` is `NAME.json` (everything but tensors) and the
weights file it names, `NAME.<sha256 prefix>.safetensors` (model weights, optimizer tensors, RNG
states), whose size and SHA-256 the JSON records and the loader checks. Every file is written to a
temporary name and renamed into place. The weights go first under a new name, then the JSON that
points at them; so a crash at any instant, even between the two, leaves a complete checkpoint:
the previous one or the new one. Averaging a run's kept checkpoints into one (`average_run`,
what nmt-average does) is here too.
"""

from __future__ import annotations

import glob
import hashlib
import json
import mmap
import os
import re
import struct
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from nmt.errors import NmtError
from nmt.run_dir import CHECKPOINTS
from nmt import files  # writes go through the module, so a test can stand in for them

FORMAT_VERSION = 2


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    metadata: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Write `path`.safetensors and `path`.json; the JSON, written last, vouches for the weights."""
    tensors, seen = {}, set()
    for key, value in model.state_dict().items():
        value = value.detach().cpu().contiguous()
        if value.data_ptr() in seen:  # tied weights: safetensors stores no shared memory
            value = value.clone()
        seen.add(value.data_ptr())
        tensors[f"model.{key}"] = value
    meta = dict(metadata)
    if optimizer is not None:
        state = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for index, entry in state["state"].items():
            for name, value in entry.items():
                if torch.is_tensor(value):
                    tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(index), {})[name] = value
        meta["optimizer"] = {"param_groups": state["param_groups"], "scalars": scalars}
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    _write_checkpoint(path, save_safetensors(tensors), meta)


def _write_checkpoint(path: Path, data: bytes, meta: dict[str, Any]) -> None:
    """Weights under a content-derived name, then the JSON naming them: the JSON is the commit."""
    digest = hashlib.sha256(data).hexdigest()
    weights = path.with_name(f"{path.name}.{digest[:12]}.safetensors")
    meta = dict(
        meta,
        format_version=FORMAT_VERSION,
        weights_file=weights.name,
        weights_sha256=digest,
        weights_bytes=len(data),
    )
    files.atomic_write_bytes(weights, data)
    files.atomic_write_text(_meta_path(path), json.dumps(meta, indent=2) + "\n")
    for stale in _weights_files(path):
        if stale != weights:
            stale.unlink(missing_ok=True)


def _meta_path(path: Path) -> Path:
    """NAME.json; never Path.with_suffix, which would turn `best.avg` into `best.json`."""
    return path.with_name(f"{path.name}.json")


def _weights_files(path: Path) -> list[Path]:
    """The weights files of checkpoint NAME: `NAME.<hash>.safetensors` only, for `best.*` also
    matches `best.avg.<hash>.safetensors`, another checkpoint's."""
    own = re.compile(re.escape(path.name) + r"\.[0-9a-f]{12}\.safetensors")
    return [
        weights
        for weights in path.parent.glob(f"{glob.escape(path.name)}.*.safetensors")
        if own.fullmatch(weights.name)
    ]


def check_name(name: str, flag: str) -> str:
    """A checkpoint name must be a file name inside the run's checkpoints/, not a path."""
    if not name or name.startswith(".") or any(c in name for c in ("/", os.sep, "\0")):
        raise NmtError(
            f"{flag} {name!r}: a checkpoint name such as best, last, step-N or averaged, not a path"
        )
    return name


def delete_checkpoint(path: Path) -> None:
    """Remove a checkpoint, its JSON first so that no JSON ever names missing weights."""
    _meta_path(path).unlink(missing_ok=True)
    for weights in _weights_files(path):
        weights.unlink(missing_ok=True)


def checkpoint_exists(path: Path) -> bool:
    return _meta_path(path).is_file()


def read_meta(path: Path) -> dict[str, Any]:
    """A checkpoint's metadata (NAME.json), checked to be nmt's; raises NmtError if not."""
    meta_path = _meta_path(path)
    if not meta_path.is_file():
        raise NmtError(f"{path}: checkpoint not found (no {meta_path.name})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise NmtError(f"{meta_path}: damaged checkpoint metadata: {error}") from None
    if not isinstance(meta, dict) or meta.get("format_version") not in (1, FORMAT_VERSION):
        raise NmtError(f"{meta_path}: not an nmt checkpoint (format 1 or {FORMAT_VERSION})")
    return meta


def weights_path(path: Path, meta: dict[str, Any]) -> Path:
    """The weights file a checkpoint's metadata names, never outside its folder (format 1:
    beside the JSON under the checkpoint's name)."""
    if meta["format_version"] == 1:
        return path.parent / f"{path.name}.safetensors"
    return path.parent / Path(str(meta.get("weights_file"))).name


def load_checkpoint(
    path: Path, model_only: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a checkpoint: (tensors, metadata). Raises NmtError if damaged.

    `model_only` (translation): only the `model.*` tensors, copied out of the file's mapping,
    so that the optimizer's state (two thirds of a training checkpoint) is never read into
    memory; the whole file's SHA-256 is checked all the same, on the very bytes the tensors
    come from."""
    meta_path, meta = _meta_path(path), read_meta(path)
    weights = weights_path(path, meta)
    try:
        file = weights.open("rb")
    except (FileNotFoundError, IsADirectoryError):  # (also when a newer save just replaced it)
        raise NmtError(f"{weights}: missing; {meta_path.name} names it as its weights") from None
    with file:
        try:
            data: bytes | mmap.mmap = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # an empty file, or a file system that cannot map
            data = file.read()
        try:
            digest = hashlib.sha256(data).hexdigest()
            if len(data) != meta.get("weights_bytes") or digest != meta.get("weights_sha256"):
                raise NmtError(
                    f"{weights}: does not match the size and SHA-256 recorded in "
                    f"{meta_path.name}; the checkpoint is damaged or was replaced"
                )
            try:
                tensors = _model_tensors(data) if model_only else load_safetensors(data[:])
            except (SafetensorError, ValueError, LookupError, TypeError, AttributeError,
                    RuntimeError, struct.error) as error:  # fmt: skip
                raise NmtError(f"{weights}: not a safetensors file: {error}") from None
        finally:
            if isinstance(data, mmap.mmap):
                data.close()
    return tensors, meta


_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _model_tensors(data: bytes | mmap.mmap) -> dict[str, torch.Tensor]:
    """The `model.*` tensors of a safetensors file's bytes, each copied out (nothing stays
    mapped). safetensors can load a subset only from a file by name, which would open the
    file a second time, after its hash was checked; so its simple layout is read here: an
    8-byte little-endian header length, a JSON header giving each tensor's dtype, shape and
    byte range, then the data."""
    (length,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(bytes(data[8 : 8 + length]))
    tensors = {}
    for name, entry in header.items():
        if not name.startswith("model."):
            continue
        begin, end = (8 + length + offset for offset in entry["data_offsets"])
        if not 8 + length <= begin <= end <= len(data):
            raise ValueError(f"{name}: data outside the file")
        dtype, shape = _DTYPES[entry["dtype"]], entry["shape"]
        raw = bytearray(data[begin:end])  # a writable copy, which the tensor takes over
        tensors[name] = (
            torch.frombuffer(raw, dtype=dtype).reshape(shape)
            if raw
            else torch.empty(shape, dtype=dtype)
        )
    return tensors


def restore(
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Load model weights (and optimizer state and RNG, when given) from a checkpoint."""
    model.load_state_dict(
        {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    )
    if optimizer is None:
        return
    saved = meta["optimizer"]
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, scalars in saved["scalars"].items():
        state.setdefault(int(index), {}).update(scalars)
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])


def kept_checkpoints(checkpoints_dir: Path) -> list[str]:
    """The step-N checkpoints a run kept (`train.keep_best`), in the order of their steps."""
    names = [
        p.stem for p in checkpoints_dir.glob("step-*.json") if re.fullmatch(r"step-\d+", p.stem)
    ]
    return sorted(names, key=lambda name: int(name.removeprefix("step-")))


def averaging_plan(
    run_dir: str | Path,
    names: Sequence[str] | str | None = None,
    output: str = "averaged",
    labels: dict[str, str] | None = None,
) -> tuple[list[Path], Path]:
    """What `average_run` would read and write, checked: the checkpoints (`names`, or every
    step-N the run kept) and the new one's path. `labels` name the arguments in errors (the
    command's flags)."""
    label = {"names": "names", "output": "output", **(labels or {})}
    output = check_name(output, label["output"])
    if output in ("best", "last") or output.startswith("step-"):
        raise NmtError(
            f"{label['output']} {output}: training writes (and replaces) best, last and step-N "
            f"checkpoints; choose another name, e.g. averaged"
        )
    directory = Path(run_dir) / CHECKPOINTS
    if names is None:
        chosen = kept_checkpoints(directory)
        if not chosen:
            raise NmtError(
                f"{directory}: no step-N checkpoints; train with train.keep_best=N "
                f"or name the checkpoints to average ({label['names']})"
            )
    else:
        listed = [names] if isinstance(names, str) else list(names)  # one name, or several
        chosen = [check_name(name, label["names"]) for name in listed]
        if not chosen:
            raise NmtError(f"{label['names']}: no checkpoints named")
    if len(set(chosen)) < len(chosen):
        raise NmtError(
            f"{label['names']} {' '.join(chosen)}: a checkpoint named twice would count twice"
        )
    return [directory / name for name in chosen], directory / output


def average_run(
    run_dir: str | Path, names: Sequence[str] | str | None = None, output: str = "averaged"
) -> Path:
    """nmt-average: average checkpoints of a run (`names`, or every step-N it kept) into
    checkpoints/OUTPUT, which `Translator.from_run(run_dir, OUTPUT)` then loads."""
    sources, target = averaging_plan(run_dir, names, output)
    try:
        average_checkpoints(sources, target)
    except OSError as error:
        raise NmtError(f"{target}: cannot write: {error.strerror or error}") from None
    return target


def average_checkpoints(paths: list[Path], output: Path) -> None:
    """Average the model weights of several checkpoints into `output` (weights only).

    Averaging the last few good checkpoints of a run usually gains a little BLEU for free.
    """
    if not paths:
        raise NmtError("no checkpoints to average")
    total: dict[str, torch.Tensor] = {}
    first_meta: dict[str, Any] = {}
    for path in paths:
        tensors, meta = load_checkpoint(path)
        weights = {k: v for k, v in tensors.items() if k.startswith("model.")}
        if not total:
            total, first_meta = {k: v.double() for k, v in weights.items()}, meta
            continue
        if weights.keys() != total.keys() or meta.get("spm_sha256") != first_meta.get("spm_sha256"):
            raise NmtError(f"{path}: does not belong to the same model as {paths[0]}")
        for key, value in weights.items():
            total[key] += value.double()
    averaged = {k: (v / len(paths)).to(torch.float32) for k, v in total.items()}
    meta = {k: v for k, v in first_meta.items() if k != "optimizer"}
    meta["averaged_from"] = [p.name for p in paths]
    _write_checkpoint(output, save_safetensors(averaged), meta)


def checkpoint_step(path: Path) -> int | None:
    """The training step a checkpoint records, or None when it is missing or unreadable."""
    try:
        return int(json.loads(_meta_path(path).read_text(encoding="utf-8"))["progress"]["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


_WEIGHTS_NAME = re.compile(r".+\.[0-9a-f]{12}\.safetensors")  # NAME.<sha256 prefix>.safetensors
# The weights of the checkpoints training replaces (format 1's are never deleted; best.avg or
# averaged are the user's, and stay).
_TRAINING_WEIGHTS = re.compile(r"(best|last|step-\d+)\.[0-9a-f]{12}\.safetensors")


def training_weights_bytes(folder: Path) -> int:
    """The bytes the weights of training's own checkpoints in `folder` hold: space a resumed
    run reuses as it replaces them."""
    return sum(
        path.stat().st_size
        for path in folder.glob("*.safetensors")
        if _TRAINING_WEIGHTS.fullmatch(path.name)
    )


def _checkpoints_in(folder: Path) -> dict[str, dict[str, Any]]:
    """The checkpoints in `folder` by name, with their metadata: only JSON files nmt wrote."""
    found = {}
    for meta_path in folder.glob("*.json"):
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and meta.get("format_version") in (1, FORMAT_VERSION):
            found[meta_path.name[: -len(".json")]] = meta
    return found


def delete_unnamed_weights(folder: Path) -> None:
    """Remove weights files of nmt's naming that no checkpoint names: a crash between a
    checkpoint's two writes leaves its new weights behind."""
    named = {meta.get("weights_file") for meta in _checkpoints_in(folder).values()}
    for weights in folder.glob("*.safetensors"):
        if _WEIGHTS_NAME.fullmatch(weights.name) and weights.name not in named:
            weights.unlink(missing_ok=True)


def delete_checkpoint_files(folder: Path) -> None:
    """Remove every checkpoint in `folder`, and nothing that is not one."""
    for name, meta in _checkpoints_in(folder).items():
        delete_checkpoint(folder / name)
        if meta["format_version"] == 1:  # `delete_checkpoint` knows the new names only
            weights_path(folder / name, meta).unlink(missing_ok=True)
    delete_unnamed_weights(folder)
