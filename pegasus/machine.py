"""What this machine's CPU is, and whether another process holds its cores.

- **Instruction sets** (`cpu_isa`, `cpu_name`): read from the CPU itself where torch offers it
  (`torch.cpu.get_capabilities`: CPUID on x86, the kernel's HWCAP on aarch64), from /proc/cpuinfo
  only where it does not. The two can disagree: under qemu-user /proc/cpuinfo shows the host's
  flags, CPUID the emulated CPU's.
- **Busy cores** (`parallel_region_s`, `guarded_threads`): torch's OpenMP threads spin at the end
  of every parallel region until the others arrive. When another process keeps a core busy, the
  thread that shares that core runs only in the scheduler's turns, and every region waits for it:
  on 2 Zen 4 cores with a niced job on one of them, a region of 2 threads took 8 ms instead of
  15 us, and the C++ sampler (8x8, batch 16: 72 regions) 730 ms instead of 38 ms on 1 thread.
  OMP_WAIT_POLICY=PASSIVE, set before torch starts, also cures it (38 ms on 2 threads) but cannot
  be set from inside a process that already imported torch, so the sampler times a region first
  and runs on one thread when it is that slow.
"""
from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

import torch

__all__ = ["ISA", "busy_cores", "cpu_isa", "cpu_name", "isa_text", "guarded_threads", "parallel_region_s", "set_threads", "threads_are_explicit"]

_log = logging.getLogger(__name__)

# The instruction sets that change what pegasus runs or how fast, in our spelling ->
# (the key of torch.cpu.get_capabilities, the flag of /proc/cpuinfo).
ISA: dict[str, tuple[str, str]] = {
    "avx2": ("avx2", "avx2"),
    "fma": ("fma3", "fma"),
    "avx512f": ("avx512_f", "avx512f"),
    "avx512_bf16": ("avx512_bf16", "avx512_bf16"),
    "amx_tile": ("amx_tile", "amx_tile"),
    "amx_bf16": ("amx_bf16", "amx_bf16"),
    "neon": ("neon", "asimd"),
    "sve": ("sve", "sve"),
    "bf16": ("bf16", "bf16"),  # aarch64's BFloat16 instructions (FEAT_BF16)
}


@cache
def _capabilities() -> tuple[dict[str, Any], str] | None:
    """(torch.cpu.get_capabilities(), how it read them), or None where this torch lacks it."""
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is None:
        return None
    caps = dict(get())
    return caps, "CPUID" if caps.get("architecture", "").startswith(("x86", "i")) else "HWCAP"


@cache
def _proc_cpuinfo() -> dict[str, str]:
    """The fields of the first processor of /proc/cpuinfo ({} where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read().split("\n\n", 1)[0]
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines()) if k.strip()}


def cpu_isa() -> tuple[list[str] | None, str]:
    """(the instruction sets of `ISA` the CPU has, in ISA's order, or None where unknown; where
    they were read: "CPUID", "HWCAP" or "/proc/cpuinfo")."""
    found = _capabilities()
    if found is not None:
        caps, source = found
        return [name for name, (key, _) in ISA.items() if caps.get(key)], source
    info = _proc_cpuinfo()
    if not info:
        return None, "/proc/cpuinfo"
    flags = set((info.get("flags") or info.get("Features") or "").split())  # x86 / aarch64
    return [name for name, (_, flag) in ISA.items() if flag in flags], "/proc/cpuinfo"


def isa_text(isa: list[str] | None) -> str:
    """`cpu_isa`'s list as one phrase: "avx2 fma ...", "none of ..." or "instruction sets unknown"."""
    if isa is None:
        return "instruction sets unknown"
    return " ".join(isa) or "none of " + " ".join(ISA)


def cpu_name() -> str:
    """The CPU's model name: the CPU's own (CPUID brand string), else /proc/cpuinfo's."""
    found = _capabilities()
    name = found[0].get("cpu_name", "") if found else ""
    if not name:
        name = _proc_cpuinfo().get("model name", "")
    return re.sub(r"\s+", " ", name).strip() or "unknown CPU"


