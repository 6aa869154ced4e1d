"""The cached raster loop of a GatedPixelCNN (Ramachandran et al. 2017, Fast Generation for
Convolutional Autoregressive Models), in pure PyTorch: the readable reference of the algorithm.

The naive sampler reruns the whole prior on the whole grid at each of the H*W positions. Here each
position costs one position's worth of work, using the split of pegasus/models/pixelcnn.py:

- at the start of row i, every layer's vertical convolution for the whole row i: it reads rows
  i-h..i of that layer's vertical input, all known, because the vertical stack of row i depends
  only on rows above it (h = kernel // 2);
- at (i, j), every layer's horizontal stack at that one position, from the cached row i of the
  vertical stack and the cached columns j-h..j of the horizontal input; then the head's logits
  over the K codes, the code (chosen by the caller), and its embedding, which the next position
  and the next row read.

With the same codes, the logits are those of `prior(grid, alpha)` up to rounding (float64: ~1e-15).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pegasus.models.pixelcnn import GatedPixelCNN, gate


def _pointwise(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """A 1x1 convolution at one position: x Tensor[B, C_in] -> Tensor[B, C_out]."""
    return F.linear(x, conv.weight.flatten(1), conv.bias)


@torch.no_grad()
def cached_loop(
    prior: GatedPixelCNN,
    alpha: Tensor,
    height: int,
    width: int,
    pick: Callable[[int, int, Tensor], Tensor],
) -> Tensor:
    """Run the prior position by position in raster order over a [height, width] grid.

    alpha: Tensor[B] in the prior's dtype; it gives the batch size B and enters the gates exactly as
    in training (an unconditional prior ignores its values).
    pick(i, j, logits Tensor[B, K]) -> codes Tensor[B] int64: the code placed at (i, j), which
    every later position sees (sampling chooses it; teacher forcing reads it from a fixed grid).
    Returns the grid of picked codes, Tensor[B, height, width] int64.
    """
    cfg = prior.cfg
    batch = alpha.shape[0]
    c, h = cfg.channels, cfg.kernel // 2
    param = prior.embedding.weight
    conds = prior.conditioning(alpha, batch)
    layers = list(prior.layers)
    # Masked weights once, not per step: Hconv flattened to a matrix over (channel, column).
    h_weight = [layer.horizontal.masked_weight().flatten(1) for layer in layers]
    v_weight = [layer.vertical.masked_weight() for layer in layers]

    # State. v_rows[l]: Tensor[B, C, h+1, W+2h], layer l's vertical input at rows i-h..i (slot h is
    # row i), zero-padded by h columns on each side and zero above the grid, as F.pad does in
    # training. Layer 0's vertical input is the embedded codes; its mask A ignores slot h (row i
    # is not sampled yet), which stays zero until the row ends. x_cols[l]: Tensor[B, C, h+1],
    # layer l's horizontal input in row i at columns j-h..j (slot h is column j), zero left of the
    # grid; layer 0's slot h (the code at (i, j) itself) is masked the same way.
    v_rows = [param.new_zeros(batch, c, h + 1, width + 2 * h) for _ in layers]
    x_cols = [param.new_zeros(batch, c, h + 1) for _ in layers]
    grid = torch.zeros(batch, height, width, dtype=torch.int64, device=param.device)

    for i in range(height):
        # Row start: every layer's vertical convolution over row i, Tensor[B, 2C, W] per layer,
        # and its projection into the horizontal stack.
        v2h_row = []
        for l, (layer, cond) in enumerate(zip(layers, conds)):
            v_pre = F.conv2d(v_rows[l], v_weight[l], layer.vertical.bias)  # [B, 2C, 1, W]
            v2h_row.append(layer.v_to_h(v_pre)[:, :, 0])
            if l + 1 < len(layers):  # the last layer's vertical output feeds nothing
                if cond is not None:
                    v_pre = v_pre + cond[:, :, None, None]
                v_rows[l + 1][:, :, h, h : h + width] = gate(v_pre)[:, :, 0]
        for x in x_cols:
            x.zero_()

        for j in range(width):
            skip = 0
            for l, (layer, cond) in enumerate(zip(layers, conds)):
                h_pre = F.linear(x_cols[l].flatten(1), h_weight[l], layer.horizontal.bias) + v2h_row[l][:, :, j]
                if cond is not None:
                    h_pre = h_pre + cond
                u = gate(h_pre)
                x_out = _pointwise(layer.out, u)
                if layer.residual:
                    x_out = x_out + x_cols[l][:, :, h]
                if l + 1 < len(layers):
                    x_cols[l + 1][:, :, h] = x_out
                skip = skip + _pointwise(layer.skip, u)
            logits = prior.head(skip[:, :, None, None])[:, :, 0, 0]  # [B, K]
            codes = pick(i, j, logits)
            grid[:, i, j] = codes
            emb = prior.embedding(codes)  # [B, C]
            x_cols[0][:, :, h] = emb
            v_rows[0][:, :, h, h + j] = emb
            # Next position: columns j-h+1..j+1.
            for x in x_cols:
                x[:, :, :h] = x[:, :, 1:].clone()
                x[:, :, h] = 0

        # Next row: rows i-h+1..i+1; slot h is filled at the next row start (layer 0: at its end).
        for v in v_rows:
            v[:, :, :h] = v[:, :, 1:].clone()
            v[:, :, h] = 0
    return grid


def cached_logits(prior: GatedPixelCNN, grid: Tensor, alpha: Tensor) -> Tensor:
    """Teacher forcing: the logits the cached loop computes at every position when the codes are
    those of `grid` Tensor[B, H, W] int64 -> Tensor[B, K, H, W], the layout of `prior(grid, alpha)`,
    which they equal up to rounding. alpha: Tensor[B]."""
    if grid.dim() != 3 or grid.dtype != torch.int64:
        raise ValueError(f"grid should be int64 code grids [B, H, W], got {grid.dtype} {tuple(grid.shape)}")
    batch, height, width = grid.shape
    out = prior.embedding.weight.new_empty(batch, prior.cfg.codes, height, width)

    def forced(i: int, j: int, logits: Tensor) -> Tensor:
        out[:, :, i, j] = logits
        return grid[:, i, j]

    cached_loop(prior, alpha, height, width, forced)
    return out
