"""A run's default sampling temperature (RUN_DIR/sampling.json): read, checked, and used by
Run.sample, `pegasus sample`, `pegasus evaluate`'s samples, the demo and export_run alike."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from pegasus.checkpoint import CheckpointError
from pegasus.cli import main
from pegasus.demo.settings import parse_settings
from pegasus.pretrained import export_run
from pegasus.rundir import SAMPLING, read_sampling_defaults, write_sampling_defaults
from pegasus.rundir import load_run
from pegasus.sampling import SamplingOptions


@pytest.fixture
def run_dir(tiny_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    return out


def test_without_the_file_the_temperature_is_one(run_dir):
    assert read_sampling_defaults(run_dir) == {"temperature": 1.0}
    assert load_run(run_dir).temperature == 1.0


def test_written_and_read_back(run_dir):
    write_sampling_defaults(run_dir, 0.8, note="why")
    assert json.loads((run_dir / SAMPLING).read_text()) == {"temperature": 0.8, "note": "why"}
    assert read_sampling_defaults(run_dir) == {"temperature": 0.8}
    assert load_run(run_dir).temperature == 0.8


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not readable JSON"),
        ("[0.8]", 'expected {"temperature": T}'),
        ('{"note": "no temperature"}', 'expected {"temperature": T}'),
        ('{"temperature": 0.8, "top_k": 5}', 'expected {"temperature": T}'),
        ('{"temperature": 0}', "should be a finite number > 0, got 0"),
        ('{"temperature": -1.5}', "got -1.5"),
        ('{"temperature": NaN}', "got nan"),
        ('{"temperature": Infinity}', "got inf"),
        ('{"temperature": "0.8"}', "got '0.8'"),
        ('{"temperature": true}', "got True"),
    ],
)
def test_a_bad_file_is_named_with_what_was_expected(run_dir, text, message):
    (run_dir / SAMPLING).write_text(text)
    with pytest.raises(CheckpointError, match="sampling.json") as e:
        load_run(run_dir)
    assert message in str(e.value)


def test_a_bad_temperature_is_not_written(run_dir):
    with pytest.raises(CheckpointError, match="got 0"):
        write_sampling_defaults(run_dir, 0)
    assert not (run_dir / SAMPLING).exists()


def test_sampling_uses_the_runs_temperature_unless_told_otherwise(run_dir):
    write_sampling_defaults(run_dir, 0.25)
    run = load_run(run_dir)
    own = run.sample_indices(32, alpha=0.5, options=SamplingOptions(seed=3))
    assert torch.equal(own, run.sample_indices(32, alpha=0.5, options=SamplingOptions(seed=3, temperature=0.25)))
    assert torch.equal(own, run.sample_indices(32, alpha=0.5, options=SamplingOptions(seed=3, temperature=None)))
    # The temperature is really applied: at 1.0 the same noise picks other codes somewhere.
    assert not torch.equal(own, run.sample_indices(32, alpha=0.5, options=SamplingOptions(seed=3, temperature=1.0)))
    assert torch.equal(run.sample(4, options=SamplingOptions(seed=3)), run.sample(4, options=SamplingOptions(seed=3, temperature=0.25)))


def test_cli_sample_reports_and_uses_the_runs_temperature(run_dir, tmp_path, capsys):
    write_sampling_defaults(run_dir, 0.25)
    grids = {}
    for name, extra in (("own", []), ("explicit", ["--temperature", "0.25"]), ("one", ["--temperature", "1"])):
        out = tmp_path / f"{name}.npz"
        assert main(["sample", "--run-dir", str(run_dir), "-n", "16", "--out", str(out), *extra]) == 0
        summary = json.loads(capsys.readouterr().out.splitlines()[0])
        assert summary["temperature"] == (1.0 if name == "one" else 0.25)
        grids[name] = out.read_bytes()
    assert grids["own"] == grids["explicit"]


def test_demo_requests_without_a_temperature_leave_it_to_the_run():
    assert parse_settings({}, ["naive"], "naive").temperature is None
    assert parse_settings({"temperature": ""}, ["naive"], "naive").temperature is None
    assert parse_settings({"temperature": "0.7"}, ["naive"], "naive").temperature == 0.7


def test_export_ships_the_file(run_dir, tmp_path):
    write_sampling_defaults(run_dir, 0.8)
    dest = tmp_path / "weights"
    sizes = export_run(run_dir, dest)
    assert SAMPLING in sizes
    assert load_run(dest).temperature == 0.8
