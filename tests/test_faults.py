"""Faults: SIGKILL mid-run, mid-checkpoint-write and mid-rotation, corrupt checkpoints, a killed
pipeline, and run directories or files from another version or model.

The killed runs are child processes that SIGKILL themselves at a chosen point (no cleanup, no
finally blocks run); the resumed run must end bit-identical to an uninterrupted one. Every run
here uses one thread, so that the child and this process compute the same floats.
"""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pegasus import pipeline
from pegasus.checkpoint import CheckpointError, atomic_write_bytes, previous_path
from pegasus.cli import main
from pegasus.rundir import load_prior, load_vqvae
from pegasus.train_vqvae import train_vqvae

from .conftest import TINY_MODEL, TINY_PIPELINE

REPO = Path(__file__).resolve().parents[1]
TRAIN = {"steps": 20, "batch_size": 16, "log_every": 1, "checkpoint_every": 5}

# argv: MODE N DATA OUT. Trains TINY_MODEL with TRAIN and SIGKILLs itself:
#   step   N: as step N starts (checkpoints of steps 5 and 10 written)
#   write  N: in the fsync of the N-th checkpoint's temp file, after cutting it to half its size
#   rotate N: after the N-th checkpoint's predecessor became checkpoint.prev, before the rename
CHILD = rf"""
import os, signal, sys
import torch
torch.set_num_threads(1)
import pegasus.train_vqvae as train_mod
mode, n, data, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
seen = {{"n": 0}}

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def is_checkpoint_temp(name):
    return os.path.basename(name).startswith(".checkpoint.safetensors.") and name.endswith(".tmp")

if mode == "step":
    real_loss = train_mod._loss
    def loss(*args):
        seen["n"] += 1
        if seen["n"] == n:
            die()
        return real_loss(*args)
    train_mod._loss = loss
elif mode == "write":
    real_fsync = os.fsync
    def fsync(fd):
        if is_checkpoint_temp(os.readlink(f"/proc/self/fd/{{fd}}")):
            seen["n"] += 1
            if seen["n"] == n:
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
                die()
        return real_fsync(fd)
    os.fsync = fsync
elif mode == "rotate":
    real_replace = os.replace
    def replace(src, dst):
        if is_checkpoint_temp(str(src)):
            seen["n"] += 1
            if seen["n"] == n:
                die()
        return real_replace(src, dst)
    os.replace = replace
train_mod.train_vqvae(data, out, model_cfg={TINY_MODEL!r}, train_cfg={TRAIN!r}, progress=False)
"""


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def uninterrupted(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_vqvae(tiny_folder, out, model_cfg=TINY_MODEL, train_cfg=TRAIN, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


def _metrics(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"} for line in (out / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(out: Path, reference: Path) -> None:
    got, want = load_file(out / "vqvae.safetensors"), load_file(reference / "vqvae.safetensors")
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert _metrics(out) == _metrics(reference)
    assert not list(out.glob(".*.tmp"))


def _checkpoint_step(path: Path) -> int:
    from pegasus.checkpoint import load_tensors

    return int(load_tensors(path)[1]["step"])


@pytest.mark.parametrize(
    ("mode", "n", "newest", "prev"),
    [("step", 13, 10, 5), ("write", 3, 10, 5), ("rotate", 3, 10, 10)],
    ids=["between-checkpoints", "during-checkpoint-write", "during-rotation"],
)
def test_sigkilled_training_resumes_to_the_uninterrupted_result(tiny_folder, uninterrupted, tmp_path, one_thread, mode, n, newest, prev):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", CHILD, mode, str(n), str(tiny_folder), str(out)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert not (out / "vqvae.safetensors").exists()
    ckpt = out / "checkpoint.safetensors"
    assert (_checkpoint_step(ckpt), _checkpoint_step(previous_path(ckpt))) == (newest, prev)
    if mode != "step":
        assert list(out.glob(".checkpoint.safetensors.*.tmp"))  # what the killed writer left
    train_vqvae(tiny_folder, out, resume=True, progress=False)
    _assert_same_run(out, uninterrupted)


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tiny_folder, uninterrupted, tmp_path, one_thread, caplog):
    out = tmp_path / "run"
    train_vqvae(tiny_folder, out, model_cfg=TINY_MODEL, train_cfg={**TRAIN, "steps": 10}, progress=False)
    ckpt, prev = out / "checkpoint.safetensors", out / "checkpoint.prev.safetensors"
    data = bytearray(ckpt.read_bytes())
    data[-100] ^= 0xFF  # one flipped bit pattern in the tensor body: only the sha256 notices
    atomic_write_bytes(ckpt, bytes(data))
    with caplog.at_level(logging.WARNING, logger="pegasus.checkpoint"):
        train_vqvae(tiny_folder, out, train_cfg={"steps": 20}, resume=True, progress=False)
    [warning] = [r.getMessage() for r in caplog.records if r.name == "pegasus.checkpoint"]
    assert warning == (f"warning: {ckpt}: corrupt: the tensors' sha256 differs from the one recorded when it was written; "
                       f"resuming from the previous checkpoint {prev} (step 5)")
    _assert_same_run(out, uninterrupted)

    # Both unusable: one error naming both files and what is wrong with each.
    atomic_write_bytes(ckpt, ckpt.read_bytes()[:1000])
    prev.unlink()
    with pytest.raises(CheckpointError, match=rf"no usable checkpoint to resume from: {ckpt}: not a readable safetensors file .*; {prev}: no such file"):
        train_vqvae(tiny_folder, out, train_cfg={"steps": 30}, resume=True, progress=False)


def test_sigkilled_pipeline_resumes_the_prior_stage(tiny_folder, tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("prior*", "pegasi.png"))
    # Each prior step sleeps 0.1 s, so the kill lands between the step-10 checkpoint and step 20.
    child = (
        "import sys, time, torch\n"
        f"torch.set_num_threads({torch.get_num_threads()})\n"  # the threads tiny_run was trained with
        "from pegasus import pipeline\n"
        "import pegasus.train_prior as prior\n"
        "real = prior._cross_entropy\n"
        "def slow(*args, **kwargs):\n"
        "    time.sleep(0.1)\n"
        "    return real(*args, **kwargs)\n"
        "prior._cross_entropy = slow\n"
        f"pipeline.run_pipeline(sys.argv[1], sys.argv[2], settings={TINY_PIPELINE!r}, progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", child, str(tiny_folder), str(run)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "prior_checkpoint.safetensors").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    assert (run / "prior_checkpoint.safetensors").exists() and not (run / "prior.safetensors").exists()

    done = pipeline.run_pipeline(tiny_folder, run, settings=TINY_PIPELINE, progress=False)
    assert done == {"train-vqvae": "skipped", "select": "skipped", "interpolate": "skipped", "train-prior": "ran", "sample": "ran"}
    assert json.loads((run / "prior_eval.json").read_text()) == json.loads((tiny_run / "prior_eval.json").read_text())
    assert all(torch.equal(p, q) for p, q in zip(load_prior(run).parameters(), load_prior(tiny_run).parameters()))


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_run_directory_of_another_format_is_refused(tiny_folder, tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    config = json.loads((run / "config.json").read_text())
    assert (config["format"], config["pegasus"]) == (1, pegasus_version())
    _edit_json(run / "config.json", format=2, pegasus="9.0")
    expected = rf"{run / 'config.json'}: run directory format 2 \(written by pegasus 9.0\), expected format 1 \(pegasus {pegasus_version()}\)"
    with pytest.raises(CheckpointError, match=expected):
        load_vqvae(run)
    with pytest.raises(CheckpointError, match=expected):
        train_vqvae(tiny_folder, run, train_cfg={"steps": 30}, resume=True, progress=False)
    assert main(["train-vqvae", "--data", str(tiny_folder), "--out", str(run), "--steps", "30", "--resume"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run directory format 2" in err, err

    _edit_json(run / "prior_config.json", format="x")
    with pytest.raises(CheckpointError, match=r"prior_config.json: run directory format 'x'"):
        load_prior(run)

    # Unstamped (written before the stamp existed): format 1.
    (run / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k not in ("format", "pegasus")}))
    assert load_vqvae(run).cfg.codes == TINY_MODEL["codes"]


def pegasus_version() -> str:
    import pegasus

    return pegasus.__version__


def test_checkpoint_or_weights_of_another_model_are_refused(tiny_folder, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train = {**TRAIN, "steps": 2}
    train_vqvae(tiny_folder, a, model_cfg=TINY_MODEL, train_cfg=train, progress=False)
    train_vqvae(tiny_folder, b, model_cfg={**TINY_MODEL, "codes": 16, "dim": 4}, train_cfg=train, progress=False)
    shutil.copy(b / "checkpoint.safetensors", a / "checkpoint.safetensors")
    with pytest.raises(CheckpointError, match=rf"{a / 'checkpoint.safetensors'}: a checkpoint of another model: expected codes=32, dim=8, found codes=16, dim=4"):
        train_vqvae(tiny_folder, a, train_cfg={"steps": 4}, resume=True, progress=False)
    shutil.copy(b / "vqvae.safetensors", a / "vqvae.safetensors")
    with pytest.raises(CheckpointError, match=rf"{a / 'vqvae.safetensors'}: weights of another model: expected codes=32, dim=8, found codes=16, dim=4"):
        load_vqvae(a)
