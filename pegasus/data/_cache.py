"""On-disk cache of decoded image folders: one directory per entry, holding
images.npy (uint8 [N, H, W, 3]), labels.npy (int64 [N]) and meta.json (class names).

An entry is built in a temporary directory beside it and renamed into place, so readers
only ever see complete entries and a failed write leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

# Bump when the entry layout or the decoding changes, so old entries stop matching.
_VERSION = "1"


def cache_root(cache_dir: str | os.PathLike | None) -> Path:
    """cache_dir, else $PEGASUS_CACHE_DIR, else $XDG_CACHE_HOME/pegasus, else ~/.cache/pegasus."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("PEGASUS_CACHE_DIR"):
        return Path(os.environ["PEGASUS_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "pegasus"


def cache_key(*parts: object) -> str:
    """A file-name-safe digest of ``parts`` (the source's identity and the split)."""
    return hashlib.sha256(json.dumps([_VERSION, *parts]).encode()).hexdigest()[:24]


def load_entry(root: Path, key: str) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """(images, labels, classes) of a complete entry, or None on a miss.

    images is a read-only memmap, so a cached load costs milliseconds whatever its size.
    """
    entry = root / key
    if not (entry / "meta.json").is_file():
        return None
    classes = json.loads((entry / "meta.json").read_text())["classes"]
    images = np.load(entry / "images.npy", mmap_mode="r")
    labels = np.load(entry / "labels.npy")
    return images, labels, classes


def save_entry(root: Path, key: str, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> None:
    """Write an entry atomically: all of it appears at once or none of it does."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=root))
    try:
        _write_synced(tmp / "images.npy", lambda f: np.save(f, images))
        _write_synced(tmp / "labels.npy", lambda f: np.save(f, labels))
        _write_synced(tmp / "meta.json", lambda f: f.write(json.dumps({"classes": classes}).encode()))
        try:
            os.rename(tmp, root / key)
        except OSError:
            # Another process finished the same entry first; it holds the same data.
            if not (root / key / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    dir_fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def _write_synced(path: Path, write: Callable[[BinaryIO], object]) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
