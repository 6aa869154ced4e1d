"""Benchmark of the samplers: every backend of `pegasus.sample_indices` against the naive reference.

Used by `pegasus bench sampler` and benchmarks/bench_sampler.py. The prior is the configuration the
package trains by default (`PixelCNNConfig()`: 64 channels, 8 layers, kernel 5, 512 codes), with
seeded random weights (speed does not depend on the values), in float32. Each measurement samples
`batch` grids of `grid` with fixed Gumbel noise, after one warm-up call; the time is the median of
runs repeated until `min_run_time` seconds have passed (at least one, at most 5 runs).

The naive reference at 24x24 takes minutes (576 full passes of the prior over the whole grid), so
there it is timed over its first `reference_rows` rows and scaled by height / reference_rows: every
naive step is one full pass over the whole grid whatever the position, so its cost per row is the
same for every row. Such records say so in `reference_rows_timed`.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from pegasus.bench import device_name, to_json_lines

__all__ = ["FULL_CASES", "QUICK_CASES", "Record", "available_backends", "format_table", "run", "to_json_lines"]

FULL_CASES: tuple[tuple[tuple[int, int], int], ...] = tuple(
    (grid, batch) for grid in ((8, 8), (24, 24)) for batch in (1, 16, 64)
)
"""((H, W), batch): 8x8 latents of 32x32 CIFAR-10 images and 24x24 latents of 96x96 STL-10 ones."""
QUICK_CASES: tuple[tuple[tuple[int, int], int], ...] = (((8, 8), 1), ((8, 8), 16))


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
    speedup_vs_reference: float | None = None
    speedup_vs_cached: float | None = None
    reference_rows_timed: int | None = None


def available_backends(device: str) -> tuple[list[str], list[str]]:
    """(sampler backends that can run a float32 prior on `device`, notes on those skipped and why)."""
    from pegasus.models.pixelcnn import GatedPixelCNN
    from pegasus.sampling import _unavailable

    probe = GatedPixelCNN(codes=2, channels=2, layers=1, cond_dim=1).to(device)
    names, notes = [], []
    for name in ("reference", "cached", "cpu", "triton"):
        why = _unavailable(name, probe)
        if why is None:
            names.append(name)
        elif not (name == "cpu" and device != "cpu") and not (name == "triton" and device == "cpu"):
            notes.append(f"{name} skipped: {why}")
    return names, notes


def make_prior(device: str, seed: int = 0):
    """The default prior configuration with seeded random weights, float32, in eval mode."""
    from pegasus.models.pixelcnn import GatedPixelCNN

    torch.manual_seed(seed)
    return GatedPixelCNN().to(device).eval()


def setup(backend: str, grid: tuple[int, int], batch: int, device: str = "cpu", rows: int | None = None) -> Callable[[], torch.Tensor]:
    """A call sampling `batch` grids of `grid` with `backend`, fixed noise (seed 0), alpha 0.5.
    rows: the reference only, stop after this many rows (for the scaled timing)."""
    from pegasus.sampling import _sample_reference, gumbel_noise, sample_indices

    prior = make_prior(device)
    noise = gumbel_noise(batch, grid, prior.cfg.codes, seed=0, device=device)
    if rows is not None:
        alpha = torch.full((batch,), 0.5, device=device)
        return lambda: _sample_reference(prior, alpha, noise, 1.0, None, rows=rows)
    return lambda: sample_indices(prior, batch, alpha=0.5, noise=noise, backend=backend)


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
    reference_rows: int = 1,
    full_reference_up_to: int = 64,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[Record], list[str]]:
    """Measure every available backend at every case: (records, notes on skipped backends).

    The reference runs whole on grids of at most `full_reference_up_to` positions, and over its
    first `reference_rows` rows (scaled to the grid) above that.
    """
    backends, notes = available_backends(device)
    records = []
    for grid, batch in cases:
        by_name: dict[str, Record] = {}
        for backend in backends:
            rows = None
            if backend == "reference" and grid[0] * grid[1] > full_reference_up_to:
                rows = min(reference_rows, grid[0])
            median, runs = _time(setup(backend, grid, batch, device, rows), device, min_run_time)
            if rows is not None:
                median *= grid[0] / rows
            rec = Record("sample", f"{grid[0]}x{grid[1]}", batch, backend, device, median, batch / median, runs,
                         reference_rows_timed=rows)
            by_name[backend] = rec
            records.append(rec)
            if progress is not None:
                scaled = f" (scaled from {rows} row{'s' if rows > 1 else ''})" if rows else ""
                progress(f"{rec.grid} batch {batch} {backend}: {median * 1e3:.1f} ms{scaled}")
        for rec in by_name.values():
            if "reference" in by_name:
                rec.speedup_vs_reference = by_name["reference"].median_s / rec.median_s
            if "cached" in by_name:
                rec.speedup_vs_cached = by_name["cached"].median_s / rec.median_s
    return records, notes


def format_table(records: Sequence[Record]) -> str:
    """Markdown table: grid | batch | backend | median ms | samples/s | speedups."""

    def ratio(x: float | None) -> str:
        return "" if x is None else f"{x:.1f}x"

    lines = [
        "| grid | batch | backend | median ms | samples/s | vs reference | vs cached |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in records:
        note = f" (from {r.reference_rows_timed} row)" if r.reference_rows_timed else ""
        lines.append(
            f"| {r.grid} | {r.batch} | {r.backend} | {r.median_s * 1e3:.1f}{note} | {r.samples_per_s:.1f} | "
            f"{ratio(r.speedup_vs_reference)} | {ratio(r.speedup_vs_cached)} |"
        )
    return "\n".join(lines)


def header(device: str) -> str:
    return f"sampler (prior: 64 channels, 8 layers, kernel 5, 512 codes, float32) on {device_name(device)}"
