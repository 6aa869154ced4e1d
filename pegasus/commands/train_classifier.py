"""`pegasus train-classifier`: train the small classifier `pegasus evaluate` scores pictures with."""
from __future__ import annotations

import argparse
import json

from pegasus.commands import _args


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "train-classifier",
        parents=[common],
        help="train the small classifier that `pegasus evaluate` scores pictures with",
        description="Train pegasus.models.classifier on the train split (about 5 minutes for CIFAR-10 on 2 CPU cores "
        "in bf16) and test it on the test split. One is shipped with pegasus (CIFAR-10); train your own for another "
        "data set.",
    )
    p.add_argument("--data", required=True, help="data set path (see `pegasus data`)")
    p.add_argument("--out", required=True, type=_args.run_dir, metavar="DIR", help="directory to write")
    p.add_argument("--epochs", type=_args.positive_float, help="passes over the train split (default: 782 steps, 8 epochs of CIFAR-10)")
    p.add_argument("--batch-size", type=_args.positive_int, help="images per step (default 512)")
    p.add_argument("--seed", type=_args.seed, help="seed of initialisation, batch order and augmentation (default 0)")
    _args.add_device(p)
    p.add_argument("--resume", action="store_true", help="continue DIR from its last checkpoint")
    _args.add_precision(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pegasus.train_classifier import train_classifier

    summary = train_classifier(
        args.data, args.out, epochs=args.epochs, train_cfg=_args.given({"batch_size": args.batch_size, "seed": args.seed, "precision": args.precision}),
        device=_args.device(args.device), resume=args.resume,
    )
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}/: classifier.safetensors classifier.json classifier_eval.json classifier_metrics.jsonl classifier_loss_curves.png")
    return 0
