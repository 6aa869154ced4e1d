"""Loading of the compiled extension `pegasus._C` (the C++ CPU kernels and op schemas).

`import pegasus` must keep working when the extension did not build, on the reference backend;
the reason is kept so that asking for `backend="cpu"` can say why it is unavailable.
"""
from __future__ import annotations

import importlib

_load_error: str | None = None
try:
    importlib.import_module("pegasus._C")
except ImportError as e:  # not built, or built against another torch
    _load_error = f"{type(e).__name__}: {e}"


def has_cpp_ops() -> bool:
    """True when `pegasus._C` loaded and its ops are registered."""
    return _load_error is None


def cpp_load_error() -> str | None:
    """Why `pegasus._C` failed to load, or None when it loaded."""
    return _load_error


def assert_has_cpp_ops() -> None:
    """Raise RuntimeError saying why the C++ backend is unavailable."""
    if _load_error is not None:
        raise RuntimeError(
            "backend 'cpu' unavailable: the C++ extension pegasus._C did not load "
            f"({_load_error}). Rebuild it with `pip install --no-build-isolation -e .` "
            "against the installed torch."
        )
