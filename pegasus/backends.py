"""Which implementation runs each pegasus op: the one table of backends.

FAMILIES holds, for each family of ops, the backends that exist, what each needs, and the
environment variable that picks one:

  family        ops                                        backends                          variable
  nearest_code  nearest_code                               reference, cpu, triton            PEGASUS_NEAREST_CODE_BACKEND
  sampler       sample_row, sample_position, sample_loop   reference, cpu, triton            PEGASUS_SAMPLER_BACKEND

"reference" is always the pure-PyTorch implementation of the ops (pegasus.reference) that the
fast kernels are tested against. The naive sampler (a full pass of the prior at every position,
the ground truth of every sampler) is a sampling *method* (pegasus.sampling.METHODS), not a
backend: it runs no step op.

Choice (`resolve`): the `backend=` argument, then the family's environment variable, then the
default: the first backend of the family that is the default on the tensors' device type and can
run, else "reference". A backend asked for that cannot run raises RuntimeError saying why; an
unknown name raises ValueError listing the valid ones; nothing falls back silently.

"triton" runs on CUDA tensors, and on CPU tensors only under Triton's interpreter
(TRITON_INTERPRET=1, read through triton.knobs exactly as Triton reads it): that is how the Triton
kernels are tested without a GPU. It is never the default for CPU tensors.

The CLI's choices, the benchmarks, `pegasus info` and the variables all read this table; the
functions that run a resolved backend's ops are picked in pegasus.ops (`kernels`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from pegasus import _extension
from pegasus._triton import has_triton, triton_interpreting

_FLOAT32_64 = (torch.float32, torch.float64)


@dataclass(frozen=True)
class Backend:
    """One implementation of a family's ops.

    needs: "cpp" (pegasus._C loaded: the schemas and C++ kernels), "triton" (Triton installed).
    devices: device types it runs on ("triton" also on CPU tensors under the interpreter).
    default_on: device types where it is the default when it can run.
    dtypes: the tensor dtypes its kernels take (None: whatever the family's wrappers accept).
    """

    name: str
    summary: str
    needs: tuple[str, ...] = ()
    devices: tuple[str, ...] | None = None
    default_on: tuple[str, ...] = ()
    dtypes: tuple[torch.dtype, ...] | None = None


@dataclass(frozen=True)
class Family:
    name: str
    ops: tuple[str, ...]
    env: str
    backends: tuple[Backend, ...]

    def names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.backends)

    def get(self, name: str) -> Backend:
        return next(b for b in self.backends if b.name == name)


NEAREST_CODE = Family(
    "nearest_code",
    ops=("nearest_code",),
    env="PEGASUS_NEAREST_CODE_BACKEND",
    backends=(
        Backend("reference", "pure PyTorch, the whole N x K distance matrix (pegasus.reference)"),
        Backend("cpu", "C++ kernel, products fused with the argmin (csrc/cpu/nearest_code.cpp)", needs=("cpp",), devices=("cpu",), default_on=("cpu",)),
        Backend(
            "triton", "Triton kernel (pegasus.kernels.nearest_code)", needs=("cpp", "triton"), devices=("cuda",),
            default_on=("cuda",),
        ),
    ),
)

SAMPLER = Family(
    "sampler",
    ops=("sample_row", "sample_position", "sample_loop"),
    env="PEGASUS_SAMPLER_BACKEND",
    backends=(
        Backend("reference", "pure PyTorch cached loop over the reference step ops (pegasus.reference)"),
        Backend(
            "cpu", "C++ loop over the C++ step kernels (csrc/sample_loop.cpp, csrc/cpu/sample_step.cpp)",
            needs=("cpp",), devices=("cpu",), default_on=("cpu",), dtypes=_FLOAT32_64,
        ),
        Backend(
            "triton", "C++ loop over the Triton step kernels (pegasus.kernels.sample_step)", needs=("cpp", "triton"),
            devices=("cuda",), default_on=("cuda",), dtypes=_FLOAT32_64,
        ),
    ),
)

FAMILIES: dict[str, Family] = {f.name: f for f in (NEAREST_CODE, SAMPLER)}
"""Every family of ops, by name."""

RETIRED_ENV = "PEGASUS_BACKEND"
"""Read by pegasus 0.1 for every op with two meanings; now an error naming the variables above."""


def unavailable(family: str | Family, name: str, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> str | None:
    """Why backend `name` of `family` cannot run (on tensors of `device` and `dtype`, when given), or None."""
    fam = FAMILIES[family] if isinstance(family, str) else family
    b = fam.get(name)
    if "triton" in b.needs and not has_triton():
        return "triton is not installed (pip install -e '.[triton]')"
    if "cpp" in b.needs and not _extension.has_cpp_ops():
        return f"the C++ extension pegasus._C did not load ({_extension.cpp_load_error()})"
    if device is not None and b.devices is not None:
        device = torch.device(device)
        interpreted = "triton" in b.needs and device.type == "cpu" and triton_interpreting()
        if device.type not in b.devices and not interpreted:
            where = " or ".join(f"{d.upper()} tensors" for d in b.devices)
            also = ", or on CPU tensors under TRITON_INTERPRET=1" if "triton" in b.needs else ""
            return f"it runs on {where}{also}; got tensors on {device}"
    if dtype is not None and b.dtypes is not None and dtype not in b.dtypes:
        return f"its kernels take {' and '.join(str(d).removeprefix('torch.') for d in b.dtypes)}, got {str(dtype).removeprefix('torch.')}"
    return None


def default(family: str | Family, device: torch.device | str, dtype: torch.dtype | None = None) -> str:
    """The backend `family` uses on tensors of `device` (and `dtype`) when none is asked for."""
    fam = FAMILIES[family] if isinstance(family, str) else family
    device = torch.device(device)
    for b in fam.backends:
        if device.type in b.default_on and unavailable(fam, b.name, device, dtype) is None:
            return b.name
    return "reference"


def resolve(family: str | Family, backend: str | None, device: torch.device | str, dtype: torch.dtype | None = None) -> str:
    """The backend that runs `family`'s ops on tensors of `device` and `dtype`: `backend`, else the
    family's environment variable, else `default`. Raises ValueError for an unknown name and
    RuntimeError for a backend that cannot run here."""
    fam = FAMILIES[family] if isinstance(family, str) else family
    if os.environ.get(RETIRED_ENV):
        raise ValueError(
            f"{RETIRED_ENV} is no longer read: set "
            + " or ".join(f"{f.env} ({', '.join(f.names())})" for f in FAMILIES.values())
        )
    name = backend if backend is not None else os.environ.get(fam.env) or None
    if name is None:
        name = default(fam, device, dtype)
    elif name not in fam.names():
        where = "backend" if backend is not None else fam.env
        raise ValueError(f"{where} should be one of {', '.join(fam.names())} ({fam.name} backends), got {name!r}")
    else:
        why = unavailable(fam, name, device, dtype)
        if why is not None:
            raise RuntimeError(f"{fam.name} backend {name!r} unavailable: {why}")
    return name


def runnable(family: str | Family, device: torch.device | str) -> tuple[list[str], list[str]]:
    """(the backends of `family` that run on `device`, in table order; notes on those that cannot
    and why, leaving out those that never run on that device type)."""
    fam = FAMILIES[family] if isinstance(family, str) else family
    device = torch.device(device)
    names, notes = [], []
    for b in fam.backends:
        why = unavailable(fam, b.name, device)
        if why is None:
            names.append(b.name)
        elif b.devices is None or device.type in b.devices:
            notes.append(f"{b.name} skipped: {why}")
    return names, notes


def describe(devices: tuple[str, ...] = ("cpu", "cuda")) -> list[str]:
    """Lines for `pegasus info`: every family's backends, whether each can run here and why not,
    and the default on each device type."""
    lines = []
    for fam in FAMILIES.values():
        lines.append(f"{fam.name} ({', '.join(fam.ops)}; {fam.env}):")
        for b in fam.backends:
            where = [d for d in devices if d in (b.devices or devices)]
            if "triton" in b.needs and triton_interpreting() and "cpu" not in where:
                where.append("cpu")
            runs = [d for d in where if unavailable(fam, b.name, d) is None and (d != "cuda" or torch.cuda.is_available())]
            state = f"runs here on {', '.join(runs)}" if runs else f"cannot run here: {unavailable(fam, b.name, where[0] if where else None) or 'no CUDA device'}"
            lines.append(f"  {b.name:<10} {b.summary}; {state}")
        defaults = ", ".join(f"{d}: {default(fam, d)}" for d in devices if d != "cuda" or torch.cuda.is_available())
        lines.append(f"  default -> {defaults}")
    return lines
