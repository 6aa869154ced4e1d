"""Image grids and plots written as PNG (PIL and matplotlib; no torchvision needed)."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from pegasus.checkpoint import atomic_write_bytes


def to_uint8(images: Tensor) -> Tensor:
    """Float images on the [0, 1] scale, Tensor[B, 3, H, W] -> uint8 Tensor[B, 3, H, W] (clamped)."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


def make_grid(images: Tensor, nrow: int = 8, pad: int = 2, scale: int = 1, fill: int = 255) -> np.ndarray:
    """uint8 Tensor[B, 3, H, W] -> uint8 array [rows*(H+pad)+pad, nrow*(W+pad)+pad, 3]."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"make_grid expected uint8 images [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
    b, _, h, w = images.shape
    if scale > 1:
        images = images.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
        h, w = h * scale, w * scale
    ncol = min(nrow, max(b, 1))
    rows = -(-b // ncol)
    grid = np.full((rows * (h + pad) + pad, ncol * (w + pad) + pad, 3), fill, dtype=np.uint8)
    arr = images.permute(0, 2, 3, 1).cpu().numpy()
    for i in range(b):
        r, c = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y : y + h, x : x + w] = arr[i]
    return grid


def save_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an RGB uint8 array [H, W, 3] as PNG, atomically."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def save_grid(images: Tensor, path: str | os.PathLike, nrow: int = 8, scale: int = 1) -> Path:
    """Write uint8 (or [0, 1] float) images Tensor[B, 3, H, W] as one PNG grid."""
    if images.dtype != torch.uint8:
        images = to_uint8(images)
    return save_png(make_grid(images, nrow=nrow, scale=scale), path)


def save_loss_curves(records: list[dict], path: str | os.PathLike, keys: dict[str, str]) -> Path:
    """Plot metrics against `step`: one panel per (key, title) in `keys`, log-y where positive."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.4), squeeze=False)
    steps = [r["step"] for r in records]
    for ax, (key, title) in zip(axes[0], keys.items()):
        values = [r.get(key, float("nan")) for r in records]
        ax.plot(steps, values, lw=1.2)
        if all(v > 0 for v in values if v == v):
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
