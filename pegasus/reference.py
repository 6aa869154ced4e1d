"""Pure-PyTorch reference implementations of the pegasus ops: the ground truth for every fast path."""
from __future__ import annotations

import torch
from torch import Tensor


def nearest_code(z: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest codebook row of every row of `z`, as in rosinality's vq-vae-2 `Quantize`.

    z: Tensor[N, D], codebook: Tensor[K, D] -> (indices: Tensor[N] int64, min_sq_dist: Tensor[N]).
    Distances are ||z||^2 - 2 z.e + ||e||^2, computed in float32 for half/bfloat16 inputs, after
    centring both inputs on the codebook mean: the distances are the same, but the expanded form no
    longer cancels when the vectors share a large offset (float32 inputs shifted by 1e3 otherwise
    pick wrong codes). Ties and NaN follow torch.argmin (lowest index; a NaN row gets index 0 and
    distance NaN; a NaN in the codebook makes every distance NaN, through the mean).
    """
    compute = torch.promote_types(z.dtype, torch.float32)
    mean = codebook.to(compute).mean(0)
    zf, ef = z.to(compute) - mean, codebook.to(compute) - mean
    dist = zf.pow(2).sum(1, keepdim=True) - 2 * zf @ ef.t() + ef.pow(2).sum(1)[None, :]
    indices = dist.argmin(1)
    # The expanded form can round a little below zero; a squared distance cannot be.
    min_sq_dist = dist.gather(1, indices[:, None]).squeeze(1).clamp_min(0)
    return indices, min_sq_dist.to(z.dtype)
