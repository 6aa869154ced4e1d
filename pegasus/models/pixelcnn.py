"""Gated PixelCNN prior over VQ-VAE code grids (van den Oord et al. 2016, Conditional Image
Generation with PixelCNN Decoders), conditioned on the interpolation weight alpha.

Layout of one `GatedLayer` (C channels, kernel k, h = k // 2):

    vertical stack    v' = gate(Vconv(v) + cond)           Vconv: (h+1) x k rows i-h..i, cols j-h..j+h
    horizontal stack  u  = gate(Hconv(x) + V2H(Vconv(v)) + cond)
                      x' = x + Out(u)  (no residual on the first layer)   Hconv: 1 x (h+1) cols j-h..j
    skip              s  = Skip(u)
    gate(a)           = tanh(a[:C]) * sigmoid(a[C:])

Causality, with no blind spot: on the first layer (mask A) the last kernel row of Vconv and the
last kernel column of Hconv are zeroed, so the vertical stack at row i sees only rows < i and the
horizontal stack at (i, j) only columns < j of row i. Later layers (mask B) keep the current row /
column, which now only carries information from strictly earlier positions. After L layers the
logits at (i, j) depend on exactly rows i - L*h .. i - 1, columns j - L*h .. j + L*h, and on row i,
columns j - L*h .. j - 1 (tests/test_pixelcnn.py checks this by gradients).

The vertical stack of row i depends only on rows above it, and the horizontal stack of (i, j) on
the vertical stack of row i and the horizontal stack left of j: the split a cached sampler needs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pegasus import packed_prior


@dataclass
class PixelCNNConfig:
    """Everything needed to rebuild a GatedPixelCNN; saved as JSON next to the weights.

    grid: the (height, width) of the code grids it was trained on, which sampling uses.
    conditional: whether alpha enters the gates (False: an unconditional prior).
    top_codes: 0, or the codebook size of a two-level VQ-VAE's top level: the prior of the bottom
    grid, conditioned on the top grid (half its height and width) by a stack over it whose output
    enters every gated layer at every position (`GatedPixelCNN.conditioning_map`).
    """

    codes: int = 512
    channels: int = 64
    layers: int = 8
    kernel: int = 5
    cond_dim: int = 32
    conditional: bool = True
    grid: tuple[int, int] = (8, 8)
    top_codes: int = 0

    def __post_init__(self) -> None:
        self.grid = tuple(int(g) for g in self.grid)
        for name in ("codes", "channels", "layers", "cond_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} should be >= 1, got {getattr(self, name)}")
        if self.top_codes < 0:
            raise ValueError(f"top_codes should be >= 0 (0: no top grid), got {self.top_codes}")
        if self.kernel < 3 or self.kernel % 2 == 0:
            raise ValueError(f"kernel should be odd and >= 3, got {self.kernel}")
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise ValueError(f"grid should be (height, width) >= 1, got {self.grid}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["grid"] = list(self.grid)
        if not self.top_codes:  # as written before two-level priors existed: old runs' stamps match
            del d["top_codes"]
        return d

    @property
    def top_grid(self) -> tuple[int, int] | None:
        """The (height, width) of the top grid a bottom prior reads (None without one)."""
        return (self.grid[0] // 2, self.grid[1] // 2) if self.top_codes else None


class MaskedConv2d(nn.Conv2d):
    """A convolution whose weight is multiplied by a fixed 0/1 mask, and which pads only on the
    top and left (and right, for the vertical stack) so that its output at (i, j) sits at the
    bottom-right (vertical: bottom-centre) of its kernel.

    kind "vertical": kernel (h+1, k), sees rows i-h..i and columns j-h..j+h.
    kind "horizontal": kernel (1, h+1), sees row i, columns j-h..j.
    mask "A" zeroes the kernel's last row (vertical) or last column (horizontal): the current
    row / position is excluded; mask "B" keeps the whole kernel.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, kind: str, mask: str) -> None:
        h = kernel // 2
        if kind not in ("vertical", "horizontal") or mask not in ("A", "B"):
            raise ValueError(f"kind should be vertical|horizontal and mask A|B, got {kind!r}, {mask!r}")
        size = (h + 1, kernel) if kind == "vertical" else (1, h + 1)
        super().__init__(in_channels, out_channels, size)
        self.kind, self.mask_type = kind, mask
        # (left, right, top, bottom) for F.pad
        self.pad = (h, h, h, 0) if kind == "vertical" else (h, 0, 0, 0)
        m = torch.ones(size)
        if mask == "A":
            if kind == "vertical":
                m[-1] = 0
            else:
                m[:, -1] = 0
        self.register_buffer("mask", m, persistent=False)

    def masked_weight(self) -> Tensor:
        """The weight the convolution uses: Tensor[out, in, kh, kw], masked entries zero."""
        return self.weight * self.mask

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x, self.pad), self.masked_weight(), self.bias)


