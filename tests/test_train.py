"""VQ-VAE training: learning, exact resume, NaN handling, artifacts and refusals."""
import json

import pytest
import torch
from safetensors.torch import load_file

import pegasus.train_vqvae as train_mod
from pegasus.checkpoint import CheckpointError, atomic_write_bytes, load_checkpoint, save_checkpoint
from pegasus.models import VQVAE, VQVAEConfig
from pegasus.rundir import load_vqvae
from pegasus.train_vqvae import train_vqvae
from pegasus.training import TrainingError

from .conftest import TINY_MODEL


def run(data, out, **train):
    cfg = {"batch_size": 16, "log_every": 1, "checkpoint_every": 1000, **train}
    return train_vqvae(data, out, model_cfg=TINY_MODEL, train_cfg=cfg, progress=False)


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_and_artifacts_are_written(tiny_folder, tmp_path):
    out = tmp_path / "run"
    summary = run(tiny_folder, out, steps=40, lr=3e-3)
    mse = [r["mse"] for r in metrics(out)]
    assert len(mse) == 40
    assert sum(mse[-5:]) / 5 < 0.6 * sum(mse[:5]) / 5
    for name in ["config.json", "checkpoint.safetensors", "vqvae.safetensors", "eval.json", "reconstructions.png", "loss_curves.png"]:
        assert (out / name).stat().st_size > 0, name
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert json.loads((out / "eval.json").read_text()) == summary
    assert 0 < summary["test_mse"] < mse[0] and 1 <= summary["codes_in_use"] <= 32
    model = load_vqvae(out)
    assert isinstance(model, VQVAE) and not model.training and model.cfg.codes == 32


def test_resume_is_exact(tiny_folder, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run(tiny_folder, a, steps=20)
    run(tiny_folder, b, steps=10)
    torch.manual_seed(1234)  # the checkpoint, not the caller's RNG, decides what happens next
    train_vqvae(tiny_folder, b, train_cfg={"steps": 20}, resume=True, progress=False)
    wa, wb = load_file(a / "vqvae.safetensors"), load_file(b / "vqvae.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert metrics(a) == [{**r, "images_per_s": m["images_per_s"]} for r, m in zip(metrics(b), metrics(a))]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_folder, tmp_path, monkeypatch):
    real_loss = train_mod._loss
    calls = {"n": 0}

    def poisoned(model, x, variance, *perceptual):
        calls["n"] += 1
        parts = real_loss(model, x, variance, *perceptual)
        if calls["n"] == 7:
            parts["loss"] = parts["loss"] * float("nan")
        return parts

    monkeypatch.setattr(train_mod, "_loss", poisoned)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"loss became nan at step 7; .*checkpoint\.safetensors \(step 5\)"):
        run(tiny_folder, out, steps=20, checkpoint_every=5)
    model = VQVAE(VQVAEConfig(**TINY_MODEL))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad])
    step, _ = load_checkpoint(out / "checkpoint.safetensors", model, opt)
    assert step == 5
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not (out / "vqvae.safetensors").exists()


def test_refuses_to_overwrite_or_resume_wrongly(tiny_folder, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="holds no checkpoint.safetensors"):
        train_vqvae(tiny_folder, out, resume=True, progress=False)
    run(tiny_folder, out, steps=2)
    with pytest.raises(TrainingError, match="already holds a run"):
        run(tiny_folder, out, steps=4)
    with pytest.raises(TrainingError, match=r"can only change --steps.*'codes': \(32, 64\)"):
        train_vqvae(tiny_folder, out, model_cfg={"codes": 64}, train_cfg={"steps": 4}, resume=True, progress=False)
    with pytest.raises(TrainingError, match=r"'batch_size': \(16, 8\)"):
        train_vqvae(tiny_folder, out, train_cfg={"steps": 4, "batch_size": 8}, resume=True, progress=False)


def test_bad_settings():
    with pytest.raises(ValueError, match="batch-size should be > 0, got 0"):
        train_mod.TrainConfig(batch_size=0)


def test_checkpoint_round_trip_and_corruption(tmp_path):
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(**TINY_MODEL))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model(torch.rand(2, 3, 16, 16)).recon.sum().backward()
    opt.step()
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, model, opt, step=3, extra={"note": "x"})
    expected_rng = torch.rand(3)
    model2 = VQVAE(VQVAEConfig(**TINY_MODEL))
    opt2 = torch.optim.Adam([p for p in model2.parameters() if p.requires_grad], lr=5.0)
    assert load_checkpoint(path, model2, opt2) == (3, {"note": "x"})
    assert torch.equal(torch.rand(3), expected_rng)  # the RNG state was restored
    for (k, v), v2 in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(v, v2), k
    assert opt2.param_groups[0]["lr"] == 1e-3
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[i]["exp_avg_sq"], s2[i]["exp_avg_sq"]) for i in s1)
    atomic_write_bytes(path, path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="ck.safetensors: not a readable safetensors file"):
        load_checkpoint(path, model2, opt2)
    save_checkpoint(path, VQVAE(VQVAEConfig(codes=8, dim=8, hidden=16, res_hidden=8)), opt, step=1)
    with pytest.raises(CheckpointError, match=r"quantizer.embedding has shape \(8, 8\), the model expects \(32, 8\)"):
        load_checkpoint(path, model2, opt2)
