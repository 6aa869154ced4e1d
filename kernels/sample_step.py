"""Triton kernels of `pegasus::sample_row` and `pegasus::sample_position`: the two steps of the
cached raster loop (`pegasus.reference.sample_row` / `sample_position` are the ground truth and
document the state tensors; pegasus/packed_prior.py describes the packed `weights`).

The C++ loop calls `sample_position` H*W times and `sample_row` H times per sample,
so the number of launches decides the speed more than the arithmetic does:

- position: ONE launch per position. A program owns BLOCK_B rows of the batch and runs every layer,
  the head, the Gumbel-max choice and the embedding writes. Logits are computed in tiles of BLOCK_K
  codes with a running argmax, so the choice needs no second pass. With top_k the kernel stops at
  the logits and torch ops choose (see `sample_position`).
- row: one launch per layer (layer l+1 reads layer l's gated vertical stack of the same row at the
  neighbouring columns, which other programs write). A program owns BLOCK_M of the B*W positions
  of the row; the k taps of a kernel row are k*C contiguous values of the ring row, as wv's rows.

Every matrix product reads its left operand from memory, KC columns at a time (see `_mm2` for why
a register tile is never fed to tl.dot whole). So the kernels stage the tiles that feed a product
through memory inside one program, behind a `tl.debug_barrier()` (a CTA barrier, which also orders
global memory between the CTA's threads): the gate's output, the skip sum and the head's hidden
layer in a per-program scratch buffer, and layer l-1's output at the current column in x_state,
where it is stored anyway for the positions to come. The [in, 2C] matrices are read as two [C, C]
halves (gate input and gate, or out and skip), so no register tile is ever sliced.

Dots use input_precision="ieee": TF32 would move float32 logits by ~1e-3, and the tests ask 1e-4 of
the reference. tl.dot needs every dim >= 16, so C and K are padded to powers of two >= 16 with
masked loads (padding loads 0 and stays 0 through the layers).

Measured on an H200 (Triton 3.6, torch 2.11), C=64, K=512, 8 layers, kernel 5, W=32, float32: one
position takes 86-89 us of GPU time at B=1, 16 or 64 (one program up to B=16: the time is the
latency of the layers' chain of dependent chunks, not arithmetic), a row (8 launches) 207-215 us,
and a whole 32x32 sample of B=16 0.24 s against 1.5 s for the reference steps (pegasus.reference).

Importing this module registers the launchers as the CUDA kernels of both ops (the schemas are in
csrc/ops.cpp; their input rules and fakes in pegasus/ops.py, which checks the inputs once, as the
C++ loop does before its first step: the launchers check nothing per step but the kernels' own
limit on C). On CPU tensors they run only under TRITON_INTERPRET=1, called directly by pegasus.ops
(the dispatcher gives CPU tensors to the C++ kernels).
"""
from __future__ import annotations


import torch
import triton
import triton.language as tl
from torch import Tensor

from pegasus import _extension, packed_prior, reference

__all__ = ["sample_position", "sample_row"]

# 16 is tl.dot's smallest M. A program's rows share every weight tile it loads.
_BLOCK_B = 16  # batch rows per program in the position kernel
_BLOCK_M = 16  # positions of a row per program in the row kernel (32 spilled 16 bytes at C=64, sm_90)
_BLOCK_K_MAX = 64  # codes per logits tile
# Chunk width of the left operand of every product, warps and pipeline stages. On the H200 at
# B=16 (config above), us of GPU time for a position / a row: KC=16, 3 stages, 4 warps: 89 / 213;
# 1 stage: 107 / 309; KC=32: 92 / 212 (1 stage: 101 / 251; 8 warps: 91 / 288); KC=64, 1 stage:
# 162 / 367, with spills.
_KC = 16
_NUM_STAGES = 3
_NUM_WARPS = 4
_MAX_BLOCK_C = 128  # C is held whole (padded to a power of two) in the [rows, C] register tiles
_DOT = "ieee"
# Positions in the packed prior (pegasus/packed_prior.py): tensor t of layer l is at t's layer-0
# position + _PER_LAYER * l; the head's at its position for 0 layers + _PER_LAYER * L.
_PER_LAYER = tl.constexpr(len(packed_prior.LAYER))
_WH = tl.constexpr(packed_prior.index("wh"))
_WOS = tl.constexpr(packed_prior.index("wos"))
_BOS = tl.constexpr(packed_prior.index("bos"))
_W1 = tl.constexpr(packed_prior.index("w1"))
_B1 = tl.constexpr(packed_prior.index("b1"))
_W2 = tl.constexpr(packed_prior.index("w2"))
_B2 = tl.constexpr(packed_prior.index("b2"))


