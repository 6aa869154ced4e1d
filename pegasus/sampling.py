"""Sampling code grids from a GatedPixelCNN prior with the Gumbel-max trick.

Every backend draws the code at (i, j) of sample b as

    argmax_k ( logits[b, k, i, j] / temperature + G[b, i, j, k] )     (over the top_k logits only,
                                                                       when top_k is given)

with one Gumbel noise tensor G: Tensor[B, H, W, K], from `gumbel_noise(seed, ...)` or passed in.
With the same G, every backend must give the same grid, which is how faster samplers are checked
against the ground truth.

How to sample is one typed object, `SamplingOptions`, checked when it is made; its `method` and
its `backend` are two separate choices:

Methods (METHODS):
- "cached" (the default): the cached raster loop over the packed prior (`pegasus.ops.sample_loop`):
  one position's worth of work per step, run by the step ops of a kernel backend.
- "naive": ancestral sampling in raster order where each of the H*W steps runs the whole prior on
  the whole grid and reads the logits at that position (`sample_naive`): the ground truth of every
  backend, and the baseline of the benchmarks. It runs no step op, so it takes no backend.

Kernel backends of the cached method's step ops (the table: pegasus.backends.SAMPLER):
- "reference": the loop in pure PyTorch (`pegasus.reference.sample_loop` over the reference steps),
  the reference of the C++ and Triton steps.
- "cpu", "triton": the same loop owned by C++ (`pegasus::sample_loop`), calling the step ops
  `pegasus::sample_row` / `sample_position`, whose kernel the dispatcher picks by device (C++ on
  the CPU, Triton on CUDA).
The default is the fastest that can run: "triton" for a prior on CUDA, "cpu" on the CPU when the
extension loaded, else "reference". PEGASUS_SAMPLER_BACKEND comes before the default. The name is
resolved once per call, to the functions that run it (`pegasus.ops.sampler_kernels`).
"""
from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from pegasus import ops, reference
from pegasus.machine import guarded_threads
from pegasus.models.pixelcnn import GatedPixelCNN

METHODS = ("cached", "naive")
"""The sampling methods: the cached loop over a kernel backend's step ops, or a full pass per position."""


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class SamplingOptions:
    """How to sample, checked when made (ValueError naming the field).

    temperature: > 0, finite; logits are divided by it before the Gumbel noise is added. None: the
      run's (`pegasus.rundir.Run`, RUN_DIR/sampling.json), or 1.0 for a bare prior.
    top_k: restrict each choice to the k largest logits (None: all codes).
    seed: >= 0; sample i is drawn with the noise `gumbel_noise(1, grid, K, seed, first=i)`, so it
      depends on (seed, i) and the prior alone, whatever n, batch_size, method or backend.
    method: "cached" or "naive" (METHODS: the module docstring); both give the same grids.
    backend: the kernel backend of the cached method's step ops, "reference", "cpu" or "triton";
      None: PEGASUS_SAMPLER_BACKEND, else the fastest available. Every backend gives the same grids.
    batch_size: sample this many at a time (None: all at once); memory grows with it, not with n.

    >>> pegasus.SamplingOptions(temperature=0.8, seed=3)
    """

    temperature: float | None = None
    top_k: int | None = None
    seed: int = 0
    method: str = "cached"
    backend: str | None = None
    batch_size: int | None = None

    def __post_init__(self) -> None:
        t = self.temperature
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not (math.isfinite(t) and t > 0)):
            raise ValueError(f"temperature should be a finite number > 0, got {t!r}")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            raise ValueError(f"top_k should be an integer >= 1 or None, got {self.top_k!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed should be an integer >= 0, got {self.seed!r}")
        if self.method not in METHODS:
            raise ValueError(f"method should be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.backend == "naive":
            raise ValueError("backend 'naive' is a sampling method, not a kernel backend: SamplingOptions(method='naive') (--method naive)")
        if self.method == "naive" and self.backend is not None:
            raise ValueError(f"backend={self.backend!r} picks the step ops of the cached method; method 'naive' runs none")
        if self.batch_size is not None and (not _is_int(self.batch_size) or self.batch_size < 1):
            raise ValueError(f"batch_size should be an integer >= 1 or None, got {self.batch_size!r}")

    def replace(self, **changes: object) -> SamplingOptions:
        """A copy with `changes` (checked again)."""
        return dataclasses.replace(self, **changes)


def gumbel_noise(
    n: int,
    grid: tuple[int, int],
    codes: int,
    seed: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    first: int = 0,
    stream: int = 0,
) -> Tensor:
    """Standard Gumbel noise of samples first .. first+n-1 of `seed`: Tensor[n, H, W, codes].

    Sample i's noise is its own stream, a function of (seed, i, H, W, codes) alone: drawn on the CPU
    from a generator seeded by numpy's SeedSequence([seed, i]) (so the caller's RNG is untouched,
    every device gets the same numbers, and sample i is the same whether it is drawn alone, in a
    batch of any size or as part of any n), then moved to `device`. stream: 0, or another of sample
    i's independent streams, SeedSequence([seed, i, stream]) (a two-level run draws its bottom grids
    from stream 1, so that they do not reuse the numbers of their top grids)."""
    out = torch.empty((n, *grid, codes), dtype=dtype)
    gen = torch.Generator()
    for k in range(n):
        entropy = [seed, first + k] + ([stream] if stream else [])
        gen.manual_seed(int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1)))
        u = torch.rand((*grid, codes), generator=gen, dtype=torch.float64)
        # u = 0 would give -inf; the smallest positive double keeps every code possible.
        out[k] = u.clamp_(min=torch.finfo(torch.float64).tiny).log_().neg_().log_().neg_()
    return out.to(device=device)


