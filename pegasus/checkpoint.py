"""Atomic, pickle-free checkpoints: model, optimizer, step and RNG state in one safetensors file.

Tensors go in the safetensors body; everything else (step, optimizer hyper-parameters, user
metadata) goes in its JSON header. Nothing is ever loaded with pickle. Files are written to a
temporary name in the same directory, fsynced, then renamed over the target, so a crash leaves
either the old file or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint or weights file is missing, corrupt, or does not fit the model."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (temp file in the same directory, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    data = path.read_bytes()
    try:
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
    except (SafetensorError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    return tensors, meta


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, string metadata) of a safetensors file; CheckpointError if missing or corrupt."""
    return _read_safetensors(Path(path))


def save_weights(path: str | os.PathLike, module: nn.Module, metadata: dict[str, str] | None = None) -> None:
    """Save a module's state_dict (parameters and buffers) as safetensors, atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    atomic_write_bytes(path, save(state, metadata=metadata))


def load_weights(path: str | os.PathLike, module: nn.Module) -> None:
    """Load safetensors weights into `module`, requiring every key and shape to match."""
    path = Path(path)
    tensors, _ = _read_safetensors(path)
    _load_state(module, tensors, path)


def _load_state(module: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for k, v in expected.items():
        if tensors[k].shape != v.shape:
            raise CheckpointError(
                f"{path}: {k} has shape {tuple(tensors[k].shape)}, the model expects {tuple(v.shape)}"
            )
    module.load_state_dict(tensors)


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    extra: dict[str, Any] | None = None,
) -> None:
    """Model, optimizer state, step, torch's CPU (and CUDA) RNG state, and JSON-able `extra`."""
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, state in opt["state"].items():
        for name, value in state.items():
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(value)
            tensors[f"optim.{pid}.{name}"] = value.detach().contiguous().cpu()
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    meta = {
        "step": str(step),
        "param_groups": json.dumps(opt["param_groups"]),
        "extra": json.dumps(extra or {}),
    }
    atomic_write_bytes(path, save(tensors, metadata=meta))


def load_checkpoint(
    path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer, map_location: str | torch.device = "cpu"
) -> tuple[int, dict[str, Any]]:
    """Restore what `save_checkpoint` wrote; returns (step, extra)."""
    path = Path(path)
    tensors, meta = _read_safetensors(path)
    try:
        step = int(meta["step"])
        groups = json.loads(meta["param_groups"])
        extra = json.loads(meta["extra"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: checkpoint metadata is missing or corrupt ({e})") from e
    _load_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v.to(map_location) if name != "step" else v
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    torch.set_rng_state(tensors["rng.cpu"])
    cuda_states = [tensors[f"rng.cuda.{i}"] for i in range(torch.cuda.device_count()) if f"rng.cuda.{i}" in tensors]
    if cuda_states:
        torch.cuda.set_rng_state_all(cuda_states)
    return step, extra
