"""`pegasus train-prior`: train the gated PixelCNN prior on RUN_DIR's interpolated grids."""
from __future__ import annotations

import argparse

from pegasus.commands import _args


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "train-prior",
        parents=[common],
        help="train the gated PixelCNN prior on the interpolated latent grids",
        description="Train pegasus.GatedPixelCNN on RUN_DIR/latents.safetensors, conditioned on alpha, with a "
        "held-out split of the pairs. Settings not given take the defaults shown (or, with --resume, the saved ones).",
    )
    p.add_argument("--run-dir", required=True, type=_args.run_dir, metavar="RUN_DIR", help="run directory with latents.safetensors")
    p.add_argument("--steps", type=_args.positive_int, help="total optimizer steps (default 1500)")
    p.add_argument("--batch-size", type=_args.positive_int, help="grids per step and process (default 64; N processes under torchrun: N x that per step)")
    p.add_argument("--lr", type=_args.positive_float, help="Adam learning rate (default 1e-3)")
    p.add_argument("--channels", type=_args.positive_int, help="channels of each stack (default 64)")
    p.add_argument("--layers", type=_args.positive_int, help="gated layers (default 8)")
    p.add_argument("--kernel", type=_args.positive_int, help="odd kernel size (default 5)")
    p.add_argument("--unconditional", action="store_true", help="ignore alpha: an unconditional prior")
    p.add_argument("--held-out", type=_args.positive_float, help="share of the pairs held out for evaluation (default 0.1)")
    p.add_argument("--pretrain-steps", type=_args.non_negative_int, help="train the first N of --steps on every bird and horse of "
                   "the data set (RUN_DIR/class_latents.safetensors, `interpolate --class-grids`), then on the picks' "
                   "interpolations (default 0)")
    p.add_argument("--seed", type=_args.seed, help="seed of initialisation, split and batch order (default 0)")
    p.add_argument("--checkpoint-every", type=_args.positive_int, help="steps between checkpoints (default 250)")
    _args.add_device(p)
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/prior_checkpoint.safetensors")
    p.add_argument("--level", choices=["bottom", "top"], default="bottom", help="bottom (default): the run's prior; for a "
                   "two-level run, of its bottom grids, conditioned on alpha and the top grids. top: a two-level run's "
                   "top prior, written to RUN_DIR/top/")
    _args.add_precision(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pegasus.rundir import prior_dir
    from pegasus.train_prior import train_prior

    prior = {"channels": args.channels, "layers": args.layers, "kernel": args.kernel}
    if args.unconditional:
        prior["conditional"] = False
    summary = train_prior(
        args.run_dir,
        prior_cfg=_args.given(prior),
        train_cfg=_args.train_settings(args, "held_out", "pretrain_steps"),
        device=_args.device(args.device),
        resume=args.resume,
        level=args.level,
    )
    return _args.report(summary, f"{prior_dir(args.run_dir, args.level)}/: prior.safetensors prior_config.json prior_eval.json "
                        "prior_metrics.jsonl prior_loss_curves.png")
