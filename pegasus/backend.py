"""Which implementation runs a pegasus op: "reference" | "cpu" | "triton".

Order of choice: the `backend=` argument, then the `PEGASUS_BACKEND` environment variable, then
the default: "triton" for CUDA tensors when Triton imports, "cpu" for CPU tensors when
`pegasus._C` loaded, otherwise "reference". A backend that was asked for and cannot run raises
RuntimeError saying why; nothing falls back silently.

"triton" runs on CUDA tensors, and on CPU tensors only under Triton's interpreter
(TRITON_INTERPRET=1, read through triton.knobs exactly as Triton reads it): that is how the
Triton kernels are tested without a GPU. It is never the default for CPU tensors.
"""
from __future__ import annotations

import importlib.util
import os

import torch

from pegasus import _extension

BACKENDS = ("reference", "cpu", "triton")


def _triton_unavailable(op: str, device: torch.device | None = None) -> str | None:
    """Why backend "triton" cannot run `op` (on tensors of `device`, when given), or None."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install -e '.[triton]')"
    from pegasus import kernels

    if op not in kernels.KERNELS:
        return f"pegasus.kernels has no Triton kernel for pegasus::{op} in this version"
    if not _extension.has_cpp_ops():
        return f"the schema of pegasus::{op} comes from pegasus._C, which did not load ({_extension.cpp_load_error()})"
    if device is not None and device.type != "cuda" and not triton_interpreting():
        return f"it runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1; got tensors on {device}"
    return None


def triton_interpreting() -> bool:
    """True when Triton kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1)."""
    if importlib.util.find_spec("triton") is None:
        return False
    import triton

    return bool(triton.knobs.runtime.interpret)


def resolve_backend(backend: str | None, device: torch.device, op: str) -> str:
    """Return the backend that runs `op` on tensors of `device`.

    Raises ValueError for an unknown name and RuntimeError for a backend that cannot run here.
    """
    name = backend if backend is not None else os.environ.get("PEGASUS_BACKEND") or None
    if name is None:
        if device.type == "cuda":
            return "triton" if _triton_unavailable(op, device) is None else "reference"
        return "cpu" if _extension.has_cpp_ops() else "reference"
    where = "backend" if backend is not None else "PEGASUS_BACKEND"
    if name not in BACKENDS:
        raise ValueError(f"{where} should be one of {', '.join(BACKENDS)}, got {name!r}")
    if name == "cpu":
        _extension.assert_has_cpp_ops()
        if device.type != "cpu":
            raise RuntimeError(f"backend 'cpu' runs on CPU tensors, got tensors on {device}")
    elif name == "triton":
        why = _triton_unavailable(op, device)
        if why is not None:
            raise RuntimeError(f"backend 'triton' unavailable: {why}")
    return name
