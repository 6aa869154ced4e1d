"""Sampling code grids from a GatedPixelCNN prior with the Gumbel-max trick.

Every backend draws the code at (i, j) of sample b as

    argmax_k ( logits[b, k, i, j] / temperature + G[b, i, j, k] )     (over the top_k logits only,
                                                                       when top_k is given)

with one Gumbel noise tensor G: Tensor[B, H, W, K], from `gumbel_noise(seed, ...)` or passed in.
With the same G, every backend must give the same grid, which is how faster samplers are checked
against the reference.

Backends:
- "reference": naive ancestral sampling in raster order; each of the H*W steps runs the whole prior
  on the whole grid and reads the logits at that position.
- "cached": the same choices from a Python loop that keeps each layer's vertical rows and horizontal
  columns and computes one position's worth of work per step (pegasus.cached_sampling).
- "cpu": the cached loop owned by C++ (`pegasus::sample_loop`, csrc/sample_loop.cpp) over the
  prior's packed weights, calling the C++ step kernels `pegasus::sample_row` / `sample_position`.
- "triton": the same C++ loop calling the Triton step kernels (`pegasus.kernels.sample_step`) on
  CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1.

The default is the fastest that can run: "triton" for a prior on CUDA, "cpu" on the CPU when the
extension loaded, else "cached". `PEGASUS_BACKEND`, when set to one of these names, comes before
the default; a backend that was asked for and cannot run raises RuntimeError saying why.
"""
from __future__ import annotations

import math
import os

import torch
from torch import Tensor

from pegasus import _extension
from pegasus.backend import _triton_unavailable
from pegasus.cached_sampling import cached_loop
from pegasus.models.pixelcnn import GatedPixelCNN

SAMPLER_BACKENDS = ("reference", "cached", "cpu", "triton")