def gate(a: Tensor) -> Tensor:
    """tanh(a[:, :C]) * sigmoid(a[:, C:]) for a: Tensor[B, 2C, ...] -> Tensor[B, C, ...]."""
    f, g = a.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


class GatedLayer(nn.Module):
    """One gated layer: (v, x) stacks Tensor[B, C, H, W], cond Tensor[B, 2C] (or None) and
    cond_map Tensor[B, 2C, H, W] (or None) -> (v', x', skip), each Tensor[B, C, H, W]. See the module
    docstring for the equations; cond_map is added where cond is, position by position."""

    def __init__(self, channels: int, kernel: int, mask: str) -> None:
        super().__init__()
        c = channels
        self.vertical = MaskedConv2d(c, 2 * c, kernel, "vertical", mask)
        self.horizontal = MaskedConv2d(c, 2 * c, kernel, "horizontal", mask)
        self.v_to_h = nn.Conv2d(2 * c, 2 * c, 1)
        self.out = nn.Conv2d(c, c, 1)
        self.skip = nn.Conv2d(c, c, 1)
        # The first layer's input at (i, j) is the code at (i, j) itself: a residual would leak it.
        self.residual = mask == "B"

    def forward(self, v: Tensor, x: Tensor, cond: Tensor | None, cond_map: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        v_pre = self.vertical(v)
        h_pre = self.horizontal(x) + self.v_to_h(v_pre)
        if cond is not None:
            v_pre = v_pre + cond[:, :, None, None]
            h_pre = h_pre + cond[:, :, None, None]
        if cond_map is not None:
            v_pre = v_pre + cond_map
            h_pre = h_pre + cond_map
        v_out, u = gate(v_pre), gate(h_pre)
        x_out = self.out(u) + x if self.residual else self.out(u)
        return v_out, x_out, self.skip(u)


class GatedPixelCNN(nn.Module):
    """Autoregressive prior over code grids in raster order.

    forward(indices: Tensor[B, H, W] int64 in [0, codes), alpha: Tensor[B] float in [0, 1] or None,
    top: Tensor[B, H/2, W/2] int64 in [0, top_codes) or None) -> logits Tensor[B, codes, H, W]; the
    logits at (i, j) depend only on codes before (i, j) in raster order (and on alpha and the whole
    top grid). alpha is required by a conditional prior and ignored by an unconditional one; top is
    required by a prior with cfg.top_codes (the bottom prior of a two-level model) and refused by
    one without.
    """

    def __init__(self, cfg: PixelCNNConfig | None = None, **kwargs) -> None:
        super().__init__()
        self.cfg = cfg if cfg is not None else PixelCNNConfig(**kwargs)
        c = self.cfg.channels
        self.embedding = nn.Embedding(self.cfg.codes, c)
        if self.cfg.conditional:
            # alpha -> a learned embedding, then per layer a linear map to the 2C gate inputs.
            self.alpha_embedding = nn.Sequential(nn.Linear(1, self.cfg.cond_dim), nn.SiLU(), nn.Linear(self.cfg.cond_dim, self.cfg.cond_dim))
            self.cond = nn.ModuleList(nn.Linear(self.cfg.cond_dim, 2 * c) for _ in range(self.cfg.layers))
        if self.cfg.top_codes:
            # The top grid, known in full before the bottom one is sampled, so nothing is masked:
            # embedded, upsampled to the bottom grid, two 3x3 convolutions, then one 1x1 to every
            # layer's 2C gate inputs at once.
            self.top_embedding = nn.Embedding(self.cfg.top_codes, c)
            self.top_stack = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
                nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, 2 * c * self.cfg.layers, 1),
            )
        self.layers = nn.ModuleList(
            GatedLayer(c, self.cfg.kernel, "A" if i == 0 else "B") for i in range(self.cfg.layers)
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 1), nn.ReLU(), nn.Conv2d(c, self.cfg.codes, 1))
        self._pack_generation = 0
        self._packed: tuple[tuple, list[Tensor]] | None = None
        self._params: list[nn.Parameter] | None = None

    def embed(self, indices: Tensor) -> Tensor:
        """Code grids Tensor[B, H, W] int64 -> Tensor[B, C, H, W]."""
        if indices.dim() != 3 or indices.dtype != torch.int64:
            raise ValueError(f"GatedPixelCNN expected int64 code grids [B, H, W], got {indices.dtype} {tuple(indices.shape)}")
        return self.embedding(indices).permute(0, 3, 1, 2)

    def conditioning(self, alpha: Tensor | None, batch: int) -> list[Tensor | None]:
        """Per layer, the gate offsets Tensor[B, 2C] of alpha: Tensor[B] (None when unconditional)."""
        if not self.cfg.conditional:
            return [None] * self.cfg.layers
        if alpha is None or alpha.shape != (batch,):
            got = None if alpha is None else tuple(alpha.shape)
            raise ValueError(f"a conditional GatedPixelCNN needs alpha of shape ({batch},), got {got}")
        e = self.alpha_embedding(alpha.to(self.embedding.weight.dtype)[:, None])
        return [lin(e) for lin in self.cond]

    def conditioning_map(self, top: Tensor | None, batch: int, grid: tuple[int, int] | None = None) -> list[Tensor | None]:
        """Per layer, the gate offsets Tensor[B, 2C, H, W] of the top grids top: Tensor[B, H/2, W/2]
        int64 (None for a prior without cfg.top_codes); grid: the (H, W) sampled (default cfg.grid)."""
        if not self.cfg.top_codes:
            if top is not None:
                raise ValueError("this prior is not conditioned on a top grid (top_codes=0), got top=")
            return [None] * self.cfg.layers
        h, w = self.cfg.grid if grid is None else grid
        if top is None or top.dtype != torch.int64 or tuple(top.shape) != (batch, h // 2, w // 2) or h % 2 or w % 2:
            got = None if top is None else f"{top.dtype} {tuple(top.shape)}"
            raise ValueError(f"this bottom prior of {h}x{w} grids needs the top grids as int64 [{batch}, {h / 2:g}, {w / 2:g}], got {got}")
        if top.numel() and (top.min() < 0 or top.max() >= self.cfg.top_codes):
            raise ValueError(f"top grids should hold codes in 0..{self.cfg.top_codes - 1}, got {int(top.min())}..{int(top.max())}")
        out = self.top_stack(self.top_embedding(top).permute(0, 3, 1, 2))  # [B, L * 2C, H, W]
        return list(out.chunk(self.cfg.layers, dim=1))

    def forward_embedded(self, x: Tensor, alpha: Tensor | None = None, top: Tensor | None = None) -> Tensor:
        """Embedded grids Tensor[B, C, H, W] -> logits Tensor[B, codes, H, W]."""
        conds = self.conditioning(alpha, x.shape[0])
        maps = self.conditioning_map(top, x.shape[0], tuple(x.shape[-2:]))
        v, h, skip = x, x, 0
        for layer, cond, cond_map in zip(self.layers, conds, maps):
            v, h, s = layer(v, h, cond, cond_map)
            skip = skip + s
        return self.head(skip)

    def forward(self, indices: Tensor, alpha: Tensor | None = None, top: Tensor | None = None) -> Tensor:
        return self.forward_embedded(self.embed(indices), alpha, top)

    def weights_key(self) -> tuple:
        """Changes whenever the parameters may have: any in-place write (optimizer steps,
        load_state_dict, `p.mul_()`: each bumps the tensor's version counter), new storage
        (`.to()`, `p.data = ...`: a new data pointer) or `invalidate_packed()`. Two writes are not
        seen, so call `invalidate_packed()` after them: writes through `p.data` (which do not bump
        the version counter) and replacing a Parameter object (`layer.weight = nn.Parameter(...)`).
        ~40 us for the default prior: the parameter list is gathered once (walking the module tree
        took 0.46 ms)."""
        if self._params is None:
            self._params = list(self.parameters())
        return (self._pack_generation, *((p._version, p.data_ptr()) for p in self._params))

    def invalidate_packed(self) -> None:
        """Forget the cached packed weights (and anything keyed on `weights_key`)."""
        self._pack_generation += 1
        self._packed = None
        self._params = None

    @torch.no_grad()
    def pack_for_sampling(self) -> list[Tensor]:
        """The weights the sampling ops read: the list that pegasus/packed_prior.py describes
        (1 + 7 * layers + 4 contiguous tensors in the prior's dtype and device). Packed once and
        reused while `weights_key()` stays the same (packing the default prior took ~1.1 ms, a
        seventh of an 8x8 sample of batch 1); treat the list as read-only."""
        key = self.weights_key()
        if self._packed is not None and self._packed[0] == key:
            return self._packed[1]
        packed = self._pack()
        self._packed = (key, packed)
        return packed

    def _pack(self) -> list[Tensor]:
        c, k, h = self.cfg.channels, self.cfg.kernel, self.cfg.kernel // 2
        packed = [self.embedding.weight]
        for layer in self.layers:
            keep = h if layer.horizontal.mask_type == "A" else h + 1
            wv = layer.vertical.weight[:, :, :keep, :]  # [2C, C, rows, k]
            wh = layer.horizontal.weight[:, :, 0, :keep]  # [2C, C, cols]
            wos = torch.cat([layer.out.weight.flatten(1), layer.skip.weight.flatten(1)], 0)  # [2C, C]
            packed += packed_prior.LayerWeights(
                wv=wv.permute(2, 3, 1, 0).reshape(keep * k * c, 2 * c),
                bv=layer.vertical.bias,
                wh=wh.permute(2, 1, 0).reshape(keep * c, 2 * c),
                wvh=layer.v_to_h.weight.flatten(1).t(),
                bhv=layer.v_to_h.bias + layer.horizontal.bias,
                wos=wos.t(),
                bos=torch.cat([layer.out.bias, layer.skip.bias]),
            )
        w1, w2 = self.head[1], self.head[3]
        packed += packed_prior.HeadWeights(w1=w1.weight.flatten(1).t(), b1=w1.bias, w2=w2.weight.flatten(1).t(), b2=w2.bias)
        return [t.detach().contiguous() for t in packed]

    @torch.no_grad()
    def sampling_conditioning(self, alpha: Tensor) -> Tensor:
        """The gate offsets of every layer for alpha: Tensor[B] -> Tensor[layers, B, 2C] (zeros for
        an unconditional prior), the `cond` argument of the sampling ops."""
        conds = self.conditioning(alpha, alpha.shape[0])
        if conds[0] is None:
            w = self.embedding.weight
            return w.new_zeros(self.cfg.layers, alpha.shape[0], 2 * self.cfg.channels)
        return torch.stack(conds).contiguous()

    @torch.no_grad()
    def sampling_conditioning_map(self, top: Tensor | None, batch: int) -> Tensor | None:
        """The gate offsets of every layer at every position for the top grids top: Tensor[B, H/2,
        W/2] -> Tensor[layers, B, H, W, 2C] (None for a prior without a top grid), the `cond_map`
        argument of the sampling ops: computed once, before the loop."""
        grid = None if top is None else (2 * top.shape[-2], 2 * top.shape[-1])
        maps = self.conditioning_map(top, batch, grid)
        if maps[0] is None:
            return None
        return torch.stack(maps).permute(0, 1, 3, 4, 2).contiguous()
