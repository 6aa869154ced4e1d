"""Writers of tiny data sets in each real on-disk format, for tests and demos.

Images are structured rather than noise: each class is one shape (disk, square, stripes,
...) in its own colour over a random gradient, with seeded position, size and jitter, so
a small VQ-VAE can learn them.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
_STL10_SIDE = 96


def render_images(labels: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Draw one image per label: uint8 [N, size, size, 3] for labels int [N]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    images = np.empty((len(labels), size, size, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        top, bottom = rng.uniform(0, 110, size=(2, 3))
        background = top + (bottom - top) * y[..., None]
        cx, cy = rng.uniform(0.3, 0.7, size=2)
        r = rng.uniform(0.18, 0.32)
        mask = _shape_mask(int(label) % 10, x - cx, y - cy, r)
        colour = np.clip(_class_colour(int(label)) + rng.normal(0, 12, size=3), 0, 255)
        images[i] = np.where(mask[..., None], colour, background).round().astype(np.uint8)
    return images


def _class_colour(label: int) -> np.ndarray:
    """A bright colour per class: hues spaced around the wheel (golden-angle steps)."""
    hue = (label * 0.618034) % 1.0
    rgb = np.clip(np.abs((hue * 6 + np.array([0, 4, 2])) % 6 - 3) - 1, 0, 1)
    return 90 + 165 * rgb


def _shape_mask(kind: int, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Boolean [size, size] mask of shape ``kind`` centred where dx = dy = 0."""
    d = np.hypot(dx, dy)
    inside = np.maximum(abs(dx), abs(dy)) < r
    return [
        d < r,  # disk
        inside,  # square
        (dy < r) & (abs(dx) < (dy + r) / 2),  # triangle, apex up
        (d < r) & (d > r / 2),  # ring
        inside & ((dy / r * 3) % 2 < 1),  # horizontal bars
        inside & ((dx / r * 3) % 2 < 1),  # vertical bars
        inside & (((dx + dy) / r * 3) % 2 < 1),  # diagonal stripes
        (abs(dx) < r / 3) & (abs(dy) < r) | (abs(dy) < r / 3) & (abs(dx) < r),  # cross
        inside & (((dx // (r / 2)) + (dy // (r / 2))) % 2 == 0),  # checkerboard
        abs(dx) + abs(dy) < r,  # diamond
    ][kind]


def make_split(n: int, n_classes: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, size, size, 3], labels int64 [n]) with random labels; the writers
    call it with ``seed`` for train and ``seed + 1`` for test, so callers can rebuild what
    a writer wrote."""
    labels = np.random.default_rng(seed).integers(0, n_classes, n)
    return render_images(labels, size, seed), labels


def _write_tree(root: Path, files: dict[str, bytes], archive_name: str | None) -> Path:
    """Write ``files`` (relative path -> contents) under root, or into root/archive_name
    (a tar, gzipped if the name says so, listing folders first as real archives do).
    Returns the folder holding the top-level entry, or the archive."""
    root.mkdir(parents=True, exist_ok=True)
    if archive_name is None:
        for name, data in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        return root / next(iter(files)).split("/")[0]
    archive = root / archive_name
    folders = sorted({"/".join(name.split("/")[:i]) for name in files for i in range(1, name.count("/") + 1)})
    mode = "w" if archive_name.endswith(".tar") else "w:gz"
    with tarfile.open(archive, mode) as tar:
        for folder in folders:
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return archive


def _cifar_hwc_to_chw(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 32, 32, 3] -> uint8 [N, 3072] in CHW plane order, as the files store it."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def _cifar_batches(n_train: int, n_test: int, seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """[(batch name without suffix, images [n, 32, 32, 3], labels [n])]: 5 train batches and test_batch."""
    train, train_labels = make_split(n_train, len(CIFAR10_CLASSES), 32, seed)
    test, test_labels = make_split(n_test, len(CIFAR10_CLASSES), 32, seed + 1)
    chunks = np.array_split(np.arange(n_train), 5)
    batches = [(f"data_batch_{i + 1}", train[idx], train_labels[idx]) for i, idx in enumerate(chunks)]
    return [*batches, ("test_batch", test, test_labels)]


def write_cifar10_python(
    root: str | os.PathLike, n_train: int, n_test: int, seed: int = 0, as_tar: bool = False
) -> Path:
    """Write CIFAR-10's python version: cifar-10-batches-py/ with data_batch_1..5, test_batch
    and batches.meta (protocol-2 pickles of dicts with bytes keys, as the originals are), or
    the same inside root/cifar-10-python.tar.gz. Returns the folder or the archive."""
    files = {}
    for name, images, labels in _cifar_batches(n_train, n_test, seed):
        batch = {
            b"batch_label": f"{name.replace('_', ' ')} (synthetic)".encode(),
            b"labels": labels.tolist(),
            b"data": _cifar_hwc_to_chw(images),
            b"filenames": [f"{CIFAR10_CLASSES[k]}_s_{i:06d}.png".encode() for i, k in enumerate(labels)],
        }
        files[f"cifar-10-batches-py/{name}"] = pickle.dumps(batch, protocol=2)
    meta = {
        b"num_cases_per_batch": -(-n_train // 5),
        b"label_names": [c.encode() for c in CIFAR10_CLASSES],
        b"num_vis": 3072,
    }
    files["cifar-10-batches-py/batches.meta"] = pickle.dumps(meta, protocol=2)
    return _write_tree(Path(root), files, "cifar-10-python.tar.gz" if as_tar else None)


def write_cifar10_binary(
    root: str | os.PathLike, n_train: int, n_test: int, seed: int = 0, as_tar: bool = False
) -> Path:
    """Write CIFAR-10's binary version: cifar-10-batches-bin/ with data_batch_1..5.bin and
    test_batch.bin (records of 1 label byte + 3072 CHW pixel bytes) and batches.meta.txt,
    or the same inside root/cifar-10-binary.tar.gz. Returns the folder or the archive."""
    files = {}
    for name, images, labels in _cifar_batches(n_train, n_test, seed):
        records = np.concatenate([labels.astype(np.uint8)[:, None], _cifar_hwc_to_chw(images)], axis=1)
        files[f"cifar-10-batches-bin/{name}.bin"] = records.tobytes()
    # The original ends with a blank line.
    files["cifar-10-batches-bin/batches.meta.txt"] = ("\n".join(CIFAR10_CLASSES) + "\n\n").encode()
    return _write_tree(Path(root), files, "cifar-10-binary.tar.gz" if as_tar else None)


def write_stl10_binary(root: str | os.PathLike, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Write STL-10's stl10_binary/: {train,test}_X.bin (uint8, each image 3 planes of 96x96
    stored column-major), {train,test}_y.bin (labels 1..10) and class_names.txt.
    Returns the folder."""
    files = {"stl10_binary/class_names.txt": ("\n".join(STL10_CLASSES) + "\n").encode()}
    for split, n, split_seed in (("train", n_train, seed), ("test", n_test, seed + 1)):
        images, labels = make_split(n, len(STL10_CLASSES), _STL10_SIDE, split_seed)
        files[f"stl10_binary/{split}_X.bin"] = stl10_planes(images).tobytes()
        files[f"stl10_binary/{split}_y.bin"] = (labels + 1).astype(np.uint8).tobytes()
    return _write_tree(Path(root), files, None)


def stl10_planes(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] -> uint8 [N, 3, W, H]: the column-major planes STL-10 stores."""
    return np.ascontiguousarray(images.transpose(0, 3, 2, 1))


def write_image_folder(
    root: str | os.PathLike,
    n_per_class: int,
    classes: Sequence[str] = CIFAR10_CLASSES,
    size: int = 32,
    ext: str = "png",
    seed: int = 0,
    as_tar: bool = False,
) -> Path:
    """Write train/<class>/NNNN.<ext> and test/<class>/NNNN.<ext>, n_per_class images each,
    under root/image-folder/, or the same inside root/image-folder.tar.gz.
    Images are render_images(labels, size, seed) for train and seed + 1 for test, with
    labels = np.repeat(np.arange(len(classes)), n_per_class). Returns the folder or the archive."""
    labels = np.repeat(np.arange(len(classes)), n_per_class)
    files = {}
    for split, split_seed in (("train", seed), ("test", seed + 1)):
        for i, (label, image) in enumerate(zip(labels, render_images(labels, size, split_seed))):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG" if ext in ("jpg", "jpeg") else ext.upper())
            files[f"image-folder/{split}/{classes[label]}/{i % n_per_class:04d}.{ext}"] = buffer.getvalue()
    return _write_tree(Path(root), files, "image-folder.tar.gz" if as_tar else None)
