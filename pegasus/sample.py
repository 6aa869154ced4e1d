"""Stage 5, sampling to files: n images of a run (pegasus.rundir.Run) written as a grid, a directory
of PNGs or an .npz, batch by batch."""
from __future__ import annotations

import os
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from pegasus.images import image_format, save_grid, whiteness
from pegasus.rundir import Run, load_run
from pegasus.sampling import SamplingOptions


def whitest(images: Tensor, n: int) -> Tensor:
    """Positions of the n whitest of uint8 images Tensor[M, 3, H, W] (pegasus.select's score),
    whitest first -> Tensor[n] int64."""
    if not 1 <= n <= len(images):
        raise ValueError(f"cannot keep the {n} whitest of {len(images)} images")
    scores = whiteness(images.permute(0, 2, 3, 1).numpy())
    return torch.from_numpy(np.argsort(-scores, kind="stable")[:n].copy())


DEFAULT_BATCH = 256
"""Samples drawn and decoded at a time when the options name no batch_size."""

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
    options: SamplingOptions | None = None,
    best_of: int | None = None,
    progress: bool = False,
    device: str | torch.device = "cpu",
    keep_top: str | os.PathLike | None = None,
    keep_bottom: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Sample n images from RUN_DIR (or a loaded Run) and write them to `out` (see `output_kind`),
    options.batch_size at a time (None: DEFAULT_BATCH here): memory grows with the batch, not with
    n (an image grid holds at most MAX_GRID). options: `SamplingOptions` (temperature None: the
    run's). best_of: sample that many and keep the n whitest (image grids only).
    keep_top / keep_bottom (two-level runs): a picture whose top grid / bottom grid every sample
    keeps, the other level being sampled (`Run.sample_codes`); it is encoded
    by the run's VQ-VAE, resized to the run's image size first if it differs. Returns what was
    done, the sampling time and the time per sampling step (one position of a whole batch)."""
    kind = output_kind(out)
    total = _check_output(out, kind, n, best_of)
    if keep_top is not None and keep_bottom is not None:
        raise ValueError("--keep-top and --keep-bottom: keep one level, the other is sampled")
    run = run_dir if isinstance(run_dir, Run) else load_run(run_dir, device)
    options = run.options_for(options)
    if options.batch_size is None:
        options = options.replace(batch_size=DEFAULT_BATCH)
    kept = _kept_levels(run, {"top": keep_top, "bottom": keep_bottom})
    bar = tqdm(total=total, desc="sample", unit="img", disable=not progress, dynamic_ncols=True)
    timer = {"sampling_s": 0.0}
    batches = _timed(run.iter_samples(total, alpha, options=options, **kept), timer, bar)
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
    # the positions sampled per sample: every level's, but a kept level's
    positions = sum(h * w for (h, w), level in zip(run.grids, ("top", "bottom")[2 - run.levels :]) if level not in kept)
    summary = {
        "out": str(out),
        "format": kind,
        "samples": total,
        "kept": n,
        "grid": list(run.prior.cfg.grid),
        "temperature": options.temperature,
        "sampling_s": timer["sampling_s"],
        "samples_per_s": total / timer["sampling_s"] if timer["sampling_s"] else None,
        "seconds_per_step": timer["sampling_s"] / (-(-total // options.batch_size) * positions),
    }
    if run.levels == 2:
        summary["top_grid"] = list(run.top_prior.cfg.grid)
        summary.update({f"kept_{level}": str(path) for level, path in (("top", keep_top), ("bottom", keep_bottom)) if path is not None})
    return summary


def _check_output(out: str | os.PathLike, kind: str, n: int, best_of: int | None) -> int:
    """The number of samples to draw for `out` of `kind` (n, or best_of), or ValueError."""
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
    return total


def _kept_levels(run: Run, pictures: dict[str, str | os.PathLike | None]) -> dict[str, Tensor]:
    """{"top" or "bottom": the code grid of the picture that level keeps} (`Run.sample_codes`)."""
    kept: dict[str, Tensor] = {}
    for level, picture in pictures.items():
        if picture is not None:
            if run.levels != 2:
                raise ValueError(f"--keep-{level} needs a two-level run (train-vqvae --levels 2); {run.run_dir} has one level")
            kept[level] = run.encode(read_picture(picture, run.image_size)[None])[0 if level == "top" else 1][0]
    return kept


def read_picture(path: str | os.PathLike, size: tuple[int, int]) -> Tensor:
    """The picture at `path` as uint8 Tensor[3, H, W] of `size` (H, W): resized when it differs.
    ValueError naming the file when it is not an image PIL reads."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a picture this can read ({e})") from e
    if im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)


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
