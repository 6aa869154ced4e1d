"""The two-level VQ-VAE (VQVAE2, `train-vqvae --levels 2`): grid sizes, the bottom codes chosen
knowing the top ones, gradients to both levels, training with per-level figures and exact resume.
The later stages of a two-level run: tests/test_two_level_run.py."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from pegasus.cli import main
from pegasus.models import VQVAE, VQVAE2, VQVAEConfig, build_vqvae
from pegasus.rundir import load_vqvae
from pegasus.train_vqvae import train_vqvae

from .conftest import TINY_MODEL

SMALL = VQVAEConfig(levels=2, codes=16, dim=8, hidden=16, res_hidden=8)


def small_model(seed: int = 0, **cfg) -> VQVAE2:
    torch.manual_seed(seed)
    return build_vqvae(VQVAEConfig(**{**SMALL.to_dict(), **cfg}))


@pytest.mark.parametrize(("size", "downsample", "top", "bottom"), [(32, 4, 4, 8), (96, 4, 12, 24), (32, 2, 8, 16)])
def test_grid_sizes(size, downsample, top, bottom):
    model = small_model(downsample=downsample)
    assert model.cfg.factors == [2 * downsample, downsample]
    x = torch.rand(2, 3, size, size)
    out = model(x)
    assert out.recon.shape == x.shape
    assert out.indices.shape == (2, bottom, bottom) and out.top.indices.shape == (2, top, top)
    grids = model.eval().codes(x)
    assert [tuple(g.shape) for g in grids] == [(2, top, top), (2, bottom, bottom)]
    assert all(g.dtype == torch.int64 and 0 <= g.min() and g.max() < 16 for g in grids)


def test_codes_then_decode_codes_is_the_forward_reconstruction():
    model = small_model()
    x = torch.rand(4, 3, 32, 32)
    model(x)  # initialises both codebooks from this batch
    model.eval()
    out = model(x)
    grids = model.codes(x)
    assert torch.equal(grids[0], out.top.indices) and torch.equal(grids[1], out.indices)
    torch.testing.assert_close(model.decode_codes(grids), out.recon, rtol=0, atol=1e-5)


def test_the_image_depends_on_both_levels_and_both_levels_learn():
    model = small_model()
    x = torch.rand(4, 3, 32, 32)
    out = model(x)
    (out.recon.square().mean() + out.vq_loss).backward()
    for name in ("encoder_bottom", "encoder_top", "decoder_top", "pre_bottom", "upsample_top", "decoder"):
        grads = [p.grad for p in getattr(model, name).parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), name
    model.eval()
    top, bottom = model.codes(x)
    image = model.decode_codes([top, bottom])
    assert not torch.equal(model.decode_codes([(top + 1) % 16, bottom]), image)
    assert not torch.equal(model.decode_codes([top, (bottom + 1) % 16]), image)
    # The bottom codes are chosen knowing the top ones: other top codes give other bottom latents.
    features = model.encoder_bottom(x - 0.5)
    z1 = model._bottom_latents(features, model.quantizer_top.lookup(top))
    z2 = model._bottom_latents(features, model.quantizer_top.lookup((top + 1) % 16))
    assert not torch.equal(z1, z2)


def test_bad_levels_and_mismatched_grids():
    with pytest.raises(ValueError, match="levels should be 1 or 2, got 3"):
        VQVAEConfig(levels=3)
    with pytest.raises(ValueError, match="use VQVAE2"):
        VQVAE(SMALL)
    with pytest.raises(ValueError, match="use VQVAE"):
        VQVAE2(VQVAEConfig())
    model = small_model().eval()
    with pytest.raises(ValueError, match=r"multiples of 8, got \(1, 3, 20, 20\)"):
        model(torch.rand(1, 3, 20, 20))
    with pytest.raises(ValueError, match="half the bottom grid"):
        model.decode_codes([torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 4, dtype=torch.long)])


def _train(data, out, steps, **extra):
    cfg = {"steps": steps, "batch_size": 16, "log_every": 1, "checkpoint_every": 3}
    return train_vqvae(data, out, model_cfg={**TINY_MODEL, "levels": 2}, train_cfg=cfg, progress=False, **extra)


def test_training_two_levels_reports_both_and_resumes_exactly(tiny_folder, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    summary = _train(tiny_folder, a, 8)
    assert json.loads((a / "config.json").read_text())["vqvae"]["levels"] == 2
    assert 1 <= summary["top_codes_in_use"] <= 32 and summary["top_test_perplexity"] >= 1
    assert 1 <= summary["codes_in_use"] <= 32 and summary["test_mse"] > 0
    records = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 8 and all(r["top_perplexity"] >= 1 and 0 < r["top_usage"] <= 1 for r in records)
    for name in ("reconstructions.png", "loss_curves.png", "vqvae.safetensors"):
        assert (a / name).stat().st_size > 0
    assert isinstance(load_vqvae(a), VQVAE2)

    _train(tiny_folder, b, 5)
    torch.manual_seed(99)
    train_vqvae(tiny_folder, b, train_cfg={"steps": 8}, resume=True, progress=False)
    wa, wb = load_file(a / "vqvae.safetensors"), load_file(b / "vqvae.safetensors")
    assert wa.keys() == wb.keys() and any(k.startswith("quantizer_top.") for k in wa)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_images_must_fit_the_top_level(tmp_path):
    from pegasus.data.synthetic import write_image_folder
    from pegasus.training import TrainingError

    data = write_image_folder(tmp_path / "data", n_per_class=2, size=12)  # 12: a multiple of 4, not of 8
    with pytest.raises(TrainingError, match="not multiples of the downsampling factor 8 of the top level"):
        _train(data, tmp_path / "run", 1)


def test_cli_levels_flag(tiny_folder, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["train-vqvae", "--data", str(tiny_folder), "--out", str(out), "--levels", "2", "--steps", "2",
            "--batch-size", "8", "--codes", "16", "--dim", "8"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.split("\nwrote")[0])["top_codes_in_use"] >= 1
    with pytest.raises(SystemExit):
        main(["train-vqvae", "--data", str(tiny_folder), "--out", str(tmp_path / "x"), "--levels", "3"])
    assert "invalid choice: 3" in capsys.readouterr().err


def test_96x96_stl10_format_trains_two_levels(tmp_path):
    from pegasus.data.synthetic import write_stl10_binary

    data = write_stl10_binary(tmp_path / "data", n_train=16, n_test=4)
    summary = _train(data, tmp_path / "run", 2)
    model = load_vqvae(tmp_path / "run")
    grids = model.codes(torch.rand(1, 3, 96, 96))
    assert [tuple(g.shape[-2:]) for g in grids] == [(12, 12), (24, 24)] and summary["test_images"] == 4


def test_one_level_files_are_what_they_were_before_levels_existed(tmp_path):
    """A one-level config leaves `levels` out, so config.json files and weights stamped with the
    config before two-level models existed still load, and new one-level files look the same."""
    from pegasus.checkpoint import atomic_write_text, save_weights

    assert "levels" not in VQVAEConfig().to_dict() and SMALL.to_dict()["levels"] == 2
    old = VQVAEConfig(codes=16, dim=8, hidden=16, res_hidden=8).to_dict()
    model = VQVAE(VQVAEConfig(**old))
    run = tmp_path / "old"
    run.mkdir()
    atomic_write_text(run / "config.json", json.dumps({"format": 1, "vqvae": old}))
    save_weights(run / "vqvae.safetensors", model, metadata={"config": json.dumps(old)})
    loaded = load_vqvae(run)
    assert isinstance(loaded, VQVAE) and loaded.cfg.levels == 1
