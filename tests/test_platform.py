"""The machine, told truthfully (issue 23): the CPU's BF16 read from the CPU, a warning when bf16 is
forced on a CPU that emulates it, `pegasus info`'s default precision, benchmark records that carry
the CPU, and the sampler's threads when another process holds a core."""
from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys

import pytest
import torch

from pegasus import machine, training
from pegasus.cli import main

from .conftest import TINY_MODEL

NO_BF16 = {"architecture": "x86_64", "cpu_name": "Some EPYC", "avx2": True, "fma3": True, "avx512_bf16": False, "amx_bf16": False}
BF16 = {**NO_BF16, "avx512_f": True, "avx512_bf16": True}


@pytest.fixture
def cpu_caps(monkeypatch):
    """Sets what torch.cpu.get_capabilities reports (through pegasus.machine), and forgets the
    bf16 warning already given in this process."""
    monkeypatch.setattr(training, "_warned_emulated_bf16", False)

    def set_caps(caps: dict | None) -> None:
        monkeypatch.setattr(machine, "_capabilities", lambda: None if caps is None else (caps, "CPUID"))

    return set_caps


def test_bf16_is_read_from_the_cpu(cpu_caps):
    cpu_caps(NO_BF16)
    assert machine.cpu_isa() == (["avx2", "fma"], "CPUID")
    assert training.bf16_supported("cpu") == (False, "the CPU has neither avx512_bf16 nor amx_bf16 (CPUID)")
    assert training.resolve_precision(None, "cpu") == "fp32"
    cpu_caps(BF16)
    assert machine.cpu_isa() == (["avx2", "fma", "avx512f", "avx512_bf16"], "CPUID")
    if torch.backends.mkldnn.is_available():
        assert training.bf16_supported("cpu") == (True, "the CPU has avx512_bf16 (CPUID)")
        assert training.resolve_precision(None, "cpu") == "bf16"


def test_proc_cpuinfo_only_where_torch_cannot_read_the_cpu(cpu_caps, monkeypatch):
    cpu_caps(None)
    monkeypatch.setattr(machine, "_proc_cpuinfo", lambda: {"model name": "Host  CPU", "flags": "fpu avx2 fma amx_tile amx_bf16"})
    assert machine.cpu_isa() == (["avx2", "fma", "amx_tile", "amx_bf16"], "/proc/cpuinfo")
    assert machine.cpu_name() == "Host CPU"
    monkeypatch.setattr(machine, "_proc_cpuinfo", lambda: {"Features": "fp asimd sve"})  # aarch64's spelling
    assert machine.cpu_isa() == (["neon", "sve"], "/proc/cpuinfo")
    monkeypatch.setattr(machine, "_proc_cpuinfo", lambda: {})
    assert machine.cpu_isa() == (None, "/proc/cpuinfo") and machine.cpu_name() == "unknown CPU"
    assert training.bf16_supported("cpu") == (False, "/proc/cpuinfo is unreadable, so the CPU's bfloat16 support is unknown")


def test_the_real_cpu_is_read_by_torch():
    isa, source = machine.cpu_isa()
    assert source in ("CPUID", "HWCAP") and isa is not None and set(isa) <= set(machine.ISA)
    assert machine.cpu_name() != "unknown CPU"


def _settings(tmp_path, name, precision):
    train = {} if precision is None else {"precision": precision}
    return training.run_settings(tmp_path / name, "config.json", "checkpoint.safetensors", "vqvae", {}, train, resume=False)


def test_forced_bf16_on_a_cpu_without_it_warns_once(cpu_caps, tmp_path, caplog):
    cpu_caps(NO_BF16)
    with caplog.at_level(logging.WARNING, logger="pegasus.training"):
        assert _settings(tmp_path, "a", "bf16")[1]["precision"] == "bf16"  # warned, and proceeds in bf16
        assert _settings(tmp_path, "b", "bf16")[1]["precision"] == "bf16"  # the pipeline's second stage: not again
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("warning: --precision bf16: bfloat16 is emulated on this CPU, because the CPU has neither avx512_bf16 nor amx_bf16 (CPUID)")
    assert "~20x slower" in line and "16 images/s against ~320" in line and "\n" not in line


