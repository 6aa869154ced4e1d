"""STL-10's official ``stl10_binary/`` layout, memory-mapped rather than read whole
(train_X.bin alone is 138 MB, unlabeled_X.bin 2.7 GB)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._dataset import DatasetError, ImageDataset

STL10_DIR = "stl10_binary"
SIDE = 96
_IMAGE_BYTES = 3 * SIDE * SIDE


def load_stl10(folder: Path, split: str) -> ImageDataset:
    """Load one split from ``folder`` (an extracted stl10_binary/).

    On disk each image is 3 planes of 96x96 stored column-major, so a record reshaped to
    [3, 96, 96] is indexed [channel, column, row]; the returned view is [N, row, column, 3].
    Labels on disk are 1..10.
    """
    x_path, y_path = folder / f"{split}_X.bin", folder / f"{split}_y.bin"
    names_path = folder / "class_names.txt"
    missing = [p.name for p in (x_path, y_path, names_path) if not p.is_file()]
    if missing:
        raise DatasetError(
            f"{folder}: {split} split of stl10-binary expects {x_path.name}, {y_path.name}, "
            f"{names_path.name}; missing {', '.join(missing)}"
        )
    classes = [line.strip() for line in names_path.read_text().splitlines() if line.strip()]

    size = x_path.stat().st_size
    if size == 0 or size % _IMAGE_BYTES:
        raise DatasetError(
            f"{x_path}: expected a non-zero size that is a multiple of the {_IMAGE_BYTES}-byte "
            f"image (3x{SIDE}x{SIDE}), got {size} bytes"
        )
    n = size // _IMAGE_BYTES
    labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64) - 1
    if labels.size != n:
        raise DatasetError(
            f"{y_path}: expected {n} labels (one per image in {x_path.name}), got {labels.size}"
        )
    bad = labels[(labels < 0) | (labels >= len(classes))]
    if bad.size:
        raise DatasetError(
            f"{y_path}: label {bad[0] + 1} out of range, expected 1..{len(classes)} "
            f"for the {len(classes)} classes in {names_path.name}"
        )

    planes = np.memmap(x_path, dtype=np.uint8, mode="r", shape=(n, 3, SIDE, SIDE))
    return ImageDataset(planes.transpose(0, 3, 2, 1), labels, classes, "stl10-binary", str(folder))
