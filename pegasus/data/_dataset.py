"""The in-memory result of loading a data set, and the error every loader raises."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FORMATS = ("cifar10-python", "cifar10-binary", "stl10-binary", "image-folder")
SPLITS = ("train", "test")


class DatasetError(ValueError):
    """A data set on disk is missing, malformed or not in a recognised layout."""


@dataclass(frozen=True)
class ImageDataset:
    """One split of an image classification data set.

    images: uint8 [N, H, W, 3], upright (row 0 is the top) and unmirrored; may be a
        read-only view of a ``np.memmap``.
    labels: int64 [N], 0-based indices into ``classes``.
    classes: class names; ``classes[k]`` is the name of label ``k``.
    format: one of ``FORMATS``.
    source: the file or folder the split was read from.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    format: str
    source: str

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise DatasetError(
                f"{self.source}: expected images uint8 [N, H, W, 3], "
                f"got {images.dtype} {list(images.shape)}"
            )
        if labels.dtype != np.int64 or labels.shape != (images.shape[0],):
            raise DatasetError(
                f"{self.source}: expected labels int64 [{images.shape[0]}], "
                f"got {labels.dtype} {list(labels.shape)}"
            )
        if self.format not in FORMATS:
            raise DatasetError(f"{self.source}: format must be one of {FORMATS}, got {self.format!r}")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.classes)):
            bad = labels[(labels < 0) | (labels >= len(self.classes))][0]
            raise DatasetError(
                f"{self.source}: label {bad} out of range for {len(self.classes)} classes "
                f"(expected 0..{len(self.classes) - 1})"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of every image."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    def class_counts(self) -> dict[str, int]:
        """Number of images per class, in label order (classes with no images included)."""
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(counts[k]) for k, name in enumerate(self.classes)}
