import os

import pytest
import torch

from pegasus import _extension


def pytest_report_header(config):
    ext = "loaded" if _extension.has_cpp_ops() else f"NOT loaded ({_extension.cpp_load_error()})"
    return [f"torch {torch.__version__}; pegasus._C {ext}; TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '')}"]


needs_ext = pytest.mark.skipif(not _extension.has_cpp_ops(), reason=f"pegasus._C not loaded: {_extension.cpp_load_error()}")


def random_prior(codes: int, layers: int, kernel: int, conditional: bool, dtype: torch.dtype, seed: int = 0, top_codes: int = 0):
    """A random GatedPixelCNN whose biases are random too (nn.Conv2d's default init leaves them small
    but nonzero; randomising them makes a wrongly placed bias or padding visible in the logits).
    top_codes: a bottom prior, conditioned on top grids of that many codes."""
    from pegasus import GatedPixelCNN

    torch.manual_seed(seed)
    prior = GatedPixelCNN(codes=codes, channels=6, layers=layers, kernel=kernel, conditional=conditional, top_codes=top_codes)
    with torch.no_grad():
        for p in prior.parameters():
            p.normal_(0, 0.5)
    return prior.to(dtype).eval()


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    # A developer's backend variables must not change what the tests check (PEGASUS_BACKEND is
    # retired, and raises if set, but a stale one in a shell must not fail every test either).
    for name in ("PEGASUS_BACKEND", "PEGASUS_NEAREST_CODE_BACKEND", "PEGASUS_SAMPLER_BACKEND"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    # Decoded image folders go to a per-session cache, never the user's ~/.cache/pegasus.
    old = os.environ.get("PEGASUS_CACHE_DIR")
    os.environ["PEGASUS_CACHE_DIR"] = str(tmp_path_factory.mktemp("pegasus-cache"))
    yield
    if old is None:
        os.environ.pop("PEGASUS_CACHE_DIR", None)
    else:
        os.environ["PEGASUS_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """A 16x16 PNG image folder (train/ and test/, 10 classes) in the real on-disk layout."""
    from pegasus.data.synthetic import write_image_folder

    return write_image_folder(tmp_path_factory.mktemp("tiny"), n_per_class=8, size=16)


TINY_MODEL = {"codes": 32, "dim": 8, "hidden": 16, "res_hidden": 8}


# Pipeline settings small enough for tests: 16x16 images -> 4x4 code grids.
TINY_PIPELINE = {
    "vqvae": TINY_MODEL,
    "vqvae_train": {"steps": 20, "batch_size": 16},
    "prior": {"channels": 8, "layers": 2, "kernel": 3},
    "prior_train": {"steps": 20, "batch_size": 16, "checkpoint_every": 10},
    "samples": 4,
}


@pytest.fixture(scope="session")
def tiny_run(tiny_folder, tmp_path_factory):
    """A run directory with every pipeline step done on `tiny_folder` (copy it before changing it)."""
    from pegasus.pipeline import run_pipeline

    out = tmp_path_factory.mktemp("tiny-run") / "run"
    run_pipeline(tiny_folder, out, settings=TINY_PIPELINE, progress=False)
    return out
