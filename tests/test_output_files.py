"""What pegasus writes (issue 12's defects): permissions that respect the umask, the image format
the suffix names, nothing machine-specific in shipped weights, and a sample count that cannot fit
refused up front with what would fit."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from PIL import Image

from pegasus.checkpoint import CheckpointError, atomic_write_bytes
from pegasus.cli import main
from pegasus.pretrained import WEIGHTS_DIR, export_run

from .conftest import needs_ext


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_written_files_respect_the_umask(tmp_path, umask_027):
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o640
    os.umask(0o022)
    atomic_write_bytes(tmp_path / "b.bin", b"x", keep_previous=True)
    atomic_write_bytes(tmp_path / "b.bin", b"y", keep_previous=True)
    assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.prev.bin").stat().st_mode) == 0o644


@needs_ext
@pytest.mark.parametrize("suffix, fmt", [(".png", "PNG"), (".jpg", "JPEG"), (".JPEG", "JPEG"), (".webp", "WEBP")])
def test_generate_writes_the_format_its_suffix_names(tmp_path, suffix, fmt):
    out = tmp_path / f"pegasi{suffix}"
    os.umask(0o022)
    assert main(["generate", "-n", "2", "--out", str(out)]) == 0
    with Image.open(out) as img:
        assert img.format == fmt and img.mode == "RGB"
    assert stat.S_IMODE(out.stat().st_mode) == 0o644  # readable by others, as a plain open() would make it


@pytest.mark.parametrize("name", ["pegasi.bmp", "pegasi.png.gz", "pegasi.tar"])
def test_an_unknown_suffix_is_refused_in_one_line(tmp_path, capsys, name):
    with pytest.raises(SystemExit) as e:
        main(["generate", "-n", "2", "--out", str(tmp_path / name)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "argument --out: expected an image grid (.png, .jpg, .jpeg, .webp), an .npz or a directory" in err[0]
    assert not (tmp_path / name).exists()


@needs_ext
def test_a_sample_count_that_cannot_fit_says_what_would(capsys):
    """Issue 12: `generate --n 100000000` printed the allocator's "tried to allocate 26214400000000
    bytes". An image grid of that many is refused up front; sampling them at once from Python says
    how many would fit; in batches (issue 14) they can go to a directory or an .npz."""
    assert main(["generate", "-n", "100000000", "--out", "never.png"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["pegasus: error: an image grid holds at most 1024 samples, asked for 100000000; write a directory "
                   "(--out DIR) or an .npz (--out FILE.npz) instead"]
    assert not Path("never.png").exists()
    from pegasus import pretrained

    with pytest.raises(MemoryError, match=r"n=100000000 samples would need .* GiB is available on cpu: at most \d+ fit now"):
        pretrained().sample_indices(100_000_000)


def _strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_shipped_weights_hold_no_absolute_path():
    for path in WEIGHTS_DIR.glob("*.json"):
        for s in _strings(json.loads(path.read_text())):
            assert not os.path.isabs(s), f"{path.name} ships the absolute path {s!r}"


def test_export_records_data_by_name_and_refuses_other_absolute_paths(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    selection = json.loads((run / "selection.json").read_text())
    selection["data"] = "/home/someone/data/cifar10-jpg.tar.gz"
    (run / "selection.json").write_text(json.dumps(selection))
    export_run(run, tmp_path / "shipped")
    assert json.loads((tmp_path / "shipped" / "selection.json").read_text())["data"] == "cifar10-jpg.tar.gz"

    evaluation = json.loads((run / "prior_eval.json").read_text())
    evaluation["made_on"] = "/home/someone/runs/r1"
    (run / "prior_eval.json").write_text(json.dumps(evaluation))
    with pytest.raises(CheckpointError, match=r"refusing to write the absolute path '/home/someone/runs/r1'"):
        export_run(run, tmp_path / "shipped2")


def test_selection_records_the_data_as_given(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_folder.parent)
    assert main(["select", "--run-dir", str(tmp_path / "r"), "--data", tiny_folder.name, "--birds", "2", "--horses", "2"]) == 0
    assert json.loads((tmp_path / "r" / "selection.json").read_text())["data"] == tiny_folder.name


def test_the_noise_estimate_matches_what_gumbel_noise_allocates():
    """check_fits counts 12 bytes a value: the float64 draws and their float32 copy."""
    from pegasus.sampling import check_fits

    with pytest.raises(MemoryError, match=r"at most \d+ fit now"):
        check_fits(10**12, (8, 8), 512, torch.device("cpu"))
    check_fits(64, (8, 8), 512, torch.device("cpu"))  # fits: no error
