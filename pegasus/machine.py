"""What this machine's CPU is: its name and the instruction sets that matter to pegasus's speed.

Read from the CPU itself where torch offers it (`torch.cpu.get_capabilities`: CPUID on x86, the
kernel's HWCAP on aarch64), and from /proc/cpuinfo only where it does not. The two can disagree:
under qemu-user /proc/cpuinfo shows the host's flags, CPUID the emulated CPU's.
"""
from __future__ import annotations

import re
from functools import cache
from typing import Any

import torch

__all__ = ["ISA", "cpu_isa", "cpu_name"]

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


def cpu_name() -> str:
    """The CPU's model name: the CPU's own (CPUID brand string), else /proc/cpuinfo's."""
    found = _capabilities()
    name = found[0].get("cpu_name", "") if found else ""
    if not name:
        name = _proc_cpuinfo().get("model name", "")
    return re.sub(r"\s+", " ", name).strip() or "unknown CPU"