@pytest.mark.parametrize("caps, precision", [(BF16, "bf16"), (NO_BF16, "fp32"), (NO_BF16, None)], ids=["native", "fp32", "auto"])
def test_no_warning_where_bf16_is_native_or_not_used(cpu_caps, tmp_path, caplog, caps, precision):
    if caps is BF16 and not torch.backends.mkldnn.is_available():
        pytest.skip("torch without oneDNN: bf16 is not native anywhere")
    cpu_caps(caps)
    with caplog.at_level(logging.WARNING, logger="pegasus.training"):
        _settings(tmp_path, "a", precision)
    assert caplog.records == []


def test_the_warning_is_one_line_on_stderr(tiny_folder, tmp_path):
    """What the user sees: train-vqvae --precision bf16, then a resume in the same process (as the
    pipeline trains two models), on a CPU reported without BF16: one line, and training goes on."""
    run = tmp_path / "r"
    tiny = ["--codes", str(TINY_MODEL["codes"]), "--dim", str(TINY_MODEL["dim"]), "--batch-size", "4", "--device", "cpu"]
    script = (
        "import sys\n"
        "from pegasus import machine\n"
        f"machine._capabilities = lambda: ({NO_BF16!r}, 'CPUID')\n"
        "from pegasus.cli import main\n"
        f"assert main(['train-vqvae', '--data', {str(tiny_folder)!r}, '--out', {str(run)!r}, '--steps', '1', '--precision', 'bf16', *{tiny!r}]) == 0\n"
        f"assert main(['train-vqvae', '--data', {str(tiny_folder)!r}, '--out', {str(run)!r}, '--steps', '2', '--resume']) == 0\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "bfloat16 is emulated" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: --precision bf16:")
    assert json.loads((run / "config.json").read_text())["train"]["precision"] == "bf16"


