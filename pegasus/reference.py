"""Pure-PyTorch reference implementations of the pegasus ops: the ground truth for every fast path.

`sample_loop` here is the cached raster loop (Ramachandran et al. 2017, Fast Generation for
Convolutional Autoregressive Models) over the reference step ops: the "reference" sampler, and the
Python twin of the C++ loop (csrc/sample_loop.cpp). The other pure-PyTorch sampler, "naive"
(pegasus.sampling), reruns the whole prior at every position and is the ground truth of both.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from pegasus import packed_prior


def nearest_code(z: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest codebook row of every row of `z`, as in rosinality's vq-vae-2 `Quantize`.

    z: Tensor[N, D], codebook: Tensor[K, D] -> (indices: Tensor[N] int64, min_sq_dist: Tensor[N]).
    Distances are ||z||^2 - 2 z.e + ||e||^2, computed in float32 for half/bfloat16 inputs, after
    centring both inputs on the codebook mean: the distances are the same, but the expanded form no
    longer cancels when the vectors share a large offset (float32 inputs shifted by 1e3 otherwise
    pick wrong codes). Ties follow torch.argmin (lowest index). Rows whose distances may not be
    finite (`overflow_rows`: a NaN or inf in the row or in the codebook, or values near the square
    root of the compute dtype's largest number) get index 0 and distance NaN, on every backend.
    """
    compute = torch.promote_types(z.dtype, torch.float32)
    mean = codebook.to(compute).mean(0)
    zf, ef = z.to(compute) - mean, codebook.to(compute) - mean
    dist = zf.pow(2).sum(1, keepdim=True) - 2 * zf @ ef.t() + ef.pow(2).sum(1)[None, :]
    indices = dist.argmin(1)
    # The expanded form can round a little below zero; a squared distance cannot be.
    min_sq_dist = dist.gather(1, indices[:, None]).squeeze(1).clamp_min(0)
    return settle_overflow_rows(z, codebook, indices, min_sq_dist.to(z.dtype))


def overflow_rows(z: Tensor, codebook: Tensor) -> Tensor:
    """Tensor[N] bool: the rows of z whose squared distance to some code may not be finite.

    With a = max |z_i - mean| and b = max |e - mean| (mean: the codebook's), every term and partial
    sum of the expanded distance is at most D (a + b)^2 in magnitude, whatever the summation order.
    A row is flagged unless a + b < sqrt(max / D) / 2 in the compute dtype (float32 for half,
    bfloat16 and float32: 1.15e18 at D=64; float64: 8e152), bounding a by max |z_i| + max |mean|:
    so a NaN or inf anywhere in the row, or in the codebook (through the mean), flags it too.
    Costs two reductions over z: with the masking in `settle_overflow_rows`, pegasus.ops.nearest_code
    took 40.8-41.5 ms instead of 39.7 ms at N=36864, K=512, D=64 float32 on one core (2-core EPYC,
    shared), i.e. 3-4% over the C++ kernel; no host sync on CUDA.
    """
    n, d = z.shape
    if d == 0:  # every distance is an empty sum
        return torch.zeros(n, dtype=torch.bool, device=z.device)
    compute = torch.promote_types(z.dtype, torch.float32)
    e = codebook.to(compute)
    mean = e.mean(0)
    # max |z_i| as max(max z_i, -min z_i): no |z| temporary (0.8 ms instead of 1.0 ms at N=36864,
    # D=64 float32 on one core, cold cache); both reductions propagate NaN.
    reach = torch.maximum(z.amax(1), z.amin(1).neg()).to(compute) + mean.abs().amax() + (e - mean).abs().amax()
    return ~(reach < math.sqrt(torch.finfo(compute).max / d) / 2)  # NaN compares False: flagged


def settle_overflow_rows(z: Tensor, codebook: Tensor, indices: Tensor, min_sq_dist: Tensor) -> tuple[Tensor, Tensor]:
    """Index 0 and distance NaN for the `overflow_rows`, whatever a backend computed there: the
    backends round, order their sums and skip NaN differently, so only this rule is the same on all."""
    bad = overflow_rows(z, codebook)
    return indices.masked_fill(bad, 0), min_sq_dist.masked_fill(bad, float("nan"))


