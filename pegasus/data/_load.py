"""Format detection and the public entry points."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from ._archive import is_archive_name, iter_names
from ._cifar import BINARY_DIR, PYTHON_DIR, load_cifar10
from ._dataset import SPLITS, DatasetError, ImageDataset
from ._folder import load_image_folder
from ._stl10 import STL10_DIR, load_stl10

# What each format looks like, for detection and for "not recognised" messages.
_DIR_MARKERS = {
    "cifar10-python": ("batches.meta", "data_batch_1", "test_batch"),
    "cifar10-binary": ("batches.meta.txt", "data_batch_1.bin", "test_batch.bin"),
    "stl10-binary": ("train_X.bin", "test_X.bin"),
    "image-folder": ("train/", "test/"),
}
_ARCHIVE_TOPS = {PYTHON_DIR: "cifar10-python", BINARY_DIR: "cifar10-binary", STL10_DIR: "stl10-binary"}
_LOOKED_FOR = (
    f"{PYTHON_DIR}/ or cifar-10-python.tar.gz ({', '.join(_DIR_MARKERS['cifar10-python'])}); "
    f"{BINARY_DIR}/ or cifar-10-binary.tar.gz ({', '.join(_DIR_MARKERS['cifar10-binary'])}); "
    f"{STL10_DIR}/ ({', '.join(_DIR_MARKERS['stl10-binary'])}); "
    "an image folder or .tar/.tar.gz/.tgz with train/<class>/ and test/<class>/"
)


def detect_format(path: str | os.PathLike) -> tuple[str, Path]:
    """(format, source): the data set at ``path`` and the folder or archive holding it.

    path may be the data set itself or a folder containing exactly one data set; an
    extracted folder is preferred over an archive beside it (the usual download layout).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder (expected a data set: {_LOOKED_FOR})")
    fmt = _dir_format(path) if path.is_dir() else _archive_format(path)
    if fmt is not None:
        if fmt == "stl10-binary" and not path.is_dir():
            raise DatasetError(
                f"{path}: STL-10 is memory-mapped from disk, so expected an extracted {STL10_DIR}/, "
                "found an archive; extract it and pass the folder"
            )
        return fmt, path
    if not path.is_dir():
        first = ", ".join(itertools.islice(iter_names(path), 5)) or "no members"
        raise DatasetError(
            f"{path}: not a recognised data set archive; looked for {_LOOKED_FOR}; found {first}"
        )

    children = sorted(path.iterdir())
    dirs = [(_dir_format(c), c) for c in children if c.is_dir()]
    archives = [(_archive_format(c, quiet=True), c) for c in children if c.is_file() and is_archive_name(c)]
    # Prefer what is extracted: downloaders keep the archive beside the folder.
    found = [(f, c) for f, c in dirs if f] or [(f, c) for f, c in archives if f and f != "stl10-binary"]
    if len(found) == 1:
        return found[0]
    if found:
        listed = ", ".join(f"{c.name} ({f})" for f, c in found)
        raise DatasetError(f"{path}: expected one data set, found {len(found)}: {listed}; pass one of them")
    listed = ", ".join(c.name + ("/" if c.is_dir() else "") for c in children[:20]) or "nothing"
    raise DatasetError(f"{path}: no recognised data set; looked for {_LOOKED_FOR}; found {listed}")


def _dir_format(folder: Path) -> str | None:
    for fmt, markers in _DIR_MARKERS.items():
        if any((folder / m).is_dir() if m.endswith("/") else (folder / m).is_file() for m in markers):
            return fmt
    return None


def _archive_format(archive: Path, quiet: bool = False) -> str | None:
    """Tell an archive's format from its first members, without reading it through.

    quiet: return None for an unreadable file instead of raising.
    """
    try:
        for i, name in enumerate(iter_names(archive)):
            parts = name.split("/")
            if parts[0] in _ARCHIVE_TOPS:
                return _ARCHIVE_TOPS[parts[0]]
            if set(parts[:2]) & set(SPLITS):
                return "image-folder"
            if i >= 64:
                break
    except DatasetError:
        if quiet:
            return None
        raise
    return None


def load_dataset(
    path: str | os.PathLike, split: str = "train", cache_dir: str | os.PathLike | None = None
) -> ImageDataset:
    """Load one split of the data set at ``path``.

    path: a data set folder (cifar-10-batches-py/, cifar-10-batches-bin/, stl10_binary/, or
        a folder with train/<class>/ and test/<class>/), an archive (cifar-10-python.tar.gz,
        cifar-10-binary.tar.gz, or an image folder as .tar/.tar.gz/.tgz), or a folder
        holding exactly one of those.
    split: "train" or "test".
    cache_dir: where decoded image folders are cached; default $PEGASUS_CACHE_DIR, else
        $XDG_CACHE_HOME/pegasus, else ~/.cache/pegasus.

    Returns images uint8 [N, H, W, 3] and labels int64 [N]; raises DatasetError naming the
    offending file for anything missing or malformed.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    fmt, source = detect_format(path)
    if fmt == "image-folder":
        return load_image_folder(source, split, cache_dir)
    if fmt == "stl10-binary":
        return load_stl10(source, split)
    return load_cifar10(source, split, fmt)


def describe(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
    """A human-readable summary: the format and, per split, image count, size and class counts.

    A split that fails to load is reported with its error; if none loads, the first error
    is raised.
    """
    text, errors = describe_splits(path, cache_dir)
    if len(errors) == len(SPLITS):
        raise next(iter(errors.values()))
    return text


def describe_splits(
    path: str | os.PathLike, cache_dir: str | os.PathLike | None = None
) -> tuple[str, dict[str, DatasetError]]:
    """``describe``'s summary and the error of every split that failed to load, by split
    (`pegasus data` fails on any). Raises DatasetError when no data set is recognised."""
    fmt, source = detect_format(path)
    lines = [f"{source}", f"format: {fmt}"]
    errors = {}
    for split in SPLITS:
        try:
            ds = load_dataset(source, split, cache_dir)
        except DatasetError as e:
            errors[split] = e
            lines.append(f"{split}: unavailable ({e})")
            continue
        h, w = ds.image_size
        counts = ds.class_counts()
        lines.append(f"{split}: {len(ds):,} images, {w}x{h}, {len(counts)} classes")
        width = max(map(len, counts), default=0)
        lines += [f"  {name:<{width}}  {n:>7,}" for name, n in counts.items()]
    return "\n".join(lines), errors
