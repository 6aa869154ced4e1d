"""Typed wrappers of the `pegasus::` custom ops, their fake (meta) implementations and input checks.

The schemas are defined once, in C++ (csrc/ops.cpp); backend kernels register under the same
names (csrc/cpu for the CPU key, pegasus.kernels for CUDA), and the dispatcher picks one by the
tensors' device. Every wrapper takes `backend=` (see `pegasus.backends`, the table of which
backends exist): "reference" calls the pure-PyTorch functions of `pegasus.reference` directly, so
it works without the extension; "triton" on CPU tensors (Triton's interpreter, for tests) calls
the Triton launchers directly, because the dispatcher gives CPU tensors to the C++ kernels.
"""
from __future__ import annotations

import importlib
import math

import torch
from torch import Tensor

from pegasus import _extension, backends, packed_prior, reference

__all__ = ["nearest_code", "sample_loop", "sample_position", "sample_row"]

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

    # The cached-sampling ops (schemas: csrc/ops.cpp; state layouts: pegasus/reference.py). The
    # step ops only write their state arguments in place.
    @torch.library.register_fake("pegasus::sample_row")
    def _sample_row_fake(
        v_state: Tensor, v2h_row: Tensor, weights: list[Tensor], cond: Tensor, row: int, cond_map: Tensor | None = None
    ) -> None:
        torch._check(v_state.dim() == 5, lambda: f"sample_row: v_state should be 5-D, got {v_state.dim()}-D")

    @torch.library.register_fake("pegasus::sample_position")
    def _sample_position_fake(
        v_state: Tensor, x_state: Tensor, v2h_row: Tensor, weights: list[Tensor], noise: Tensor,
        temperature: float, top_k: int, row: int, col: int,
    ) -> tuple[Tensor, Tensor]:
        torch._check(noise.dim() == 2, lambda: f"sample_position: noise should be [B, K], got {noise.dim()}-D")
        batch, codes = noise.shape
        return noise.new_empty(batch, dtype=torch.int64), x_state.new_empty(batch, codes)

    @torch.library.register_fake("pegasus::sample_loop")
    def _sample_loop_fake(
        weights: list[Tensor], cond: Tensor, noise: Tensor, temperature: float, top_k: int, return_logits: bool,
        cond_map: Tensor | None = None,
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
    backend: None | "reference" | "cpu" | "triton" (see `pegasus.backends`); all
    centre both inputs on the codebook mean, so float32 stays exact under a large shared offset.
    Ties go to the lowest index. Rows whose distances may not be finite (a NaN or inf in the row or
    in the codebook, or magnitudes near the square root of the largest float32 / float64: see
    `pegasus.reference.overflow_rows`) get index 0 and distance NaN on every backend.
    """
    _check_nearest_code_inputs(z, codebook)
    name = backends.resolve(backends.NEAREST_CODE, backend, z.device)
    if name == "reference":
        return reference.nearest_code(z, codebook)
    # The kernels skip NaN distances and add ||z||^2 to the winner only, so an inf row comes out
    # as distance inf here and NaN on the reference: settle those rows the same way everywhere.
    return reference.settle_overflow_rows(z, codebook, *_kernel(backends.NEAREST_CODE, name, "nearest_code", z.device)(z, codebook))


def _launcher(family: backends.Family, name: str, op: str, device: torch.device):
    """For Triton on CPU tensors (only under TRITON_INTERPRET=1, which `resolve` checked), the
    launcher of `op` in the backend's kernel module, called directly since the dispatcher would
    give CPU tensors the C++ kernel; None where the dispatcher picks the kernel."""
    module = family.get(name).module
    if device.type == "cpu" and module is not None:
        return getattr(importlib.import_module(module), op)
    return None


def _kernel(family: backends.Family, name: str, op: str, device: torch.device):
    """The function that runs `op` on backend `name` (resolved, not "reference")."""
    return _launcher(family, name, op, device) or getattr(torch.ops.pegasus, op)


def _step_backend(backend: str | None, device: torch.device, dtype: torch.dtype) -> str:
    name = backends.resolve(backends.SAMPLER, backend, device, dtype)
    if name == "naive":
        raise ValueError("sampler backend 'naive' has no step ops (it reruns the prior at every position); "
                         "use pegasus.sample_indices(..., backend='naive')")
    return name


def sample_row(
    v_state: Tensor, v2h_row: Tensor, weights: list[Tensor], cond: Tensor, row: int, cond_map: Tensor | None = None,
    backend: str | None = None,
) -> None:
    """Row start of the cached sampling loop, in place (`pegasus.reference.sample_row` documents it)."""
    name = _step_backend(backend, v_state.device, v_state.dtype)
    args = (v_state, v2h_row, weights, cond, row, cond_map)
    if name == "reference":
        return reference.sample_row(*args)
    return _kernel(backends.SAMPLER, name, "sample_row", v_state.device)(*args)


def sample_position(
    v_state: Tensor, x_state: Tensor, v2h_row: Tensor, weights: list[Tensor], noise: Tensor, temperature: float,
    top_k: int, row: int, col: int, backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """One position of the cached sampling loop, in place -> (codes Tensor[B] int64, logits Tensor[B, K])
    (`pegasus.reference.sample_position` documents it)."""
    name = _step_backend(backend, v_state.device, v_state.dtype)
    args = (v_state, x_state, v2h_row, weights, noise, temperature, top_k, row, col)
    if name == "reference":
        return reference.sample_position(*args)
    return _kernel(backends.SAMPLER, name, "sample_position", v_state.device)(*args)


def _check_sample_loop_inputs(weights: list[Tensor], cond: Tensor, noise: Tensor, temperature: float, cond_map: Tensor | None) -> None:
    """The checks the C++ loop makes (csrc/sample_loop.cpp), made here for every backend."""
    layers = packed_prior.num_layers(weights)
    like = weights[0]
    codes, channels = like.shape
    if noise.dim() != 4 or min(noise.shape[:3], default=0) < 1 or noise.shape[3] != codes:
        raise ValueError(f"sample_loop: noise should be Gumbel noise [B, H, W, K={codes}] with B, H, W >= 1, got {tuple(noise.shape)}")
    if noise.dtype != like.dtype or noise.device != like.device:
        raise ValueError(f"sample_loop: noise should be {like.dtype} on {like.device} like the weights, got {noise.dtype} on {noise.device}")
    if tuple(cond.shape) != (layers, noise.shape[0], 2 * channels) or cond.dtype != like.dtype:
        raise ValueError(f"sample_loop: cond should be {like.dtype} [L={layers}, B={noise.shape[0]}, 2C={2 * channels}], got {cond.dtype} {tuple(cond.shape)}")
    if cond_map is not None and (tuple(cond_map.shape) != (layers, *noise.shape[:3], 2 * channels) or cond_map.dtype != like.dtype):
        want = [layers, *noise.shape[:3], 2 * channels]
        raise ValueError(f"sample_loop: cond_map should be {like.dtype} [L, B, H, W, 2C] = {want}, got {cond_map.dtype} {tuple(cond_map.shape)}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"sample_loop: temperature should be a finite number > 0, got {temperature}")


def sample_loop(
    weights: list[Tensor], cond: Tensor, noise: Tensor, temperature: float, top_k: int, return_logits: bool = False,
    cond_map: Tensor | None = None, backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """The cached raster loop over the step ops of `backend`: noise Tensor[B, H, W, K] ->
    (grid Tensor[B, H, W] int64, logits Tensor[B, H, W, K] when return_logits, else empty).
    cond_map: None, or per-position gate offsets Tensor[L, B, H, W, 2C] (a bottom prior's top grid,
    `GatedPixelCNN.sampling_conditioning_map`), read by the row steps.

    "reference" is `pegasus.reference.sample_loop` over the reference steps; "triton" on CPU
    tensors is that same Python loop over the Triton launchers; every other backend is the C++
    loop (`pegasus::sample_loop`), whose step calls the dispatcher sends to the device's kernels.
    """
    _check_sample_loop_inputs(weights, cond, noise, temperature, cond_map)
    name = _step_backend(backend, noise.device, weights[0].dtype)
    if name == "reference":
        return reference.sample_loop(weights, cond, noise, temperature, top_k, return_logits, cond_map)
    row_step = _launcher(backends.SAMPLER, name, "sample_row", noise.device)
    if row_step is not None:
        position_step = _launcher(backends.SAMPLER, name, "sample_position", noise.device)
        return reference.sample_loop(
            weights, cond, noise, temperature, top_k, return_logits, cond_map, row_step=row_step, position_step=position_step
        )
    return torch.ops.pegasus.sample_loop(weights, cond, noise, temperature, top_k, return_logits, cond_map)