# --- Cached sampling ops --------------------------------------------------------------------------
# Each position costs one position's worth of work, using the split of pegasus/models/pixelcnn.py:
# - at the start of row i, every layer's vertical convolution for the whole row i: it reads rows
#   i-h..i of that layer's vertical input, all known, because the vertical stack of row i depends
#   only on rows above it (h = kernel // 2);
# - at (i, j), every layer's horizontal stack at that one position, from the cached row i of the
#   vertical stack and the cached columns j-h..j of the horizontal input; then the head's logits
#   over the K codes, the code, and its embedding, which the next position and the next row read.
# With the same codes, the logits are those of `prior(grid, alpha)` up to rounding (float64: ~1e-15).
#
# The state of the loop, for a prior of L layers, C channels, kernel k = 2h + 1, a batch of B and a
# grid of H x W (`weights`: the packed prior, pegasus/packed_prior.py):
#
#   v_state  Tensor[L, B, h+1, W+2h, C]  layer l's vertical input, rows i-h..i in a ring (row q in
#            slot q % (h+1)), zero-padded by h columns on both sides; rows above the grid are the
#            slots not written yet, which start at zero. Layer 0's input is the embedded codes.
#   x_state  Tensor[L, B, W+h, C]        layer l's horizontal input in the current row, column j at
#            index j + h, zero-padded by h on the left; zeroed at the start of every row.
#   v2h_row  Tensor[L, B, W, 2C]         the current row's part of every horizontal pre-activation
#            that does not depend on the row's codes: v_to_h(vertical stack) + biases + alpha.
#   cond     Tensor[L, B, 2C]            alpha's gate offsets (GatedPixelCNN.sampling_conditioning).
#   cond_map Tensor[L, B, H, W, 2C]      or None: gate offsets per position, added to cond's: the
#            top grid's, for the bottom prior of a two-level model (sampling_conditioning_map),
#            computed once before the loop; only the row step reads it (into v2h_row and the gates).


def _gate_last(a: Tensor) -> Tensor:
    """gate() over the last dimension: Tensor[..., 2C] -> Tensor[..., C]."""
    f, g = a.chunk(2, dim=-1)
    return torch.tanh(f) * torch.sigmoid(g)


def sample_row(
    v_state: Tensor, v2h_row: Tensor, weights: list[Tensor], cond: Tensor, row: int, cond_map: Tensor | None = None
) -> None:
    """Row start of the cached loop, in place: for every layer l, its vertical convolution over row
    `row` from rows row-h..row of v_state[l]; writes v2h_row[l] and, for l < L-1, the gated vertical
    stack of row `row` into v_state[l+1] (slot row % (h+1)). Shapes as in the comment above."""
    layers, batch, ring, padded, c = v_state.shape
    h = ring - 1
    width, k = padded - 2 * h, 2 * h + 1
    for l in range(layers):
        wv, bv, _, wvh, bhv, _, _ = packed_prior.layer(weights, l)
        rows = wv.shape[0] // (k * c)
        src = v_state[l][:, [(row - h + r) % ring for r in range(rows)]]  # [B, rows, W+2h, C]
        patches = src.unfold(2, k, 1).permute(0, 2, 1, 4, 3).reshape(batch, width, rows * k * c)
        v_pre = patches @ wv + bv  # [B, W, 2C]
        add = cond[l][:, None, :] if cond_map is None else cond[l][:, None, :] + cond_map[l, :, row]
        v2h_row[l] = v_pre @ wvh + bhv + add
        if l + 1 < layers:
            v_state[l + 1][:, row % ring, h : h + width] = _gate_last(v_pre + add)


def choose_codes(logits: Tensor, noise: Tensor, temperature: float, top_k: int) -> Tensor:
    """Gumbel-max over the last dimension: argmax(logits / temperature + noise) among the top_k
    largest logits (top_k <= 0: all; ties at the k-th logit kept), first index on ties.
    logits, noise: Tensor[B, K] -> Tensor[B] int64."""
    scores = logits / temperature + noise.to(logits.dtype)
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(logits < kth, float("-inf"))
    return scores.argmax(dim=-1)


