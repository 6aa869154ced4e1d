"""Atomic, pickle-free checkpoints: model, optimizer, step and RNG state in one safetensors file.

Tensors go in the safetensors body; everything else (step, optimizer hyper-parameters, user
metadata) goes in its JSON header. Nothing is ever loaded with pickle. Files are written to a
temporary name in the same directory, fsynced, then renamed over the target, so a crash leaves
either the old file or the new one, never half of one.

A checkpoint keeps its predecessor: saving NAME.safetensors first hard-links the current one to
NAME.prev.safetensors, then renames the new one into place, so at every instant both names hold a
complete file. `read_checkpoint` falls back to the previous one, with a warning, when the newest
is missing or unreadable (a disk that lied about fsync, a truncated copy).

Run directories are stamped: config files carry {"format": RUN_FORMAT, "pegasus": version}, and
checkpoints and weights carry the model config they were written for, so a run directory from
another version or a file from another model fails with one line saying what differs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import nn

from pegasus._version import __version__

RUN_FORMAT = 1
"""Layout of run directories, checkpoints and weights; files without a stamp predate it and are format 1."""

_log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint or weights file is missing, corrupt, or does not fit the model."""


def previous_path(path: str | os.PathLike) -> Path:
    """Where the checkpoint before `path` is kept: run/checkpoint.safetensors -> run/checkpoint.prev.safetensors."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def has_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` or the previous checkpoint beside it exists (one of them to resume from)."""
    return Path(path).is_file() or previous_path(path).is_file()


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (/proc, since 4.7);
    elsewhere set and restored at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes, keep_previous: bool = False) -> None:
    """Write `data` to `path` atomically (temp file in the same directory, fsync, rename), with the
    permissions a plain open() would give it (0666 less the umask).

    keep_previous: first make the current `path`, if any, the `previous_path(path)` (hard link,
    renamed into place), so both names always hold a complete file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file 0600, so a generated PNG was unreadable to other users.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.is_file():
            _keep_as_previous(path)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def _keep_as_previous(path: Path) -> None:
    prev = previous_path(path)
    if prev.is_file() and os.path.samefile(path, prev):
        # Already linked (a writer was killed after this step): renaming a link over another link
        # of the same file is a no-op that would leave the temp link behind.
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{prev.name}.", suffix=".tmp")
    os.close(fd)
    os.unlink(tmp)
    try:
        os.link(path, tmp)
    except OSError:  # a file system without hard links: copy instead
        shutil.copyfile(path, tmp)
    os.replace(tmp, prev)


def remove_stale_temps(directory: str | os.PathLike, names: list[str]) -> None:
    """Delete the temp files a killed writer of these files left in `directory`."""
    for name in names:
        for tmp in Path(directory).glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def stamp(config: dict[str, Any]) -> dict[str, Any]:
    """A run directory's config with the format and pegasus version that wrote it."""
    return {"format": RUN_FORMAT, "pegasus": __version__, **config}


def read_run_config(path: str | os.PathLike, key: str) -> dict[str, Any]:
    """A run directory's config file (config.json, prior_config.json), which must hold `key` and
    be of this version's format; CheckpointError naming the file otherwise."""
    path = Path(path)
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read the {key} settings ({type(e).__name__}: {e})") from e
    if not isinstance(config, dict) or not isinstance(config.get(key), dict):
        raise CheckpointError(f"{path}: cannot read the {key} settings (expected a JSON object with a {key!r} object)")
    found = config.get("format", RUN_FORMAT)
    if found != RUN_FORMAT:
        raise CheckpointError(
            f"{path}: run directory format {found!r} (written by pegasus {config.get('pegasus', '?')}), "
            f"expected format {RUN_FORMAT} (pegasus {__version__}); read it with the pegasus that wrote it, or train a new run"
        )
    return config


def _check_config(path: Path, meta: dict[str, str], expected: dict[str, Any] | None, what: str) -> None:
    """A file stamped with the model config it was written for must match `expected`."""
    if expected is None or "config" not in meta:
        return
    try:
        found = json.loads(meta["config"])
    except ValueError as e:
        raise CheckpointError(f"{path}: the model config in its metadata is corrupt ({e})") from e
    if not isinstance(found, dict):
        raise CheckpointError(f"{path}: the model config in its metadata should be a JSON object, got {meta['config'][:80]!r}")
    expected = json.loads(json.dumps(expected))
    diff = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
    if diff:
        raise CheckpointError(
            f"{path}: {what} of another model: expected {', '.join(f'{k}={expected.get(k)}' for k in diff)}, "
            f"found {', '.join(f'{k}={found.get(k)}' for k in diff)}"
        )


