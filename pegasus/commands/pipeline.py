"""`pegasus pipeline`: every stage from data to samples into one run directory, resumably."""
from __future__ import annotations

import argparse
import json
import sys

from pegasus.commands import _args


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "pipeline",
        parents=[common],
        help="train-vqvae, select, interpolate, train-prior and sample in one go (resumable)",
        description="Run every step into RUN_DIR, skipping those whose outputs exist, so a killed pipeline resumes.",
    )
    p.add_argument("--data", required=True, help="data set path (see `pegasus data`)")
    p.add_argument("--out", required=True, type=_args.run_dir, metavar="RUN_DIR", help="run directory to write")
    p.add_argument("--quick", action="store_true", help="tiny settings that finish in a few minutes on a CPU")
    p.add_argument("--levels", type=int, choices=[1, 2], default=1, help="code levels (default 1); 2: a two-level "
                   "VQ-VAE (VQ-VAE-2) with a top prior and a bottom prior conditioned on the top codes")
    _args.add_precision(p)
    p.set_defaults(func=run)


def _log(message: str) -> None:
    print(f"pipeline: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    import time

    from pegasus.pipeline import run_pipeline

    t0 = time.perf_counter()
    done = run_pipeline(args.data, args.out, quick=args.quick, precision=args.precision, levels=args.levels, log=_log)
    if not _args.is_rank0():
        return 0
    print(json.dumps({**done, "wall_s": round(time.perf_counter() - t0, 1)}))
    print(f"wrote {args.out}/pegasi.png")
    return 0
