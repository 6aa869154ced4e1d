"""Stage 3, bird -> pegasus -> horse: interpolating encoder outputs of the picks and quantising them.

For each bird/horse pair and each alpha, a mix of the continuous encoder outputs z_e(bird) and
z_e(horse), then the nearest codes. The mixes (MODES):
  linear   z = (1 - alpha) * z_bird + alpha * z_horse at every position (the method's own)
  slerp    per position, the direction of the two D-vectors turned along the great circle and their
           lengths mixed linearly: a linear mix of two far-apart vectors is shorter than either and
           lands on dull, grey codes; slerp keeps the length
  regions  per pair, a smooth random map of the grid (a 3x3 field of seeded noise, upsampled): the
           alpha share of positions where it is lowest take the horse's vector, the rest the bird's,
           so that whole parts of both animals survive instead of a blend of both everywhere Reads the run's VQ-VAE and selection.json;
writes latents.safetensors, interpolation.png and, asked, class_latents.safetensors (one strip per pair, 8 pairs spread over the
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
from pegasus.mixing import MODES, check_alphas, choose_pairs, interpolate_codes, region_field
from pegasus.models import VQVAE, VQVAE2
from pegasus.data import ImageDataset
from pegasus.rundir import STRIPS, class_index, load_vqvae, read_selection, selected_images, write_class_latents, write_latents

DEFAULT_ALPHAS = tuple(i / 10 for i in range(11))


@torch.no_grad()
def encode_classes(model: VQVAE | VQVAE2, ds: ImageDataset, batch: int = 500) -> dict[str, Tensor]:
    """Code grids of every bird (alpha 0) and horse (alpha 1) of `ds` and of their mirror images:
    {"indices": Tensor[N, h, w] int64, "alphas": Tensor[N] float32}, and "top": Tensor[N, h/2, w/2]
    for a two-level model (`level_tensors`)."""
    device = next(model.parameters()).device
    grids: list[list[Tensor]] = []
    alphas = []
    for alpha, name in ((0.0, "bird"), (1.0, "horse")):
        members = np.flatnonzero(ds.labels == class_index(ds, name))
        for start in range(0, len(members), batch):
            x = images_to_tensor(ds.images[members[start : start + batch]], device)
            for view in (x, x.flip(-1)):
                grids.append([g.cpu() for g in model.codes(view)])
                alphas.append(torch.full((len(x),), alpha))
    return {**level_tensors([torch.cat(level) for level in zip(*grids)]), "alphas": torch.cat(alphas)}


def level_tensors(levels: list[Tensor]) -> dict[str, Tensor]:
    """The grids of every code level as latents files store them: the finest level under "indices"
    (the grids the prior of a one-level run, or the bottom prior of a two-level one, models), the
    top level of a two-level run under "top"."""
    if len(levels) == 1:
        return {"indices": levels[0]}
    top, bottom = levels
    return {"indices": bottom, "top": top}


def interpolate(
    run_dir: str | os.PathLike,
    pairs: int | None = None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    seed: int = 0,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    mirror: bool = False,
    mode: str = "linear",
    data: str | os.PathLike | None = None,
    class_grids: bool = False,
) -> dict[str, Any]:
    """Interpolate the picks of RUN_DIR/selection.json with the run's VQ-VAE; writes latents.safetensors
    and interpolation.png. pairs: None for all bird x horse pairs, or a seeded sample of that many.
    mirror: also interpolate every pair mirrored left to right (bird and horse both), doubling the
    grids; latents["mirrored"] marks them, and the prior holds a pair out with its mirror.
    mode: one of MODES (module docstring). data: the data set, if not where selection.json says.
    class_grids: also encode every bird and horse of the split, and their mirror images, into
    class_latents.safetensors (alpha 0 and 1), the grids `train-prior --pretrain-steps` learns first."""
    run_dir = Path(run_dir)
    alphas = check_alphas(alphas)
    if mode not in MODES:
        raise ValueError(f"interpolation mode should be one of {', '.join(MODES)}, got {mode!r}")
    record = read_selection(run_dir)
    ds, bird_ids, horse_ids = selected_images(run_dir, cache_dir, data)
    model = load_vqvae(run_dir, device)
    bird_x = images_to_tensor(ds.images[bird_ids], device)
    horse_x = images_to_tensor(ds.images[horse_ids], device)
    with torch.no_grad():
        z_b, z_h = model.encode(bird_x), model.encode(horse_x)
    where = choose_pairs(len(bird_ids), len(horse_ids), pairs, seed)
    ids = np.stack([np.asarray(bird_ids)[where[:, 0]], np.asarray(horse_ids)[where[:, 1]]], axis=1)
    # The region map of a pair is a function of its ids, so its mirror shares it, mirrored.
    field = region_field(ids, tuple(z_b.shape[-2:]), seed) if mode == "regions" else None
    levels = [g.cpu() for g in interpolate_codes(model, z_b, z_h, where, alphas, mode=mode, field=field)]
    mirrored = torch.zeros(len(where), dtype=torch.bool)
    if mirror:
        with torch.no_grad():
            zf_b, zf_h = model.encode(bird_x.flip(-1)), model.encode(horse_x.flip(-1))
        flipped = None if field is None else field.flip(-1)
        more = interpolate_codes(model, zf_b, zf_h, where, alphas, mode=mode, field=flipped)
        levels = [torch.cat([g, m.cpu()]) for g, m in zip(levels, more)]
        ids = np.concatenate([ids, ids])
        mirrored = torch.cat([mirrored, torch.ones(len(where), dtype=torch.bool)])
    indices = levels[-1]
    tensors = {
        **level_tensors(levels),
        "alphas": torch.tensor(alphas, dtype=torch.float32),
        "pairs": torch.from_numpy(ids),
        "mirrored": mirrored,
    }
    meta = {"data": record["data"], "split": record["split"], "seed": str(seed), "sampled_pairs": str(pairs), "mirror": str(mirror), "mode": mode}
    write_latents(run_dir, tensors, meta)
    if class_grids:
        write_class_latents(run_dir, encode_classes(model, ds), {**meta, "mirror": "True"})

    # Pairs spread evenly over the list, so the strips show different birds, not the first bird 8 times.
    shown = np.unique(np.linspace(0, len(where) - 1, min(8, len(where))).round().astype(np.int64))
    with torch.no_grad():
        shown_levels = [g[shown].flatten(0, 1).to(device) for g in levels]
        decoded = model.decode_codes(shown_levels).view(len(shown), len(alphas), *bird_x.shape[1:])
    strips = torch.cat([bird_x[where[shown, 0], None], decoded.clamp(0, 1), horse_x[where[shown, 1], None]], dim=1)
    save_grid(strips.flatten(0, 1), run_dir / STRIPS, nrow=len(alphas) + 2, scale=max(1, 64 // bird_x.shape[-1]))
    return {"pairs": len(where), "mirror": mirror, "mode": mode, "class_grids": class_grids, "alphas": alphas, "grid": list(indices.shape[-2:]), "grids": int(indices.shape[0]) * len(alphas), "levels": len(levels)}
