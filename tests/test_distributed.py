"""torchrun/DDP on the CPU: 2 gloo ranks on loopback train what 1 process does on twice the batch.

The ranks are spawned processes with the environment torchrun would give them (WORLD_SIZE, RANK,
LOCAL_RANK, MASTER_ADDR=127.0.0.1), one thread each; one test runs the real `torchrun -m pegasus`.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from pegasus.train_prior import train_prior
from pegasus.train_vqvae import train_vqvae

from .conftest import TINY_MODEL, TINY_PIPELINE

WORLD, B = 2, 8
# float32: the comparisons below are of rounding-level differences between batch splits, which
# bfloat16 autocast (the default on a CPU with avx512_bf16) would swamp.
VQ_TRAIN = {"batch_size": B, "log_every": 1, "checkpoint_every": 1000, "precision": "fp32"}
PRIOR_TRAIN = {"batch_size": B, "log_every": 1, "checkpoint_every": 1000, "precision": "fp32"}
STEPS = 6

# Measured here after 6 steps: at most 1.6e-7 absolute from one process on 2B (float sums in another order).
TOL = {"rtol": 1e-4, "atol": 1e-5}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, data: str, root: str) -> None:
    """One rank: the VQ-VAE for 3 steps then resumed to 6 and the prior for 6, each rank saving
    what it holds after training as ROOT/{vqvae,prior}-rank{rank}.safetensors; then a tiny
    pipeline, whose steps each rank records in ROOT/pipeline-rank{rank}.json."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import pegasus.train_prior as prior_mod
    import pegasus.train_vqvae as train_mod
    import pegasus.training as training
    from pegasus.models.pixelcnn import GatedPixelCNN

    root_path = Path(root)
    real_fit = training.fit

    def fit_and_dump(model, *args, **kwargs):
        result = real_fit(model, *args, **kwargs)
        name = "prior" if isinstance(model, GatedPixelCNN) else "vqvae"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, root_path / f"{name}-rank{rank}.safetensors")
        return result

    training.fit = fit_and_dump  # the loop of every trainer (pegasus.training.train runs it)
    train_mod.train_vqvae(data, root_path / "vq", model_cfg=TINY_MODEL, train_cfg={**VQ_TRAIN, "steps": 3}, progress=False)
    if rank == 0:  # a copy at step 3, resumed by one process below
        shutil.copytree(root_path / "vq", root_path / "vq3")
    train_mod.train_vqvae(data, root_path / "vq", train_cfg={"steps": STEPS}, resume=True, progress=False)
    prior_mod.train_prior(root_path / "prior", prior_cfg=TINY_PIPELINE["prior"], train_cfg={**PRIOR_TRAIN, "steps": STEPS}, progress=False)
    training.fit = real_fit
    from pegasus.pipeline import run_pipeline

    train = {"steps": 4, "batch_size": B, "log_every": 1}
    settings = {**TINY_PIPELINE, "vqvae_train": train, "prior_train": train}
    done = run_pipeline(data, root_path / "pipeline", settings=settings, progress=False)
    (root_path / f"pipeline-rank{rank}.json").write_text(json.dumps(done))


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _assert_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, b[k], **TOL, msg=lambda m, k=k: f"{k}: {m}")
        else:
            assert torch.equal(v, b[k]), k


def _spawn(fn, args: tuple, timeout: float = 120) -> None:
    """Run fn(rank, *args) in WORLD spawned processes; fail (not hang) if they take over `timeout` s."""
    ctx = mp.start_processes(fn, args, nprocs=WORLD, start_method="spawn", join=False)
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail(f"the {WORLD} ranks did not finish in {timeout} s")


@pytest.fixture(scope="module")
def ddp_runs(tiny_folder, tiny_run, tmp_path_factory):
    """ROOT with vq/ (2 ranks, 3 steps + resumed to 6), vq3/ (its copy at step 3), prior/ (2 ranks,
    6 steps) and each rank's final state."""
    root = tmp_path_factory.mktemp("ddp")
    shutil.copytree(tiny_run, root / "prior", ignore=shutil.ignore_patterns("prior*", "pegasi.png"))
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # read by torch in the spawned ranks
    try:
        _spawn(_worker, (_free_port(), str(tiny_folder), str(root)))
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = old
    return root


