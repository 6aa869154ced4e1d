"""Interpolation, prior training (held-out NLL, exact resume), load_run and the resumable pipeline."""
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import pegasus
from pegasus import pipeline
from pegasus.checkpoint import CheckpointError
from pegasus.data import load_dataset
from pegasus.images import images_to_tensor
from pegasus.interpolate import interpolate
from pegasus.mixing import choose_pairs
from pegasus.sampling import SamplingOptions
from pegasus.rundir import load_prior, read_latents
from pegasus.train_prior import train_prior
from pegasus.training import TrainingError

from .conftest import TINY_PIPELINE

RUN_FILES = [
    "vqvae.safetensors", "selection.json", "selection.png", "latents.safetensors", "interpolation.png",
    "prior.safetensors", "prior_config.json", "prior_eval.json", "prior_metrics.jsonl", "pegasi.png",
]


def test_pipeline_writes_everything_and_skips_done_steps(tiny_folder, tiny_run):
    for name in RUN_FILES:
        assert (tiny_run / name).stat().st_size > 0, name
    assert not list(tiny_run.glob(".*.tmp"))
    assert pipeline.run_pipeline(tiny_folder, tiny_run, settings=TINY_PIPELINE, progress=False) == dict.fromkeys(
        ["train-vqvae", "select", "interpolate", "train-prior", "sample"], "skipped"
    )
    ev = json.loads((tiny_run / "prior_eval.json").read_text())
    assert ev["heldout_bits_per_position"] == pytest.approx(ev["heldout_nll_nats"] / np.log(2))
    assert 0 < ev["heldout_bits_per_position"] < 2 * ev["uniform_bits_per_position"]
    assert ev["steps"] == 20 and ev["pairs"] == 64 and ev["heldout_grids"] == 6 * 11


def test_the_recipes_temperature_is_written_and_sampled_at(tiny_folder, tiny_run, tmp_path):
    from PIL import Image

    from pegasus.rundir import read_sampling_defaults
    from pegasus.sample import sample_to_file

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "pegasi.png").unlink()
    done = pipeline.run_pipeline(tiny_folder, run, settings={**TINY_PIPELINE, "temperature": 0.5}, progress=False)
    assert done["sample"] == "ran" and done["train-prior"] == "skipped"
    assert read_sampling_defaults(run) == {"temperature": 0.5}
    sample_to_file(run, tmp_path / "explicit.png", n=TINY_PIPELINE["samples"], options=SamplingOptions(temperature=0.5))
    with Image.open(run / "pegasi.png") as a, Image.open(tmp_path / "explicit.png") as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert "temperature" in pipeline.FULL and "temperature" not in pipeline.QUICK


def test_interpolation_endpoints_are_the_quantised_picks(tiny_run):
    lat = read_latents(tiny_run)
    sel = json.loads((tiny_run / "selection.json").read_text())
    assert lat["indices"].shape == (64, 11, 4, 4) and lat["indices"].dtype == torch.int64
    assert torch.allclose(lat["alphas"], torch.linspace(0, 1, 11))
    assert sorted(set(lat["pairs"][:, 0].tolist())) == sorted(sel["birds"]["ids"])
    run = pegasus.load_run(tiny_run)
    ds = load_dataset(sel["data"], sel["split"])
    with torch.no_grad():
        for col, alpha_pos in ((0, 0), (1, -1)):
            z = run.vqvae.encode(images_to_tensor(ds.images[lat["pairs"][:, col].numpy()]))
            assert torch.equal(lat["indices"][:, alpha_pos], run.vqvae.quantize(z))


def test_pairs_sample_and_alphas(tiny_run, tmp_path):
    assert choose_pairs(2, 3, None, 0).tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    some = choose_pairs(5, 6, 7, seed=1)
    assert len({tuple(p) for p in some.tolist()}) == 7 and np.array_equal(some, choose_pairs(5, 6, 7, seed=1))
    with pytest.raises(ValueError, match=r"pairs should be in 1..30 \(5 birds x 6 horses\), got 31"):
        choose_pairs(5, 6, 31, seed=0)
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    summary = interpolate(run, pairs=5, alphas=[0.0, 0.5, 1.0], seed=2)
    assert summary["grids"] == 15 and read_latents(run)["indices"].shape == (5, 3, 4, 4)
    with pytest.raises(ValueError, match=r"alphas should be a non-empty list of numbers in \[0, 1\], got \[1.2\]"):
        interpolate(run, alphas=[1.2])


def test_mirror_doubles_the_grids_and_holds_out_a_pair_with_its_mirror(tiny_run, tmp_path):
    from pegasus.train_prior import split_latents

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    summary = interpolate(run, pairs=6, alphas=[0.0, 1.0], seed=3, mirror=True)
    lat = read_latents(run)
    assert summary["grids"] == 24 and lat["indices"].shape == (12, 2, 4, 4)
    assert lat["mirrored"].tolist() == [False] * 6 + [True] * 6
    assert torch.equal(lat["pairs"][:6], lat["pairs"][6:])
    with torch.no_grad():  # the mirrored copy of pair 0 at alpha 0 is the flipped bird's code grid
        data_path = json.loads((run / "selection.json").read_text())["data"]
        bird = images_to_tensor(load_dataset(data_path, "train").images[lat["pairs"][:1, 0].numpy()])
        vqvae = pegasus.load_run(run).vqvae
        expected = vqvae.quantize(vqvae.encode(bird.flip(-1)))
    assert torch.equal(lat["indices"][6, 0], expected[0])
    data = split_latents(lat, held_out=0.34, seed=0)  # 2 of the 6 distinct pairs, with their mirrors
    assert data.held.shape[0] == 2 * 2 * 2 and data.train.shape[0] == 4 * 2 * 2


