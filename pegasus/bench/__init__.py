"""Benchmarks of the fast paths against their references (`pegasus bench`): `harness` (timing,
memory, records), `nearest_code` and `sampler`."""
