"""Benchmark of `pegasus::nearest_code`: each backend against the reference, and FAISS as the peer.

Used by `pegasus bench nearest-code` and benchmarks/bench_nearest_code.py. Every (shape, provider)
runs in a fresh Python process, so that its memory is measured alone (pegasus.bench.harness: time
and peak memory, after one warm-up call; a tiny call first makes libraries and thread pools
resident, so they do not count).

Providers: the backends of pegasus.backends.NEAREST_CODE that can run, and "faiss"
(faiss.IndexFlatL2, k=1, exact; the index is built inside the timed call, as nearest_code gets a
new codebook every step).

`capability="avx2"` measures an AVX-512 CPU as an AVX2-only one would run: every provider's process
is lowered to AVX2 (`LOWER_TO_AVX2`: ATen's and pegasus's kernels, FAISS's own SIMD code and the
OpenBLAS that FAISS's wheel bundles for its products). Only a lowering: a CPU without AVX2 is refused.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.util import find_spec

import torch

from pegasus.bench.harness import markdown_table, median_s, peak_bytes, ratio

__all__ = ["FULL_SHAPES", "QUICK_SHAPES", "Record", "available_providers", "format_table", "run", "setup"]

FULL_SHAPES: tuple[tuple[int, int, int], ...] = tuple((n, k, 64) for n in (4096, 36864, 262144) for k in (512, 1024))
"""(N, K, D): 64 x 8 x 8, 64 x 24 x 24 and 64 x 64 x 64 latents of a batch of 64, K = 512 and 1024."""
QUICK_SHAPES: tuple[tuple[int, int, int], ...] = ((4096, 512, 64), (36864, 512, 64))
LOWER_TO_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "FAISS_SIMD_LEVEL": "AVX2", "OPENBLAS_CORETYPE": "Haswell"}
"""The environment that runs a provider's process as on an AVX2-only CPU (`run(capability="avx2")`)."""
CAPABILITIES = ("native", "avx2")


@dataclass
class Record:
    """One (shape, provider) measurement; the ratios are reference / this (higher is better)."""

    op: str
    n: int
    k: int
    d: int
    backend: str
    device: str
    median_s: float
    peak_bytes: int
    speedup_vs_reference: float | None = None
    memory_ratio_vs_reference: float | None = None
    capability: str = "native"


def available_providers(device: str) -> tuple[list[str], list[str]]:
    """(providers that can run on `device`, notes on those skipped and why)."""
    from pegasus import backends

    names, notes = backends.runnable(backends.NEAREST_CODE, device)
    if device == "cpu":
        if find_spec("faiss") is not None:
            names.append("faiss")
        else:
            notes.append("faiss skipped: faiss-cpu is not installed (pip install -e '.[bench]')")
    return names, notes


def setup(provider: str, shape: tuple[int, int, int], device: str = "cpu", seed: int = 0) -> Callable[[], object]:
    """A call of `provider` on random z: Tensor[N, D] and codebook: Tensor[K, D] (float32)."""
    n, k, d = shape
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g).to(device)
    codebook = torch.randn(k, d, generator=g).to(device)
    if provider == "faiss":
        import faiss

        zn, en = z.numpy(), codebook.numpy()

        def search() -> object:
            index = faiss.IndexFlatL2(d)
            index.add(en)
            return index.search(zn, 1)

        return search
    from pegasus.ops import nearest_code

    return lambda: nearest_code(z, codebook, backend=provider)


def _measure_here(provider: str, shape: tuple[int, int, int], device: str, min_run_time: float) -> dict:
    setup(provider, (64, 16, shape[2]), device)()  # load libraries, start thread pools
    fn = setup(provider, shape, device)
    peak = peak_bytes(fn, device)  # first: a fresh process has cached nothing of this shape
    return {"median_s": median_s(fn, device, min_run_time), "peak_bytes": peak,
            "torch_capability": torch.backends.cpu.get_cpu_capability()}


def _worker() -> None:
    """Entry of the measuring subprocess: a JSON job on stdin, a JSON result on stdout."""
    job = json.loads(sys.stdin.read())
    print(json.dumps(_measure_here(job["provider"], tuple(job["shape"]), job["device"], job["min_run_time"])))


def _capability_env(capability: str) -> dict[str, str]:
    """The environment of the measuring processes for `capability` (one of CAPABILITIES)."""
    if capability not in CAPABILITIES:
        raise ValueError(f"capability should be one of {', '.join(CAPABILITIES)}, got {capability!r}")
    if capability == "native":
        return dict(os.environ)
    native = torch.backends.cpu.get_cpu_capability()  # this process's: it may itself be lowered
    if native not in ("AVX2", "AVX512"):
        raise ValueError(f"capability {capability!r} lowers the CPU to AVX2, but this process runs {native}: "
                         "it cannot be raised")
    return {**os.environ, **LOWER_TO_AVX2}


def _measure(provider: str, shape: tuple[int, int, int], device: str, min_run_time: float,
             env: dict[str, str] | None = None) -> dict:
    job = json.dumps({"provider": provider, "shape": shape, "device": device, "min_run_time": min_run_time})
    res = subprocess.run(
        [sys.executable, "-c", "from pegasus.bench.nearest_code import _worker; _worker()"],
        input=job, capture_output=True, text=True, env=env,
    )
    if res.returncode != 0:
        raise RuntimeError(f"benchmark of {provider} at {shape} failed: {res.stderr.strip()[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(
    shapes: Sequence[tuple[int, int, int]] = FULL_SHAPES,
    device: str = "cpu",
    min_run_time: float = 1.0,
    progress: Callable[[str], None] | None = None,
    capability: str = "native",
) -> tuple[list[Record], list[str]]:
    """Measure every available provider at every shape: (records, notes on skipped providers).
    capability: "native", or "avx2" to run every provider as on an AVX2-only CPU (CPU only)."""
    env = _capability_env(capability)
    if capability != "native" and device != "cpu":
        raise ValueError(f"capability {capability!r} is for the CPU, got device {device!r}")
    providers, notes = available_providers(device)
    records = []
    for n, k, d in shapes:
        ref = None
        for provider in providers:
            m = _measure(provider, (n, k, d), device, min_run_time, env)
            if capability == "avx2" and m["torch_capability"] != "AVX2":
                raise RuntimeError(f"benchmark of {provider} at {(n, k, d)} was to run as on an AVX2 CPU, but its "
                                   f"process ran torch's {m['torch_capability']} kernels")
            rec = Record("nearest_code", n, k, d, provider, device, m["median_s"], m["peak_bytes"], capability=capability)
            ref = ref or rec
            rec.speedup_vs_reference = ref.median_s / rec.median_s
            rec.memory_ratio_vs_reference = ref.peak_bytes / max(rec.peak_bytes, 1)
            records.append(rec)
            if progress is not None:
                progress(f"{n}x{k}x{d} {provider}: {rec.median_s * 1e3:.2f} ms")
    return records, notes


_COLUMNS = (("N", ">"), ("K", ">"), ("D", ">"), ("backend", "<"), ("median ms", ">"), ("peak MiB", ">"),
            ("speedup vs reference", ">"), ("memory ratio vs reference", ">"))


def format_table(records: Sequence[Record]) -> str:
    """Markdown table: shape | backend | median ms | peak MiB | speedup and memory ratio vs reference."""
    return markdown_table(_COLUMNS, [
        (r.n, r.k, r.d, r.backend, f"{r.median_s * 1e3:.2f}", f"{r.peak_bytes / 2**20:.2f}",
         ratio(r.speedup_vs_reference, 2), ratio(r.memory_ratio_vs_reference))
        for r in records
    ])


