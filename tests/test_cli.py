"""The `pegasus` command line: help, one-line errors, and the commands on tiny real-format data."""
import json
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from pegasus.cli import build_parser, main

COMMANDS = [
    "data", "info", "train-vqvae", "select", "interpolate", "train-prior", "sample", "generate", "pipeline", "bench",
    "train-classifier", "evaluate", "demo",
]


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
    assert "pegasus._C" in out and "nearest_code (nearest_code; PEGASUS_NEAREST_CODE_BACKEND):" in out
    assert "sampler (sample_row, sample_position, sample_loop; PEGASUS_SAMPLER_BACKEND):" in out
    # The default of each family on CPU tensors.
    assert out.count("default -> cpu: ") == 2


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


def _one_line_error(capsys, text):
    err = capsys.readouterr().err
    assert err.startswith("pegasus: error: ") and text in err, err
    assert len(err.strip().splitlines()) == 1


def test_select_interpolate_train_prior_sample(tiny_folder, tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("selection*", "latents*", "interp*", "prior*", "pegasi*"))
    assert main(["select", "--run-dir", str(run), "--data", str(tiny_folder), "--birds", "3", "--horses", "4"]) == 0
    assert "birds: 3 picks" in capsys.readouterr().out
    (tmp_path / "birds.txt").write_text("99999\n")
    assert main(["select", "--run-dir", str(run), "--data", str(tiny_folder), "--bird-ids", str(tmp_path / "birds.txt")]) == 1
    _one_line_error(capsys, "bird ids [99999] are out of range")
    assert len(json.loads((run / "selection.json").read_text())["horses"]["ids"]) == 4  # left as it was

    assert main(["interpolate", "--run-dir", str(run), "--pairs", "6", "--alphas", "0", "0.5", "1"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["grids"] == 18

    prior = ["--channels", "8", "--layers", "2", "--kernel", "3", "--batch-size", "8", "--device", "cpu"]
    assert main(["train-prior", "--run-dir", str(run), "--steps", "3", *prior]) == 0
    assert main(["train-prior", "--run-dir", str(run), "--steps", "5", "--resume"]) == 0
    assert json.loads((run / "prior_eval.json").read_text())["steps"] == 5
    capsys.readouterr()

    png = tmp_path / "pegasi.png"
    assert main(["sample", "--run-dir", str(run), "-n", "4", "--best-of", "6", "--top-k", "5", "--alpha", "0.7",
                 "--temperature", "0.8", "--seed", "3", "--method", "naive", "--out", str(png)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["samples"] == 6 and summary["kept"] == 4 and summary["seconds_per_step"] > 0
    assert Image.open(png).size[0] > 4 * 16

    for argv, text in [
        (["--alpha", "1.5"], "alpha should be in [0, 1], got 1.5"),
        (["--num-samples", "4", "--best-of", "2"], "best-of should be >= n (4), got 2"),
    ]:
        assert main(["sample", "--run-dir", str(run), *argv]) == 1
        _one_line_error(capsys, text)
    assert main(["sample", "--run-dir", str(tmp_path / "empty")]) == 1
    _one_line_error(capsys, "config.json is missing: run `pegasus train-vqvae")


def test_pipeline_quick(tiny_folder, tmp_path, monkeypatch, capsys):
    from pegasus import pipeline

    from .conftest import TINY_PIPELINE

    monkeypatch.setattr(pipeline, "QUICK", TINY_PIPELINE)  # the real --quick is sized for CIFAR-10
    out = tmp_path / "run"
    assert main(["pipeline", "--data", str(tiny_folder), "--out", str(out), "--quick"]) == 0
    done = json.loads(capsys.readouterr().out.splitlines()[0])
    assert done["train-prior"] == "ran" and done["wall_s"] > 0
    assert Image.open(out / "pegasi.png").size[0] > 0
    assert main(["pipeline", "--data", str(tiny_folder), "--out", str(out), "--quick"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.splitlines()[0])["sample"] == "skipped"
    assert "pipeline: train-vqvae: skipped" in captured.err


def test_bench_nearest_code_writes_records(tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    assert main(["bench", "nearest-code", "--shape", "64x8x4", "--min-run-time", "0.01", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| N | K | D | backend | median ms |" in table and "| 64 | 8 | 4 | reference |" in table
    records = [json.loads(line) for line in out.read_text().splitlines()]
    keys = {"op", "n", "k", "d", "backend", "device", "median_s", "peak_bytes", "speedup_vs_reference", "memory_ratio_vs_reference", "capability", "machine"}
    assert records and all(set(r) == keys for r in records)
    assert records[0]["backend"] == "reference" and records[0]["speedup_vs_reference"] == 1.0
    assert all(r["op"] == "nearest_code" and r["median_s"] > 0 and r["peak_bytes"] >= 0 for r in records)


def test_bench_nearest_code_lowered_to_avx2(tmp_path, capsys):
    """--cpu-capability avx2 runs every provider's process as on an AVX2-only CPU (the run checks
    that each process ran torch's AVX2 kernels); a CPU below AVX2 is refused, never raised."""
    import torch

    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        assert main(["bench", "nearest-code", "--shape", "64x8x4", "--cpu-capability", "avx2"]) == 1
        assert "lowers the CPU to AVX2" in capsys.readouterr().err
        return
    out = tmp_path / "bench.jsonl"
    assert main(["bench", "nearest-code", "--shape", "64x8x4", "--min-run-time", "0.01", "--cpu-capability", "avx2",
                 "--json", str(out)]) == 0
    assert "every provider lowered to avx2" in capsys.readouterr().out
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records and all(r["capability"] == "avx2" for r in records)


def test_bench_nearest_code_refuses_to_raise_the_cpu(monkeypatch):
    import torch

    from pegasus.bench import nearest_code

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    with pytest.raises(ValueError, match="lowers the CPU to AVX2, but this process runs DEFAULT"):
        nearest_code.run([(64, 8, 4)], capability="avx2")


def test_bench_rejects_a_bad_shape(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "nearest-code", "--shape", "64x8"])
    assert "expected NxKxD with positive integers, got '64x8'" in capsys.readouterr().err


def test_bench_sampler_records_and_the_scaled_naive():
    from pegasus.bench import harness, sampler

    records, _ = sampler.run([((3, 2), 2)], min_run_time=0.01, full_naive_up_to=4, naive_rows=1)
    by_backend = {r.backend: r for r in records}
    assert {"naive", "reference", "cpu"} <= set(by_backend)
    naive = by_backend["naive"]
    assert naive.naive_rows_timed == 1 and naive.speedup_vs_naive == 1.0  # 6 positions > 4: scaled from 1 row
    assert by_backend["reference"].speedup_vs_reference == 1.0 and by_backend["cpu"].naive_rows_timed is None
    for r in records:
        assert r.op == "sample" and r.grid == "3x2" and r.batch == 2 and r.device == "cpu"
        assert r.median_s > 0 and r.samples_per_s == pytest.approx(2 / r.median_s)
        assert r.speedup_vs_naive == pytest.approx(naive.median_s / r.median_s)
    lines = harness.to_json_lines(records).splitlines()
    keys = {"op", "grid", "batch", "backend", "device", "median_s", "samples_per_s", "runs", "speedup_vs_naive",
            "speedup_vs_reference", "naive_rows_timed", "machine"}
    assert all(set(json.loads(line)) == keys for line in lines)
    table = sampler.format_table(records)
    assert "| grid | batch | backend | median ms | samples/s | vs naive | vs reference |" in table
    assert "| 3x2 | 2 | naive |" in table


def test_bench_sampler_rejects_shape(capsys):
    assert main(["bench", "sampler", "--shape", "64x8x4"]) == 1
    assert "--shape is for nearest-code" in capsys.readouterr().err


def test_a_closed_pipe_is_not_an_error():
    """`pegasus info | head -3`: the reader leaves early; no 'error: Broken pipe' on stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "pegasus", "info"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before pegasus writes: its first write or flush finds the pipe closed
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "error" not in err and "Traceback" not in err, err