@triton.jit
def _gate(f, g):
    """tanh(f) * sigmoid(g), with tanh(f) = sign(f) (1 - e) / (1 + e), e = exp(-2|f|): no overflow,
    and within a few ulp of torch.tanh in float64 (an absolute error ~1e-16 near 0)."""
    e = tl.exp(-2.0 * tl.abs(f))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(f < 0, -t, t) * tl.sigmoid(g)


@triton.jit
def _dot_chunk(a, w_ptr, row0, k_valid, col0, n_valid, ld, BN: tl.constexpr, KC: tl.constexpr, DOT: tl.constexpr):
    """a[M, KC] @ w[row0 + i, col0 + j] (i < KC, j < BN) of a row-major matrix with leading
    dimension ld, zero where i >= k_valid or j >= n_valid."""
    ks = tl.arange(0, KC)
    ns = tl.arange(0, BN)
    mask = (ks[:, None] < k_valid) & (ns[None, :] < n_valid)
    w = tl.load(w_ptr + (row0 + ks[:, None]) * ld + col0 + ns[None, :], mask=mask, other=0.0)
    return tl.dot(a, w, input_precision=DOT)


@triton.jit
def _mm2(acc0, acc1, rows, row_mask, k_valid, w_ptr, row0, col0, col1, n_valid, ld, BN: tl.constexpr, KC: tl.constexpr, DOT: tl.constexpr):
    """acc0 + A @ w[row0 : row0 + k_valid, col0 : col0 + n_valid] and the same at col1, for A[m, k]
    at pointer rows[m] + k (k < k_valid), zero-padded to BN columns.

    A is read from memory KC columns at a time, one loop iteration per chunk. A float32 "ieee" dot
    runs on FMAs, and Triton's FMA dot first loads all K x (rows + columns of the thread's outputs)
    operand values from shared memory into registers; LLVM then hoists those loads of consecutive
    dots together. Fed whole [*, 64] register tiles, the position kernel compiled for sm_90 to 255
    registers and 2-14 KB of spills per thread (C=64, 2 to 8 layers), and splitting the tiles in
    registers (reshape/permute/split) did not help; chunk loops over memory compile with no spills.
    """
    for k0 in range(0, k_valid, KC):
        ks = k0 + tl.arange(0, KC)
        a = tl.load(rows[:, None] + ks[None, :], mask=row_mask[:, None] & (ks[None, :] < k_valid), other=0.0)
        acc0 += _dot_chunk(a, w_ptr, row0 + k0, k_valid - k0, col0, n_valid, ld, BN, KC, DOT)
        acc1 += _dot_chunk(a, w_ptr, row0 + k0, k_valid - k0, col1, n_valid, ld, BN, KC, DOT)
    return acc0, acc1


@triton.jit
def _mm(acc, rows, row_mask, k_valid, w_ptr, row0, col0, n_valid, ld, BN: tl.constexpr, KC: tl.constexpr, DOT: tl.constexpr):
    """acc + A @ w[row0 : row0 + k_valid, col0 : col0 + n_valid], as _mm2 with one output."""
    for k0 in range(0, k_valid, KC):
        ks = k0 + tl.arange(0, KC)
        a = tl.load(rows[:, None] + ks[None, :], mask=row_mask[:, None] & (ks[None, :] < k_valid), other=0.0)
        acc += _dot_chunk(a, w_ptr, row0 + k0, k_valid - k0, col0, n_valid, ld, BN, KC, DOT)
    return acc