def test_train_prior_resume_is_exact(tiny_run, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        shutil.copytree(tiny_run, d, ignore=shutil.ignore_patterns("prior*"))
    cfg = {"channels": 8, "layers": 2, "kernel": 3}
    train = {"batch_size": 16, "log_every": 1, "checkpoint_every": 4}
    ev_a = train_prior(a, prior_cfg=cfg, train_cfg={**train, "steps": 8}, progress=False)
    train_prior(b, prior_cfg=cfg, train_cfg={**train, "steps": 4}, progress=False)
    torch.manual_seed(99)  # the checkpoint, not the caller's RNG, decides what happens next
    ev_b = train_prior(b, train_cfg={"steps": 8}, resume=True, progress=False)
    wa, wb = load_file(a / "prior.safetensors"), load_file(b / "prior.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert ev_a == ev_b
    with pytest.raises(TrainingError, match="already holds a run"):
        train_prior(b, prior_cfg=cfg, train_cfg=train, progress=False)
    with pytest.raises(TrainingError, match=r"can only change --steps.*'channels': \(8, 16\)"):
        train_prior(b, prior_cfg={"channels": 16}, resume=True, progress=False)


def test_load_run_samples_images(tiny_run):
    run = pegasus.load_run(tiny_run)
    images = run.sample(3, alpha=0.2, options=SamplingOptions(temperature=0.9, seed=1, top_k=5))
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.uint8
    grids = run.sample_indices(3, alpha=0.2, options=SamplingOptions(temperature=0.9, seed=1, top_k=5))
    assert torch.equal(run.decode(grids), images)
    assert run.prior.cfg.grid == (4, 4) and not run.prior.training
    with pytest.raises(ValueError, match=r"alpha should be in \[0, 1\], got 2"):
        run.sample(1, alpha=2)
    # Everything after alpha is keyword-only.
    with pytest.raises(TypeError):
        run.sample(1, 0.2, 0.9)
    with pytest.raises(TypeError):
        run.sample_indices(1, 0.2, 0.9)


def test_missing_files_name_the_command(tiny_run, tmp_path):
    with pytest.raises(CheckpointError, match=r"config.json is missing: run `pegasus train-vqvae --data PATH --out"):
        pegasus.load_run(tmp_path)
    shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns("prior*", "latents*", "selection*"))
    with pytest.raises(CheckpointError, match=r"prior_config.json is missing: run `pegasus train-prior --run-dir "):
        pegasus.load_run(tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"latents.safetensors is missing: run `pegasus interpolate --run-dir "):
        train_prior(tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match=r"selection.json is missing: run `pegasus select --run-dir "):
        interpolate(tmp_path / "run")


def test_killed_pipeline_resumes_the_prior(tiny_folder, tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("prior*", "pegasi.png"))
    # As if killed after the step-10 checkpoint of train-prior: a checkpoint, no final weights.
    train_prior(run, prior_cfg=TINY_PIPELINE["prior"], train_cfg={**TINY_PIPELINE["prior_train"], "steps": 10}, progress=False)
    for name in ("prior.safetensors", "prior_eval.json"):
        (run / name).unlink()
    done = pipeline.run_pipeline(tiny_folder, run, settings=TINY_PIPELINE, progress=False)
    assert done == {"train-vqvae": "skipped", "select": "skipped", "interpolate": "skipped", "train-prior": "ran", "sample": "ran"}
    # Resumed from step 10, it ends where the uninterrupted run did.
    assert json.loads((run / "prior_eval.json").read_text()) == json.loads((tiny_run / "prior_eval.json").read_text())
    assert all(torch.equal(p, q) for p, q in zip(load_prior(run).parameters(), load_prior(tiny_run).parameters()))
    assert (run / "pegasi.png").read_bytes() == (tiny_run / "pegasi.png").read_bytes()


def test_stl10_96x96_pipeline_gives_24x24_latents_and_samples(tmp_path):
    """The 96x96 path end to end on a synthetic folder in the official stl10_binary format (STL-10
    itself is not on these machines): 4x downsampling gives 24x24 code grids, sampled and decoded."""
    from PIL import Image

    from pegasus.data.synthetic import write_stl10_binary

    data = write_stl10_binary(tmp_path / "data", n_train=60, n_test=10)
    out = tmp_path / "run"
    pipeline.run_pipeline(data, out, settings=TINY_PIPELINE, progress=False)
    assert read_latents(out)["indices"].shape[-2:] == (24, 24)
    run = pegasus.load_run(out)
    assert run.prior.cfg.grid == (24, 24)
    assert run.sample(2, options=SamplingOptions(seed=1)).shape == (2, 3, 96, 96)
    with Image.open(out / "pegasi.png") as png:
        assert png.height >= 96 and png.width >= TINY_PIPELINE["samples"] * 96
