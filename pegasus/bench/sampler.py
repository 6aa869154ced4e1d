"""Benchmark of the samplers: every backend of `pegasus.sample_indices` against the naive sampler.

Used by `pegasus bench sampler` and benchmarks/bench_sampler.py. Backends: those of
pegasus.backends.SAMPLER that can run on the device. The prior is the configuration the
package trains by default (`PixelCNNConfig()`: 64 channels, 8 layers, kernel 5, 512 codes), with
seeded random weights (speed does not depend on the values), in float32. Each measurement samples
`batch` grids of `grid` with fixed Gumbel noise, after one warm-up call; the time is the median of
runs repeated until `min_run_time` seconds have passed (at least one, at most 5 runs).

The naive sampler at 24x24 takes minutes (576 full passes of the prior over the whole grid), so
there it is timed over its first `naive_rows` rows and scaled by height / naive_rows: every naive
step is one full pass over the whole grid whatever the position, so its cost per row is the same
for every row. Such records say so in `naive_rows_timed`.

With levels=2 it times a two-level sample (VQ-VAE-2): `grid` is the bottom grid, the top one is
half its side; a top prior of the default configuration samples the top grid, then a bottom prior
(the same, with its conditioning stack over the top grid, `top_codes` 512) the bottom grid given
it. The naive two-level sampler runs both priors whole (the stack included) at every position;
when timed over rows, it runs `naive_rows` rows of the bottom grid and half as many of the top
one, which scales both by the same factor (bottom height / naive_rows).

Until issue 12 (records in benchmarks/results/ written before it), "reference" named the naive
sampler and "cached" the Python cached loop, now "reference".
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from pegasus.bench.harness import device_name, markdown_table, ratio

__all__ = ["FULL_CASES", "QUICK_CASES", "Record", "available_backends", "format_table", "run"]

FULL_CASES: tuple[tuple[tuple[int, int], int], ...] = tuple(
    (grid, batch) for grid in ((8, 8), (24, 24)) for batch in (1, 16, 64)
)
"""((H, W), batch): 8x8 latents of 32x32 CIFAR-10 images and 24x24 latents of 96x96 STL-10 ones."""
QUICK_CASES: tuple[tuple[tuple[int, int], int], ...] = (((8, 8), 1), ((8, 8), 16))
TWO_LEVEL_CASES: tuple[tuple[tuple[int, int], int], ...] = (((8, 8), 16), ((24, 24), 16))
"""Bottom grids of the two-level cases: 4x4 + 8x8 for CIFAR-10, 12x12 + 24x24 for STL-10."""


@dataclass
class Record:
    """One (grid, batch, backend) measurement; speedups are the other's time / this one's."""

    op: str
    grid: str
    batch: int
    backend: str
    device: str
    median_s: float
    samples_per_s: float
    runs: int
    speedup_vs_naive: float | None = None
    speedup_vs_reference: float | None = None
    naive_rows_timed: int | None = None


def available_backends(device: str) -> tuple[list[str], list[str]]:
    """(what is timed on `device`: "naive", the naive method, then the kernel backends of the cached
    method that can run a float32 prior there; notes on the backends skipped and why)."""
    from pegasus import backends

    names, notes = backends.runnable(backends.SAMPLER, device)
    return ["naive", *names], notes


def make_prior(device: str, seed: int = 0, top_codes: int = 0):
    """The default prior configuration with seeded random weights, float32, in eval mode (with
    top_codes: a bottom prior conditioned on top grids of that many codes)."""
    from pegasus.models.pixelcnn import GatedPixelCNN

    torch.manual_seed(seed)
    return GatedPixelCNN(top_codes=top_codes).to(device).eval()


def setup(
    backend: str, grid: tuple[int, int], batch: int, device: str = "cpu", rows: int | None = None, levels: int = 1
) -> Callable[[], torch.Tensor]:
    """A call sampling `batch` grids of `grid` with `backend`, fixed noise (seed 0), alpha 0.5
    (levels=2: a top grid of half the side, then `grid` given it; module docstring).
    rows: the naive sampler only, stop after this many rows (for the scaled timing)."""
    from pegasus.sampling import SamplingOptions, gumbel_noise, sample_indices, sample_naive

    prior = make_prior(device, top_codes=512 if levels == 2 else 0)
    noise = gumbel_noise(batch, grid, prior.cfg.codes, seed=0, device=device, stream=levels - 1)
    alpha = torch.full((batch,), 0.5, device=device)
    options = SamplingOptions(method="naive") if backend == "naive" else SamplingOptions(backend=backend)
    if levels == 1:
        if rows is not None:
            return lambda: sample_naive(prior, alpha, noise, 1.0, None, rows=rows)
        return lambda: sample_indices(prior, batch, 0.5, options=options, noise=noise)
    top_prior = make_prior(device, seed=1)
    top_grid = (grid[0] // 2, grid[1] // 2)
    top_noise = gumbel_noise(batch, top_grid, top_prior.cfg.codes, seed=0, device=device)
    if rows is not None:
        # The bottom's naive cost does not depend on the top codes' values: any top grid times it.
        some_top = torch.zeros(batch, *top_grid, dtype=torch.int64, device=device)

        def naive_rows() -> torch.Tensor:
            sample_naive(top_prior, alpha, top_noise, 1.0, None, rows=rows // 2)
            return sample_naive(prior, alpha, noise, 1.0, None, rows=rows, top=some_top)

        return naive_rows

    def two_levels() -> torch.Tensor:
        top = sample_indices(top_prior, batch, 0.5, options=options, noise=top_noise)
        return sample_indices(prior, batch, 0.5, options=options, noise=noise, top=top)

    return two_levels


def _time(fn: Callable[[], object], device: str, min_run_time: float) -> tuple[float, int]:
    """(median seconds of one call, number of timed calls), after one warm-up call."""

    def once() -> float:
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device != "cpu":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    once()
    times = [once()]
    while sum(times) < min_run_time and len(times) < 5:
        times.append(once())
    return statistics.median(times), len(times)


def run(
    cases: Sequence[tuple[tuple[int, int], int]] = FULL_CASES,
    device: str = "cpu",
    min_run_time: float = 1.0,
    naive_rows: int = 1,
    full_naive_up_to: int = 64,
    progress: Callable[[str], None] | None = None,
    levels: int = 1,
) -> tuple[list[Record], list[str]]:
    """Measure every available backend at every case: (records, notes on skipped backends).

    The naive sampler runs whole on grids of at most `full_naive_up_to` positions, and over its
    first `naive_rows` rows (scaled to the grid) above that (levels=2: at least 2, and even, so
    that the top grid runs half as many; the module docstring).
    """
    backends, notes = available_backends(device)
    if levels == 2:
        naive_rows = max(2, naive_rows + naive_rows % 2)
    records = []
    for grid, batch in cases:
        by_name: dict[str, Record] = {}
        name = f"{grid[0]}x{grid[1]}" if levels == 1 else f"{grid[0] // 2}x{grid[1] // 2}+{grid[0]}x{grid[1]}"
        for backend in backends:
            rows = None
            if backend == "naive" and grid[0] * grid[1] > full_naive_up_to:
                rows = min(naive_rows, grid[0])
            median, runs = _time(setup(backend, grid, batch, device, rows, levels), device, min_run_time)
            if rows is not None:
                median *= grid[0] / rows
            rec = Record("sample" if levels == 1 else "sample-2-levels", name, batch, backend, device, median, batch / median,
                         runs, naive_rows_timed=rows)
            by_name[backend] = rec
            records.append(rec)
            if progress is not None:
                scaled = f" (scaled from {rows} row{'s' if rows > 1 else ''})" if rows else ""
                progress(f"{rec.grid} batch {batch} {backend}: {median * 1e3:.1f} ms{scaled}")
        for rec in by_name.values():
            if "naive" in by_name:
                rec.speedup_vs_naive = by_name["naive"].median_s / rec.median_s
            if "reference" in by_name:
                rec.speedup_vs_reference = by_name["reference"].median_s / rec.median_s
    return records, notes


_COLUMNS = (("grid", "<"), ("batch", ">"), ("backend", "<"), ("median ms", ">"), ("samples/s", ">"),
            ("vs naive", ">"), ("vs reference", ">"))


def format_table(records: Sequence[Record]) -> str:
    """Markdown table: grid | batch | backend | median ms | samples/s | speedups."""
    return markdown_table(_COLUMNS, [
        (r.grid, r.batch, r.backend, f"{r.median_s * 1e3:.1f}" + (f" (from {r.naive_rows_timed} row)" if r.naive_rows_timed else ""),
         f"{r.samples_per_s:.1f}", ratio(r.speedup_vs_naive), ratio(r.speedup_vs_reference))
        for r in records
    ])


def header(device: str, levels: int = 1) -> str:
    what = "prior" if levels == 1 else "two levels, each prior"
    return f"sampler ({what}: 64 channels, 8 layers, kernel 5, 512 codes, float32) on {device_name(device)}"