def check_sampling_args(
    prior: GatedPixelCNN,
    n: int,
    alpha: float,
    temperature: float,
    noise: Tensor | None,
    top: Tensor | None = None,
) -> tuple[int, int]:
    """Validate what the options (`SamplingOptions`, checked when made) cannot know alone; returns
    the grid (H, W) to sample. top: the top grids Tensor[n, H/2, W/2] int64 a bottom prior
    (cfg.top_codes) is conditioned on.

    Refused up front, because the methods and backends would answer differently: NaN or inf in the
    prior's parameters (the naive method multiplies masked-out weights and not-yet-sampled positions
    by zero, which turns them into NaN; the cached steps never read them), and a temperature that
    rounds to 0 or inf in the prior's dtype. NaN and inf in `noise` are allowed and give the same
    grid everywhere: +inf forces a code, -inf forbids it, and a NaN score wins (the first one, as
    torch.argmax)."""
    if not _is_int(n) or n < 1:
        raise ValueError(f"n should be an integer >= 1, got {n!r}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha should be in [0, 1], got {alpha}")
    dtype = next(prior.parameters()).dtype
    t = torch.tensor(float(temperature), dtype=dtype).item()
    if t == 0 or math.isinf(t):
        info = torch.finfo(dtype)
        raise ValueError(
            f"temperature should be a finite number > 0 in the prior's dtype {dtype} "
            f"({info.smallest_normal * info.eps:.3g} .. {info.max:.3g}), got {temperature}, which rounds to {t}"
        )
    _check_finite_prior(prior)
    grid = prior.cfg.grid if noise is None else _noise_grid(prior, n, noise)
    _check_top(prior, n, top, grid)
    return grid


