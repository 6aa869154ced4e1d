"""`pegasus train-vqvae`: train the VQ-VAE on a data set's train split."""
from __future__ import annotations

import argparse

from pegasus import backends
from pegasus.commands import _args


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "train-vqvae",
        parents=[common],
        help="train the VQ-VAE on a whole data set",
        description="Train the VQ-VAE on the train split and evaluate on the test split. Settings not "
        "given take the defaults shown (or, with --resume, the values saved in RUN_DIR/config.json).",
    )
    p.add_argument("--data", required=True, help="data set path (see `pegasus data`)")
    p.add_argument("--out", required=True, type=_args.run_dir, metavar="RUN_DIR", help="run directory to write")
    p.add_argument("--steps", type=_args.positive_int, help="total optimizer steps (default 2000)")
    p.add_argument("--batch-size", type=_args.positive_int, help="images per step and process (default 256; N processes under torchrun: N x that per step)")
    p.add_argument("--lr", type=_args.positive_float, help="Adam learning rate (default 1e-3)")
    p.add_argument("--codes", type=_args.positive_int, help="codebook size K (default 512)")
    p.add_argument("--dim", type=_args.positive_int, help="code dimension D (default 64)")
    p.add_argument("--levels", type=int, choices=[1, 2], help="code levels (default 1); 2: a top grid at 1/8 of the image "
                   "side over a bottom one at 1/4, as in VQ-VAE-2, each with its own codebook (every later stage takes "
                   "both levels; train-prior --level top trains the top prior)")
    p.add_argument("--seed", type=_args.seed, help="seed of initialisation and batch order (default 0)")
    p.add_argument("--no-ema", action="store_true", help="learn the codebook by gradient instead of EMA updates")
    p.add_argument("--restart-after", type=_args.non_negative_int, help="re-seed codes unused for this many steps; 0 disables (default 2; raise it when a step holds few latents)")
    p.add_argument("--checkpoint-every", type=_args.positive_int, help="steps between checkpoints (default 250)")
    _args.add_device(p)
    p.add_argument("--backend", choices=backends.NEAREST_CODE.names(), help="nearest-code backend (default: the fastest "
                   f"available; {backends.NEAREST_CODE.env} when set; see `pegasus info`)")
    p.add_argument("--perceptual", type=_args.non_negative_float, metavar="W", help="add W x the perceptual distance between "
                   "reconstructions and originals (a classifier's activations, LPIPS-style) to the loss (default 0: MSE only)")
    p.add_argument("--perceptual-net", metavar="DIR", help="the classifier of --perceptual (a train-classifier directory; "
                   "default: the one shipped for it, not the one `pegasus evaluate` scores with)")
    p.add_argument("--init", type=_args.run_dir, metavar="RUN_DIR", help="start from this run's VQ-VAE weights (same settings) instead of from scratch")
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR from its last checkpoint")
    _args.add_precision(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pegasus.train_vqvae import train_vqvae

    model = {"codes": args.codes, "dim": args.dim, "restart_after": args.restart_after, "levels": args.levels}
    if args.no_ema:
        model["ema"] = False
    summary = train_vqvae(
        args.data,
        args.out,
        model_cfg=_args.given(model),
        train_cfg=_args.train_settings(args, "perceptual", "perceptual_net", "init"),
        device=_args.device(args.device),
        resume=args.resume,
        backend=args.backend,
    )
    return _args.report(summary, f"{args.out}/: vqvae.safetensors config.json eval.json reconstructions.png loss_curves.png metrics.jsonl")
