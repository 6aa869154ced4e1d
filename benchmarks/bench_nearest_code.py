"""pytest-benchmark of pegasus::nearest_code: `pytest benchmarks/bench_nearest_code.py`.

One `setup(provider, shape)` (pegasus.bench.nearest_code) per case; providers are the available pegasus
backends and FAISS (IndexFlatL2, k=1). Times only: peak memory needs a fresh process per case,
which `pegasus bench nearest-code` does. Select cases with -k, e.g. `-k "36864 and 512"`.
"""
import pytest

from pegasus.bench import nearest_code as bench

PROVIDERS, NOTES = bench.available_providers("cpu")


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", bench.FULL_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_nearest_code(benchmark, provider, shape):
    fn = bench.setup(provider, shape)
    fn()  # warm-up: thread pools, libraries
    benchmark.group = "x".join(map(str, shape))
    benchmark.extra_info.update(op="nearest_code", n=shape[0], k=shape[1], d=shape[2], backend=provider, device="cpu")
    benchmark(fn)


def test_skipped_providers():
    if NOTES:
        pytest.skip("; ".join(NOTES))
