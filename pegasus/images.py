"""Image grids and plots written as PNG, JPEG or WebP by their suffix (PIL and matplotlib; no torchvision needed)."""
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


def images_to_tensor(images: np.ndarray, device: torch.device | str = "cpu") -> Tensor:
    """uint8 array [B, H, W, 3] -> float Tensor[B, 3, H, W] in [0, 1]."""
    t = torch.from_numpy(np.array(images)).to(device)  # a writable copy (the data may be a read-only memmap)
    return t.permute(0, 3, 1, 2).float().div_(255)


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


def whiteness(images: np.ndarray) -> np.ndarray:
    """Whiteness score of uint8 images [N, H, W, 3] -> float64 [N] in [-1, 1].

    The whiteness score of an image (uint8 [H, W, 3]) is

        w(p)  = min(R, G, B) / 255                  per pixel: HSV value x (1 - saturation), so only
                                                    pixels that are both bright and grey score high
        C     = mean of w over the centre           the central square, rows and columns H/4 .. 3H/4
                                                    (a quarter of the area: where the animal sits)
        B     = mean of w over the border           the ring of width max(1, H/8) along the edges
        score = C - B                               in [-1, 1]

    A white animal on a darker background scores high (C near 1, B low); a white sky or snow field
    scores near 0 or below, because it is as white at the border as in the centre (and a dark bird
    in front of it lowers C).
    """
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"whiteness expected uint8 images [N, H, W, 3], got {images.dtype} {list(images.shape)}")
    n, h, w, _ = images.shape
    scores = np.empty(n, dtype=np.float64)
    ring_h, ring_w = max(1, h // 8), max(1, w // 8)
    border = np.zeros((h, w), dtype=bool)
    border[:ring_h], border[-ring_h:], border[:, :ring_w], border[:, -ring_w:] = True, True, True, True
    for start in range(0, n, 4096):  # bounded memory on 100k-image data sets
        white = images[start : start + 4096].min(axis=3).astype(np.float64) / 255
        centre = white[:, h // 4 : h - h // 4, w // 4 : w - w // 4].mean(axis=(1, 2))
        scores[start : start + len(white)] = centre - white[:, border].mean(axis=1)
    return scores


def white_centre(images: np.ndarray) -> np.ndarray:
    """Mean of min(R, G, B) / 255 over the central square (the middle half of each side) of uint8
    images [N, H, W, 3]: how white the subject is, whatever the background (`whiteness` instead
    scores the centre against the border)."""
    n, h, w, _ = images.shape
    centre = images[:, h // 4 : h - h // 4, w // 4 : w - w // 4].min(axis=3)
    return centre.reshape(n, -1).mean(axis=1) / 255


IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
"""The image files pegasus writes, by suffix (case-insensitive), as Pillow names their formats."""


def image_format(path: str | os.PathLike) -> str:
    """The Pillow format that the suffix of `path` names; ValueError for any other suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_FORMATS:
        raise ValueError(
            f"{path}: cannot write a {suffix or 'suffix-less'} image; use one of {', '.join(IMAGE_FORMATS)}"
        )
    return IMAGE_FORMATS[suffix]


def save_image(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an RGB uint8 array [H, W, 3] in the format its suffix names (PNG, JPEG at quality 95,
    lossless WebP), atomically."""
    atomic_write_bytes(path, encode_image(array, image_format(path)))
    return Path(path)


def encode_image(array: np.ndarray, fmt: str = "PNG") -> bytes:
    """An RGB uint8 array [H, W, 3] as the bytes of an image file in Pillow's format `fmt` (one of
    IMAGE_FORMATS' values: PNG, JPEG at quality 95, lossless WebP)."""
    options = {"JPEG": {"quality": 95}, "WEBP": {"lossless": True}}.get(fmt, {})
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **options)
    return buf.getvalue()


def save_grid(images: Tensor, path: str | os.PathLike, nrow: int = 8, scale: int = 1) -> Path:
    """Write uint8 (or [0, 1] float) images Tensor[B, 3, H, W] as one image grid (format by suffix)."""
    if images.dtype != torch.uint8:
        images = to_uint8(images)
    return save_image(make_grid(images, nrow=nrow, scale=scale), path)


def save_loss_curves(records: list[dict], path: str | os.PathLike, keys: dict[str, str]) -> Path:
    """Plot metrics against `step`: one panel per (key, title) in `keys`, log-y where positive."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.4), squeeze=False)
    for ax, (key, title) in zip(axes[0], keys.items()):
        steps = [r["step"] for r in records if key in r]
        values = [r[key] for r in records if key in r]
        ax.plot(steps, values, lw=1.2, marker="o" if len(values) < 30 else None, ms=3)
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
