"""Pure-PyTorch reference implementations of the pegasus ops: the ground truth for every fast path."""
from __future__ import annotations

import torch
from torch import Tensor


def nearest_code(z: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest codebook row of every row of `z`, as in rosinality's vq-vae-2 `Quantize`.

    z: Tensor[N, D], codebook: Tensor[K, D] -> (indices: Tensor[N] int64, min_sq_dist: Tensor[N]).
    Distances are ||z||^2 - 2 z.e + ||e||^2, computed in float32 for half/bfloat16 inputs; ties and
    NaN follow torch.argmin (lowest index; a NaN row gets index 0 and distance NaN).
    """
    compute = torch.promote_types(z.dtype, torch.float32)
    zf, ef = z.to(compute), codebook.to(compute)
    dist = zf.pow(2).sum(1, keepdim=True) - 2 * zf @ ef.t() + ef.pow(2).sum(1)[None, :]
    indices = dist.argmin(1)
    min_sq_dist = dist.gather(1, indices[:, None]).squeeze(1)
    return indices, min_sq_dist.to(z.dtype)
