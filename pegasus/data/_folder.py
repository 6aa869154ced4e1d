"""Image folders: ``train/<class>/*.png|*.jpg|*.jpeg`` and ``test/<class>/...``, as a
directory or a tar archive, decoded once and then served from the cache."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ._archive import iter_members
from ._cache import cache_key, cache_root, load_entry, save_entry
from ._dataset import SPLITS, DatasetError, ImageDataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# split -> class -> [(name for error messages, file path or archived bytes)], names sorted
_Layout = dict[str, dict[str, list[tuple[str, Path | bytes]]]]


def load_image_folder(source: Path, split: str, cache_dir: str | os.PathLike | None) -> ImageDataset:
    """Load one split of an image folder (a directory or a .tar/.tar.gz/.tgz archive).

    Classes are the sorted folder names of the split and labels index them. An archive is
    streamed once and all of its splits are decoded and cached together, because reading
    a .tar.gz again for the other split would cost a second full pass.
    """
    root = cache_root(cache_dir)
    if source.is_dir():
        layout = _scan_dir(source, split)
        paths = [path for per_class in layout[split].values() for _, path in per_class]
        identity = ["dir", str(source.resolve()), [_file_identity(p, source) for p in paths]]
        splits = [split]
    else:
        st = source.stat()
        identity = ["archive", str(source.resolve()), st.st_size, st.st_mtime_ns]
        splits = list(SPLITS)
    keys = {s: f"{source.name}.{s}.{cache_key(identity, s)}" for s in splits}

    cached = load_entry(root, keys[split])
    if cached is None:
        if not source.is_dir():
            layout = _scan_archive(source, split)
        # Decode everything before writing anything, so a bad image leaves no entry behind.
        decoded = {s: _decode(layout[s], f"decoding {source.name} {s}") for s in keys if s in layout}
        for s, entry in decoded.items():
            save_entry(root, keys[s], *entry)
        cached = decoded[split]
    images, labels, classes = cached
    images.setflags(write=False)
    return ImageDataset(images, labels, classes, "image-folder", str(source))


def _file_identity(path: Path, root: Path) -> tuple[str, int, int]:
    st = path.stat()
    return path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns


def _is_image(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.lower().endswith(IMAGE_SUFFIXES) and not base.startswith(".")


def _scan_dir(folder: Path, split: str) -> _Layout:
    layout: _Layout = {}
    for s in SPLITS:
        if (folder / s).is_dir():
            class_dirs = sorted(d for d in (folder / s).iterdir() if d.is_dir() and d.name[0] != ".")
            layout[s] = {
                d.name: [(str(p), p) for p in sorted(d.iterdir()) if _is_image(p.name) and p.is_file()]
                for d in class_dirs
            }
    _check_layout(layout, split, str(folder), f"{folder}/")
    return layout


def _scan_archive(archive: Path, split: str) -> _Layout:
    """Read every image in the archive in one sequential pass, grouped by split and class.

    Members are <split>/<class>/<file>, optionally all under one top-level folder.
    """
    dirs, files = [], {}
    for name, member, data in iter_members(archive, _is_image):
        if member.isdir():
            dirs.append(name)
        elif data is not None:
            files[name] = data
    tops = {name.split("/", 1)[0] for name in [*dirs, *files]}
    prefix = "" if tops & set(SPLITS) or len(tops) != 1 else f"{tops.pop()}/"

    def parts(name: str) -> list[str]:
        return name.removeprefix(prefix).split("/") if name.startswith(prefix) else []

    layout: _Layout = {}
    # Tars need not list directories, so folders are also inferred from the files in them.
    for name in [*dirs, *(n.rsplit("/", 1)[0] for n in files)]:
        p = parts(name)
        if 1 <= len(p) <= 2 and p[0] in SPLITS:
            classes = layout.setdefault(p[0], {})
            if len(p) == 2:
                classes.setdefault(p[1], [])
    for name in sorted(files):
        p = parts(name)
        if len(p) == 3 and p[0] in SPLITS:
            layout[p[0]][p[1]].append((f"{archive}:{name}", files[name]))
    _check_layout(layout, split, str(archive), f"{archive}:{prefix}")
    return layout


def _check_layout(layout: _Layout, split: str, where: str, prefix: str) -> None:
    if split not in layout:
        found = ", ".join(f"{s}/" for s in layout) or "neither train/ nor test/"
        raise DatasetError(f"{where}: expected a {split}/ folder of class sub-folders, found {found}")
    for s, classes in layout.items():
        if not classes:
            raise DatasetError(f"{prefix}{s}/: expected one sub-folder per class, found none")
        for name, files in classes.items():
            if not files:
                raise DatasetError(
                    f"{prefix}{s}/{name}/: empty class folder, expected at least one "
                    f"{'/'.join(IMAGE_SUFFIXES)} image"
                )
    if len(layout) == len(SPLITS):
        train, test = (set(layout[s]) for s in SPLITS)
        if train != test:
            raise DatasetError(
                f"{where}: train/ and test/ must hold the same class folders (labels index the "
                f"sorted names); only in train/: {sorted(train - test)}, "
                f"only in test/: {sorted(test - train)}"
            )


def _decode(
    classes: dict[str, list[tuple[str, Path | bytes]]], desc: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode one split to (images uint8 [N, H, W, 3], labels int64 [N], class names)."""
    items = [(label, name, file) for label, files in enumerate(classes.values()) for name, file in files]
    labels = np.array([label for label, _, _ in items], dtype=np.int64)
    images = None
    first = ""
    # The bar is closed on errors too, so that the error message starts its own line.
    with tqdm(items, desc=desc, unit="img", disable=None) as bar:
        for i, (_, name, file) in enumerate(bar):
            try:
                with Image.open(file if isinstance(file, Path) else io.BytesIO(file)) as im:
                    pixels = np.asarray(im.convert("RGB"))
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
                raise DatasetError(
                    f"{name}: expected a readable PNG/JPEG image, got {type(e).__name__}: {e}"
                ) from e
            if images is None:
                images, first = np.empty((len(items), *pixels.shape), dtype=np.uint8), name
            elif pixels.shape != images.shape[1:]:
                raise DatasetError(
                    f"images of mixed sizes in one split: {first} is {_wxh(images.shape)}, "
                    f"{name} is {_wxh(pixels.shape)}; expected every image to match the first"
                )
            images[i] = pixels
    return images, labels, list(classes)


def _wxh(shape: tuple[int, ...]) -> str:
    h, w = shape[-3], shape[-2]
    return f"{w}x{h}"
