"""Typed wrappers of the `pegasus::` custom ops, their fake (meta) implementations and input checks.

The schemas are defined once, in C++ (csrc/ops.cpp); backend kernels register under the same
names (csrc/cpu for the CPU key, pegasus.kernels for CUDA). The "reference" backend calls the
pure-PyTorch functions in `pegasus.reference` directly, so it works without the extension.
"""
from __future__ import annotations

import torch
from torch import Tensor

from pegasus import _extension, reference
from pegasus.backend import resolve_backend

__all__ = ["nearest_code"]

if _extension.has_cpp_ops():

    @torch.library.register_fake("pegasus::nearest_code")
    def _nearest_code_fake(z: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor]:
        torch._check(z.dim() == 2, lambda: f"nearest_code: z should be 2-D [N, D], got {z.dim()}-D")
        torch._check(
            codebook.dim() == 2,
            lambda: f"nearest_code: codebook should be 2-D [K, D], got {codebook.dim()}-D",
        )
        torch._check(
            z.shape[1] == codebook.shape[1],
            lambda: f"nearest_code: z has D={z.shape[1]} but codebook has D={codebook.shape[1]}",
        )
        torch._check(z.dtype == codebook.dtype, lambda: "nearest_code: z and codebook dtypes differ")
        n = z.shape[0]
        return z.new_empty(n, dtype=torch.int64), z.new_empty(n)

    # The cached-sampling ops (schemas and state layouts: csrc/ops.cpp, pegasus/reference.py). The
    # step ops only write their state arguments in place; the Triton steps get the same fakes.
    def _sample_row_fake(v_state: Tensor, v2h_row: Tensor, weights: list[Tensor], cond: Tensor, row: int) -> None:
        torch._check(v_state.dim() == 5, lambda: f"sample_row: v_state should be 5-D, got {v_state.dim()}-D")

    def _sample_position_fake(
        v_state: Tensor, x_state: Tensor, v2h_row: Tensor, weights: list[Tensor], noise: Tensor,
        temperature: float, top_k: int, row: int, col: int,
    ) -> tuple[Tensor, Tensor]:
        torch._check(noise.dim() == 2, lambda: f"sample_position: noise should be [B, K], got {noise.dim()}-D")
        batch, codes = noise.shape
        return noise.new_empty(batch, dtype=torch.int64), x_state.new_empty(batch, codes)

    for _suffix in ("", "_triton"):
        torch.library.register_fake(f"pegasus::sample_row{_suffix}", _sample_row_fake)
        torch.library.register_fake(f"pegasus::sample_position{_suffix}", _sample_position_fake)

    @torch.library.register_fake("pegasus::sample_loop")
    def _sample_loop_fake(
        weights: list[Tensor], cond: Tensor, noise: Tensor, temperature: float, top_k: int, kernels: str,
        return_logits: bool,
    ) -> tuple[Tensor, Tensor]:
        torch._check(noise.dim() == 4, lambda: f"sample_loop: noise should be [B, H, W, K], got {noise.dim()}-D")
        batch, height, width, codes = noise.shape
        logits = weights[0].new_empty((batch, height, width, codes) if return_logits else (0,))
        return noise.new_empty(batch, height, width, dtype=torch.int64), logits


# The dtypes every backend runs (the C++ kernel dispatches these four; float8 has no promotion).
_NEAREST_CODE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_nearest_code_inputs(z: Tensor, codebook: Tensor) -> None:
    if z.dim() != 2:
        raise ValueError(f"nearest_code: z should be a 2-D tensor [N, D], got shape {tuple(z.shape)}")
    if codebook.dim() != 2:
        raise ValueError(
            f"nearest_code: codebook should be a 2-D tensor [K, D], got shape {tuple(codebook.shape)}"
        )
    if codebook.shape[0] == 0:
        raise ValueError("nearest_code: codebook is empty (K=0)")
    if z.shape[1] != codebook.shape[1]:
        raise ValueError(
            f"nearest_code: z is {tuple(z.shape)} and codebook is {tuple(codebook.shape)}: D differs"
        )
    if z.dtype not in _NEAREST_CODE_DTYPES or z.dtype != codebook.dtype:
        raise ValueError(
            "nearest_code: z and codebook should share one floating dtype, got "
            f"{z.dtype} and {codebook.dtype} (supported: float16, bfloat16, float32, float64)"
        )
    if z.device != codebook.device:
        raise ValueError(f"nearest_code: z is on {z.device} but codebook is on {codebook.device}")


def nearest_code(z: Tensor, codebook: Tensor, backend: str | None = None) -> tuple[Tensor, Tensor]:
    """Index of the nearest codebook row for every row of `z`, and its squared distance.

    z: Tensor[N, D], codebook: Tensor[K, D] (same floating dtype and device)
    -> (indices: Tensor[N] int64, min_sq_dist: Tensor[N] of z's dtype).
    Not differentiable: quantisers use the indices and look the codes up themselves.
    backend: None | "reference" | "cpu" | "triton" (see `pegasus.backend.resolve_backend`); all
    centre both inputs on the codebook mean, so float32 stays exact under a large shared offset.
    Ties go to the lowest index. Rows whose distances may not be finite (a NaN or inf in the row or
    in the codebook, or magnitudes near the square root of the largest float32 / float64: see
    `pegasus.reference.overflow_rows`) get index 0 and distance NaN on every backend.
    """
    _check_nearest_code_inputs(z, codebook)
    name = resolve_backend(backend, z.device, "nearest_code")
    if name == "reference":
        return reference.nearest_code(z, codebook)
    if name == "triton":
        # Importing the kernel module registers the CUDA kernel.
        from pegasus.kernels import nearest_code as triton_kernel

        if z.device.type == "cpu":
            # Only under TRITON_INTERPRET=1 (resolve_backend checked): the dispatcher would send
            # CPU tensors to the C++ kernel, so the Triton launcher is called directly.
            return reference.settle_overflow_rows(z, codebook, *triton_kernel.nearest_code(z, codebook))
    # The kernels skip NaN distances and add ||z||^2 to the winner only, so an inf row comes out
    # as distance inf here and NaN on the reference: settle those rows the same way everywhere.
    return reference.settle_overflow_rows(z, codebook, *torch.ops.pegasus.nearest_code(z, codebook))
