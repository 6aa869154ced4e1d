"""The `pegasus` command line: help, one-line errors, and the commands on tiny real-format data."""
import json
import os
import subprocess
import sys

import pytest

from pegasus.cli import build_parser, main

COMMANDS = ["data", "info", "train-vqvae"]


@pytest.mark.parametrize("argv", [["--help"]] + [[c, "--help"] for c in COMMANDS])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    assert "usage: pegasus" in capsys.readouterr().out


def test_every_subcommand_is_tested():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(COMMANDS)


def test_data_describes(tiny_folder, capsys):
    assert main(["data", str(tiny_folder)]) == 0
    out = capsys.readouterr().out
    assert "image-folder" in out and "16x16" in out and "horse" in out


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "pegasus._C" in out and "default backend for CPU tensors" in out


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main(["data", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pegasus: error: ") and "nowhere" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_debug_shows_traceback(tmp_path, capsys):
    assert main(["data", str(tmp_path / "nowhere"), "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_bad_argument_names_it(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train-vqvae", "--data", "x", "--out", "y", "--steps", "0"])
    assert e.value.code == 2
    assert "argument --steps: expected a positive integer, got 0" in capsys.readouterr().err


def test_train_vqvae_console_script(tiny_folder, tmp_path):
    """The installed console script, end to end, then --resume to train longer."""
    out = tmp_path / "run"
    exe = os.path.join(os.path.dirname(sys.executable), "pegasus")
    cmd = [exe, "train-vqvae", "--data", str(tiny_folder), "--out", str(out), "--steps", "3",
           "--batch-size", "8", "--codes", "16", "--dim", "8", "--device", "cpu"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "eval.json").read_text())["steps"] == 3
    assert "train-vqvae" in res.stderr  # the progress bar
    res = subprocess.run([exe, "train-vqvae", "--data", str(tiny_folder), "--out", str(out), "--steps", "5", "--resume"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "eval.json").read_text())["steps"] == 5
    res = subprocess.run(cmd, capture_output=True, text=True)  # the same run again, without --resume
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith("pegasus: error: ") and "already holds a run" in res.stderr
    assert "Traceback" not in res.stderr
