"""Stage 5, sampling: a finished run directory as one object (its VQ-VAE and prior), and images from it.

>>> run = pegasus.load_run("runs/c10")
>>> images = run.sample(64, alpha=0.5, seed=0)   # uint8 [64, 3, 32, 32], at the run's temperature
"""
from __future__ import annotations

import os
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from pegasus.checkpoint import CheckpointError
from pegasus.images import image_format, save_grid, to_uint8, whiteness
from pegasus.models import VQVAE
from pegasus.models.pixelcnn import GatedPixelCNN
from pegasus.rundir import DEFAULT_TEMPERATURE, load_prior, load_vqvae, read_sampling_defaults
from pegasus.sampling import iter_sample_indices, sample_indices


@dataclass
class Run:
    """run_dir, vqvae (eval mode) and prior (eval mode) of a trained run directory, and the
    temperature its samples are drawn at when a call names none (RUN_DIR/sampling.json, else 1.0)."""

    run_dir: Path
    vqvae: VQVAE
    prior: GatedPixelCNN
    temperature: float = DEFAULT_TEMPERATURE

    def temperature_for(self, temperature: float | None) -> float:
        """The temperature a call samples at: the one it names, else the run's."""
        return self.temperature if temperature is None else temperature

    def _options(self, options: dict[str, Any]) -> dict[str, Any]:
        options["temperature"] = self.temperature_for(options.get("temperature"))
        return options

    def sample_indices(self, n: int, alpha: float = 0.5, **options: Any) -> Tensor:
        """Code grids Tensor[n, h, w] int64 from the prior. options: the keywords of
        `pegasus.sample_indices` (temperature, top_k, seed, noise, backend, batch_size);
        temperature None or absent: the run's."""
        return sample_indices(self.prior, n, alpha, **self._options(options))

    @torch.no_grad()
    def decode(self, indices: Tensor) -> Tensor:
        """Code grids Tensor[n, h, w] -> uint8 images Tensor[n, 3, H, W]."""
        device = next(self.vqvae.parameters()).device
        return to_uint8(self.vqvae.decode_indices(indices.to(device))).cpu()

    def iter_samples(self, n: int, alpha: float = 0.5, **options: Any) -> Iterator[Tensor]:
        """`sample` one batch at a time (options["batch_size"]): uint8 Tensor[b, 3, H, W] per batch,
        in order. Arguments are checked at the call, before the first batch."""
        return (self.decode(grids) for grids in iter_sample_indices(self.prior, n, alpha, **self._options(options)))

    def sample(self, n: int, alpha: float = 0.5, **options: Any) -> Tensor:
        """n sampled, decoded images: uint8 Tensor[n, 3, H, W] (options as `sample_indices`; with
        batch_size, the noise and decoding go batch by batch, only the images are kept whole)."""
        return torch.cat(list(self.iter_samples(n, alpha, **options)))


def whitest(images: Tensor, n: int) -> Tensor:
    """Positions of the n whitest of uint8 images Tensor[M, 3, H, W] (pegasus.select's score),
    whitest first -> Tensor[n] int64."""
    if not 1 <= n <= len(images):
        raise ValueError(f"cannot keep the {n} whitest of {len(images)} images")
    scores = whiteness(images.permute(0, 2, 3, 1).numpy())
    return torch.from_numpy(np.argsort(-scores, kind="stable")[:n].copy())


