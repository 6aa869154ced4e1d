"""Stage 3, bird -> pegasus -> horse: interpolating encoder outputs of the picks and quantising them.

For each bird/horse pair and each alpha, z = (1 - alpha) * z_e(bird) + alpha * z_e(horse) on the
continuous encoder outputs, then the nearest codes. Reads the run's VQ-VAE and selection.json;
writes latents.safetensors and interpolation.png (one strip per pair, 8 pairs spread over the
list: the bird, the decoded grids for every alpha, the horse; pegasus.rundir describes both).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pegasus.images import images_to_tensor, save_grid
from pegasus.models import VQVAE
from pegasus.rundir import STRIPS, load_vqvae, read_selection, selected_images, write_latents

DEFAULT_ALPHAS = tuple(i / 10 for i in range(11))


def choose_pairs(n_birds: int, n_horses: int, pairs: int | None, seed: int) -> np.ndarray:
    """Positions (bird, horse) into the pick lists, int64 [P, 2]: all n_birds * n_horses pairs in
    order, or a seeded sample of `pairs` of them without repetition."""
    total = n_birds * n_horses
    if pairs is None:
        flat = np.arange(total)
    elif not 1 <= pairs <= total:
        raise ValueError(f"pairs should be in 1..{total} ({n_birds} birds x {n_horses} horses), got {pairs}")
    else:
        flat = np.sort(np.random.default_rng(seed).choice(total, size=pairs, replace=False))
    return np.stack(np.divmod(flat, n_horses), axis=1).astype(np.int64)


def check_alphas(alphas: Sequence[float]) -> list[float]:
    alphas = [float(a) for a in alphas]
    if not alphas or not all(0.0 <= a <= 1.0 for a in alphas):
        raise ValueError(f"alphas should be a non-empty list of numbers in [0, 1], got {alphas}")
    return alphas


@torch.no_grad()
def interpolate_codes(model: VQVAE, z_birds: Tensor, z_horses: Tensor, pairs: np.ndarray, alphas: list[float], batch: int = 64) -> Tensor:
    """z_birds Tensor[Nb, D, h, w], z_horses Tensor[Nh, D, h, w], pairs [P, 2] positions ->
    code grids Tensor[P, A, h, w] of (1 - alpha) * z_bird + alpha * z_horse."""
    a = torch.tensor(alphas, dtype=z_birds.dtype, device=z_birds.device)[None, :, None, None, None]
    out = []
    for start in range(0, len(pairs), batch):
        p = torch.from_numpy(pairs[start : start + batch]).to(z_birds.device)
        z = (1 - a) * z_birds[p[:, 0], None] + a * z_horses[p[:, 1], None]  # [b, A, D, h, w]
        out.append(model.quantize(z.flatten(0, 1)).view(len(p), len(alphas), *z.shape[-2:]))
    return torch.cat(out)


def interpolate(
    run_dir: str | os.PathLike,
    pairs: int | None = None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    seed: int = 0,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    mirror: bool = False,
) -> dict[str, Any]:
    """Interpolate the picks of RUN_DIR/selection.json with the run's VQ-VAE; writes latents.safetensors
    and interpolation.png. pairs: None for all bird x horse pairs, or a seeded sample of that many.
    mirror: also interpolate every pair mirrored left to right (bird and horse both), doubling the
    grids; latents["mirrored"] marks them, and the prior holds a pair out with its mirror."""
    run_dir = Path(run_dir)
    alphas = check_alphas(alphas)
    record = read_selection(run_dir)
    ds, bird_ids, horse_ids = selected_images(run_dir, cache_dir)
    model = load_vqvae(run_dir, device)
    bird_x = images_to_tensor(ds.images[bird_ids], device)
    horse_x = images_to_tensor(ds.images[horse_ids], device)
    with torch.no_grad():
        z_b, z_h = model.encode(bird_x), model.encode(horse_x)
    where = choose_pairs(len(bird_ids), len(horse_ids), pairs, seed)
    indices = interpolate_codes(model, z_b, z_h, where, alphas).cpu()
    ids = np.stack([np.asarray(bird_ids)[where[:, 0]], np.asarray(horse_ids)[where[:, 1]]], axis=1)
    mirrored = torch.zeros(len(where), dtype=torch.bool)
    if mirror:
        with torch.no_grad():
            zf_b, zf_h = model.encode(bird_x.flip(-1)), model.encode(horse_x.flip(-1))
        indices = torch.cat([indices, interpolate_codes(model, zf_b, zf_h, where, alphas).cpu()])
        ids = np.concatenate([ids, ids])
        mirrored = torch.cat([mirrored, torch.ones(len(where), dtype=torch.bool)])
    tensors = {
        "indices": indices,
        "alphas": torch.tensor(alphas, dtype=torch.float32),
        "pairs": torch.from_numpy(ids),
        "mirrored": mirrored,
    }
    meta = {"data": record["data"], "split": record["split"], "seed": str(seed), "sampled_pairs": str(pairs), "mirror": str(mirror)}
    write_latents(run_dir, tensors, meta)

    # Pairs spread evenly over the list, so the strips show different birds, not the first bird 8 times.
    shown = np.unique(np.linspace(0, len(where) - 1, min(8, len(where))).round().astype(np.int64))
    with torch.no_grad():
        decoded = model.decode_indices(indices[shown].flatten(0, 1).to(device)).view(len(shown), len(alphas), *bird_x.shape[1:])
    strips = torch.cat([bird_x[where[shown, 0], None], decoded.clamp(0, 1), horse_x[where[shown, 1], None]], dim=1)
    save_grid(strips.flatten(0, 1), run_dir / STRIPS, nrow=len(alphas) + 2, scale=max(1, 64 // bird_x.shape[-1]))
    return {"pairs": len(where), "mirror": mirror, "alphas": alphas, "grid": list(indices.shape[-2:]), "grids": int(indices.shape[0]) * len(alphas)}