@pytest.fixture(scope="module")
def one_process(tiny_folder, tiny_run, tmp_path_factory):
    """The same training in one process on batches of WORLD * B."""
    root = tmp_path_factory.mktemp("single")
    shutil.copytree(tiny_run, root / "prior", ignore=shutil.ignore_patterns("prior*", "pegasi.png"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_vqvae(tiny_folder, root / "vq", model_cfg=TINY_MODEL, train_cfg={**VQ_TRAIN, "batch_size": WORLD * B, "steps": STEPS}, progress=False)
        train_prior(root / "prior", prior_cfg=TINY_PIPELINE["prior"], train_cfg={**PRIOR_TRAIN, "batch_size": WORLD * B, "steps": STEPS}, progress=False)
    finally:
        torch.set_num_threads(threads)
    return root


@pytest.mark.parametrize("name", ["vqvae", "prior"])
def test_ranks_hold_identical_parameters_and_codebooks(ddp_runs, name):
    rank0, rank1 = (load_file(ddp_runs / f"{name}-rank{r}.safetensors") for r in range(WORLD))
    assert rank0.keys() == rank1.keys()
    if name == "vqvae":
        assert {"quantizer.embedding", "quantizer.ema_count", "quantizer.ema_sum", "quantizer.steps_unused"} <= rank0.keys()
    for k in rank0:
        assert torch.equal(rank0[k], rank1[k]), k


def test_two_ranks_match_one_process_on_twice_the_batch(ddp_runs, one_process):
    # The VQ-VAE was stopped at step 3 and resumed by both ranks: still the uninterrupted run.
    _assert_close(load_file(ddp_runs / "vq" / "vqvae.safetensors"), load_file(one_process / "vq" / "vqvae.safetensors"))
    _assert_close(load_file(ddp_runs / "prior" / "prior.safetensors"), load_file(one_process / "prior" / "prior.safetensors"))
    # Rank 0 alone logged: one record per step, the means over the ranks (perplexity of the whole batch).
    for metrics in ("vq/metrics.jsonl", "prior/prior_metrics.jsonl"):
        ddp, one = _metrics(ddp_runs / metrics), _metrics(one_process / metrics)
        assert [r["step"] for r in ddp] == list(range(1, STEPS + 1))
        for r, s in zip(ddp, one):
            assert {k: pytest.approx(v, rel=1e-4, abs=1e-6) for k, v in r.items() if not k.endswith("_per_s")} == {
                k: v for k, v in s.items() if not k.endswith("_per_s")
            }
    config = json.loads((ddp_runs / "vq" / "config.json").read_text())
    assert config["world_size"] == WORLD and config["train"]["batch_size"] == B and config["format"] == 1
    assert json.loads((ddp_runs / "prior" / "prior_config.json").read_text())["world_size"] == WORLD
    assert not list(ddp_runs.glob("*/.*.tmp"))


def test_pipeline_runs_under_torchrun(ddp_runs):
    run = ddp_runs / "pipeline"
    for rank in range(WORLD):
        assert json.loads((ddp_runs / f"pipeline-rank{rank}.json").read_text()) == dict.fromkeys(
            ["train-vqvae", "select", "interpolate", "train-prior", "sample"], "ran"
        )
    for name in ("vqvae.safetensors", "selection.json", "latents.safetensors", "prior.safetensors", "pegasi.png"):
        assert (run / name).stat().st_size > 0, name
    assert json.loads((run / "prior_eval.json").read_text())["steps"] == 4
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_one_process_resumes_a_two_rank_run_with_the_same_step_batch(ddp_runs, one_process, tiny_folder, tmp_path):
    run = tmp_path / "vq3"
    shutil.copytree(ddp_runs / "vq3", run)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_vqvae(tiny_folder, run, train_cfg={"steps": STEPS}, resume=True, progress=False)
    finally:
        torch.set_num_threads(threads)
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 1 and config["train"]["batch_size"] == WORLD * B
    _assert_close(load_file(run / "vqvae.safetensors"), load_file(one_process / "vq" / "vqvae.safetensors"))


def test_torchrun_cli_trains_the_prior_on_two_ranks(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("prior*", "pegasi.png"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(WORLD),
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        "-m", "pegasus", "train-prior", "--run-dir", str(run), "--device", "cpu", "--steps", "4", "--batch-size", "4",
        "--channels", "8", "--layers", "2", "--kernel", "3", "--checkpoint-every", "2",
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    # Both ranks leave the process group before the interpreter winds down (pegasus._distributed.leave).
    assert "terminate called" not in res.stderr, res.stderr[-3000:]
    assert res.stdout.count('"heldout_nll_nats"') == 1 and res.stdout.count("wrote ") == 1, res.stdout  # rank 0 alone
    assert json.loads((run / "prior_eval.json").read_text())["steps"] == 4
    assert json.loads((run / "prior_config.json").read_text())["world_size"] == WORLD
    assert (run / "prior_checkpoint.prev.safetensors").is_file()
