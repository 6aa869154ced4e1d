import os

import pytest
import torch

from pegasus import _extension


def pytest_report_header(config):
    ext = "loaded" if _extension.has_cpp_ops() else f"NOT loaded ({_extension.cpp_load_error()})"
    return [f"torch {torch.__version__}; pegasus._C {ext}; TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '')}"]


needs_ext = pytest.mark.skipif(not _extension.has_cpp_ops(), reason=f"pegasus._C not loaded: {_extension.cpp_load_error()}")


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    # A developer's PEGASUS_BACKEND must not change what the tests check.
    monkeypatch.delenv("PEGASUS_BACKEND", raising=False)
