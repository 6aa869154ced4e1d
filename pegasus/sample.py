"""Stage 5, sampling: a finished run directory as one object (its VQ-VAE and prior), and images from it.

>>> run = pegasus.load_run("runs/c10")
>>> images = run.sample(64, alpha=0.5, temperature=1.0, seed=0)   # uint8 [64, 3, 32, 32]
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pegasus.checkpoint import CheckpointError
from pegasus.images import image_format, save_grid, to_uint8, whiteness
from pegasus.models import VQVAE
from pegasus.models.pixelcnn import GatedPixelCNN
from pegasus.rundir import load_prior, load_vqvae
from pegasus.sampling import sample_indices


@dataclass
class Run:
    """run_dir, vqvae (eval mode) and prior (eval mode) of a trained run directory."""

    run_dir: Path
    vqvae: VQVAE
    prior: GatedPixelCNN

    def sample_indices(
        self,
        n: int,
        alpha: float = 0.5,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int = 0,
        noise: Tensor | None = None,
        backend: str | None = None,
    ) -> Tensor:
        """Code grids Tensor[n, h, w] int64 from the prior (see `pegasus.sample_indices`)."""
        return sample_indices(
            self.prior, n, alpha, temperature=temperature, top_k=top_k, seed=seed, noise=noise, backend=backend
        )

    @torch.no_grad()
    def decode(self, indices: Tensor) -> Tensor:
        """Code grids Tensor[n, h, w] -> uint8 images Tensor[n, 3, H, W]."""
        device = next(self.vqvae.parameters()).device
        return to_uint8(self.vqvae.decode_indices(indices.to(device))).cpu()

    def sample(
        self,
        n: int,
        alpha: float = 0.5,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int = 0,
        noise: Tensor | None = None,
        backend: str | None = None,
    ) -> Tensor:
        """n sampled, decoded images: uint8 Tensor[n, 3, H, W]."""
        grids = self.sample_indices(n, alpha, temperature=temperature, top_k=top_k, seed=seed, noise=noise, backend=backend)
        return self.decode(grids)


def whitest(images: Tensor, n: int) -> Tensor:
    """Positions of the n whitest of uint8 images Tensor[M, 3, H, W] (pegasus.select's score),
    whitest first -> Tensor[n] int64."""
    if not 1 <= n <= len(images):
        raise ValueError(f"cannot keep the {n} whitest of {len(images)} images")
    scores = whiteness(images.permute(0, 2, 3, 1).numpy())
    return torch.from_numpy(np.argsort(-scores, kind="stable")[:n].copy())


def load_run(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> Run:
    """The VQ-VAE and the prior of RUN_DIR. A missing file raises CheckpointError naming it and
    the command that makes it."""
    run_dir = Path(run_dir)
    vqvae, prior = load_vqvae(run_dir, device), load_prior(run_dir, device)
    if prior.cfg.codes != vqvae.cfg.codes:
        raise CheckpointError(
            f"{run_dir}: the prior models {prior.cfg.codes} codes (prior_config.json) but the VQ-VAE has "
            f"{vqvae.cfg.codes} codes (config.json): they come from different runs"
        )
    return Run(run_dir, vqvae, prior)


def sample_to_png(
    run_dir: str | os.PathLike | Run,
    out: str | os.PathLike,
    n: int = 64,
    alpha: float = 0.5,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    backend: str | None = None,
    best_of: int | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Sample `best_of` (default n) images from RUN_DIR (or a loaded Run), keep the n whitest, write
    them to `out` as an image grid of 8 per row (PNG, JPEG or WebP by its suffix). Returns what was
    done and the time per sampling step (one position of the whole batch)."""
    if best_of is not None and best_of < n:
        raise ValueError(f"best-of should be >= n ({n}), got {best_of}")
    image_format(out)  # a suffix that cannot be written fails before the sampling, not after
    run = run_dir if isinstance(run_dir, Run) else load_run(run_dir, device)
    t0 = time.perf_counter()
    grids = run.sample_indices(best_of or n, alpha, temperature=temperature, top_k=top_k, seed=seed, backend=backend)
    seconds = time.perf_counter() - t0
    images = run.decode(grids)
    if best_of is not None:
        images = images[whitest(images, n)]
    save_grid(images, out, nrow=8, scale=max(1, 64 // images.shape[-1]))
    return {
        "out": str(out),
        "samples": int(grids.shape[0]),
        "kept": n,
        "grid": list(grids.shape[1:]),
        "sampling_s": seconds,
        "seconds_per_step": seconds / (grids.shape[1] * grids.shape[2]),
    }
