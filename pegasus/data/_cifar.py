"""CIFAR-10 in its two official layouts: pickled batches and raw binary batches.

Both are read from the extracted folder or straight out of the downloaded tarball.
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path

import numpy as np

from ._archive import read_members
from ._dataset import DatasetError, ImageDataset

PYTHON_DIR = "cifar-10-batches-py"
BINARY_DIR = "cifar-10-batches-bin"
_SIDE = 32
_PIXELS = 3 * _SIDE * _SIDE
_RECORD = 1 + _PIXELS  # binary record: 1 label byte + CHW pixels


def _latin1_encode(text: str, encoding: str) -> bytes:
    # Python 3 pickles bytes with protocol 2 as _codecs.encode(text, "latin1"); any other
    # codec is not something these files contain.
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


# _reconstruct is the function ndarray.__reduce__ names; numpy 1.x pickles (the official
# files) spell its module numpy.core.multiarray, numpy 2.x numpy._core.multiarray.
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals a pickled dict of numpy arrays needs, so a crafted file
    cannot name (and so cannot call) anything else."""

    def __init__(self, file: io.BytesIO, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DatasetError(
                f"{self._source}: refusing to unpickle forbidden global {module}.{name} "
                f"(expected only numpy array reconstruction)"
            ) from None


def _unpickle(data: bytes, source: str) -> dict:
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), source).load()
    except DatasetError:
        raise
    except Exception as e:  # a malformed pickle can fail in many ways; all mean "not a CIFAR batch"
        raise DatasetError(f"{source}: expected a CIFAR-10 pickle, could not unpickle: {e!r}") from e
    if not isinstance(obj, dict):
        raise DatasetError(f"{source}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _chw_to_hwc(pixels: np.ndarray) -> np.ndarray:
    """uint8 [N, 3*32*32] in CHW plane order -> uint8 [N, 32, 32, 3]."""
    return pixels.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1)


def _python_batch(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(data, source)
    missing = [k.decode() for k in (b"data", b"labels") if k not in batch]
    if missing:
        found = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in batch)
        raise DatasetError(f"{source}: expected keys data and labels, missing {missing}; found {found}")
    pixels = batch[b"data"]
    if not isinstance(pixels, np.ndarray):
        raise DatasetError(f"{source}: expected data to be a numpy array, got {type(pixels).__name__}")
    if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != _PIXELS:
        found = f"{pixels.dtype} {list(pixels.shape)}"
        raise DatasetError(f"{source}: expected data uint8 [N, {_PIXELS}], got {found}")
    try:
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{source}: expected labels to be a list of ints, got {e}") from e
    if labels.shape != (len(pixels),):
        raise DatasetError(f"{source}: expected {len(pixels)} labels, got shape {list(labels.shape)}")
    return _chw_to_hwc(pixels), labels


def _binary_batch(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    if len(data) % _RECORD:
        raise DatasetError(
            f"{source}: expected a size that is a multiple of the {_RECORD}-byte record "
            f"(1 label + {_PIXELS} pixels), got {len(data)} bytes"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, _RECORD)
    return _chw_to_hwc(records[:, 1:]), records[:, 0].astype(np.int64)


def _batch_names(split: str, suffix: str) -> list[str]:
    if split == "train":
        return [f"data_batch_{i}{suffix}" for i in range(1, 6)]
    return [f"test_batch{suffix}"]


def load_cifar10(source: Path, split: str, fmt: str) -> ImageDataset:
    """Load one split of CIFAR-10 from ``source``: the batches folder or the tarball.

    fmt is "cifar10-python" or "cifar10-binary".
    """
    python = fmt == "cifar10-python"
    suffix = "" if python else ".bin"
    meta_name = "batches.meta" if python else "batches.meta.txt"
    wanted = [meta_name, *_batch_names(split, suffix)]
    if source.is_dir():
        files = {name: (source / name).read_bytes() for name in wanted if (source / name).is_file()}
        where = {name: str(source / name) for name in wanted}
    else:
        top = PYTHON_DIR if python else BINARY_DIR
        members = read_members(source, lambda name: name in {f"{top}/{w}" for w in wanted})
        files = {name.removeprefix(f"{top}/"): data for name, data in members.items()}
        where = {name: f"{source}:{top}/{name}" for name in wanted}
    missing = [name for name in wanted if name not in files]
    if missing:
        raise DatasetError(
            f"{source}: {split} split of {fmt} expects {', '.join(wanted)}; missing {', '.join(missing)}"
        )

    if python:
        meta = _unpickle(files[meta_name], where[meta_name])
        if b"label_names" not in meta:
            found = sorted(map(str, meta))
            raise DatasetError(f"{where[meta_name]}: expected key label_names, found {found}")
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]
    else:
        classes = [line.strip() for line in files[meta_name].decode().splitlines() if line.strip()]

    read_batch = _python_batch if python else _binary_batch
    batches = [read_batch(files[name], where[name]) for name in wanted[1:]]
    for (_, labels), name in zip(batches, wanted[1:]):
        bad = labels[(labels < 0) | (labels >= len(classes))]
        if bad.size:
            raise DatasetError(
                f"{where[name]}: label {bad[0]} out of range, expected 0..{len(classes) - 1} "
                f"for the {len(classes)} classes in {meta_name}"
            )
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    images.setflags(write=False)
    return ImageDataset(images, labels, classes, fmt, str(source))
