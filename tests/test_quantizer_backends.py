"""The VectorQuantizer on the C++ backend trains exactly like on the reference backend."""
import json

import pytest

from pegasus.train_vqvae import train_vqvae

from .conftest import TINY_MODEL, needs_ext


@needs_ext
def test_cpu_backend_trains_like_reference(tiny_folder, tmp_path):
    losses = {}
    for backend in ["reference", "cpu"]:
        out = tmp_path / backend
        cfg = {"steps": 6, "batch_size": 16, "log_every": 1, "checkpoint_every": 1000, "seed": 3}
        train_vqvae(tiny_folder, out, model_cfg=TINY_MODEL, train_cfg=cfg, backend=backend, progress=False)
        losses[backend] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses["cpu"]) == 6
    for ref, cpu in zip(losses["reference"], losses["cpu"]):
        for key in ["loss", "mse", "vq_loss", "perplexity"]:
            assert cpu[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-5), (key, ref["step"])
