"""Typed wrappers of the `pegasus::` custom ops, their input rules and fakes, and the kernels each
backend runs.

The schemas are defined once, in C++ (csrc/ops.cpp); backend kernels register under the same
names (csrc/cpu for the CPU key, pegasus.kernels for CUDA), and the dispatcher picks one by the
tensors' device. A backend name (`pegasus.backends`, the table of which backends exist) is resolved
once per call to the functions that run it (`nearest_code_kernel`, `sampler_kernels`): "reference"
is the pure-PyTorch `pegasus.reference`, so it works without the extension; "triton" on CPU tensors
(Triton's interpreter, for tests) is the Triton launchers called directly, because the dispatcher
gives CPU tensors to the C++ kernels; every other backend is the op itself.

Input rules live in two places, once each: in Python below (`_check_*`), which is both the op's
fake (so meta tensors and torch.compile see the rules) and the wrapper's check, run once per call
before any backend, so every backend refuses bad input with the same ValueError; and in C++
(`TORCH_CHECK`, csrc/), where the C++ kernels and loop read raw pointers. The Triton launchers and
the loops check nothing per step: the C++ loop checked its inputs before the first one.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from pegasus import _extension, backends, packed_prior, reference

__all__ = ["SamplerKernels", "nearest_code", "nearest_code_kernel", "sample_loop", "sample_position", "sample_row", "sampler_kernels"]

# The dtypes every backend runs (the C++ kernel dispatches these four; float8 has no promotion).
_NEAREST_CODE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_SAMPLING_DTYPES = (torch.float32, torch.float64)


def _check_nearest_code(z: Tensor, codebook: Tensor) -> None:
    if z.dim() != 2:
        raise ValueError(f"nearest_code: z should be a 2-D tensor [N, D], got shape {tuple(z.shape)}")
    if codebook.dim() != 2:
        raise ValueError(f"nearest_code: codebook should be a 2-D tensor [K, D], got shape {tuple(codebook.shape)}")
    if codebook.shape[0] == 0:
        raise ValueError("nearest_code: codebook is empty (K=0)")
    if z.shape[1] != codebook.shape[1]:
        raise ValueError(f"nearest_code: z is {tuple(z.shape)} and codebook is {tuple(codebook.shape)}: D differs")
    if z.dtype not in _NEAREST_CODE_DTYPES or z.dtype != codebook.dtype:
        raise ValueError(
            "nearest_code: z and codebook should share one floating dtype, got "
            f"{z.dtype} and {codebook.dtype} (supported: float16, bfloat16, float32, float64)"
        )
    if z.device != codebook.device:
        raise ValueError(f"nearest_code: z is on {z.device} but codebook is on {codebook.device}")


def _check_weights(op: str, weights: list[Tensor]) -> tuple[int, int, int, int]:
    """The packed prior (pegasus/packed_prior.py): every shape, dtype, device and contiguity, as
    csrc/sample_common.h checks them -> (layers L, half kernel h, channels C, codes K)."""
    if not weights or weights[0].dim() != 2 or min(weights[0].shape) < 1:
        got = tuple(weights[0].shape) if weights else "no tensors"
        raise ValueError(f"{op}: weights[0] (embedding) should be [K, C] with K, C >= 1, got {got}")
    like = weights[0]
    if like.dtype not in _SAMPLING_DTYPES:
        raise ValueError(f"{op}: weights should be float32 or float64, got {like.dtype}")
    layers = packed_prior.num_layers(weights)
    codes, channels = like.shape
    wh0 = weights[packed_prior.index("wh")]
    if wh0.dim() != 2 or wh0.shape[0] % channels or wh0.shape[0] < channels:
        raise ValueError(f"{op}: weights[{packed_prior.index('wh')}] (layer 0 wh) should be [h * C, 2C], got {tuple(wh0.shape)}")
    half = wh0.shape[0] // channels
    sizes = (layers, 2 * half + 1, channels, codes)
    # The shapes are cached by size, but a fake tensor's sizes may be symbolic (unhashable).
    shapes = packed_prior.shapes if all(type(x) is int for x in sizes) else packed_prior.shapes.__wrapped__
    want = shapes(*sizes)
    # One pass without messages first (the shapes are cached): messages are built on failure only.
    if not all(w.shape == s and w.dtype == like.dtype and w.device == like.device and w.is_contiguous() for w, s in zip(weights, want)):
        for i, (name, w, shape) in enumerate(zip(packed_prior.names(layers), weights, want)):
            _check_state(op, f"weights[{i}] ({name})", w, like, shape)
    return layers, half, channels, codes


def _check_state(op: str, name: str, t: Tensor, like: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} should be {list(shape)}, got {list(t.shape)}")
    if t.dtype != like.dtype or t.device != like.device:
        raise ValueError(f"{op}: {name} should be {like.dtype} on {like.device} like the weights, got {t.dtype} on {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"{op}: {name} should be contiguous, got strides {t.stride()}")


def _check_temperature(op: str, temperature: float) -> None:
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"{op}: temperature should be a finite number > 0, got {temperature}")


def _check_v_state(op: str, v_state: Tensor, weights: list[Tensor]) -> tuple[int, int, int, int, int, int]:
    """The weights and v_state [L, B, h+1, W+2h, C] -> (L, B, h, W, C, K)."""
    layers, half, channels, codes = _check_weights(op, weights)
    if v_state.dim() != 5 or v_state.shape[1] < 1 or v_state.shape[3] - 2 * half < 1:
        raise ValueError(f"{op}: v_state should be [L, B, h+1, W+2h, C] with B, W >= 1, got {list(v_state.shape)}")
    batch, width = v_state.shape[1], v_state.shape[3] - 2 * half
    _check_state(op, "v_state", v_state, weights[0], (layers, batch, half + 1, width + 2 * half, channels))
    return layers, batch, half, width, channels, codes


def _check_sample_row(
    v_state: Tensor, v2h_row: Tensor, weights: list[Tensor], cond: Tensor, row: int, cond_map: Tensor | None = None
) -> None:
    op = "sample_row"
    layers, batch, _, width, c, _ = _check_v_state(op, v_state, weights)
    _check_state(op, "v2h_row", v2h_row, weights[0], (layers, batch, width, 2 * c))
    _check_state(op, "cond", cond, weights[0], (layers, batch, 2 * c))
    if row < 0:
        raise ValueError(f"{op}: row should be >= 0, got {row}")
    if cond_map is not None:
        if cond_map.dim() != 5 or cond_map.shape[2] <= row:
            raise ValueError(f"{op}: cond_map should be [L, B, H, W, 2C] with H > row {row}, got {list(cond_map.shape)}")
        _check_state(op, "cond_map", cond_map, weights[0], (layers, batch, cond_map.shape[2], width, 2 * c))


def _check_sample_position(
    v_state: Tensor, x_state: Tensor, v2h_row: Tensor, weights: list[Tensor], noise: Tensor,
    temperature: float, top_k: int, row: int, col: int,
) -> None:
    op = "sample_position"
    layers, batch, half, width, c, codes = _check_v_state(op, v_state, weights)
    _check_state(op, "x_state", x_state, weights[0], (layers, batch, width + half, c))
    _check_state(op, "v2h_row", v2h_row, weights[0], (layers, batch, width, 2 * c))
    if tuple(noise.shape) != (batch, codes) or noise.dtype != weights[0].dtype or noise.device != weights[0].device:
        raise ValueError(f"{op}: noise should be {weights[0].dtype} [B={batch}, K={codes}] on {weights[0].device}, "
                         f"got {noise.dtype} {list(noise.shape)} on {noise.device}")
    _check_temperature(op, temperature)
    if row < 0:
        raise ValueError(f"{op}: row should be >= 0, got {row}")
    if not 0 <= col < width:
        raise ValueError(f"{op}: col should be in [0, W={width}), got {col}")


def _check_sample_loop(
    weights: list[Tensor], cond: Tensor, noise: Tensor, temperature: float, top_k: int, return_logits: bool,
    cond_map: Tensor | None = None,
) -> None:
    op = "sample_loop"
    layers, _, channels, codes = _check_weights(op, weights)
    like = weights[0]
    if noise.dim() != 4 or min(noise.shape[:3], default=0) < 1 or noise.shape[3] != codes:
        raise ValueError(f"{op}: noise should be Gumbel noise [B, H, W, K={codes}] with B, H, W >= 1, got {tuple(noise.shape)}")
    if noise.dtype != like.dtype or noise.device != like.device:
        raise ValueError(f"{op}: noise should be {like.dtype} on {like.device} like the weights, got {noise.dtype} on {noise.device}")
    _check_state(op, "cond", cond, like, (layers, noise.shape[0], 2 * channels))
    if cond_map is not None:
        _check_state(op, "cond_map", cond_map, like, (layers, *noise.shape[:3], 2 * channels))
    _check_temperature(op, temperature)


if _extension.has_cpp_ops():

    @torch.library.register_fake("pegasus::nearest_code")
    def _nearest_code_fake(z: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor]:
        _check_nearest_code(z, codebook)
        return z.new_empty(z.shape[0], dtype=torch.int64), z.new_empty(z.shape[0])

    # The step ops only write their state arguments in place.
    torch.library.register_fake("pegasus::sample_row")(_check_sample_row)

    @torch.library.register_fake("pegasus::sample_position")
    def _sample_position_fake(
        v_state: Tensor, x_state: Tensor, v2h_row: Tensor, weights: list[Tensor], noise: Tensor,
        temperature: float, top_k: int, row: int, col: int,
    ) -> tuple[Tensor, Tensor]:
        _check_sample_position(v_state, x_state, v2h_row, weights, noise, temperature, top_k, row, col)
        batch, codes = noise.shape
        return noise.new_empty(batch, dtype=torch.int64), x_state.new_empty(batch, codes)

    @torch.library.register_fake("pegasus::sample_loop")
    def _sample_loop_fake(
        weights: list[Tensor], cond: Tensor, noise: Tensor, temperature: float, top_k: int, return_logits: bool,
        cond_map: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        _check_sample_loop(weights, cond, noise, temperature, top_k, return_logits, cond_map)
        batch, height, width, codes = noise.shape
        logits = weights[0].new_empty((batch, height, width, codes) if return_logits else (0,))
        return noise.new_empty(batch, height, width, dtype=torch.int64), logits


def nearest_code_kernel(backend: str | None, device: torch.device | str) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """The function that runs `pegasus::nearest_code` on `backend` (None: `backends.resolve`'s
    choice) for tensors on `device`, resolved once."""
    name = backends.resolve(backends.NEAREST_CODE, backend, device)
    if name == "reference":
        return reference.nearest_code
    if name == "triton":
        from pegasus.kernels import nearest_code as triton_nearest_code  # registers the CUDA kernel

        if torch.device(device).type == "cpu":  # Triton's interpreter; the dispatcher would run C++
            return triton_nearest_code.nearest_code
    return torch.ops.pegasus.nearest_code


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
    _check_nearest_code(z, codebook)
    kernel = nearest_code_kernel(backend, z.device)
    if kernel is reference.nearest_code:
        return kernel(z, codebook)
    # The kernels skip NaN distances and add ||z||^2 to the winner only, so an inf row comes out
    # as distance inf here and NaN on the reference: settle those rows the same way everywhere.
    return reference.settle_overflow_rows(z, codebook, *kernel(z, codebook))


@dataclass(frozen=True)
class SamplerKernels:
    """The functions that run the sampler ops (same arguments as the ops) on one backend."""

    backend: str
    sample_row: Callable[..., None]
    sample_position: Callable[..., tuple[Tensor, Tensor]]
    sample_loop: Callable[..., tuple[Tensor, Tensor]]


def sampler_kernels(backend: str | None, device: torch.device | str, dtype: torch.dtype) -> SamplerKernels:
    """The functions that run the sampler ops on `backend` (None: `backends.resolve`'s choice) for
    tensors of `device` and `dtype`, resolved once. "reference" and "triton" on CPU tensors loop in
    Python (`pegasus.reference.sample_loop` over their step functions); "cpu" and "triton" on CUDA
    are the C++ loop, whose step calls the dispatcher sends to the device's kernels."""
    name = backends.resolve(backends.SAMPLER, backend, device, dtype)
    if name == "reference":
        return SamplerKernels(name, reference.sample_row, reference.sample_position, reference.sample_loop)
    if name == "triton":
        from pegasus.kernels import sample_step  # registers the CUDA kernels of the step ops

        if torch.device(device).type == "cpu":  # Triton's interpreter; the dispatcher would run C++
            loop = functools.partial(reference.sample_loop, row_step=sample_step.sample_row, position_step=sample_step.sample_position)
            return SamplerKernels(name, sample_step.sample_row, sample_step.sample_position, loop)
    ops = torch.ops.pegasus
    return SamplerKernels(name, ops.sample_row, ops.sample_position, ops.sample_loop)


def sample_row(
    v_state: Tensor, v2h_row: Tensor, weights: list[Tensor], cond: Tensor, row: int, cond_map: Tensor | None = None,
    backend: str | None = None,
) -> None:
    """Row start of the cached sampling loop, in place (`pegasus.reference.sample_row` documents it)."""
    _check_sample_row(v_state, v2h_row, weights, cond, row, cond_map)
    sampler_kernels(backend, v_state.device, v_state.dtype).sample_row(v_state, v2h_row, weights, cond, row, cond_map)


def sample_position(
    v_state: Tensor, x_state: Tensor, v2h_row: Tensor, weights: list[Tensor], noise: Tensor, temperature: float,
    top_k: int, row: int, col: int, backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """One position of the cached sampling loop, in place -> (codes Tensor[B] int64, logits Tensor[B, K])
    (`pegasus.reference.sample_position` documents it)."""
    args = (v_state, x_state, v2h_row, weights, noise, temperature, top_k, row, col)
    _check_sample_position(*args)
    return sampler_kernels(backend, v_state.device, v_state.dtype).sample_position(*args)


def sample_loop(
    weights: list[Tensor], cond: Tensor, noise: Tensor, temperature: float, top_k: int, return_logits: bool = False,
    cond_map: Tensor | None = None, backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """The cached raster loop over the step ops of `backend` (`sampler_kernels`): noise
    Tensor[B, H, W, K] -> (grid Tensor[B, H, W] int64, logits Tensor[B, H, W, K] when
    return_logits, else empty). cond_map: None, or per-position gate offsets Tensor[L, B, H, W, 2C]
    (a bottom prior's top grid, `GatedPixelCNN.sampling_conditioning_map`), read by the row steps."""
    args = (weights, cond, noise, temperature, top_k, return_logits, cond_map)
    _check_sample_loop(*args)
    return sampler_kernels(backend, noise.device, weights[0].dtype).sample_loop(*args)
