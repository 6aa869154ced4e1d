"""What the benchmarks share: timing, peak memory, the machine and JSON records.

- **time** (`median_s`): median of `torch.utils.benchmark.Timer.blocked_autorange` with all the
  process's threads (CPU; Timer defaults to one) or `triton.testing.do_bench` (CUDA).
- **peak bytes** (`peak_bytes`): the most extra memory held at once during one call. On CPU, the
  peak resident set size (VmHWM) is reset through /proc/self/clear_refs right before the call, and
  peak = VmHWM after the call - VmRSS before it; on CUDA, torch.cuda.max_memory_allocated.
- **machine** (`machine`): the CPU's name and instruction sets, the builds of torch's and the
  extension's vector code, and the threads: every JSON record carries it, and the tables' headers
  name the CPU, so that a figure is never read without the machine that made it.
- **tables** (`markdown_table`): the one builder of the benchmarks' markdown tables.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from typing import Any

import torch

from pegasus.machine import isa_text

__all__ = ["device_name", "machine", "markdown_table", "median_s", "peak_bytes", "ratio", "to_json_lines"]


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


def machine() -> dict[str, Any]:
    """The CPU that ran a benchmark: {"cpu": model name, "isa": its instruction sets of
    `pegasus.machine.ISA` (avx2, fma, avx512f, avx512_bf16, amx_tile, amx_bf16, neon, sve, bf16),
    "isa_source": where they were read (CPUID, HWCAP or /proc/cpuinfo), "torch_cpu_capability":
    the build of ATen's vector code that runs (torch.backends.cpu.get_cpu_capability(), lowered by
    ATEN_CPU_CAPABILITY), "pegasus_cpu_capability": the extension's (None where it did not load),
    "threads": torch.get_num_threads(), "cores": the cores this process may run on,
    "calls_on_1_thread": how many sampling calls ran on 1 thread instead, because another process
    held a core (`pegasus.machine.guarded_threads`; 0 when every call had "threads")}."""
    import os

    from pegasus import _extension
    from pegasus import machine as host

    isa, source = host.cpu_isa()
    ext = str(torch.ops.pegasus._cpu_capability()) if _extension.has_cpp_ops() else None
    return {
        "cpu": host.cpu_name(),
        "isa": isa,
        "isa_source": source,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "pegasus_cpu_capability": ext,
        "threads": torch.get_num_threads(),
        "cores": len(os.sched_getaffinity(0)),
        "calls_on_1_thread": host.guarded_calls,
    }


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's model, instruction sets and threads (`machine`)."""
    if device != "cpu":
        return torch.cuda.get_device_name(device)
    m = machine()
    ext = f", pegasus {m['pegasus_cpu_capability']}" if m["pegasus_cpu_capability"] else ""
    return f"{m['cpu']} ({isa_text(m['isa'])}; torch {m['torch_cpu_capability']}{ext}), {m['threads']} threads"


def to_json_lines(records: Sequence[Any]) -> str:
    """One JSON object per line: the fields of each record (a dataclass), and "machine" (`machine`)."""
    where = machine()
    return "".join(json.dumps({**asdict(r), "machine": where}) + "\n" for r in records)


def ratio(x: float | None, digits: int = 1) -> str:
    """A speedup for a table cell: "2.2x", or "" where there is none."""
    return "" if x is None else f"{x:.{digits}f}x"


_RULES = {"<": "---", ">": "---:"}


def markdown_table(columns: Sequence[tuple[str, str]], rows: Iterable[Sequence[object]]) -> str:
    """A markdown table. columns: (title, "<" aligned left or ">" right) each; rows: one cell a
    column each, written with str()."""
    for title, align in columns:
        if align not in _RULES:
            raise ValueError(f"column {title!r}: align should be '<' or '>', got {align!r}")
    lines = [_row(title for title, _ in columns), _row(_RULES[align] for _, align in columns)]
    for cells in rows:
        if len(cells) != len(columns):
            raise ValueError(f"a row should have {len(columns)} cells (the columns), got {len(cells)}: {cells!r}")
        lines.append(_row(map(str, cells)))
    return "\n".join(lines)


def _row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"