def _read_safetensors(path: Path, data: bytes | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if data is None:
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


def load_weights(path: str | os.PathLike, module: nn.Module, config: dict[str, Any] | None = None) -> None:
    """Load safetensors weights into `module`, requiring every key and shape to match, and the
    model config stamped in the file (metadata "config"), if any, to equal `config`."""
    path = Path(path)
    tensors, meta = _read_safetensors(path)
    _check_config(path, meta, config, "weights")
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
    config: dict[str, Any] | None = None,
) -> None:
    """Model, optimizer state, step, torch's CPU RNG state (and that of the model's CUDA device),
    JSON-able `extra` and the model `config` (checked on load). The checkpoint `path` held before
    is kept as `previous_path(path)`."""
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, state in opt["state"].items():
        for name, value in state.items():
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(value)
            tensors[f"optim.{pid}.{name}"] = value.detach().contiguous().cpu()
    tensors["rng.cpu"] = torch.get_rng_state()
    device = _device_of(model)
    if device.type == "cuda":
        # This device's generator only: under torchrun each rank draws from its own cuda:LOCAL_RANK.
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    meta = {
        "format": str(RUN_FORMAT),
        "sha256": _digest(tensors),
        "step": str(step),
        "param_groups": json.dumps(opt["param_groups"]),
        "extra": json.dumps(extra or {}),
    }
    if config is not None:
        meta["config"] = json.dumps(config)
    atomic_write_bytes(path, save(tensors, metadata=meta), keep_previous=True)


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of the tensors' names, dtypes, shapes and bytes: safetensors has no checksum, and a
    flipped bit in the body would otherwise load silently (17 ms for 25 MB on this 2-core CPU)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().contiguous().cpu()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters(), torch.empty(0)).device


def _parse_checkpoint(path: Path, data: bytes | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str], int]:
    tensors, meta = _read_safetensors(path, data)
    try:
        step = int(meta["step"])
        json.loads(meta["param_groups"])
        json.loads(meta["extra"])
        if "rng.cpu" not in tensors:
            raise KeyError("rng.cpu")
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: checkpoint metadata is missing or corrupt ({type(e).__name__}: {e})") from e
    if "sha256" in meta and meta["sha256"] != _digest(tensors):
        raise CheckpointError(f"{path}: corrupt: the tensors' sha256 differs from the one recorded when it was written")
    return tensors, meta, step


def read_checkpoint(path: str | os.PathLike) -> tuple[Path, bytes]:
    """(file, contents) of the newest readable checkpoint: `path`, else `previous_path(path)`.

    A missing, truncated or corrupt `path` is logged as a warning naming it and what is wrong; when
    neither is readable, CheckpointError says what is wrong with each.
    """
    path = Path(path)
    problems = []
    for candidate in (path, previous_path(path)):
        try:
            if not candidate.is_file():
                raise CheckpointError(f"{candidate}: no such file")
            data = candidate.read_bytes()
            _, _, step = _parse_checkpoint(candidate, data)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        if problems:
            _log.warning("warning: %s; resuming from the previous checkpoint %s (step %d)", problems[0], candidate, step)
        return candidate, data
    raise CheckpointError(f"no usable checkpoint to resume from: {problems[0]}; {problems[1]}")


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    map_location: str | torch.device = "cpu",
    data: bytes | None = None,
    config: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Restore what `save_checkpoint` wrote to `path` (or `data`, the bytes of that file); returns
    (step, extra). With `config`, the model config stamped in the checkpoint must equal it."""
    path = Path(path)
    tensors, meta, step = _parse_checkpoint(path, data)
    if meta.get("format", str(RUN_FORMAT)) != str(RUN_FORMAT):
        raise CheckpointError(f"{path}: checkpoint format {meta['format']}, expected {RUN_FORMAT}; it was written by another pegasus version")
    _check_config(path, meta, config, "a checkpoint")
    groups, extra = json.loads(meta["param_groups"]), json.loads(meta["extra"])
    _load_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v.to(map_location) if name != "step" else v
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    torch.set_rng_state(tensors["rng.cpu"])
    device = _device_of(model)
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    return step, extra
