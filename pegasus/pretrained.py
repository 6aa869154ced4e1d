"""The trained VQ-VAE and prior shipped inside the package (pegasus/weights/), and their export.

>>> run = pegasus.pretrained()            # a Run, as pegasus.load_run(...) returns
>>> images = run.sample(64, alpha=0.5)   # uint8 [64, 3, 32, 32], no data set and no network needed

The weights are stored in float32 (8.9 MB). Half precision would halve that, but it changed 4 of
64 samples of the same seed (a rounded logit flips a near-tie and the rest of the grid follows), so
it was not used (`export_run(..., half=True)` still makes such a copy). The folder is a run
directory with only what sampling needs: config.json, vqvae.safetensors, prior_config.json,
prior.safetensors, the evaluation figures, and the selection (selection.json: which training
images were the birds and horses, not the images).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from pegasus.checkpoint import CheckpointError, atomic_write_bytes, atomic_write_text
from pegasus.prior import PRIOR_CONFIG, PRIOR_EVAL, PRIOR_WEIGHTS
from pegasus.run import Run, load_run
from pegasus.select import SELECTION
from pegasus.train import CONFIG, EVAL, WEIGHTS

WEIGHTS_DIR = Path(__file__).parent / "weights"
"""Where the shipped run lives (installed with the package as package data)."""

_SHIPPED = (CONFIG, WEIGHTS, PRIOR_CONFIG, PRIOR_WEIGHTS, SELECTION)


def pretrained(device: str | torch.device = "cpu") -> Run:
    """The shipped run: its VQ-VAE and prior in float32, eval mode, on `device`."""
    missing = [name for name in _SHIPPED if not (WEIGHTS_DIR / name).is_file()]
    if missing:
        raise CheckpointError(
            f"the pretrained weights are missing from {WEIGHTS_DIR} ({', '.join(missing)}): "
            "reinstall pegasus, or export a run there with pegasus.pretrained.export_run"
        )
    return load_run(WEIGHTS_DIR, device)


def export_run(run_dir: str | os.PathLike, dest: str | os.PathLike = WEIGHTS_DIR, half: bool = False) -> dict[str, int]:
    """Copy what sampling needs from a finished run directory to `dest`, the weights in float16
    when `half`; the configs keep the model, training and data settings. Returns the size in
    bytes of each file in `dest`."""
    run_dir, dest = Path(run_dir), Path(dest)
    load_run(run_dir)  # a run that does not load is not exported
    dest.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for name in (WEIGHTS, PRIOR_WEIGHTS):
        tensors = load_file(run_dir / name)
        if half:
            tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
        data = save({k: v.contiguous() for k, v in tensors.items()}, metadata={"source": str(run_dir.name), "dtype": "float16" if half else "float32"})
        atomic_write_bytes(dest / name, data)
    for name, keep in ((CONFIG, ("format", "pegasus", "vqvae", "train", "data")), (PRIOR_CONFIG, ("format", "pegasus", "prior", "train", "latents"))):
        config = json.loads((run_dir / name).read_text())
        atomic_write_text(dest / name, json.dumps({k: config[k] for k in keep if k in config}, indent=2) + "\n")
    for name in (EVAL, PRIOR_EVAL, SELECTION):
        if (run_dir / name).is_file():
            atomic_write_text(dest / name, (run_dir / name).read_text())
    for path in dest.iterdir():
        sizes[path.name] = path.stat().st_size
    return sizes