def load_run(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> Run:
    """The VQ-VAE and the prior of RUN_DIR, and its default temperature (`read_sampling_defaults`).
    A missing file raises CheckpointError naming it and the command that makes it."""
    run_dir = Path(run_dir)
    vqvae, prior = load_vqvae(run_dir, device), load_prior(run_dir, device)
    if prior.cfg.codes != vqvae.cfg.codes:
        raise CheckpointError(
            f"{run_dir}: the prior models {prior.cfg.codes} codes (prior_config.json) but the VQ-VAE has "
            f"{vqvae.cfg.codes} codes (config.json): they come from different runs"
        )
    return Run(run_dir, vqvae, prior, **read_sampling_defaults(run_dir))


MAX_GRID = 1024
"""The most samples one image grid holds (8 per row: 128 rows); more go to a directory or an .npz."""


def output_kind(out: str | os.PathLike) -> str:
    """How `out` is written: "grid" (.png, .jpg/.jpeg, .webp: one image of all samples), "npz"
    (uint8 [N, H, W, 3] under "arr_0", the layout of the common evaluation scripts) or "dir" (one
    PNG per sample, 000000.png ...: a name without a suffix, or an existing directory). Other
    suffixes raise ValueError."""
    path = Path(out)
    if path.is_dir() or not path.suffix:
        return "dir"
    if path.suffix.lower() == ".npz":
        return "npz"
    image_format(path)
    return "grid"


def sample_to_file(
    run_dir: str | os.PathLike | Run,
    out: str | os.PathLike,
    n: int = 64,
    alpha: float = 0.5,
    *,
    temperature: float | None = None,
    top_k: int | None = None,
    seed: int = 0,
    backend: str | None = None,
    best_of: int | None = None,
    batch_size: int | None = 256,
    progress: bool = False,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Sample n images from RUN_DIR (or a loaded Run) and write them to `out` (see `output_kind`),
    `batch_size` at a time: memory grows with the batch, not with n (an image grid holds at most
    MAX_GRID). temperature None: the run's. best_of: sample that many and keep the n whitest (image grids only). Returns what was
    done, the sampling time and the time per sampling step (one position of a whole batch)."""
    kind = output_kind(out)
    if best_of is not None and best_of < n:
        raise ValueError(f"best-of should be >= n ({n}), got {best_of}")
    if kind != "grid" and best_of is not None:
        raise ValueError(f"--best-of keeps the whitest of all samples: it needs an image grid --out, got {out}")
    total = best_of or n
    if kind == "grid" and total > MAX_GRID:
        raise ValueError(
            f"an image grid holds at most {MAX_GRID} samples, asked for {total}; write a directory (--out DIR) "
            "or an .npz (--out FILE.npz) instead"
        )
    run = run_dir if isinstance(run_dir, Run) else load_run(run_dir, device)
    batches = run.iter_samples(total, alpha, temperature=temperature, top_k=top_k, seed=seed, backend=backend,
                               batch_size=batch_size)
    bar = tqdm(total=total, desc="sample", unit="img", disable=not progress, dynamic_ncols=True)
    timer = {"sampling_s": 0.0}
    batches = _timed(batches, timer, bar)
    if kind == "grid":
        images = torch.cat(list(batches))
        if best_of is not None:
            images = images[whitest(images, n)]
        save_grid(images, out, nrow=8, scale=max(1, 64 // images.shape[-1]))
    elif kind == "npz":
        _write_npz(batches, total, Path(out))
    else:
        _write_dir(batches, Path(out))
    bar.close()
    grid = run.prior.cfg.grid
    return {
        "out": str(out),
        "format": kind,
        "samples": total,
        "kept": n,
        "grid": list(grid),
        "temperature": run.temperature_for(temperature),
        "sampling_s": timer["sampling_s"],
        "samples_per_s": total / timer["sampling_s"] if timer["sampling_s"] else None,
        "seconds_per_step": timer["sampling_s"] / (-(-total // (batch_size or total)) * grid[0] * grid[1]),
    }


def _timed(batches: Iterator[Tensor], timer: dict[str, float], bar: tqdm) -> Iterator[Tensor]:
    """The batches, timing what producing them takes (sampling and decoding, not writing)."""
    while True:
        t0 = time.perf_counter()
        try:
            images = next(batches)
        except StopIteration:
            return
        timer["sampling_s"] += time.perf_counter() - t0
        bar.update(len(images))
        yield images


def _write_dir(batches: Iterator[Tensor], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    i = 0
    for images in batches:
        for image in images.permute(0, 2, 3, 1).numpy():
            # One file a sample, no fsync each (50,000 of them); the rename keeps partial files out.
            path = out / f"{i:06d}.png"
            tmp = out / f".{i:06d}.png.tmp"
            Image.fromarray(image).save(tmp, format="PNG")
            os.replace(tmp, path)
            i += 1


def _write_npz(batches: Iterator[Tensor], n: int, out: Path) -> None:
    """np.savez layout (arr_0.npy inside a zip, stored), written batch by batch."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("arr_0.npy", "w", force_zip64=True) as f:
                shape = None
                for images in batches:
                    array = np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy())
                    if shape is None:
                        shape = (n, *array.shape[1:])
                        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
                    f.write(array.tobytes())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
