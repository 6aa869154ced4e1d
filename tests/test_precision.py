"""--precision {fp32,bf16} (issue 14): bf16 autocast around the forward pass, float32 everything
that is kept; the default follows the hardware; --resume may switch it."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from pegasus.cli import main
from pegasus.training import PRECISIONS, TrainConfig, bf16_supported, resolve_precision

from .conftest import TINY_MODEL

TRAIN = ["--steps", "4", "--batch-size", "8", "--checkpoint-every", "2", "--device", "cpu",
         "--codes", str(TINY_MODEL["codes"]), "--dim", str(TINY_MODEL["dim"])]


def test_the_default_follows_the_hardware():
    ok, why = bf16_supported("cpu")
    assert isinstance(why, str) and why
    assert resolve_precision(None, "cpu") == ("bf16" if ok else "fp32")
    assert resolve_precision("fp32", "cpu") == "fp32" and PRECISIONS == ("fp32", "bf16")
    with pytest.raises(ValueError, match="precision should be one of fp32, bf16, got 'fp16'"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="precision should be one of fp32, bf16"):
        TrainConfig(precision="half")


def test_a_cpu_without_bf16_defaults_to_fp32(monkeypatch):
    from pegasus import machine

    monkeypatch.setattr(machine, "_capabilities", lambda: ({"architecture": "x86_64", "avx2": True, "fma3": True}, "CPUID"))
    assert bf16_supported("cpu") == (False, "the CPU has neither avx512_bf16 nor amx_bf16 (CPUID)")
    assert resolve_precision(None, "cpu") == "fp32"


def test_bf16_training_keeps_float32_and_resume_switches(tiny_folder, tmp_path):
    run = tmp_path / "r"
    assert main(["train-vqvae", "--data", str(tiny_folder), "--out", str(run), *TRAIN, "--precision", "bf16"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["precision"] == "bf16"
    assert {t.dtype for t in load_file(run / "vqvae.safetensors").values() if t.is_floating_point()} == {torch.float32}
    assert {t.dtype for k, t in load_file(run / "checkpoint.safetensors").items() if t.is_floating_point() and k != "rng.cpu"} == {torch.float32}
    assert main(["train-vqvae", "--data", str(tiny_folder), "--out", str(run), "--steps", "6", "--resume", "--precision", "fp32"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["precision"] == "fp32" and json.loads((run / "eval.json").read_text())["steps"] == 6
    # Without the flag, --resume keeps the saved precision.
    assert main(["train-vqvae", "--data", str(tiny_folder), "--out", str(run), "--steps", "7", "--resume"]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["precision"] == "fp32"


def test_bf16_and_fp32_train_to_nearby_losses(tiny_folder, tmp_path):
    """Autocast changes the arithmetic of the forward pass, not what is learned: after a few steps
    the two runs' reconstruction MSE agree closely (the 2000-step figure is in docs/benchmarks.md)."""
    mse = {}
    for precision in ("fp32", "bf16"):
        run = tmp_path / precision
        assert main(["train-vqvae", "--data", str(tiny_folder), "--out", str(run), *TRAIN, "--precision", precision]) == 0
        mse[precision] = json.loads((run / "eval.json").read_text())["test_mse"]
    assert mse["bf16"] == pytest.approx(mse["fp32"], rel=0.1)


def test_the_prior_takes_the_flag_and_resume_switches_it(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("prior*", "pegasi.png"))
    args = ["train-prior", "--run-dir", str(run), "--steps", "3", "--batch-size", "4", "--channels", "8", "--layers", "2",
            "--kernel", "3", "--device", "cpu", "--precision", "bf16"]
    assert main(args) == 0
    assert json.loads((run / "prior_config.json").read_text())["train"]["precision"] == "bf16"
    assert main([*args[:3], "--steps", "5", "--resume", "--precision", "fp32"]) == 0
    assert json.loads((run / "prior_config.json").read_text())["train"]["precision"] == "fp32"