def _check_top(prior: GatedPixelCNN, n: int, top: Tensor | None, grid: tuple[int, int]) -> None:
    if not prior.cfg.top_codes:
        if top is not None:
            raise ValueError("top: this prior is not conditioned on top codes (a one-level prior, or a two-level run's top prior)")
        return
    want = (n, grid[0] // 2, grid[1] // 2)
    if top is None:
        raise ValueError(f"this is a bottom prior: it needs the top grids it is conditioned on, top= int64 {list(want)}")
    if grid[0] % 2 or grid[1] % 2:
        raise ValueError(f"a bottom prior samples grids of even height and width (twice the top grid's), got {list(grid)}")
    if top.dtype != torch.int64 or tuple(top.shape) != want:
        raise ValueError(f"top should be int64 code grids {list(want)}, got {top.dtype} {list(top.shape)}")
    if top.numel() and (int(top.min()) < 0 or int(top.max()) >= prior.cfg.top_codes):
        raise ValueError(f"top should hold codes in 0..{prior.cfg.top_codes - 1}, got {int(top.min())}..{int(top.max())}")


def _noise_grid(prior: GatedPixelCNN, n: int, noise: Tensor) -> tuple[int, int]:
    k = prior.cfg.codes
    if noise.dim() != 4 or noise.shape[0] != n or noise.shape[3] != k:
        raise ValueError(f"noise should be Gumbel noise [n={n}, H, W, K={k}], got {tuple(noise.shape)}")
    if noise.shape[1] < 1 or noise.shape[2] < 1:
        raise ValueError(f"noise should have a grid of H, W >= 1, got {tuple(noise.shape)}")
    if not noise.is_floating_point():
        raise ValueError(f"noise should be a floating-point tensor, got {noise.dtype}")
    return int(noise.shape[1]), int(noise.shape[2])


# Priors whose parameters were found finite, with their weights_key() then: the check costs 0.85 ms
# on the default prior, a ninth of an 8x8 sample of batch 1, so it runs once per change of weights.
_known_finite: weakref.WeakKeyDictionary[GatedPixelCNN, tuple] = weakref.WeakKeyDictionary()


def _check_finite_prior(prior: GatedPixelCNN) -> None:
    """ValueError naming the first parameter of `prior` holding a NaN or inf (one sync in all)."""
    key = prior.weights_key()
    if _known_finite.get(prior) == key:
        return
    params = list(prior.named_parameters())
    # 0 * x is NaN exactly where x is NaN or inf, and a norm is NaN when any entry is: two foreach
    # calls instead of two ops per parameter (0.8 ms instead of 3.7 for the default prior, whose
    # whole 8x8 sample takes ~8 ms).
    zeros = torch._foreach_mul([p.detach() for _, p in params], 0.0)
    finite = torch.stack(torch._foreach_norm(zeros)).isfinite().cpu()
    if not finite.all():
        bad = [name for (name, _), ok in zip(params, finite.tolist()) if not ok]
        raise ValueError(
            f"prior should have finite parameters, got NaN or inf in {', '.join(bad[:3])}"
            + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        )
    _known_finite[prior] = key


@torch.no_grad()
def sample_naive(
    prior: GatedPixelCNN, alpha: Tensor, noise: Tensor, temperature: float, top_k: int | None, rows: int | None = None,
    top: Tensor | None = None,
) -> Tensor:
    """The naive sampler: a full pass of `prior` over the whole grid for every position.
    alpha: Tensor[B]; noise: Tensor[B, H, W, K]; top: Tensor[B, H/2, W/2] for a bottom prior
    -> grid Tensor[B, H, W] int64.
    rows: stop after this many rows (pegasus.bench.sampler times the slow naive loop that way)."""
    n, height, width, _ = noise.shape
    grid = torch.zeros(n, height, width, dtype=torch.int64, device=noise.device)
    for i in range(height if rows is None else rows):
        for j in range(width):
            logits = prior(grid, alpha, top)[:, :, i, j]
            grid[:, i, j] = reference.choose_codes(logits, noise[:, i, j], temperature, top_k or 0)
    return grid


def sample_indices(
    prior: GatedPixelCNN,
    n: int,
    alpha: float = 0.5,
    *,
    options: SamplingOptions | None = None,
    noise: Tensor | None = None,
    top: Tensor | None = None,
    stream: int = 0,
) -> Tensor:
    """Sample n code grids from `prior` -> Tensor[n, H, W] int64 on the prior's device.

    alpha: in [0, 1], 0 = bird, 1 = horse (ignored by an unconditional prior).
    options: `SamplingOptions` (None: the defaults; temperature None is 1.0 here).
    noise: Gumbel noise Tensor[n, H, W, K] (float) to use instead of the seed's. Its (H, W) is the
    grid sampled, so other grid sizes can be asked for.
    top: for the bottom prior of a two-level run (cfg.top_codes), the top grids Tensor[n, H/2, W/2]
    int64 that grid i is conditioned on; refused by any other prior.
    stream: which of the seed's noise streams (`gumbel_noise`) to draw from.
    """
    return torch.cat(list(iter_sample_indices(prior, n, alpha, options=options, noise=noise, top=top, stream=stream)))


def iter_sample_indices(
    prior: GatedPixelCNN,
    n: int,
    alpha: float = 0.5,
    *,
    options: SamplingOptions | None = None,
    noise: Tensor | None = None,
    top: Tensor | None = None,
    stream: int = 0,
) -> Iterator[Tensor]:
    """`sample_indices` one batch at a time: yields Tensor[b, H, W] int64 for samples in order,
    b = options.batch_size (the last batch holds the rest). Arguments are checked, and the method
    and backend resolved, before the first batch."""
    options = options or SamplingOptions()
    temperature = 1.0 if options.temperature is None else float(options.temperature)
    grid = check_sampling_args(prior, n, alpha, temperature, noise, top)
    batch = min(n, options.batch_size or n)
    param = next(prior.parameters())
    draw = _method(prior, options, temperature)
    if noise is None:
        map_values = prior.cfg.layers * 2 * prior.cfg.channels if prior.cfg.top_codes else 0
        check_fits(batch, grid, prior.cfg.codes, param.device, map_values)
    return _batches(prior, n, float(alpha), options.seed, noise, draw, batch, grid, top, stream)


def _method(prior: GatedPixelCNN, options: SamplingOptions, temperature: float) -> Callable[[Tensor, Tensor, Tensor | None], Tensor]:
    """The function that draws a batch's grids from (alphas Tensor[B], noise Tensor[B, H, W, K],
    top grids or None) by `options.method`, its backend resolved here, once."""
    top_k = options.top_k
    if options.method == "naive":
        return lambda alphas, noise, tops: sample_naive(prior, alphas, noise, temperature, top_k, top=tops)
    param = next(prior.parameters())
    loop = ops.sampler_kernels(options.backend, param.device, param.dtype).sample_loop

    def cached(alphas: Tensor, noise: Tensor, tops: Tensor | None) -> Tensor:
        with torch.no_grad():
            weights, cond = prior.pack_for_sampling(), prior.sampling_conditioning(alphas)
            cond_map = prior.sampling_conditioning_map(tops, len(alphas))
        return loop(weights, cond, noise, temperature, top_k or 0, False, cond_map)[0]

    return cached


def _batches(
    prior: GatedPixelCNN, n: int, alpha: float, seed: int, noise: Tensor | None,
    draw: Callable[[Tensor, Tensor, Tensor | None], Tensor], batch: int, grid: tuple[int, int], top: Tensor | None, stream: int,
) -> Iterator[Tensor]:
    param = next(prior.parameters())
    for first in range(0, n, batch):
        # One thread instead of all when another process holds a core (pegasus.machine: 38 ms
        # against 730), for the batch's work and not past it: the caller's code runs on its own.
        with guarded_threads("sampling") if param.device.type == "cpu" else nullcontext():
            grids = _batch(prior, first, min(batch, n - first), alpha, seed, noise, draw, grid, top, stream)
        yield grids


def _batch(
    prior: GatedPixelCNN, first: int, b: int, alpha: float, seed: int, noise: Tensor | None,
    draw: Callable[[Tensor, Tensor, Tensor | None], Tensor], grid: tuple[int, int], top: Tensor | None, stream: int,
) -> Tensor:
    """Grids first .. first+b-1 (`_batches`)."""
    param = next(prior.parameters())
    if noise is None:
        chunk = gumbel_noise(b, grid, prior.cfg.codes, seed, dtype=param.dtype, device=param.device, first=first, stream=stream)
    else:
        chunk = noise[first : first + b].to(device=param.device, dtype=param.dtype)
    alphas = torch.full((b,), alpha, dtype=param.dtype, device=param.device)
    tops = None if top is None else top[first : first + b].to(param.device)
    was_training = prior.training
    prior.eval()
    try:
        return draw(alphas, chunk, tops)
    finally:
        prior.train(was_training)


def check_fits(n: int, grid: tuple[int, int], codes: int, device: torch.device, cond_map_values: int = 0) -> None:
    """MemoryError saying how many samples fit, when the noise of n samples sampled at once would not
    fit in the memory available now: n*H*W*K values of 4 bytes (float32), and a float64 copy on
    the way to another device or dtype: 12 bytes a value, counted whole. cond_map_values: for a
    bottom prior, the float32 values of its conditioning per position (layers x 2C), counted too:
    4 KB a position for the default prior (8 layers, 64 channels), beside the noise's 6 KB."""
    per_sample = grid[0] * grid[1] * (codes * 12 + cond_map_values * 4)
    need = n * per_sample
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = _available_ram()
    if free is not None and need > free:
        what = "Gumbel noise" + (" and conditioning" if cond_map_values else "")
        raise MemoryError(
            f"n={n} samples would need {need / 2**30:.1f} GiB for their {what} ({grid[0]}x{grid[1]} positions x "
            f"{per_sample // (grid[0] * grid[1])} bytes each), but {free / 2**30:.1f} GiB is available on {device.type}: at most "
            f"{free // per_sample} fit now; sample in batches (batch_size=, --batch-size)"
        )


def _available_ram() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where there is no such file)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
