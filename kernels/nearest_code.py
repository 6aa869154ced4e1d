"""Triton kernel of `pegasus::nearest_code`: fused distances and running argmin per block of rows.

One program owns BLOCK_N rows of z, centred on the codebook mean and held in registers, and loops
over the codebook in tiles of BLOCK_K codes: one `tl.dot` gives z.e for the tile, ||e||^2 - 2 z.e
is reduced to a per-row (min, argmin) at once, and only the running best survives the tile. The
N x K distance matrix never exists. Centring (as in the C++ kernel and the reference) keeps float32
exact when the vectors share a large offset; `input_precision="ieee"` keeps TF32 out of the dot.

Importing this module registers `nearest_code` as the CUDA kernel of `pegasus::nearest_code`
(`pegasus.ops.nearest_code` imports it when the "triton" backend is chosen). Under
TRITON_INTERPRET=1 the same launcher runs on CPU tensors in Triton's interpreter.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from pegasus import _extension

__all__ = ["nearest_code"]

# Codes are tiled in blocks of BLOCK_K and D is held whole in one block (padded to a power of two,
# at least 16 for tl.dot). Above 256 dimensions the z block stops fitting in registers.
_MAX_BLOCK_D = 256
_BLOCK_N = 64
_BLOCK_K = 64


@triton.jit
def _nearest_code_kernel(
    z_ptr,
    stride_zn,
    stride_zd,
    mean_ptr,
    codes_ptr,
    norms_ptr,
    indices_ptr,
    dist_ptr,
    N,
    K,
    D,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    row_mask = rows < N
    dim_mask = dims < D
    mean = tl.load(mean_ptr + dims, mask=dim_mask, other=0.0)
    z = tl.load(
        z_ptr + rows[:, None] * stride_zn + dims[None, :] * stride_zd,
        mask=row_mask[:, None] & dim_mask[None, :],
        other=0.0,
    )
    z = z.to(mean.dtype) - mean[None, :]  # padded dims stay 0 - 0 = 0

    best = tl.full([BLOCK_N], float("inf"), mean.dtype)
    best_code = tl.zeros([BLOCK_N], tl.int64)
    for k0 in range(0, K, BLOCK_K):
        codes = k0 + tl.arange(0, BLOCK_K)
        code_mask = codes < K
        e = tl.load(
            codes_ptr + codes[:, None] * D + dims[None, :],
            mask=code_mask[:, None] & dim_mask[None, :],
            other=0.0,
        )
        norms = tl.load(norms_ptr + codes, mask=code_mask, other=float("inf"))  # padding never wins
        dist = norms[None, :] - 2.0 * tl.dot(z, tl.trans(e), input_precision="ieee")
        dist = tl.where(dist != dist, float("inf"), dist)  # NaN rows are settled after the loop
        tile_best, tile_code = tl.min(dist, axis=1, return_indices=True, return_indices_tie_break_left=True)
        better = tile_best < best  # strict: an earlier tile keeps a tie
        best = tl.where(better, tile_best, best)
        best_code = tl.where(better, k0 + tile_code.to(tl.int64), best_code)

    sq = tl.sum(z * z, axis=1)
    # A NaN in the row (or in the codebook, through the mean) makes every distance NaN: index 0 and
    # distance NaN, as on the other backends. The expanded form can round a little below zero.
    nan_row = sq != sq
    best_code = tl.where(nan_row, 0, best_code)
    out = tl.where(nan_row, float("nan"), tl.maximum(sq + best, 0.0))
    tl.store(indices_ptr + rows, best_code, mask=row_mask)
    tl.store(dist_ptr + rows, out, mask=row_mask)


def nearest_code(z: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor]:
    """Launch `_nearest_code_kernel`: z: Tensor[N, D], codebook: Tensor[K, D] (CUDA, or CPU under
    TRITON_INTERPRET=1) -> (indices: Tensor[N] int64, min_sq_dist: Tensor[N] of z's dtype).

    Inputs are checked by `pegasus.ops.nearest_code`; D above 256 raises ValueError. z may be
    non-contiguous (strided loads); the codebook is centred into a contiguous float32 (float64 for
    float64 inputs) copy of K x D.
    """
    n, d = z.shape
    k = codebook.shape[0]
    block_d = max(16, triton.next_power_of_2(d))
    if block_d > _MAX_BLOCK_D:
        raise ValueError(f"nearest_code (triton): D={d} is above the kernel's limit of {_MAX_BLOCK_D}")
    acc = torch.promote_types(z.dtype, torch.float32)  # half/bfloat16 accumulate in float32
    mean = codebook.to(acc).mean(0)
    centred = (codebook.to(acc) - mean).contiguous()
    norms = centred.pow(2).sum(1)
    indices = torch.empty(n, dtype=torch.int64, device=z.device)
    min_sq_dist = torch.empty(n, dtype=acc, device=z.device)
    if n > 0:
        # Rows of more than 1 KiB (float64 at D=256) halve the tiles: 64 x 64 needed 394,752 bytes
        # of shared memory on an H200, whose limit is 232,448.
        block_n, block_k = (_BLOCK_N, _BLOCK_K) if block_d * centred.element_size() <= 1024 else (_BLOCK_N // 2, _BLOCK_K // 2)
        grid = (triton.cdiv(n, block_n),)
        _nearest_code_kernel[grid](
            z, z.stride(0), z.stride(1), mean, centred, norms, indices, min_sq_dist, n, k, d,
            BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=block_d,
        )
    return indices, min_sq_dist.to(z.dtype)


if _extension.has_cpp_ops():  # the schema is defined in C++ (csrc/ops.cpp)
    torch.library.register_kernel("pegasus::nearest_code", "cuda", nearest_code)
