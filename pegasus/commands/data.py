"""`pegasus data PATH`: describe a data set, and fail on a split that does not load."""
from __future__ import annotations

import argparse


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("data", parents=[common], help="describe a data set: format, image size, class counts")
    p.add_argument("path", help="CIFAR-10 (python or binary), stl10_binary/, or an image-folder dir/.tar/.tar.gz")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pegasus.data import DatasetError, describe_splits

    text, errors = describe_splits(args.path)
    print(text)
    if errors:
        # Every command needs both splits (train-vqvae evaluates on test), so a broken one fails
        # the check, after the summary of what did load.
        split, error = next(iter(errors.items()))
        raise DatasetError(f"{split} split: {error}") from error
    return 0
