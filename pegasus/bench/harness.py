"""What the benchmarks share: timing, peak memory, the machine's name and JSON records.

- **time** (`median_s`): median of `torch.utils.benchmark.Timer.blocked_autorange` with all the
  process's threads (CPU; Timer defaults to one) or `triton.testing.do_bench` (CUDA).
- **peak bytes** (`peak_bytes`): the most extra memory held at once during one call. On CPU, the
  peak resident set size (VmHWM) is reset through /proc/self/clear_refs right before the call, and
  peak = VmHWM after the call - VmRSS before it; on CUDA, torch.cuda.max_memory_allocated.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import torch

__all__ = ["device_name", "median_s", "peak_bytes", "ratio", "to_json_lines"]


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def peak_bytes(fn: Callable[[], object], device: str) -> int:
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


def median_s(fn: Callable[[], object], device: str, min_run_time: float) -> float:
    if device != "cpu":
        from triton.testing import do_bench

        return do_bench(fn, quantiles=[0.5]) / 1e3
    from torch.utils.benchmark import Timer

    # Timer defaults to one thread; measure with the threads the process has, as users run it.
    timer = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


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


def to_json_lines(records: Sequence[Any]) -> str:
    """One JSON object per line, the fields of each record (a dataclass)."""
    return "".join(json.dumps(asdict(r)) + "\n" for r in records)


def ratio(x: float | None, digits: int = 1) -> str:
    """A speedup for a table cell: "2.2x", or "" where there is none."""
    return "" if x is None else f"{x:.{digits}f}x"
