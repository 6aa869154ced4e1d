"""Benchmark of `pegasus::nearest_code`: each backend against the reference, and FAISS as the peer.

Used by `pegasus bench nearest-code` and benchmarks/bench_nearest_code.py. Every (shape, provider)
runs in a fresh Python process, so that its memory is measured alone:

- **time**: median of `torch.utils.benchmark.Timer.blocked_autorange` (CPU) or `triton.testing.do_bench`
  (CUDA), after one warm-up call.
- **peak bytes**: the most extra memory held at once during one call. On CPU, the kernel's peak
  resident set size (VmHWM) is reset through /proc/self/clear_refs right before the call, and
  peak = VmHWM after the call - VmRSS before it (inputs, libraries and thread pools are resident
  before: a tiny call warms them up first). On CUDA, torch.cuda.max_memory_allocated over the call.

Providers: "reference", "cpu", "triton" (the pegasus backends) and "faiss" (faiss.IndexFlatL2, k=1,
exact; the index is built inside the timed call, as nearest_code gets a new codebook every step).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib.util import find_spec
from typing import Any

import torch

__all__ = ["FULL_SHAPES", "QUICK_SHAPES", "Record", "available_providers", "format_table", "run", "setup"]

FULL_SHAPES: tuple[tuple[int, int, int], ...] = tuple((n, k, 64) for n in (4096, 36864, 262144) for k in (512, 1024))
"""(N, K, D): 64 x 8 x 8, 64 x 24 x 24 and 64 x 64 x 64 latents of a batch of 64, K = 512 and 1024."""
QUICK_SHAPES: tuple[tuple[int, int, int], ...] = ((4096, 512, 64), (36864, 512, 64))


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


def available_providers(device: str) -> tuple[list[str], list[str]]:
    """(providers that can run on `device`, notes on those skipped and why)."""
    from pegasus import _extension
    from pegasus.backend import _triton_unavailable

    names, notes = ["reference"], []
    if device == "cpu":
        if _extension.has_cpp_ops():
            names.append("cpu")
        else:
            notes.append(f"cpu skipped: {_extension.cpp_load_error()}")
        if find_spec("faiss") is not None:
            names.append("faiss")
        else:
            notes.append("faiss skipped: faiss-cpu is not installed (pip install -e '.[bench]')")
    else:
        why = _triton_unavailable("nearest_code", torch.device(device))
        if why is None:
            names.append("triton")
        else:
            notes.append(f"triton skipped: {why}")
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


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def _peak_bytes(fn: Callable[[], object], device: str) -> int:
    if device != "cpu":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS (Linux >= 4.0)
        f.write("5")
    fn()
    return (_status_kib("VmHWM") - before) * 1024


def _median_s(fn: Callable[[], object], device: str, min_run_time: float) -> float:
    if device != "cpu":
        from triton.testing import do_bench

        return do_bench(fn, quantiles=[0.5]) / 1e3
    from torch.utils.benchmark import Timer

    # Timer defaults to one thread; measure with the threads the process has, as users run it.
    timer = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def _measure_here(provider: str, shape: tuple[int, int, int], device: str, min_run_time: float) -> dict:
    setup(provider, (64, 16, shape[2]), device)()  # load libraries, start thread pools
    fn = setup(provider, shape, device)
    peak = _peak_bytes(fn, device)  # first: a fresh process has cached nothing of this shape
    return {"median_s": _median_s(fn, device, min_run_time), "peak_bytes": peak}


def _worker() -> None:
    """Entry of the measuring subprocess: a JSON job on stdin, a JSON result on stdout."""
    job = json.loads(sys.stdin.read())
    print(json.dumps(_measure_here(job["provider"], tuple(job["shape"]), job["device"], job["min_run_time"])))


def _measure(provider: str, shape: tuple[int, int, int], device: str, min_run_time: float) -> dict:
    job = json.dumps({"provider": provider, "shape": shape, "device": device, "min_run_time": min_run_time})
    res = subprocess.run(
        [sys.executable, "-c", "from pegasus.bench import _worker; _worker()"],
        input=job, capture_output=True, text=True,
    )
    if res.returncode != 0:
        raise RuntimeError(f"benchmark of {provider} at {shape} failed: {res.stderr.strip()[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(
    shapes: Sequence[tuple[int, int, int]] = FULL_SHAPES,
    device: str = "cpu",
    min_run_time: float = 1.0,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[Record], list[str]]:
    """Measure every available provider at every shape: (records, notes on skipped providers)."""
    providers, notes = available_providers(device)
    records = []
    for n, k, d in shapes:
        ref = None
        for provider in providers:
            m = _measure(provider, (n, k, d), device, min_run_time)
            rec = Record("nearest_code", n, k, d, provider, device, m["median_s"], m["peak_bytes"])
            ref = ref or rec
            rec.speedup_vs_reference = ref.median_s / rec.median_s
            rec.memory_ratio_vs_reference = ref.peak_bytes / max(rec.peak_bytes, 1)
            records.append(rec)
            if progress is not None:
                progress(f"{n}x{k}x{d} {provider}: {rec.median_s * 1e3:.2f} ms")
    return records, notes


def device_name(device: str) -> str:
    """The CPU model and core count, or the GPU's name."""
    if device != "cpu":
        return torch.cuda.get_device_name(device)
    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        found = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
    if found:
        model = found.group(1).strip()
    return f"{model}, {torch.get_num_threads()} threads"


def format_table(records: Sequence[Record]) -> str:
    """Markdown table: shape | backend | median ms | peak MiB | speedup and memory ratio vs reference."""
    lines = [
        "| N | K | D | backend | median ms | peak MiB | speedup vs reference | memory ratio vs reference |",
        "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in records:
        lines.append(
            f"| {r.n} | {r.k} | {r.d} | {r.backend} | {r.median_s * 1e3:.2f} | {r.peak_bytes / 2**20:.2f} | "
            f"{r.speedup_vs_reference:.2f}x | {r.memory_ratio_vs_reference:.1f}x |"
        )
    return "\n".join(lines)


def to_json_lines(records: Sequence[Any]) -> str:
    """One JSON object per line, the fields of each record (a dataclass: this module's Record, or
    pegasus.bench_sampler's)."""
    return "".join(json.dumps(asdict(r)) + "\n" for r in records)
