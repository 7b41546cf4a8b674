"""Checkpoints and run directories: safetensors weights plus JSON metadata, written atomically.

Nothing is ever unpickled. A checkpoint `NAME` is `NAME.safetensors` (model weights, optimizer
tensors, RNG states) and `NAME.json` (everything else, including the weights' size and SHA-256,
checked on load). Every file is written to a temporary name and renamed into place, so a crash
leaves the previous file whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from nmt.errors import NmtError

FORMAT_VERSION = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(path: Path, model: torch.nn.Module, metadata: dict[str, Any],
                    optimizer: torch.optim.Optimizer | None = None) -> None:
    """Write `path`.safetensors and `path`.json; the JSON, written last, vouches for the weights."""
    tensors, seen = {}, set()
    for key, value in model.state_dict().items():
        value = value.detach().cpu().contiguous()
        if value.data_ptr() in seen:  # tied weights: safetensors stores no shared memory
            value = value.clone()
        seen.add(value.data_ptr())
        tensors[f"model.{key}"] = value
    meta = dict(metadata, format_version=FORMAT_VERSION)
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
    data = save_safetensors(tensors)
    meta["weights_sha256"] = hashlib.sha256(data).hexdigest()
    meta["weights_bytes"] = len(data)
    atomic_write_bytes(path.with_suffix(".safetensors"), data)
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")


def checkpoint_exists(path: Path) -> bool:
    return path.with_suffix(".json").is_file() and path.with_suffix(".safetensors").is_file()


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a checkpoint: (tensors, metadata). Raises NmtError if damaged."""
    weights, meta_path = path.with_suffix(".safetensors"), path.with_suffix(".json")
    if not meta_path.is_file() or not weights.is_file():
        raise NmtError(f"{path}: checkpoint not found (needs {weights.name} and {meta_path.name})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise NmtError(f"{meta_path}: damaged checkpoint metadata: {error}") from None
    data = weights.read_bytes()
    if len(data) != meta.get("weights_bytes") or \
            hashlib.sha256(data).hexdigest() != meta.get("weights_sha256"):
        raise NmtError(f"{weights}: does not match the size and SHA-256 recorded in "
                       f"{meta_path.name}; the checkpoint is damaged or was replaced")
    try:
        tensors = load_safetensors(data)
    except SafetensorError as error:
        raise NmtError(f"{weights}: not a safetensors file: {error}") from None
    return tensors, meta


def restore(tensors: dict[str, torch.Tensor], meta: dict[str, Any], model: torch.nn.Module,
            optimizer: torch.optim.Optimizer | None = None) -> None:
    """Load model weights (and optimizer state and RNG, when given) from a checkpoint."""
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items()
                           if k.startswith("model.")})
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
    data = save_safetensors(averaged)
    meta = {k: v for k, v in first_meta.items() if k not in ("optimizer", "weights_sha256",
                                                              "weights_bytes")}
    meta.update(averaged_from=[p.name for p in paths], weights_sha256=hashlib.sha256(data).hexdigest(),
                weights_bytes=len(data))
    atomic_write_bytes(output.with_suffix(".safetensors"), data)
    atomic_write_text(output.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
