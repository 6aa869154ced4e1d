"""`pegasus interpolate`: mix the encodings of the selected bird/horse pairs and quantise the mixes."""
from __future__ import annotations

import argparse
import json

from pegasus.commands import _args


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "interpolate",
        parents=[common],
        help="interpolate the encodings of bird/horse pairs and quantise them",
        description="For each bird/horse pair of RUN_DIR/selection.json and each alpha, quantise "
        "(1 - alpha) z_bird + alpha z_horse. Writes RUN_DIR/latents.safetensors and RUN_DIR/interpolation.png.",
    )
    p.add_argument("--run-dir", required=True, type=_args.run_dir, metavar="RUN_DIR", help="run directory with vqvae.safetensors and selection.json")
    p.add_argument("--pairs", type=_args.positive_int, help="a seeded random sample of this many pairs (default: all pairs)")
    p.add_argument("--alphas", type=float, nargs="+", help="interpolation weights in [0, 1] (default 0 0.1 ... 1)")
    p.add_argument("--seed", type=_args.seed, default=0, help="seed of the pair sample (default 0)")
    p.add_argument("--mirror", action="store_true", help="also interpolate every pair mirrored left to right (twice the grids)")
    p.add_argument("--mode", choices=["linear", "slerp", "regions"], default="linear", help="linear: mix every position "
                   "(default); slerp: turn each position's vector along the great circle, keeping its length; regions: "
                   "the alpha share of positions, in smooth random blobs, from the horse, the rest from the bird")
    p.add_argument("--class-grids", action="store_true", help="also encode every bird and horse of the split (and mirrors) "
                   "into class_latents.safetensors, for train-prior --pretrain-steps")
    p.add_argument("--data", help="the data set, if not at the path recorded in RUN_DIR/selection.json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pegasus.interpolate import DEFAULT_ALPHAS, interpolate

    summary = interpolate(args.run_dir, pairs=args.pairs, alphas=args.alphas or DEFAULT_ALPHAS, seed=args.seed, mirror=args.mirror,
                          mode=args.mode, data=args.data, class_grids=args.class_grids)
    print(json.dumps(summary))
    print(f"wrote {args.run_dir}/: latents.safetensors interpolation.png{' class_latents.safetensors' if args.class_grids else ''}")
    return 0