# torch's thread count when pegasus was imported: its default unless the user had set another.
_DEFAULT_THREADS = torch.get_num_threads()
_explicit_threads = False
_noted_busy = False
guarded_calls = 0
"""How many `guarded_threads` bodies ran on one thread in this process (benchmark records carry it)."""

# A parallel region slower than this means a thread waited for a core another process holds:
# 15-25 us on 2 free Zen 4 cores (a fill of 64K floats), 4-8 ms with a busy core (a scheduler turn).
BUSY_REGION_S = 1e-3
BUSY_RECHECK_S = 1.0
_busy: tuple[float, float] | None = None  # (the slow region's seconds, when to time again)
_GRAIN = 32768  # ATen's at::internal::GRAIN_SIZE: an op splits into chunks of at least this many


def set_threads(n: int) -> None:
    """torch.set_num_threads(n), as the user's choice (--threads): `guarded_threads` keeps it."""
    global _explicit_threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads should be an integer >= 1, got {n!r}")
    torch.set_num_threads(n)
    _explicit_threads = True


def threads_are_explicit() -> bool:
    """Whether the user chose the thread count: --threads (`set_threads`), OMP_NUM_THREADS, or
    torch.set_num_threads to another count than the one torch had when pegasus was imported."""
    return _explicit_threads or "OMP_NUM_THREADS" in os.environ or torch.get_num_threads() != _DEFAULT_THREADS


def parallel_region_s(repeats: int = 2) -> float:
    """Seconds of the fastest of `repeats` parallel regions over all of torch's threads: a fill of
    one ATen grain per thread, so every thread takes a chunk (~15 us on 2 free cores). Stops at
    the first region under BUSY_REGION_S: on free cores the check costs one."""
    x = torch.empty(_GRAIN * torch.get_num_threads())  # not zeros: its fill would be one more region
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.fill_(1.0)
        best = min(best, time.perf_counter() - t0)
        if best <= BUSY_REGION_S:
            break
    return best


def busy_cores() -> float | None:
    """The time of a parallel region (`parallel_region_s`) when it shows that another process holds
    one of torch's cores (above BUSY_REGION_S), else None. Always None on one thread. A busy
    verdict stands for BUSY_RECHECK_S without timing again (the check costs two 8 ms regions then)."""
    global _busy
    if torch.get_num_threads() < 2:
        return None
    if _busy is not None and time.monotonic() < _busy[1]:
        return _busy[0]
    region = parallel_region_s()
    if region <= BUSY_REGION_S:
        _busy = None
        return None
    _busy = (region, time.monotonic() + BUSY_RECHECK_S)
    return region


@contextmanager
def guarded_threads(what: str) -> Iterator[int]:
    """Runs the body on torch's threads, or on one when another process holds a core (`busy_cores`)
    and the user did not choose the thread count (`threads_are_explicit`); yields the count used.
    Says so once a process, in one line on stderr. Only for work whose results do not depend on
    the thread count (the sampler's: the threads split the batch; tests/test_platform.py)."""
    global _noted_busy, guarded_calls
    threads = torch.get_num_threads()
    region = None if threads < 2 or threads_are_explicit() else busy_cores()
    if region is None:
        yield threads
        return
    if not _noted_busy:
        _noted_busy = True
        _log.warning(
            "note: another process is using this CPU's cores (a parallel region of %d threads took %.1f ms instead of "
            "~0.02 ms), so %s runs on 1 thread (8x8 grids, batch 16: 38 ms against 730 on 2 threads, measured on 2 Zen 4 "
            "cores); --threads N or OMP_NUM_THREADS=N keeps N threads, and OMP_WAIT_POLICY=PASSIVE keeps them fast",
            threads, region * 1e3, what,
        )
    guarded_calls += 1
    torch.set_num_threads(1)
    try:
        yield 1
    finally:
        torch.set_num_threads(threads)
