"""A two-level run end to end (VQ-VAE-2): `pipeline --levels 2` (the VQ-VAE, the picks, interpolation
of both levels, the top prior in RUN_DIR/top/, the bottom prior conditioned on the top grids), the
same grids on every sampler backend, the control (keep the top codes and resample the bottom, or the
reverse) from Python and the CLI, evaluate, the two-level bench, and the 96x96 STL-10 path."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from pegasus import pipeline
from pegasus.cli import main
from pegasus.rundir import load_prior, read_latents
from pegasus.rundir import load_run

from .conftest import TINY_PIPELINE, needs_ext
from .test_sample_loop import LOOP_BACKENDS
from pegasus.sampling import SamplingOptions

TWO_LEVELS = {**TINY_PIPELINE, "interpolate": {"mirror": True, "class_grids": True},
              "prior_train": {**TINY_PIPELINE["prior_train"], "pretrain_steps": 4}}


@pytest.fixture(scope="module")
def run2(tiny_folder, tmp_path_factory):
    """A two-level run of every pipeline step on the 16x16 tiny folder: 2x2 top and 4x4 bottom grids."""
    out = tmp_path_factory.mktemp("two-level") / "run"
    done = pipeline.run_pipeline(tiny_folder, out, settings=TWO_LEVELS, progress=False, levels=2)
    assert done == dict.fromkeys(["train-vqvae", "select", "interpolate", "train-prior-top", "train-prior", "sample"], "ran")
    return out


def test_pipeline_writes_both_priors_and_skips_when_done(tiny_folder, run2):
    for name in ("top/prior.safetensors", "top/prior_eval.json", "top/prior_config.json", "prior.safetensors", "pegasi.png"):
        assert (run2 / name).stat().st_size > 0, name
    lat = read_latents(run2)
    assert lat["top"].shape == (*lat["indices"].shape[:2], 2, 2) and lat["indices"].shape[-2:] == (4, 4)
    top, bottom = load_prior(run2, level="top"), load_prior(run2)
    assert top.cfg.grid == (2, 2) and top.cfg.top_codes == 0
    assert bottom.cfg.grid == (4, 4) and bottom.cfg.top_codes == 32
    assert json.loads((run2 / "top/prior_eval.json").read_text())["level"] == "top"
    again = pipeline.run_pipeline(tiny_folder, run2, settings=TWO_LEVELS, progress=False, levels=2)
    assert set(again.values()) == {"skipped"}


@needs_ext
def test_every_backend_gives_the_same_two_level_grids(run2):
    run = load_run(run2)
    assert run.levels == 2 and run.grids == [(2, 2), (4, 4)] and run.image_size == (16, 16)
    naive = run.sample_codes(5, 0.4, options=SamplingOptions(seed=3, method="naive"))
    for backend in ["reference"] + LOOP_BACKENDS:
        got = run.sample_codes(5, 0.4, options=SamplingOptions(seed=3, backend=backend))
        assert all(torch.equal(a, b) for a, b in zip(naive, got)), backend
    # batch by batch, and as images, the same samples
    images = run.sample(5, 0.4, options=SamplingOptions(seed=3, batch_size=2))
    assert torch.equal(images, run.decode(naive))


def test_keep_top_resamples_only_the_bottom_and_the_reverse(run2):
    run = load_run(run2)
    top, bottom = run.sample_codes(6, 0.5, options=SamplingOptions(seed=0))
    # The bottom draws come from their own noise stream: kept top codes leave them as they were.
    assert torch.equal(run.sample_codes(6, 0.5, top=top, options=SamplingOptions(seed=0))[1], bottom)
    shape = run.sample_codes(6, 0.5, top=top[0], options=SamplingOptions(seed=1))  # one top grid for all: same shape, new texture
    assert (shape[0] == top[0]).all() and len({tuple(g.flatten().tolist()) for g in shape[1]}) > 1
    texture = run.sample_codes(6, 0.5, bottom=bottom[0], options=SamplingOptions(seed=1))
    assert (texture[1] == bottom[0]).all() and len({tuple(g.flatten().tolist()) for g in texture[0]}) > 1
    with pytest.raises(ValueError, match="not both"):
        run.sample_codes(2, top=top[:2], bottom=bottom[:2])
    with pytest.raises(ValueError, match=r"top should be int64 code grids \[n, 2, 2\]"):
        run.sample(2, top=bottom[:2])
    with pytest.raises(ValueError, match="holds 6 grids for n=2"):
        run.sample(2, top=top)
    with pytest.raises(ValueError, match="sample_codes gives"):
        run.sample_indices(2)


def test_swap_levels_rows_share_the_top_columns_the_bottom(run2, tiny_run):
    run = load_run(run2)
    codes = run.sample_codes(3, 0.5, options=SamplingOptions(seed=2))
    sheet = run.swap_levels(codes)
    assert sheet.shape == (3, 3, 3, 16, 16) and sheet.dtype == torch.uint8
    assert torch.equal(sheet.diagonal(dim1=0, dim2=1).permute(3, 0, 1, 2), run.decode(codes))
    assert torch.equal(sheet[0, 2], run.decode([codes[0][:1], codes[1][2:]])[0])
    with pytest.raises(ValueError, match="one-level run"):
        load_run(tiny_run).swap_levels(codes)


def test_cli_keep_top_and_keep_bottom(run2, tiny_run, tmp_path, capsys):
    picture = tmp_path / "from.png"
    Image.fromarray(np.full((40, 24, 3), 200, np.uint8)).save(picture)  # another size: resized to 16x16
    out = tmp_path / "shape.png"
    assert main(["sample", "--run-dir", str(run2), "--out", str(out), "-n", "4", "--keep-top", str(picture)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kept_top"] == str(picture) and summary["top_grid"] == [2, 2] and out.stat().st_size > 0
    run = load_run(run2)
    x = torch.from_numpy(np.asarray(Image.open(picture).convert("RGB").resize((16, 16), Image.Resampling.LANCZOS)).copy())
    expected = run.sample(4, 0.5, top=run.encode(x.permute(2, 0, 1)[None])[0][0], options=SamplingOptions(seed=0))
    assert np.array_equal(np.asarray(Image.open(out)), _grid_of(expected, tmp_path))
    assert main(["sample", "--run-dir", str(run2), "--out", str(tmp_path / "t.png"), "-n", "2", "--keep-bottom", str(picture)]) == 0
    assert json.loads(capsys.readouterr().out)["kept_bottom"] == str(picture)
    cases = [
        (["--run-dir", str(tiny_run), "--keep-top", str(picture)], "--keep-top needs a two-level run"),
        (["--run-dir", str(run2), "--keep-top", str(tmp_path / "missing.png")], "missing.png: not a picture"),
        (["--run-dir", str(run2), "--keep-top", str(picture), "--keep-bottom", str(picture)], "keep one level"),
    ]
    for argv, message in cases:
        assert main(["sample", "--out", str(tmp_path / "x.png"), *argv]) == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def _grid_of(images: torch.Tensor, tmp_path) -> np.ndarray:
    from pegasus.images import save_grid

    path = tmp_path / "expected.png"
    save_grid(images, path, nrow=8, scale=4)
    return np.asarray(Image.open(path))


def test_train_prior_levels_and_mismatched_runs_say_what_is_wrong(run2, tiny_run, tmp_path, capsys):
    assert main(["train-prior", "--run-dir", str(tiny_run), "--level", "top", "--steps", "2"]) == 1
    err = capsys.readouterr().err
    assert "holds no top grids (a one-level run)" in err and "Traceback" not in err
    broken = tmp_path / "no-top"
    shutil.copytree(run2, broken)
    shutil.rmtree(broken / "top")
    assert main(["sample", "--run-dir", str(broken), "--out", str(tmp_path / "s.png")]) == 1
    assert "top/prior_config.json" in capsys.readouterr().err


def test_export_ships_the_top_prior(run2, tmp_path):
    from pegasus.pretrained import export_run

    sizes = export_run(run2, tmp_path / "w", half=True)
    assert {"vqvae.safetensors", "prior.safetensors", "top/prior.safetensors", "top/prior_config.json"} <= set(sizes)
    shipped, run = load_run(tmp_path / "w"), load_run(run2)
    assert shipped.levels == 2 and shipped.grids == run.grids
    assert shipped.sample(3, options=SamplingOptions(seed=0)).shape == (3, 3, 16, 16)


def test_evaluate_understands_two_level_runs(run2, tmp_path):
    from pegasus.evaluate import evaluate_run
    from pegasus.train_classifier import train_classifier

    from .test_quality import TINY_CLASSIFIER

    clf = tmp_path / "clf"
    train_classifier(_data_of(run2), clf, train_cfg={"steps": 2, "batch_size": 16}, widths=TINY_CLASSIFIER, progress=False)
    report = evaluate_run(run2, classifier=clf, n=4, out=tmp_path / "eval", progress=False)
    assert 0 <= report["test_accuracy"]["kept"] and set(report["stages"]["samples"]) == {"0", "0.25", "0.5", "0.75", "1"}


def _data_of(run_dir):
    return json.loads((run_dir / "selection.json").read_text())["data"]


@needs_ext
def test_two_level_bench_cases_agree_with_naive():
    from pegasus.bench import sampler

    naive = sampler.setup("naive", (4, 4), 2, levels=2)()
    assert torch.equal(naive, sampler.setup("cpu", (4, 4), 2, levels=2)())
    assert sampler.setup("naive", (4, 4), 2, rows=2, levels=2)().shape == (2, 4, 4)  # the scaled timing's call


@needs_ext
def test_96x96_stl10_two_levels_sample_on_every_backend(tmp_path):
    """The STL-10 path: 12x12 top and 24x24 bottom grids, from files in STL-10's binary format."""
    from pegasus.data.synthetic import write_stl10_binary

    data = write_stl10_binary(tmp_path / "data", n_train=40, n_test=4)
    settings = {**TINY_PIPELINE, "vqvae_train": {"steps": 2, "batch_size": 8}, "samples": 2,
                "prior_train": {"steps": 2, "batch_size": 8, "checkpoint_every": 2},
                "select": {"birds": 2, "horses": 2}, "interpolate": {"alphas": [0.0, 0.5, 1.0]}}
    pipeline.run_pipeline(data, tmp_path / "run", settings=settings, progress=False, levels=2)
    run = load_run(tmp_path / "run")
    assert run.grids == [(12, 12), (24, 24)] and run.image_size == (96, 96)
    reference = run.sample_codes(2, 0.5, options=SamplingOptions(seed=0, backend="reference"))
    # cpu only: the Triton interpreter would take a minute here (the small-grid tests cover it)
    assert all(torch.equal(a, b) for a, b in zip(reference, run.sample_codes(2, 0.5, options=SamplingOptions(seed=0, backend="cpu"))))
    assert run.sample(2, options=SamplingOptions(seed=0)).shape == (2, 3, 96, 96)
