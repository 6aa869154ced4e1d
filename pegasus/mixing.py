"""How bird and horse latents are mixed: the pairs, the alphas, the mixes (MODES) and their code grids.

The interpolation stage (pegasus.interpolate) writes a run's latents with these; the evaluation
stage (pegasus.evaluate) redraws its interpolation pictures with the same functions, so both stand
on this module rather than on each other.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from pegasus.models import VQVAE, VQVAE2

__all__ = ["MODES", "check_alphas", "choose_pairs", "interpolate_codes", "mix", "region_field"]


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


MODES = ("linear", "slerp", "regions")


def mix(z_b: Tensor, z_h: Tensor, a: Tensor, mode: str = "linear", field: Tensor | None = None) -> Tensor:
    """Mixes of z_b, z_h Tensor[b, 1, D, h, w] at alphas a Tensor[1, A, 1, 1, 1] -> Tensor[b, A, D, h, w].
    field Tensor[b, 1, 1, h, w] in [0, 1) ranks the positions for "regions" (`region_field`)."""
    if mode == "linear":
        return (1 - a) * z_b + a * z_h
    if mode == "slerp":
        nb, nh = z_b.norm(dim=2, keepdim=True), z_h.norm(dim=2, keepdim=True)
        ub, uh = z_b / nb.clamp_min(1e-12), z_h / nh.clamp_min(1e-12)
        omega = torch.acos((ub * uh).sum(2, keepdim=True).clamp(-1 + 1e-6, 1 - 1e-6))
        so = torch.sin(omega)
        direction = (torch.sin((1 - a) * omega) * ub + torch.sin(a * omega) * uh) / so
        return direction * ((1 - a) * nb + a * nh)
    if mode == "regions":
        if field is None:
            raise ValueError("mode 'regions' needs the field of each pair (region_field)")
        horse = field < a  # [b, A, 1, h, w]: the alpha share of positions, where the field is lowest
        return torch.where(horse, z_h, z_b)
    raise ValueError(f"interpolation mode should be one of {', '.join(MODES)}, got {mode!r}")


def region_field(pair_ids: np.ndarray, grid: tuple[int, int], seed: int) -> Tensor:
    """Per pair (a row of pair_ids, e.g. (bird id, horse id)), a smooth map of the grid: seeded 3x3
    noise upsampled bilinearly, replaced by its ranks / (h*w), so that `field < alpha` marks
    ceil(alpha * h * w) positions in connected blobs. Tensor[P, 1, 1, h, w] float32."""
    h, w = grid
    noise = torch.stack([
        torch.from_numpy(np.random.default_rng([seed, *map(int, ids)]).random((1, 3, 3)).astype(np.float32))
        for ids in np.asarray(pair_ids).reshape(len(pair_ids), -1)
    ])
    smooth = torch.nn.functional.interpolate(noise, size=(h, w), mode="bilinear", align_corners=True).flatten(1)
    ranks = smooth.argsort(1).argsort(1).float()
    return (ranks / (h * w)).view(len(pair_ids), 1, 1, h, w)


@torch.no_grad()
def interpolate_codes(
    model: VQVAE | VQVAE2, z_birds: Tensor, z_horses: Tensor, pairs: np.ndarray, alphas: list[float], batch: int = 64,
    mode: str = "linear", field: Tensor | None = None,
) -> list[Tensor]:
    """z_birds Tensor[Nb, D, h, w], z_horses Tensor[Nh, D, h, w] (`model.encode`'s latents), pairs
    [P, 2] positions -> per code level (`model.latent_codes`: [grid] for a VQVAE, [top, bottom] for
    a VQVAE2) the code grids Tensor[P, A, h_l, w_l] of the `mode` mix of z_bird and z_horse at each
    alpha (field: Tensor[P, 1, 1, h, w] for "regions", default `region_field(pairs, ...)`, seed 0)."""
    if mode not in MODES:
        raise ValueError(f"interpolation mode should be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "regions" and field is None:
        field = region_field(pairs, tuple(z_birds.shape[-2:]), 0)
    a = torch.tensor(alphas, dtype=z_birds.dtype, device=z_birds.device)[None, :, None, None, None]
    out: list[list[Tensor]] = []
    for start in range(0, len(pairs), batch):
        p = torch.from_numpy(pairs[start : start + batch]).to(z_birds.device)
        f = None if field is None else field[start : start + batch].to(z_birds.device)
        z = mix(z_birds[p[:, 0], None], z_horses[p[:, 1], None], a, mode, f)  # [b, A, D, h, w]
        out.append([g.view(len(p), len(alphas), *g.shape[-2:]) for g in model.latent_codes(z.flatten(0, 1))])
    return [torch.cat(level) for level in zip(*out)]