@triton.jit
def _load_vec(ptr, n0, n, BLOCK: tl.constexpr):
    """ptr[n0 : n0 + n] padded with zeros to [BLOCK]."""
    cs = tl.arange(0, BLOCK)
    return tl.load(ptr + n0 + cs, mask=cs < n, other=0.0)


@triton.jit(do_not_specialize=["layer", "slot0", "slot_out", "row"])
def _sample_row_kernel(
    v_ptr,
    v2h_ptr,
    wv_ptr,
    bv_ptr,
    wvh_ptr,
    bhv_ptr,
    cond_ptr,
    map_ptr,
    map_rows,
    row,
    B,
    W,
    C,
    layer,
    slot0,
    slot_out,
    ROWS: tl.constexpr,
    KW: tl.constexpr,
    H: tl.constexpr,
    GATE: tl.constexpr,
    HAS_MAP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
    KC: tl.constexpr,
    DOT: tl.constexpr,
):
    ms = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cs = tl.arange(0, BLOCK_C)
    m_mask = ms < B * W
    mc_mask = m_mask[:, None] & (cs[None, :] < C)
    b = (ms // W).to(tl.int64)
    j = ms % W
    lb = layer * B + b  # index of (layer, b) in the [L, B, ...] state tensors
    padded = W + 2 * H
    c2 = 2 * C

    f = tl.zeros([BLOCK_M, BLOCK_C], dtype=v_ptr.dtype.element_ty)
    g = tl.zeros([BLOCK_M, BLOCK_C], dtype=v_ptr.dtype.element_ty)
    for r in range(ROWS):
        slot = (slot0 + r) % (H + 1)  # ring slot of row `row - h + r`
        # the k taps of kernel row r are k * C contiguous values: columns j .. j + 2h of the ring row
        src = v_ptr + ((lb * (H + 1) + slot) * padded + j) * C
        f, g = _mm2(f, g, src, m_mask, KW * C, wv_ptr, r * KW * C, 0, C, C, c2, BLOCK_C, KC, DOT)
    f += _load_vec(bv_ptr, 0, C, BLOCK_C)[None, :]
    g += _load_vec(bv_ptr, C, C, BLOCK_C)[None, :]
    cond = cond_ptr + lb[:, None] * c2 + cs[None, :]
    cond_f = tl.load(cond, mask=mc_mask, other=0.0)
    cond_g = tl.load(cond + C, mask=mc_mask, other=0.0)
    if HAS_MAP:  # cond_map[layer, b, row, j]: this position's own offsets, added to alpha's
        here = map_ptr + ((lb * map_rows + row) * W + j)[:, None] * c2 + cs[None, :]
        cond_f += tl.load(here, mask=mc_mask, other=0.0)
        cond_g += tl.load(here + C, mask=mc_mask, other=0.0)
    if GATE:  # the next layer's vertical input at this row: v_state[layer + 1][b, slot_out, h + j]
        nxt = v_ptr + ((((lb + B) * (H + 1) + slot_out) * padded + H + j) * C)[:, None] + cs[None, :]
        tl.store(nxt, _gate(f + cond_f, g + cond_g), mask=mc_mask)

    # v2h = v_pre @ wvh: v_pre = [f | g] is staged in this program's own rows of v2h_row[layer]
    # (see _mm2), read back after a barrier, and overwritten after a second one.
    row_ptr = v2h_ptr + (lb * W + j) * c2
    dst = row_ptr[:, None] + cs[None, :]
    tl.store(dst, f, mask=mc_mask)
    tl.store(dst + C, g, mask=mc_mask)
    tl.debug_barrier()
    v2h_f = cond_f + _load_vec(bhv_ptr, 0, C, BLOCK_C)[None, :]
    v2h_g = cond_g + _load_vec(bhv_ptr, C, C, BLOCK_C)[None, :]
    v2h_f, v2h_g = _mm2(v2h_f, v2h_g, row_ptr, m_mask, c2, wvh_ptr, 0, 0, C, C, c2, BLOCK_C, KC, DOT)
    tl.debug_barrier()
    tl.store(dst, v2h_f, mask=mc_mask)
    tl.store(dst + C, v2h_g, mask=mc_mask)


@triton.jit(do_not_specialize=["slot", "col"])
def _sample_position_kernel(
    v_ptr,
    x_ptr,
    v2h_ptr,
    weights,
    noise_ptr,
    stride_nb,
    stride_nk,
    codes_ptr,
    logits_ptr,
    scratch_ptr,
    temperature: tl.float64,  # annotated: a Python float argument is otherwise passed as float32
    B,
    W,
    C,
    K,
    slot,
    col,
    L: tl.constexpr,
    H: tl.constexpr,
    CHOOSE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    KC: tl.constexpr,
    DOT: tl.constexpr,
):
    pid = tl.program_id(0)
    rs = tl.arange(0, BLOCK_B)
    bs = pid * BLOCK_B + rs
    cs = tl.arange(0, BLOCK_C)
    b_mask = bs < B
    bc_mask = b_mask[:, None] & (cs[None, :] < C)
    b = bs.to(tl.int64)
    dtype = v_ptr.dtype.element_ty
    c2 = 2 * C
    # This program's two [BLOCK_B, BLOCK_C] scratch tiles (see _mm2): the gate's output, then the
    # skip sum and the head's hidden layer.
    u_rows = scratch_ptr + (pid * 2 * BLOCK_B + rs) * BLOCK_C
    s_rows = u_rows + BLOCK_B * BLOCK_C

    skip = tl.zeros([BLOCK_B, BLOCK_C], dtype=dtype)
    for l in tl.static_range(L):
        wh_ptr = weights[_WH + _PER_LAYER * l]
        wos_ptr = weights[_WOS + _PER_LAYER * l]
        bos_ptr = weights[_BOS + _PER_LAYER * l]
        if l > 0:
            tl.debug_barrier()  # layer l-1's output at col + h (stored below) is read back here
        v2h = v2h_ptr + ((l * B + b) * W + col)[:, None] * c2 + cs[None, :]
        f = tl.load(v2h, mask=bc_mask, other=0.0)
        g = tl.load(v2h + C, mask=bc_mask, other=0.0)
        # x_state[l][b, col : col + cols] is cols * C contiguous values, as wh's rows: mask A (l = 0)
        # has the h columns left of the current one, mask B the current one too (index col + h)
        xs = x_ptr + ((l * B + b) * (W + H) + col) * C
        cols = H if l == 0 else H + 1
        f, g = _mm2(f, g, xs, b_mask, cols * C, wh_ptr, 0, 0, C, C, c2, BLOCK_C, KC, DOT)
        tl.store(u_rows[:, None] + cs[None, :], _gate(f, g))
        tl.debug_barrier()
        out = _load_vec(bos_ptr, 0, C, BLOCK_C)[None, :] + tl.zeros([BLOCK_B, BLOCK_C], dtype=dtype)
        skip += _load_vec(bos_ptr, C, C, BLOCK_C)[None, :]
        out, skip = _mm2(out, skip, u_rows, b_mask, C, wos_ptr, 0, 0, C, C, c2, BLOCK_C, KC, DOT)
        if l + 1 < L:  # x_state[l + 1][b, col + h], read by the next layer and the next h positions
            if l > 0:  # the residual: layer l's input at the current column
                out += tl.load(xs[:, None] + H * C + cs[None, :], mask=bc_mask, other=0.0)
            tl.store(x_ptr + ((((l + 1) * B + b) * (W + H) + col + H) * C)[:, None] + cs[None, :], out, mask=bc_mask)

    w1_ptr = weights[_W1 + _PER_LAYER * L]
    b1_ptr = weights[_B1 + _PER_LAYER * L]
    w2_ptr = weights[_W2 + _PER_LAYER * L]
    b2_ptr = weights[_B2 + _PER_LAYER * L]
    tl.store(s_rows[:, None] + cs[None, :], tl.maximum(skip, 0.0))
    tl.debug_barrier()
    hidden = _load_vec(b1_ptr, 0, C, BLOCK_C)[None, :] + tl.zeros([BLOCK_B, BLOCK_C], dtype=dtype)
    hidden = _mm(hidden, s_rows, b_mask, C, w1_ptr, 0, 0, C, C, BLOCK_C, KC, DOT)
    tl.store(u_rows[:, None] + cs[None, :], tl.maximum(hidden, 0.0))
    tl.debug_barrier()

    # Rounded to the logits' dtype, as torch does for `logits / temperature`. The float64 zeros make
    # this one expression work both compiled (a float64 scalar) and interpreted (a Python float).
    t = (tl.zeros([BLOCK_B], tl.float64) + temperature).to(dtype)
    best = tl.full([BLOCK_B], float("-inf"), dtype)
    best_code = tl.zeros([BLOCK_B], tl.int64)
    first_nan = tl.full([BLOCK_B], K, tl.int64)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < K
        bk_mask = b_mask[:, None] & k_mask[None, :]
        logits = tl.load(b2_ptr + ks, mask=k_mask, other=0.0)[None, :] + tl.zeros([BLOCK_B, BLOCK_K], dtype=dtype)
        logits = _mm(logits, u_rows, b_mask, C, w2_ptr, 0, k0, K - k0, K, BLOCK_K, KC, DOT)
        tl.store(logits_ptr + b[:, None] * K + ks[None, :], logits, mask=bk_mask)
        if CHOOSE:
            noise = tl.load(noise_ptr + b[:, None] * stride_nb + ks[None, :] * stride_nk, mask=bk_mask, other=0.0)
            scores = logits / t[:, None] + noise.to(dtype)
            is_nan = (scores != scores) & k_mask[None, :]  # noqa: PLR0124 (NaN test)
            # torch.argmax takes the first NaN; otherwise the first maximum. Padding never wins.
            first_nan = tl.minimum(first_nan, tl.min(tl.where(is_nan, ks[None, :], K), axis=1).to(tl.int64))
            scores = tl.where(k_mask[None, :] & ~is_nan, scores, float("-inf"))
            tile_best, tile_code = tl.max(scores, axis=1, return_indices=True, return_indices_tie_break_left=True)
            better = tile_best > best  # strict: an earlier tile keeps a tie
            best = tl.where(better, tile_best, best)
            best_code = tl.where(better, k0 + tile_code.to(tl.int64), best_code)

    if CHOOSE:
        code = tl.where(first_nan < K, first_nan, best_code)
        tl.store(codes_ptr + b, code, mask=b_mask)
        emb = tl.load(weights[0] + code[:, None] * C + cs[None, :], mask=bc_mask, other=0.0)
        tl.store(x_ptr + ((b * (W + H) + col + H) * C)[:, None] + cs[None, :], emb, mask=bc_mask)
        v = v_ptr + (((b * (H + 1) + slot) * (W + 2 * H) + col + H) * C)[:, None] + cs[None, :]
        tl.store(v, emb, mask=bc_mask)


def _sizes(v_state: Tensor, weights: list[Tensor]) -> tuple[int, int, int, int, int, int]:
    """(L, B, h, W, C, K) of checked inputs (pegasus.ops checks them once, before the loop), and
    the kernels' own limit on C."""
    layers, batch, ring, padded, c = v_state.shape
    if triton.next_power_of_2(c) > _MAX_BLOCK_C:
        raise ValueError(f"sampling (triton): the channel count C should be at most {_MAX_BLOCK_C} (the kernel's limit), got {c}")
    return layers, batch, ring - 1, padded - 2 * (ring - 1), c, weights[0].shape[0]


def sample_row(
    v_state: Tensor, v2h_row: Tensor, weights: list[Tensor], cond: Tensor, row: int, cond_map: Tensor | None = None
) -> None:
    """Launch `_sample_row_kernel` once per layer: `pegasus.reference.sample_row`, in place.

    v_state: Tensor[L, B, h+1, W+2h, C], v2h_row: Tensor[L, B, W, 2C], cond: Tensor[L, B, 2C],
    cond_map: None or Tensor[L, B, H, W, 2C] with H > row, all contiguous, float32 or float64 like
    the packed weights, on CUDA (or CPU under TRITON_INTERPRET=1); checked by the caller.
    """
    layers, batch, h, width, c, _ = _sizes(v_state, weights)
    map_rows = 0 if cond_map is None else cond_map.shape[2]
    grid = (triton.cdiv(batch * width, _BLOCK_M),)
    block_c = max(16, triton.next_power_of_2(c))
    for l in range(layers):
        wv, bv, _, wvh, bhv, _, _ = packed_prior.layer(weights, l)
        _sample_row_kernel[grid](
            v_state, v2h_row, wv, bv, wvh, bhv, cond, cond if cond_map is None else cond_map, map_rows, row,
            batch, width, c, l, (row - h) % (h + 1), row % (h + 1),
            ROWS=h if l == 0 else h + 1, KW=2 * h + 1, H=h, GATE=l + 1 < layers, HAS_MAP=cond_map is not None, BLOCK_M=_BLOCK_M, BLOCK_C=block_c, KC=_KC, DOT=_DOT, num_warps=_NUM_WARPS, num_stages=_NUM_STAGES,
        )


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
    """Launch `_sample_position_kernel` once: `pegasus.reference.sample_position`, in place.

    v_state: Tensor[L, B, h+1, W+2h, C], x_state: Tensor[L, B, W+h, C], v2h_row: Tensor[L, B, W, 2C]
    (contiguous, the weights' dtype), noise: Tensor[B, K] of the weights' dtype (any strides);
    checked by the caller -> (codes Tensor[B] int64, logits Tensor[B, K] of x_state's dtype).
    """
    layers, batch, h, width, c, codes_n = _sizes(v_state, weights)
    dtype, dev = v_state.dtype, v_state.device
    codes = torch.empty(batch, dtype=torch.int64, device=dev)
    logits = torch.empty(batch, codes_n, dtype=dtype, device=dev)
    # top-k needs each row's k-th largest logit before any score can be ranked: that is a
    # selection over all K that the tiled running argmax cannot do in one pass. The kernel then
    # stops at the logits, and torch ops (a few launches, top_k is the rare case) do the choice
    # and the embedding writes.
    choose = not 0 < top_k < codes_n
    programs = triton.cdiv(batch, _BLOCK_B)
    block_c = max(16, triton.next_power_of_2(c))
    scratch = torch.empty(programs * 2 * _BLOCK_B * block_c, dtype=dtype, device=dev)
    _sample_position_kernel[(programs,)](
        v_state, x_state, v2h_row, tuple(weights), noise, noise.stride(0), noise.stride(1), codes, logits, scratch,
        float(temperature),
        batch, width, c, codes_n, row % (h + 1), col,
        L=layers, H=h, CHOOSE=choose, BLOCK_B=_BLOCK_B, BLOCK_C=block_c,
        BLOCK_K=min(_BLOCK_K_MAX, max(16, triton.next_power_of_2(codes_n))), KC=_KC, DOT=_DOT, num_warps=_NUM_WARPS, num_stages=_NUM_STAGES,
    )
    if not choose:
        codes = reference.choose_codes(logits, noise, temperature, top_k)
        emb = weights[0][codes]
        x_state[0][:, col + h] = emb
        v_state[0][:, row % (h + 1), col + h] = emb
    return codes, logits


if _extension.has_cpp_ops():  # the schemas are defined in C++ (csrc/ops.cpp)
    torch.library.register_kernel("pegasus::sample_row", "cuda", sample_row)
    torch.library.register_kernel("pegasus::sample_position", "cuda", sample_position)
