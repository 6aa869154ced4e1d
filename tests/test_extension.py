"""The compiled extension and the backend choice."""
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from pegasus import _extension, backends

CPU = torch.device("cpu")


def resolve_backend(backend, device, family="nearest_code", dtype=None):
    return backends.resolve(family, backend, device, dtype)


@pytest.mark.skipif(os.environ.get("PEGASUS_REQUIRE_EXT") != "1", reason="set PEGASUS_REQUIRE_EXT=1 to require pegasus._C")
def test_extension_built_and_loaded():
    assert _extension.has_cpp_ops(), f"pegasus._C did not load: {_extension.cpp_load_error()}"
    assert torch.ops.pegasus.nearest_code.default is not None


def test_default_backend_follows_extension(monkeypatch):
    assert resolve_backend(None, CPU, "nearest_code") == ("cpu" if _extension.has_cpp_ops() else "reference")
    assert resolve_backend(None, CPU, "sampler", torch.float32) == ("cpu" if _extension.has_cpp_ops() else "reference")
    monkeypatch.setattr(_extension, "_load_error", "ImportError: simulated")
    assert resolve_backend(None, CPU, "nearest_code") == "reference"
    assert resolve_backend(None, CPU, "sampler", torch.float32) == "reference"
    with pytest.raises(RuntimeError, match="nearest_code backend 'cpu' unavailable.*simulated"):
        resolve_backend("cpu", CPU, "nearest_code")
    with pytest.raises(RuntimeError, match="sampler backend 'cpu' unavailable.*simulated"):
        resolve_backend("cpu", CPU, "sampler")


def test_environment_variable_overrides_default(monkeypatch):
    monkeypatch.setenv("PEGASUS_NEAREST_CODE_BACKEND", "reference")
    assert resolve_backend(None, CPU, "nearest_code") == "reference"
    monkeypatch.setenv("PEGASUS_NEAREST_CODE_BACKEND", "fast")
    with pytest.raises(ValueError, match=r"PEGASUS_NEAREST_CODE_BACKEND should be one of reference, cpu, triton \(nearest_code backends\), got 'fast'"):
        resolve_backend(None, CPU, "nearest_code")
    # The argument wins over the environment.
    assert resolve_backend("reference", CPU, "nearest_code") == "reference"
    # Each family reads its own variable.
    assert resolve_backend(None, CPU, "sampler", torch.float32) == ("cpu" if _extension.has_cpp_ops() else "reference")
    monkeypatch.setenv("PEGASUS_SAMPLER_BACKEND", "reference")
    assert resolve_backend(None, CPU, "sampler", torch.float32) == "reference"


def test_retired_environment_variable_names_the_new_ones(monkeypatch):
    monkeypatch.setenv("PEGASUS_BACKEND", "reference")
    for family in ("nearest_code", "sampler"):
        with pytest.raises(ValueError, match="PEGASUS_BACKEND is no longer read: set PEGASUS_NEAREST_CODE_BACKEND .* or PEGASUS_SAMPLER_BACKEND"):
            resolve_backend(None, CPU, family)


def test_unknown_and_unavailable_backends(monkeypatch):
    with pytest.raises(ValueError, match="backend should be one of .* got 'cuda'"):
        resolve_backend("cuda", CPU, "nearest_code")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="backend 'triton' unavailable: "):
        resolve_backend("triton", CPU, "nearest_code")
    if _extension.has_cpp_ops():
        with pytest.raises(RuntimeError, match="nearest_code backend 'cpu' unavailable: it runs on CPU tensors; got tensors on meta"):
            resolve_backend("cpu", torch.device("meta"), "nearest_code")


def test_import_without_extension_uses_reference():
    # sys.modules[name] = None makes `import pegasus._C` fail, as a missing or broken build would.
    code = (
        "import sys; sys.modules['pegasus._C'] = None\n"
        "import torch, pegasus\n"
        "from pegasus import _extension\n"
        "assert not _extension.has_cpp_ops()\n"
        "i, d = pegasus.ops.nearest_code(torch.zeros(2, 3), torch.eye(3))\n"
        "assert i.tolist() == [0, 0]\n"
        "try:\n"
        "    pegasus.ops.nearest_code(torch.zeros(2, 3), torch.eye(3), backend='cpu')\n"
        "except RuntimeError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "backend 'cpu' unavailable: the C++ extension pegasus._C did not load" in out


@pytest.mark.skipif(importlib.util.find_spec("triton") is None or not _extension.has_cpp_ops(), reason="needs triton and pegasus._C")
def test_triton_on_cpu_tensors_only_under_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1; got tensors on cpu"):
        resolve_backend("triton", CPU, "nearest_code")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("triton", CPU, "nearest_code") == "triton"
    assert resolve_backend(None, CPU, "nearest_code") != "triton"  # never the default on CPU
