"""Triton kernel of `pegasus::nearest_code`: fused distances and running argmin per block of rows.

One launch does all of it. Every program first sums the codebook (K x D, read from L2) for its mean,
holds its BLOCK_N rows of z centred on that mean in registers, and loops over the codebook in tiles
of BLOCK_K codes: it centres the tile, takes the codes' squared norms, and one `tl.dot` gives z.e
for the tile. ||e||^2 - 2 z.e goes into a BLOCK_N x BLOCK_K running minimum (value and code per
slot, strict `<` so that an earlier code keeps a tie), reduced across the slots once, after the
loop. The N x K distance matrix never exists. Centring (as in the C++ kernel and the reference)
keeps float32 exact when the vectors share a large offset.

float32 (and half/bfloat16, computed in float32) takes the dot as `input_precision="tf32x3"`: three
TF32 tensor-core products (hi.hi + hi.lo + lo.hi of each operand split into a TF32 high part and a
TF32 remainder) accumulated in float32, not the single TF32 product that loses 13 bits. On an H200
(torch 2.11, Triton 3.6) at K=512, D=64, on random normal data, its distances were no further from
the exact ones than the reference's own cuBLAS float32 (worst |error| / (||z - mean||^2 + max
||e - mean||^2): 1.7e-7 / 1.8e-7 at N = 4096 / 36864, the reference 1.8e-7 / 1.7e-7; "ieee" here
1.9e-7 / 2.4e-7) and every index equalled the reference's; with a shared offset of 1e3 every row got
the exact nearest code; tests/test_gpu.py's nearest_code tests passed. The kernel took 21.7 / 74.2
us (CUDA graph replay) against 63.0 / 264.6 us with the CUDA-core "ieee" dot, and the previous launcher (a torch prologue for the mean, centred
codebook and norms, then the kernel) 59.9 / 214.5 us. float64 keeps "ieee" (tf32x3 is float32's).
The whole op is now bound by the host, not by this kernel: `pegasus bench nearest-code --quick` on
that H200 gave 0.43 ms at both N (reference 0.46 / 0.72 ms), and `settle_overflow_rows`, which
pegasus.ops.nearest_code runs after the kernel (~17 small torch kernels), took 194 / 122 us alone.
scripts/tune_nearest_code_gpu.py ran the sweep (tiles, warps, stages, "ieee" / "tf32x3" / "bf16x6",
argmin per tile or running).

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
# Tiles of BLOCK_N = BLOCK_K = 64 up to BLOCK_D = 64, halved each time BLOCK_D doubles. Shared memory
# holds the z block and a code tile per pipeline stage (3), tf32x3 both halves of each: 64 x 64 at
# BLOCK_D = 64 takes 98,304 bytes in float32 (tf32x3) and 131,584 in float64 (ieee), by ptxas for
# sm_90a (Triton 3.9); at BLOCK_D = 128 float32 would take 196,608, near an H200's limit of 232,448,
# and 64 x 64 tiles asked an H200 (Triton 3.6) for 264,192 bytes in float64 at BLOCK_D = 128 and
# 262,656-327,680 in float32 at 256. Among the tiles swept at D=64 (64 x 64 with 4 warps, 128 x 64
# and 128 x 128 with 8, 2-3 stages), 64 x 64 with 4 warps and 3 stages was the fastest tf32x3 kernel
# at N=4096 (21.6 us) and 6% behind the fastest at N=36864 (75.0 against 70.8 us, 128 x 128).
_TILE_ELEMENTS = 64 * 64


@triton.jit
def _nearest_code_kernel(
    z_ptr,
    stride_zn,
    stride_zd,
    codes_ptr,
    stride_ck,
    stride_cd,
    indices_ptr,
    dist_ptr,
    N,
    K,
    D,
    ACC: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < D
    total = tl.zeros([BLOCK_D], ACC)
    for k0 in range(0, K, BLOCK_K):
        codes = k0 + tl.arange(0, BLOCK_K)
        e = tl.load(
            codes_ptr + codes[:, None] * stride_ck + dims[None, :] * stride_cd,
            mask=(codes < K)[:, None] & dim_mask[None, :],
            other=0.0,
        )
        total += tl.sum(e.to(ACC), axis=0)
    mean = total / K  # padded dims: 0

    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    z = tl.load(
        z_ptr + rows[:, None] * stride_zn + dims[None, :] * stride_zd,
        mask=row_mask[:, None] & dim_mask[None, :],
        other=0.0,
    )
    z = z.to(ACC) - mean[None, :]  # padded dims stay 0 - 0 = 0
    sq = tl.sum(z * z, axis=1)
    z = z * -2.0  # exact: the dot gives -2 z.e as it would give z.e

    best = tl.full([BLOCK_N, BLOCK_K], float("inf"), ACC)
    best_code = tl.zeros([BLOCK_N, BLOCK_K], tl.int32)
    for k0 in range(0, K, BLOCK_K):
        codes = k0 + tl.arange(0, BLOCK_K)
        code_mask = codes < K
        e = tl.load(
            codes_ptr + codes[:, None] * stride_ck + dims[None, :] * stride_cd,
            mask=code_mask[:, None] & dim_mask[None, :],
            other=0.0,
        )
        e = e.to(ACC) - mean[None, :]
        norms = tl.where(code_mask, tl.sum(e * e, axis=1), float("inf"))  # padding never wins
        dist = norms[None, :] + tl.dot(z, tl.trans(e), input_precision=PRECISION)
        better = dist < best  # strict, and False on NaN: NaN rows are settled after the loop
        best = tl.where(better, dist, best)
        best_code = tl.where(better, codes[None, :], best_code)

    row_best = tl.min(best, axis=1)
    # Ties across slots go to the lowest code, as torch.argmin's go to the lowest index.
    code = tl.min(tl.where(best == row_best[:, None], best_code, K), axis=1)
    # A NaN in the row (or in the codebook, through the mean) makes every distance NaN: index 0 and
    # distance NaN, as on the other backends. The expanded form can round a little below zero.
    nan_row = sq != sq
    code = tl.where(nan_row, 0, code)
    out = tl.where(nan_row, float("nan"), tl.maximum(sq + row_best, 0.0))
    tl.store(indices_ptr + rows, code.to(tl.int64), mask=row_mask)
    tl.store(dist_ptr + rows, out, mask=row_mask)  # cast to z's dtype by the store


def nearest_code(z: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor]:
    """Launch `_nearest_code_kernel`: z: Tensor[N, D], codebook: Tensor[K, D] (CUDA, or CPU under
    TRITON_INTERPRET=1) -> (indices: Tensor[N] int64, min_sq_dist: Tensor[N] of z's dtype).

    Inputs are checked by `pegasus.ops.nearest_code`; D above 256 raises ValueError. Both inputs
    may be non-contiguous (strided loads); half/bfloat16 compute in float32 (the dot in tf32x3, as
    float32's), float64 in float64 (the dot in "ieee").
    """
    n, d = z.shape
    k = codebook.shape[0]
    block_d = max(16, triton.next_power_of_2(d))
    if block_d > _MAX_BLOCK_D:
        raise ValueError(f"nearest_code (triton): D={d} is above the kernel's limit of {_MAX_BLOCK_D}")
    wide = z.dtype == torch.float64
    indices = torch.empty(n, dtype=torch.int64, device=z.device)
    min_sq_dist = torch.empty(n, dtype=z.dtype, device=z.device)
    if n > 0:
        block = min(64, _TILE_ELEMENTS // block_d)
        _nearest_code_kernel[(triton.cdiv(n, block),)](
            z, z.stride(0), z.stride(1), codebook, codebook.stride(0), codebook.stride(1), indices, min_sq_dist,
            n, k, d, ACC=tl.float64 if wide else tl.float32, PRECISION="ieee" if wide else "tf32x3",
            BLOCK_N=block, BLOCK_K=block, BLOCK_D=block_d,
        )
    return indices, min_sq_dist


if _extension.has_cpp_ops():  # the schema is defined in C++ (csrc/ops.cpp)
    torch.library.register_kernel("pegasus::nearest_code", "cuda", nearest_code)
