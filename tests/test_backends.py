"""The one table of backends (pegasus.backends): what the CLI, the benches, `pegasus info` and the
environment variables read, and the one rule of choice."""
from __future__ import annotations

import pytest
import torch

from pegasus import _extension, backends
from pegasus.cli import build_parser, main
from pegasus.models.pixelcnn import GatedPixelCNN
from pegasus.sampling import METHODS
from tests._sampling import draw

CPU = torch.device("cpu")


def _choices(command: str, option: str) -> tuple[str, ...]:
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    return tuple(next(a for a in sub._actions if option in a.option_strings).choices)


def test_cli_choices_are_the_table():
    assert _choices("train-vqvae", "--backend") == backends.NEAREST_CODE.names() == ("reference", "cpu", "triton")
    assert _choices("sample", "--backend") == backends.SAMPLER.names() == ("reference", "cpu", "triton")
    assert _choices("generate", "--backend") == backends.SAMPLER.names()
    # the naive sampler is a method, chosen apart from the kernels of the cached method's steps
    assert _choices("sample", "--method") == _choices("generate", "--method") == METHODS == ("cached", "naive")


def test_every_family_names_its_variable_and_ops():
    assert {f.env for f in backends.FAMILIES.values()} == {"PEGASUS_NEAREST_CODE_BACKEND", "PEGASUS_SAMPLER_BACKEND"}
    assert backends.SAMPLER.ops == ("sample_row", "sample_position", "sample_loop")


@pytest.mark.parametrize("family", ["nearest_code", "sampler"])
def test_argument_then_variable_then_default(family, monkeypatch):
    fam = backends.FAMILIES[family]
    fastest = "cpu" if _extension.has_cpp_ops() else "reference"
    assert backends.resolve(family, None, CPU) == fastest
    monkeypatch.setenv(fam.env, "reference")
    assert backends.resolve(family, None, CPU) == "reference"
    if _extension.has_cpp_ops():
        assert backends.resolve(family, "cpu", CPU) == "cpu"  # the argument comes first
    monkeypatch.setenv(fam.env, "fast")
    with pytest.raises(ValueError, match=rf"{fam.env} should be one of {', '.join(fam.names())} \({family} backends\), got 'fast'"):
        backends.resolve(family, None, CPU)
    with pytest.raises(ValueError, match=rf"backend should be one of {', '.join(fam.names())}"):
        backends.resolve(family, "cached", CPU)


def test_one_variable_one_meaning(monkeypatch, tmp_path, capsys, tiny_folder):
    """The report of issue 12: PEGASUS_BACKEND=cached meant a sampler to `sample` and an error to
    `train-vqvae`. Each variable now belongs to one family; the sampler's does not reach training."""
    monkeypatch.setenv("PEGASUS_SAMPLER_BACKEND", "reference")
    args = ["train-vqvae", "--data", str(tiny_folder), "--out", str(tmp_path / "r"), "--steps", "1", "--batch-size", "4",
            "--codes", "8", "--dim", "4", "--device", "cpu"]
    assert main(args) == 0
    capsys.readouterr()
    monkeypatch.setenv("PEGASUS_BACKEND", "cached")
    assert main([*args[:4], str(tmp_path / "r2"), *args[5:]]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1:] == ["pegasus: error: PEGASUS_BACKEND is no longer read: set PEGASUS_NEAREST_CODE_BACKEND (reference, cpu, "
                   "triton) or PEGASUS_SAMPLER_BACKEND (reference, cpu, triton)"]


def test_the_sampler_variable_picks_the_sampler(monkeypatch):
    torch.manual_seed(0)
    prior = GatedPixelCNN(codes=5, channels=4, layers=2, kernel=3, grid=(3, 3)).eval()
    calls = []
    import pegasus.reference as reference

    monkeypatch.setattr(reference, "sample_loop", lambda *a, **k: calls.append("reference") or (torch.zeros(1, 3, 3, dtype=torch.long), None))
    monkeypatch.setenv("PEGASUS_SAMPLER_BACKEND", "reference")
    draw(prior, 1)
    assert calls == ["reference"]
    # "naive" is a method: not a value of the variable, and a method that runs no step op reads none
    monkeypatch.setenv("PEGASUS_SAMPLER_BACKEND", "naive")
    with pytest.raises(ValueError, match=r"PEGASUS_SAMPLER_BACKEND should be one of reference, cpu, triton \(sampler backends\), got 'naive'"):
        draw(prior, 1)
    monkeypatch.setenv("PEGASUS_SAMPLER_BACKEND", "reference")
    assert draw(prior, 1, sampler="naive").shape == (1, 3, 3) and calls == ["reference"]


def test_why_a_backend_cannot_run():
    if _extension.has_cpp_ops():
        assert backends.unavailable("sampler", "cpu", "meta") == "it runs on CPU tensors; got tensors on meta"
        assert backends.unavailable("sampler", "cpu", CPU, torch.bfloat16) == "its kernels take float32 and float64, got bfloat16"
        assert backends.unavailable("nearest_code", "cpu", CPU, torch.bfloat16) is None  # its wrapper takes bfloat16
    if not backends.triton_interpreting():
        why = backends.unavailable("nearest_code", "triton", CPU)
        assert why is not None and ("TRITON_INTERPRET=1" in why or "not installed" in why or "did not load" in why)
    assert backends.default("sampler", CPU, torch.bfloat16) == "reference"
    with pytest.raises(RuntimeError, match=r"sampler backend 'cpu' unavailable: its kernels take float32 and float64"):
        backends.resolve("sampler", "cpu", CPU, torch.bfloat16) if _extension.has_cpp_ops() else (_ for _ in ()).throw(
            RuntimeError("sampler backend 'cpu' unavailable: its kernels take float32 and float64"))


def test_triton_is_never_the_default_on_cpu():
    for family in backends.FAMILIES:
        assert backends.default(family, CPU) != "triton"


def test_info_prints_the_table(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for fam in backends.FAMILIES.values():
        assert fam.env in out
        for b in fam.backends:
            assert f"{b.name:<10} {b.summary}" in out


def test_runnable_lists_what_runs_and_why_not():
    names, notes = backends.runnable("sampler", CPU)
    assert names[:1] == ["reference"]
    assert ("cpu" in names) == _extension.has_cpp_ops()
    for note in notes:
        assert note.split(" skipped: ")[0] in backends.SAMPLER.names()