def sample_position(
    v_state: Tensor,
    x_state: Tensor,
    v2h_row: Tensor,
    weights: list[Tensor],
    noise: Tensor,
    temperature: float,
    top_k: int,
    row: int,
    col: int,
) -> tuple[Tensor, Tensor]:
    """One position of the cached loop, in place: every layer's horizontal stack at (row, col), the
    head's logits, the Gumbel-max code, and its embedding written where later positions read it
    (x_state[0] column col, v_state[0] row `row`); layer l's output goes to x_state[l+1].
    noise: Tensor[B, K] for this position -> (codes Tensor[B] int64, logits Tensor[B, K])."""
    layers, batch, _, c = x_state.shape
    h = v_state.shape[2] - 1
    skip = None
    for l in range(layers):
        _, _, wh, _, _, wos, bos = packed_prior.layer(weights, l)
        cols = wh.shape[0] // c
        x = x_state[l][:, col : col + cols].reshape(batch, cols * c)
        u = _gate_last(x @ wh + v2h_row[l][:, col])
        out_skip = u @ wos + bos
        x_out = out_skip[:, :c] + x_state[l][:, col + h] if l > 0 else out_skip[:, :c]
        if l + 1 < layers:
            x_state[l + 1][:, col + h] = x_out
        skip = out_skip[:, c:] if skip is None else skip + out_skip[:, c:]
    w1, b1, w2, b2 = packed_prior.head(weights)
    logits = torch.relu(torch.relu(skip) @ w1 + b1) @ w2 + b2
    codes = choose_codes(logits, noise, temperature, top_k)
    emb = weights[0][codes]
    x_state[0][:, col + h] = emb
    v_state[0][:, row % (h + 1), col + h] = emb
    return codes, logits


def new_sampling_state(weights: list[Tensor], batch: int, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Zeroed (v_state, x_state, v2h_row) for `weights` and a batch of B grids of height x width."""
    layers = packed_prior.num_layers(weights)
    e = weights[0]
    c = e.shape[1]
    h = packed_prior.layer(weights, 0).wh.shape[0] // c  # layer 0's wh has h columns (mask A)
    v_state = e.new_zeros(layers, batch, h + 1, width + 2 * h, c)
    x_state = e.new_zeros(layers, batch, width + h, c)
    v2h_row = e.new_zeros(layers, batch, width, 2 * c)
    return v_state, x_state, v2h_row


def sample_loop(
    weights: list[Tensor],
    cond: Tensor,
    noise: Tensor,
    temperature: float,
    top_k: int,
    return_logits: bool,
    cond_map: Tensor | None = None,
    row_step: Callable[..., None] = sample_row,
    position_step: Callable[..., tuple[Tensor, Tensor]] = sample_position,
) -> tuple[Tensor, Tensor]:
    """The cached raster loop, by default over the reference step ops (`row_step` and
    `position_step` take other kernels of the same ops: pegasus.ops runs the Triton ones so on CPU
    tensors). noise: Tensor[B, H, W, K], cond_map: Tensor[L, B, H, W, 2C] or None -> (grid
    Tensor[B, H, W] int64, logits Tensor[B, H, W, K] when return_logits, else empty)."""
    batch, height, width, codes = noise.shape
    v_state, x_state, v2h_row = new_sampling_state(weights, batch, height, width)
    grid = torch.zeros(batch, height, width, dtype=torch.int64, device=noise.device)
    logits = weights[0].new_empty((batch, height, width, codes) if return_logits else (0,))
    for i in range(height):
        row_step(v_state, v2h_row, weights, cond, i, cond_map)
        x_state.zero_()
        for j in range(width):
            grid[:, i, j], step_logits = position_step(v_state, x_state, v2h_row, weights, noise[:, i, j], temperature, top_k, i, j)
            if return_logits:
                logits[:, i, j] = step_logits
    return grid, logits
