"""Whether Triton is installed and whether its kernels run in its CPU interpreter.

Below both the backend table (pegasus.backends) and the Triton kernels (pegasus.kernels), which
read the same flag: neither imports the other for it.
"""
from __future__ import annotations

import importlib.util


def has_triton() -> bool:
    """True when the triton package is importable."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    """True when Triton kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1, read through
    triton.knobs exactly as Triton reads it)."""
    if not has_triton():
        return False
    import triton

    return bool(triton.knobs.runtime.interpret)
