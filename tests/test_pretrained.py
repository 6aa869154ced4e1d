"""The pretrained run shipped inside the package: `pegasus.pretrained()` and `pegasus generate`."""
import json
import sys

import pytest
import torch
from PIL import Image
from safetensors import safe_open

import pegasus
from pegasus.checkpoint import CheckpointError
from pegasus.cli import main
from pegasus.pretrained import WEIGHTS_DIR, export_run
from pegasus.sampling import SamplingOptions


def test_pretrained_is_a_run_like_load_run():
    run = pegasus.pretrained()
    assert isinstance(run, pegasus.Run) and run.run_dir == WEIGHTS_DIR
    assert next(run.prior.parameters()).dtype == torch.float32 and not run.prior.training
    again = pegasus.load_run(WEIGHTS_DIR)
    assert torch.equal(run.sample_indices(3, options=SamplingOptions(seed=5)), again.sample_indices(3, options=SamplingOptions(seed=5)))
    images = run.sample(2, alpha=0.5, options=SamplingOptions(seed=0))
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.uint8


def test_shipped_weights_are_small_and_documented():
    files = {str(p.relative_to(WEIGHTS_DIR)): p.stat().st_size for p in WEIGHTS_DIR.rglob("*") if p.is_file()}
    assert sum(files.values()) < 15 * 2**20, files
    # The run and the two classifiers (the one `evaluate` scores with, and the method's own in aux/).
    assert {"classifier.safetensors", "aux/classifier.safetensors", "classifier_eval.json"} <= set(files)
    for name in ("vqvae.safetensors", "prior.safetensors", "classifier.safetensors", "aux/classifier.safetensors"):
        with safe_open(WEIGHTS_DIR / name, "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} <= {torch.float32, torch.float16, torch.int64, torch.bool}, name
    assert json.loads((WEIGHTS_DIR / "classifier_eval.json").read_text())["test_accuracy"] >= 0.85
    selection = json.loads((WEIGHTS_DIR / "selection.json").read_text())
    assert selection["birds"]["ids"] and selection["horses"]["ids"]
    assert "heldout_bits_per_position" in json.loads((WEIGHTS_DIR / "prior_eval.json").read_text())


def test_generate_writes_a_png(tmp_path, capsys):
    out = tmp_path / "pegasi.png"
    assert main(["generate", "-n", "4", "--alpha", "0.3", "--seed", "1", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    with Image.open(out) as png:
        assert png.width >= 4 * 64 and png.height >= 64  # 32x32 images drawn at 2x


def test_generate_bad_input_is_one_line(capsys):
    assert main(["generate", "--alpha", "1.5", "--out", "unused.png"]) == 1
    assert capsys.readouterr().err.strip() == "pegasus: error: alpha should be in [0, 1], got 1.5"


def test_export_round_trip_and_missing_weights(tiny_run, tmp_path, monkeypatch):
    sizes = export_run(tiny_run, tmp_path / "w", half=True)
    assert {"vqvae.safetensors", "prior.safetensors", "config.json", "prior_config.json", "selection.json"} <= set(sizes)
    full, half = pegasus.load_run(tiny_run), pegasus.load_run(tmp_path / "w")
    for a, b in zip(full.prior.parameters(), half.prior.parameters()):
        torch.testing.assert_close(b, a.half().float())
    monkeypatch.setattr(sys.modules["pegasus.pretrained"], "WEIGHTS_DIR", tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="the pretrained weights are missing from .*nowhere"):
        pegasus.pretrained()