def gumbel_noise(
    n: int, grid: tuple[int, int], codes: int, seed: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> Tensor:
    """Standard Gumbel noise Tensor[n, H, W, codes], a function of (seed, shape) alone: drawn on
    the CPU with its own generator (so the caller's RNG is untouched and every device gets the same
    numbers), then moved to `device`."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand((n, *grid, codes), generator=gen, dtype=torch.float64)
    # u = 0 would give -inf; the smallest positive double keeps every code possible.
    g = -torch.log(-torch.log(u.clamp_(min=torch.finfo(torch.float64).tiny)))
    return g.to(dtype=dtype, device=device)


def choose(logits: Tensor, noise: Tensor, temperature: float, top_k: int | None) -> Tensor:
    """Gumbel-max choice: logits Tensor[B, K] and noise Tensor[B, K] -> codes Tensor[B] int64.
    With top_k, codes outside the k largest logits cannot win (ties at the k-th logit are kept)."""
    scores = logits / temperature + noise
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(logits < kth, -math.inf)
    return scores.argmax(dim=-1)


def check_sampling_args(
    prior: GatedPixelCNN,
    n: int,
    alpha: float,
    temperature: float,
    top_k: int | None,
    noise: Tensor | None,
) -> tuple[int, int]:
    """Validate the arguments every backend shares; returns the grid (H, W) to sample.

    Refused up front, because the backends would answer differently: NaN or inf in the prior's
    parameters (the reference multiplies masked-out weights and not-yet-sampled positions by zero,
    which turns them into NaN; the C++ and Triton steps never read them), and a temperature that
    rounds to 0 or inf in the prior's dtype. NaN and inf in `noise` are allowed and give the same
    grid on every backend: +inf forces a code, -inf forbids it, and a NaN score wins (the first
    one, as torch.argmax)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n should be an integer >= 1, got {n!r}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha should be in [0, 1], got {alpha}")
    if not float(temperature) > 0 or not math.isfinite(float(temperature)):
        raise ValueError(f"temperature should be a finite number > 0, got {temperature}")
    dtype = next(prior.parameters()).dtype
    t = torch.tensor(float(temperature), dtype=dtype).item()
    if t == 0 or math.isinf(t):
        info = torch.finfo(dtype)
        raise ValueError(
            f"temperature should be a finite number > 0 in the prior's dtype {dtype} "
            f"({info.smallest_normal * info.eps:.3g} .. {info.max:.3g}), got {temperature}, which rounds to {t}"
        )
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k should be an integer >= 1 or None, got {top_k!r}")
    _check_finite_prior(prior)
    if noise is None:
        return prior.cfg.grid
    k = prior.cfg.codes
    if noise.dim() != 4 or noise.shape[0] != n or noise.shape[3] != k:
        raise ValueError(f"noise should be Gumbel noise [n={n}, H, W, K={k}], got {tuple(noise.shape)}")
    if noise.shape[1] < 1 or noise.shape[2] < 1:
        raise ValueError(f"noise should have a grid of H, W >= 1, got {tuple(noise.shape)}")
    if not noise.is_floating_point():
        raise ValueError(f"noise should be a floating-point tensor, got {noise.dtype}")
    return int(noise.shape[1]), int(noise.shape[2])


def _check_finite_prior(prior: GatedPixelCNN) -> None:
    """ValueError naming the first parameter of `prior` holding a NaN or inf (one sync in all)."""
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


@torch.no_grad()
def _sample_reference(
    prior: GatedPixelCNN, alpha: Tensor, noise: Tensor, temperature: float, top_k: int | None, rows: int | None = None
) -> Tensor:
    """rows: stop after this many rows (pegasus.bench_sampler times the slow naive loop that way)."""
    n, height, width, _ = noise.shape
    grid = torch.zeros(n, height, width, dtype=torch.int64, device=noise.device)
    for i in range(height if rows is None else rows):
        for j in range(width):
            logits = prior(grid, alpha)[:, :, i, j]
            grid[:, i, j] = choose(logits, noise[:, i, j].to(logits.dtype), temperature, top_k)
    return grid


def _sample_cached(prior: GatedPixelCNN, alpha: Tensor, noise: Tensor, temperature: float, top_k: int | None) -> Tensor:
    _, height, width, _ = noise.shape

    def sample(i: int, j: int, logits: Tensor) -> Tensor:
        return choose(logits, noise[:, i, j].to(logits.dtype), temperature, top_k)

    return cached_loop(prior, alpha, height, width, sample)


def _sample_loop(kernels: str):
    def sample(prior: GatedPixelCNN, alpha: Tensor, noise: Tensor, temperature: float, top_k: int | None) -> Tensor:
        weights = prior.pack_for_sampling()
        cond = prior.sampling_conditioning(alpha)
        grid, _ = torch.ops.pegasus.sample_loop(
            weights, cond, noise.to(weights[0].dtype), temperature, top_k or 0, kernels, False
        )
        return grid

    return sample


_SAMPLERS = {
    "reference": _sample_reference,
    "cached": _sample_cached,
    "cpu": _sample_loop("cpu"),
    "triton": _sample_loop("triton"),
}


def _unavailable(name: str, prior: GatedPixelCNN) -> str | None:
    """Why sampler backend `name` cannot run `prior`, or None."""
    param = next(prior.parameters())
    if name in ("reference", "cached"):
        return None
    if param.dtype not in (torch.float32, torch.float64):
        return f"its kernels run float32 and float64 priors, got a {param.dtype} prior"
    if name == "cpu":
        if not _extension.has_cpp_ops():
            return f"the C++ extension pegasus._C did not load ({_extension.cpp_load_error()})"
        if param.device.type != "cpu":
            return f"it runs a prior on the CPU, got one on {param.device}"
        return None
    why = _triton_unavailable("sample_position_triton", param.device)
    if why is None:
        import pegasus.kernels.sample_step  # noqa: F401  registers the Triton step kernels
    return why


def resolve_sampler(backend: str | None, prior: GatedPixelCNN) -> str:
    """The sampler backend to run `prior`: the argument, else PEGASUS_BACKEND, else the fastest
    available ("triton" on CUDA, "cpu" on the CPU, else "cached"). Raises ValueError for an unknown
    name and RuntimeError for a backend that was asked for and cannot run."""
    name = backend if backend is not None else os.environ.get("PEGASUS_BACKEND") or None
    if name is None:
        fastest = "triton" if next(prior.parameters()).device.type == "cuda" else "cpu"
        return fastest if _unavailable(fastest, prior) is None else "cached"
    where = "backend" if backend is not None else "PEGASUS_BACKEND"
    if name not in SAMPLER_BACKENDS:
        raise ValueError(f"{where} should be one of {', '.join(SAMPLER_BACKENDS)}, got {name!r}")
    why = _unavailable(name, prior)
    if why is not None:
        raise RuntimeError(f"sampler backend {name!r} unavailable: {why}")
    return name


def sample_indices(
    prior: GatedPixelCNN,
    n: int,
    alpha: float = 0.5,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    noise: Tensor | None = None,
    backend: str | None = None,
) -> Tensor:
    """Sample n code grids from `prior` -> Tensor[n, H, W] int64 on the prior's device.

    alpha: in [0, 1], 0 = bird, 1 = horse (ignored by an unconditional prior).
    temperature: > 0; logits are divided by it before the Gumbel noise is added.
    top_k: restrict each choice to the k largest logits (None: all codes).
    noise: Gumbel noise Tensor[n, H, W, K] (float); when None, `gumbel_noise(n, prior.cfg.grid,
    K, seed)`. Its (H, W) is the grid sampled, so other grid sizes can be asked for.
    backend: "reference", "cached", "cpu" or "triton" (see the module docstring); every backend
    gives the same grid for the same noise. None: PEGASUS_BACKEND, else the fastest available.
    """
    height, width = check_sampling_args(prior, n, alpha, temperature, top_k, noise)
    sampler = _SAMPLERS[resolve_sampler(backend, prior)]
    param = next(prior.parameters())
    if noise is None:
        noise = gumbel_noise(n, (height, width), prior.cfg.codes, seed, device=param.device)
    alphas = torch.full((n,), float(alpha), dtype=param.dtype, device=param.device)
    was_training = prior.training
    prior.eval()
    try:
        return sampler(prior, alphas, noise.to(param.device), float(temperature), top_k)
    finally:
        prior.train(was_training)
