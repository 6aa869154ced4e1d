"""Regenerate the sample pictures of README.md and docs/ from the weights shipped in pegasus/weights:
docs/pegasi.png (what `pegasus generate -n 64 --alpha 0.5 --seed 0` writes) and docs/alpha_sweep.png
(the same 8 seeds' samples at alpha 0, 0.25, 0.5, 0.75, 1, one row each).

    python scripts/docs_images.py
"""
from pathlib import Path

import torch

import pegasus
from pegasus.images import save_grid
from pegasus.sample import sample_to_file
from pegasus.sampling import SamplingOptions

docs = Path(__file__).resolve().parents[1] / "docs"
run = pegasus.pretrained()
sample_to_file(run, docs / "pegasi.png", n=64, alpha=0.5, options=SamplingOptions(seed=0))
rows = [run.sample(8, alpha=a, options=SamplingOptions(seed=0)) for a in (0.0, 0.25, 0.5, 0.75, 1.0)]
save_grid(torch.cat(rows), docs / "alpha_sweep.png", nrow=8, scale=2)
print(f"wrote {docs / 'pegasi.png'} and {docs / 'alpha_sweep.png'}")
