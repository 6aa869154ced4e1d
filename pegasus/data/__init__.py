"""Image data sets in their official on-disk formats: CIFAR-10 (python and binary
batches), STL-10 (binary) and image folders (directories or tar archives).

>>> ds = load_dataset("~/data/cifar-10-python.tar.gz", split="train")
>>> ds.images.shape, ds.classes[:2]
((50000, 32, 32, 3), ['airplane', 'automobile'])
"""

from ._dataset import DatasetError, ImageDataset
from ._load import describe, describe_splits, load_dataset

__all__ = ["DatasetError", "ImageDataset", "describe", "describe_splits", "load_dataset"]