def test_info_says_what_auto_picks_and_why(cpu_caps, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu_caps(NO_BF16)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "training precision (auto, cpu): fp32, because the CPU has neither avx512_bf16 nor amx_bf16 (CPUID)\n" in out
    assert "CPU: Some EPYC: avx2 fma (CPUID); torch's CPU kernels built for " in out
    assert "\nthreads: 1\n" in out or f"\nthreads: {torch.get_num_threads()}; a parallel region of them takes " in out
    cpu_caps(BF16)
    assert main(["info"]) == 0
    want = "bf16, because the CPU has avx512_bf16 (CPUID)" if torch.backends.mkldnn.is_available() else "fp32, because"
    assert f"training precision (auto, cpu): {want}" in capsys.readouterr().out


def test_benchmark_records_carry_the_machine():
    from pegasus.bench import harness, sampler

    records, _ = sampler.run([((2, 2), 2)], min_run_time=0.01)
    m = harness.machine()
    assert set(m) == {"cpu", "isa", "isa_source", "torch_cpu_capability", "pegasus_cpu_capability", "threads", "cores", "calls_on_1_thread"}
    assert m["cpu"] == machine.cpu_name() and m["isa"] == machine.cpu_isa()[0] and m["threads"] == torch.get_num_threads()
    assert m["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    for line in harness.to_json_lines(records).splitlines():
        assert json.loads(line)["machine"] == m
    header = sampler.header("cpu")
    assert f"on {m['cpu']} ({' '.join(m['isa'])}; torch {m['torch_cpu_capability']}" in header
    assert header.endswith(f"{m['threads']} threads")


@pytest.fixture
def two_threads(monkeypatch):
    """torch on 2 threads as its default, the user having chosen none, and no verdict on the cores
    yet (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for name, value in (("_DEFAULT_THREADS", 2), ("_explicit_threads", False), ("_busy", None), ("_noted_busy", False)):
        monkeypatch.setattr(machine, name, value)
    yield
    torch.set_num_threads(threads)


def _default_prior_grids(batch: int, grid: tuple[int, int] = (3, 4)) -> torch.Tensor:
    """Grids of the default prior configuration (big enough for the C++ steps to split the work
    across threads: the batch for 2 samples or more, a product's columns for 1)."""
    from pegasus.bench.sampler import make_prior
    from pegasus.sampling import gumbel_noise, sample_indices

    prior = make_prior("cpu")
    noise = gumbel_noise(batch, grid, prior.cfg.codes, seed=3)
    return sample_indices(prior, batch, alpha=0.3, noise=noise)


@pytest.mark.parametrize("batch", [1, 5])
def test_sampled_grids_do_not_depend_on_the_thread_count(two_threads, monkeypatch, batch):
    monkeypatch.setattr(machine, "_explicit_threads", True)  # no guard: exactly the count set
    two = _default_prior_grids(batch)
    torch.set_num_threads(1)
    one = _default_prior_grids(batch)
    assert torch.equal(one, two)


def test_a_busy_core_drops_sampling_to_one_thread_once_noted(two_threads, monkeypatch, caplog):
    from pegasus import ops

    free = _default_prior_grids(3)
    seen = []
    real_kernels = ops.sampler_kernels

    def counted(*args):  # the loop the sampler resolves, counting the threads it runs on
        kernels = real_kernels(*args)
        return dataclasses.replace(kernels, sample_loop=lambda *a: (seen.append(torch.get_num_threads()), kernels.sample_loop(*a))[1])

    monkeypatch.setattr(ops, "sampler_kernels", counted)
    monkeypatch.setattr(machine, "parallel_region_s", lambda: 8e-3)  # another process holds a core
    # `free` may have found the host really busy (helpers, CI neighbours): forget its verdict and note
    for name, value in (("_busy", None), ("_noted_busy", False)):
        monkeypatch.setattr(machine, name, value)
    caplog.clear()
    calls = machine.guarded_calls
    with caplog.at_level(logging.WARNING, logger="pegasus.machine"):
        busy = _default_prior_grids(3)
        _default_prior_grids(3)
    assert torch.equal(busy, free) and seen == [1, 1] and torch.get_num_threads() == 2
    assert machine.guarded_calls == calls + 2
    (note,) = [r.getMessage() for r in caplog.records]
    assert note.startswith("note: another process is using this CPU's cores (a parallel region of 2 threads took 8.0 ms")
    assert "so sampling runs on 1 thread" in note and "--threads N" in note


@pytest.mark.parametrize("chosen", ["--threads", "OMP_NUM_THREADS", "torch.set_num_threads"])
def test_threads_the_user_chose_win_over_the_guard(two_threads, monkeypatch, chosen):
    monkeypatch.setattr(machine, "parallel_region_s", lambda: 8e-3)
    if chosen == "--threads":
        machine.set_threads(2)
    elif chosen == "OMP_NUM_THREADS":
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
    else:
        torch.set_num_threads(3)
    threads = torch.get_num_threads()
    with machine.guarded_threads("sampling") as used:
        assert used == threads == torch.get_num_threads()
    with pytest.raises(ValueError, match="threads should be an integer >= 1, got 0"):
        machine.set_threads(0)


def test_free_cores_keep_every_thread_and_a_busy_verdict_is_reused(two_threads, monkeypatch):
    monkeypatch.setattr(machine, "parallel_region_s", lambda: 20e-6)
    with machine.guarded_threads("sampling") as used:
        assert used == 2
    timed = []
    monkeypatch.setattr(machine, "parallel_region_s", lambda: timed.append(1) or 8e-3)
    assert machine.busy_cores() == machine.busy_cores() == 8e-3 and timed == [1]  # one check a BUSY_RECHECK_S
    torch.set_num_threads(1)
    assert machine.busy_cores() is None  # nothing to wait for on one thread


def test_the_real_parallel_region_is_timed():
    assert 0 < machine.parallel_region_s() < 1.0


def test_training_warns_when_a_core_is_busy(two_threads, monkeypatch, tiny_folder, tmp_path, caplog):
    monkeypatch.setattr(machine, "parallel_region_s", lambda: 8e-3)
    tiny = ["--codes", str(TINY_MODEL["codes"]), "--dim", str(TINY_MODEL["dim"]), "--batch-size", "4", "--device", "cpu"]
    with caplog.at_level(logging.WARNING, logger="pegasus.training"):
        assert main(["train-vqvae", "--data", str(tiny_folder), "--out", str(tmp_path / "r"), "--steps", "1", "--precision", "fp32", *tiny]) == 0
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("warning: another process is using this CPU's cores (a parallel region of 2 threads took 8.0 ms")
    assert "--threads 1 avoids it" in line
