"""pytest-benchmark of the samplers: `pytest benchmarks/bench_sampler.py` (select with -k, e.g.
`-k "8x8 and 16"`).

One `setup(backend, grid, batch)` (pegasus.bench.sampler) per case, on the default prior
configuration (64 channels, 8 layers, kernel 5, 512 codes). The naive sampler is left out at
24x24, where one call takes minutes: `pegasus bench sampler` times its first row and scales it.
"""
import pytest

from pegasus.bench import sampler as bench_sampler

BACKENDS, NOTES = bench_sampler.available_backends("cpu")
CASES = [
    (grid, batch, backend)
    for grid, batch in bench_sampler.FULL_CASES
    for backend in BACKENDS
    if not (backend == "naive" and grid[0] * grid[1] > 64)
]


@pytest.mark.parametrize("grid, batch, backend", CASES, ids=lambda x: "x".join(map(str, x)) if isinstance(x, tuple) else str(x))
def test_sampler(benchmark, grid, batch, backend):
    fn = bench_sampler.setup(backend, grid, batch)
    fn()  # warm-up
    benchmark.group = f"{grid[0]}x{grid[1]} batch {batch}"
    benchmark.extra_info.update(op="sample", grid=f"{grid[0]}x{grid[1]}", batch=batch, backend=backend, device="cpu")
    benchmark.pedantic(fn, rounds=3, iterations=1)


def test_skipped_backends():
    if NOTES:
        pytest.skip("; ".join(NOTES))
