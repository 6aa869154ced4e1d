"""Regenerate the picture of the two-level control (docs/model.md), docs/levels.png, from a two-level run
directory (`pegasus pipeline --levels 2`, or the steps by hand):

    python scripts/docs_levels.py RUN_DIR [--alpha 0.5] [--seed 0]

Left: `Run.swap_levels` of 8 samples, cell (r, c) decoding sample r's top codes with sample c's
bottom codes (rows share the top codes, columns the bottom codes; the diagonal is the samples).
Right: for the same 8 top grids, one row each, 8 bottom grids sampled given it (seeds 1..8): the
bottom prior's own textures for a kept shape.
"""
import argparse
from pathlib import Path

import numpy as np
import torch

import pegasus
from pegasus.images import make_grid, save_image

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("run_dir")
parser.add_argument("--alpha", type=float, default=0.5)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

docs = Path(__file__).resolve().parents[1] / "docs"
run = pegasus.load_run(args.run_dir)
codes = run.sample_codes(8, args.alpha, options=pegasus.SamplingOptions(seed=args.seed))
swapped = run.swap_levels(codes).flatten(0, 1)
kept = torch.cat([run.sample(8, args.alpha, options=pegasus.SamplingOptions(seed=args.seed + 1), top=codes[0][r]) for r in range(8)])
scale = max(1, 64 // run.image_size[0])
left, right = make_grid(swapped, nrow=8, scale=scale), make_grid(kept, nrow=8, scale=scale)
gap = np.full((left.shape[0], 16, 3), 255, np.uint8)
save_image(np.concatenate([left, gap, right], axis=1), docs / "levels.png")
print(f"wrote {docs / 'levels.png'}")
