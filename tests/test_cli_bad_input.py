"""Bad input to every `pegasus` subcommand that reads files: each case must exit non-zero with
exactly one line on stderr, `pegasus: error: ...`, naming the file or argument at fault; never a
traceback, never a vague message.

The cases cover missing paths, files of the wrong format, truncated files of every data format and
of safetensors, corrupt images, checkpoints of another configuration, pickles where safetensors
belong, run directories missing files, and out-of-range numbers. Syntax errors (argparse) exit with
status 2, input errors with status 1. Data sets are tiny files in the real on-disk formats
(pegasus.data.synthetic), broken the way downloads and disks break them.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save

from pegasus.checkpoint import save_weights
from pegasus.cli import main
from pegasus.data.synthetic import (
    write_cifar10_binary,
    write_cifar10_python,
    write_stl10_binary,
)
from pegasus.models import VQVAE
from pegasus.models.pixelcnn import GatedPixelCNN
from pegasus.rundir import load_prior

from .conftest import TINY_MODEL

# A tqdm bar segment ("train-vqvae:  0%|  | 0/1 [00:00<?, ?step/s]") and the pipeline's step log:
# progress, not errors.
_PROGRESS = re.compile(r"^(?!pegasus: )(\S.*: *\d+%\||\S.*\d+(step|img|it)s? \[|pipeline: )")


def error_lines(stderr: str) -> list[str]:
    """The lines of stderr that are not progress bars or the pipeline's log of its steps."""
    return [line for line in re.split(r"[\r\n]+", stderr) if line.strip() and not _PROGRESS.search(line)]


@pytest.fixture(scope="module")
def formats(tmp_path_factory) -> dict[str, Path]:
    """Pristine tiny data sets in every official layout (copy one before breaking it)."""
    root = tmp_path_factory.mktemp("formats")
    return {
        "cifar-py": write_cifar10_python(root / "py", 10, 5),
        "cifar-bin": write_cifar10_binary(root / "bin", 10, 5),
        "cifar-tgz": write_cifar10_python(root / "tgz", 10, 5, as_tar=True),
        "stl10": write_stl10_binary(root / "stl", 2, 1),
    }


@dataclass
class Env:
    """What a case builds its broken input from, and where."""

    tmp: Path
    folder: Path  # a 16x16 image folder
    run: Path  # a finished run directory of that folder
    formats: dict[str, Path]

    def file(self, name: str, data: bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def empty_dir(self, name: str) -> Path:
        (self.tmp / name).mkdir()
        return self.tmp / name

    def data(self, fmt: str) -> Path:
        """A fresh copy of one data set, to break."""
        src = self.formats[fmt]
        dst = self.tmp / "data" / src.name
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            dst.parent.mkdir(parents=True)
            shutil.copy(src, dst)
        return dst

    def folder_copy(self) -> Path:
        dst = self.tmp / "folder" / self.folder.name
        shutil.copytree(self.folder, dst)
        return dst

    def run_copy(self, drop: tuple[str, ...] = (), **files: bytes) -> Path:
        """A copy of the run directory without `drop`, with `files` (name with _ for .) replaced."""
        dst = self.tmp / "run"
        shutil.copytree(self.run, dst)
        for name in drop:
            (dst / name).unlink(missing_ok=True)
        for key, data in files.items():
            (dst / key.replace("__", ".")).write_bytes(data)
        return dst

    def bytes_of(self, name: str) -> bytes:
        return (self.run / name).read_bytes()


@pytest.fixture
def env(tmp_path, tiny_folder, tiny_run, formats) -> Env:
    return Env(tmp_path, tiny_folder, tiny_run, formats)


def truncate(path: Path, keep: float) -> Path:
    """Cut a file to `keep` bytes (or that fraction of them), as an interrupted download does."""
    data = path.read_bytes()
    path.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    return path


def overwrite(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def corrupt_image(folder: Path, split: str = "train") -> Path:
    png = folder / split / "horse" / "0001.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(40)))
    return png


def other_size_image(folder: Path) -> Path:
    png = folder / "train" / "horse" / "0001.png"
    Image.new("RGB", (20, 20)).save(png)
    return png


def pickle_bytes() -> bytes:
    return pickle.dumps({"quantizer.embedding": torch.zeros(32, 8)})


def torch_save_bytes(tmp: Path) -> bytes:
    torch.save({"quantizer.embedding": torch.zeros(32, 8)}, tmp / "torch.pt")
    return (tmp / "torch.pt").read_bytes()


def nan_prior(run: Path) -> Path:
    prior = load_prior(run)
    with torch.no_grad():
        prior.head[3].bias[0] = float("nan")
    save_weights(run / "prior.safetensors", prior)
    return run


def latents_bytes(indices: torch.Tensor) -> bytes:
    p = indices.shape[0]
    return save({"indices": indices, "alphas": torch.linspace(0, 1, indices.shape[1]), "pairs": torch.stack([torch.arange(p), torch.arange(p) + 1], 1)})


FRESH_PRIOR = ("prior_checkpoint.safetensors", "prior_checkpoint.prev.safetensors", "prior.safetensors", "prior_eval.json")
TV = ["--steps", "1", "--batch-size", "4", "--codes", "8", "--dim", "4", "--device", "cpu"]
TP = ["--steps", "1", "--channels", "4", "--layers", "1", "--kernel", "3", "--batch-size", "4", "--device", "cpu"]
SAMPLE = ["-n", "2", "--backend", "cpu"]
SAFETENSORS_ERROR = "not a readable safetensors file"


def state_bytes(module: torch.nn.Module) -> bytes:
    return save({k: v.contiguous() for k, v in module.state_dict().items()})


def other_codes_vqvae() -> bytes:
    return state_bytes(VQVAE(**{**TINY_MODEL, "codes": 16}))


# The command each missing file names (the "is missing" messages).
MAKES = {
    "config.json": "pegasus train-vqvae --data PATH --out",
    "vqvae.safetensors": "pegasus train-vqvae --data PATH --out",
    "prior_config.json": "pegasus train-prior --run-dir",
    "prior.safetensors": "pegasus train-prior --run-dir",
}


def sample_without(name: str) -> Callable[[Env], tuple[list, list[str]]]:
    return lambda e: (["sample", "--run-dir", e.run_copy((name,)), *SAMPLE], [f"{name} is missing", f"run `{MAKES[name]}", "first"])


def selection(e: Env, **fields: object) -> bytes:
    return json.dumps({**json.loads(e.bytes_of("selection.json")), **fields}).encode()


# id -> (build(env) -> (argv, texts the error line must contain), exit status). Files and their
# contents; the syntax of the arguments is BAD_ARGUMENTS below.
Case = Callable[[Env], tuple[list, list[str]]]
CASES: dict[str, tuple[Case, int]] = {
    # --- data -------------------------------------------------------------------------------------
    "data/missing path": (lambda e: (["data", e.tmp / "nowhere"], ["nowhere", "no such file or folder"]), 1),
    "data/text file": (lambda e: (["data", e.file("notes.txt", b"hello\n")], ["notes.txt", "expected a readable tar archive"]), 1),
    "data/empty file": (lambda e: (["data", e.file("empty.tar", b"")], ["empty.tar", "empty file"]), 1),
    "data/empty dir": (lambda e: (["data", e.empty_dir("e")], ["no recognised data set", "found nothing"]), 1),
    "data/dir without a known layout": (lambda e: (["data", e.file("d/x", b"").parent], ["no recognised data set", "found x"]), 1),
    "data/run dir": (lambda e: (["data", e.run], [str(e.run), "no recognised data set"]), 1),
    "data/truncated cifar python batch": (
        lambda e: (["data", truncate(e.data("cifar-py") / "data_batch_1", 0.5).parent], ["train split", "data_batch_1", "could not unpickle"]), 1),
    "data/truncated cifar binary batch": (
        lambda e: (["data", truncate(e.data("cifar-bin") / "test_batch.bin", 0.9).parent], ["test split", "test_batch.bin", "3073-byte record"]), 1),
    "data/corrupt cifar meta": (lambda e: (["data", truncate(e.data("cifar-py") / "batches.meta", 10).parent], ["batches.meta", "could not unpickle"]), 1),
    "data/pickle of another object": (
        lambda e: (["data", overwrite(e.data("cifar-py") / "data_batch_1", pickle.dumps([1, 2])).parent], ["data_batch_1", "expected a pickled dict"]), 1),
    "data/truncated cifar tar.gz": (lambda e: (["data", truncate(e.data("cifar-tgz"), 0.5)], ["cifar-10-python.tar.gz", "expected a readable tar archive"]), 1),
    "data/garbage .tar.gz": (lambda e: (["data", e.file("x.tar.gz", b"\x1f\x8b" + bytes(200))], ["x.tar.gz", "expected a readable tar archive"]), 1),
    "data/truncated stl10 X": (
        lambda e: (["data", truncate(e.data("stl10") / "train_X.bin", 27648 * 2 - 5).parent], ["train_X.bin", "multiple of the 27648-byte image"]), 1),
    "data/short stl10 labels": (lambda e: (["data", truncate(e.data("stl10") / "train_y.bin", 1).parent], ["train_y.bin", "expected 2 labels"]), 1),
    "data/corrupt image": (lambda e: (["data", (f := e.folder_copy())], [str(corrupt_image(f)), "expected a readable PNG/JPEG image"]), 1),
    "data/image of another size": (lambda e: (["data", (f := e.folder_copy())], [str(other_size_image(f)), "images of mixed sizes"]), 1),
    # --- train-vqvae -------------------------------------------------------------------------------
    "train-vqvae/missing data": (lambda e: (["train-vqvae", "--data", e.tmp / "nowhere", "--out", e.tmp / "o", *TV], ["nowhere", "no such file"]), 1),
    "train-vqvae/text file as data": (lambda e: (["train-vqvae", "--data", e.file("a.txt", b"x"), "--out", e.tmp / "o", *TV], ["a.txt", "tar archive"]), 1),
    "train-vqvae/corrupt image": (
        lambda e: (["train-vqvae", "--data", (f := e.folder_copy()), "--out", e.tmp / "o", *TV], [str(corrupt_image(f)), "expected a readable PNG/JPEG image"]), 1),
    "train-vqvae/truncated tar.gz": (
        lambda e: (["train-vqvae", "--data", truncate(e.data("cifar-tgz"), 0.7), "--out", e.tmp / "o", *TV], ["cifar-10-python.tar.gz", "tar archive"]), 1),
    "train-vqvae/resume nothing": (lambda e: (["train-vqvae", "--data", e.folder, "--out", e.tmp / "o", *TV, "--resume"], ["--resume", "checkpoint"]), 1),
    # --- select ------------------------------------------------------------------------------------
    "select/missing data": (lambda e: (["select", "--run-dir", e.tmp / "r", "--data", e.tmp / "nowhere"], ["nowhere", "no such file"]), 1),
    "select/truncated cifar batch": (
        lambda e: (["select", "--run-dir", e.tmp / "r", "--data", truncate(e.data("cifar-bin") / "data_batch_3.bin", 100).parent], ["data_batch_3.bin", "3073-byte record"]), 1),
    "select/corrupt image": (lambda e: (["select", "--run-dir", e.tmp / "r", "--data", (f := e.folder_copy())], [str(corrupt_image(f)), "PNG/JPEG"]), 1),
    "select/missing ids file": (
        lambda e: (["select", "--run-dir", e.tmp / "r", "--data", e.folder, "--bird-ids", e.tmp / "ids.txt"], ["ids.txt", "cannot read the ids file"]), 1),
    "select/ids not integers": (
        lambda e: (["select", "--run-dir", e.tmp / "r", "--data", e.folder, "--horse-ids", e.file("ids.txt", b"1, 2, x")], ["ids.txt", "integer ids"]), 1),
    "select/ids file binary": (
        lambda e: (["select", "--run-dir", e.tmp / "r", "--data", e.folder, "--bird-ids", e.file("ids.bin", b"\xff\xfe\x00")], ["ids.bin", "cannot read the ids file"]), 1),
    "select/ids out of range": (
        lambda e: (["select", "--run-dir", e.tmp / "r", "--data", e.folder, "--bird-ids", e.file("ids.txt", b"-1")], ["bird ids [-1] are out of range"]), 1),
    # --- interpolate -------------------------------------------------------------------------------
    "interpolate/run dir missing": (lambda e: (["interpolate", "--run-dir", e.tmp / "nowhere"], ["selection.json is missing", "pegasus select --run-dir"]), 1),
    "interpolate/selection not JSON": (lambda e: (["interpolate", "--run-dir", e.run_copy(selection__json=b"{not json")], ["selection.json", "not a JSON file"]), 1),
    "interpolate/selection a list": (lambda e: (["interpolate", "--run-dir", e.run_copy(selection__json=b"[1]")], ["selection.json", "expected a JSON object"]), 1),
    "interpolate/selection data not a path": (
        lambda e: (["interpolate", "--run-dir", e.run_copy(selection__json=selection(e, data=5))], ["selection.json", '"data" should be']), 1),
    "interpolate/selection ids not integers": (
        lambda e: (["interpolate", "--run-dir", e.run_copy(selection__json=selection(e, birds={"ids": ["1"]}))], ["selection.json", '"birds" should be']), 1),
    "interpolate/selection split": (
        lambda e: (["interpolate", "--run-dir", e.run_copy(selection__json=selection(e, split="val"))], ["selection.json", '"split" should be one of train, test']), 1),
    "interpolate/selection's data gone": (
        lambda e: (["interpolate", "--run-dir", e.run_copy(selection__json=selection(e, data=str(e.tmp / "gone")))], ["gone", "no such file"]), 1),
    "interpolate/vqvae missing": (lambda e: (["interpolate", "--run-dir", e.run_copy(("vqvae.safetensors",))], ["vqvae.safetensors is missing", "pegasus train-vqvae"]), 1),
    "interpolate/config.json missing": (lambda e: (["interpolate", "--run-dir", e.run_copy(("config.json",))], ["config.json is missing"]), 1),
    "interpolate/config.json corrupt": (lambda e: (["interpolate", "--run-dir", e.run_copy(config__json=b"{")], ["config.json"]), 1),
    "interpolate/vqvae random bytes": (lambda e: (["interpolate", "--run-dir", e.run_copy(vqvae__safetensors=os.urandom(1000))], ["vqvae.safetensors", SAFETENSORS_ERROR]), 1),
    "interpolate/vqvae is a pickle": (lambda e: (["interpolate", "--run-dir", e.run_copy(vqvae__safetensors=pickle_bytes())], ["vqvae.safetensors", SAFETENSORS_ERROR]), 1),
    "interpolate/vqvae is torch.save": (
        lambda e: (["interpolate", "--run-dir", e.run_copy(vqvae__safetensors=torch_save_bytes(e.tmp))], ["vqvae.safetensors", SAFETENSORS_ERROR]), 1),
    "interpolate/vqvae truncated": (
        lambda e: (["interpolate", "--run-dir", e.run_copy(vqvae__safetensors=e.bytes_of("vqvae.safetensors")[:-100])], ["vqvae.safetensors", SAFETENSORS_ERROR]), 1),
    "interpolate/vqvae truncated header": (
        lambda e: (["interpolate", "--run-dir", e.run_copy(vqvae__safetensors=e.bytes_of("vqvae.safetensors")[:20])], ["vqvae.safetensors", SAFETENSORS_ERROR]), 1),
    "interpolate/vqvae empty": (lambda e: (["interpolate", "--run-dir", e.run_copy(vqvae__safetensors=b"")], ["vqvae.safetensors", SAFETENSORS_ERROR]), 1),
    "interpolate/vqvae of other codes": (
        lambda e: (["interpolate", "--run-dir", e.run_copy(vqvae__safetensors=other_codes_vqvae())], ["vqvae.safetensors", "has shape (16, 8), the model expects (32, 8)"]), 1),
    "interpolate/--alphas 2": (lambda e: (["interpolate", "--run-dir", e.run_copy(), "--alphas", "0", "2"], ["alphas should be", "[0, 1], got [0.0, 2.0]"]), 1),
    "interpolate/--alphas nan": (lambda e: (["interpolate", "--run-dir", e.run_copy(), "--alphas", "nan"], ["alphas should be", "got [nan]"]), 1),
    "interpolate/--pairs too many": (lambda e: (["interpolate", "--run-dir", e.run_copy(), "--pairs", "100000"], ["pairs should be in 1..", "got 100000"]), 1),
    # --- train-prior -------------------------------------------------------------------------------
    "train-prior/run dir missing": (lambda e: (["train-prior", "--run-dir", e.tmp / "nowhere", *TP], ["latents.safetensors is missing", "pegasus interpolate --run-dir"]), 1),
    "train-prior/latents random bytes": (
        lambda e: (["train-prior", "--run-dir", e.run_copy(FRESH_PRIOR, latents__safetensors=os.urandom(300)), *TP], ["latents.safetensors", SAFETENSORS_ERROR]), 1),
    "train-prior/latents truncated": (
        lambda e: (["train-prior", "--run-dir", e.run_copy(FRESH_PRIOR, latents__safetensors=e.bytes_of("latents.safetensors")[:-7]), *TP],
                   ["latents.safetensors", SAFETENSORS_ERROR]), 1),
    "train-prior/latents a pickle": (
        lambda e: (["train-prior", "--run-dir", e.run_copy(FRESH_PRIOR, latents__safetensors=pickle_bytes()), *TP], ["latents.safetensors", SAFETENSORS_ERROR]), 1),
    "train-prior/latents wrong shape": (
        lambda e: (["train-prior", "--run-dir", e.run_copy(FRESH_PRIOR, latents__safetensors=save({"indices": torch.zeros(3, 2, dtype=torch.int64), "alphas": torch.zeros(2)})), *TP],
                   ["latents.safetensors", "expected indices [P, A, h, w]"]), 1),
    "train-prior/latents float indices": (
        lambda e: (["train-prior", "--run-dir", e.run_copy(FRESH_PRIOR, latents__safetensors=latents_bytes(torch.zeros(3, 2, 4, 4))), *TP], ["int64 code grids"]), 1),
    "train-prior/config.json missing": (lambda e: (["train-prior", "--run-dir", e.run_copy((*FRESH_PRIOR, "config.json")), *TP], ["config.json", "pegasus train-vqvae"]), 1),
    "train-prior/resume truncated checkpoint": (
        lambda e: (["train-prior", "--run-dir", e.run_copy(prior_checkpoint__safetensors=e.bytes_of("prior_checkpoint.safetensors")[:-50], prior_checkpoint__prev__safetensors=b""),
                    "--steps", "40", "--resume"], ["prior_checkpoint.safetensors", SAFETENSORS_ERROR]), 1),
    "train-prior/--held-out 1.5": (lambda e: (["train-prior", "--run-dir", e.run_copy(FRESH_PRIOR), *TP, "--held-out", "1.5"], ["held-out", "1.5"]), 1),
    "train-prior/--kernel 4": (lambda e: (["train-prior", "--run-dir", e.run_copy(FRESH_PRIOR), *TP[:-4], "--kernel", "4"], ["kernel", "4"]), 1),
    # --- sample ------------------------------------------------------------------------------------
    "sample/run dir missing": (lambda e: (["sample", "--run-dir", e.tmp / "nowhere", *SAMPLE], ["config.json is missing", "pegasus train-vqvae"]), 1),
    "sample/config.json missing": (sample_without("config.json"), 1),
    "sample/vqvae.safetensors missing": (sample_without("vqvae.safetensors"), 1),
    "sample/prior_config.json missing": (sample_without("prior_config.json"), 1),
    "sample/prior.safetensors missing": (sample_without("prior.safetensors"), 1),
    "sample/prior random bytes": (lambda e: (["sample", "--run-dir", e.run_copy(prior__safetensors=os.urandom(300)), *SAMPLE], ["prior.safetensors", SAFETENSORS_ERROR]), 1),
    "sample/prior is a pickle": (lambda e: (["sample", "--run-dir", e.run_copy(prior__safetensors=pickle_bytes()), *SAMPLE], ["prior.safetensors", SAFETENSORS_ERROR]), 1),
    "sample/prior truncated": (
        lambda e: (["sample", "--run-dir", e.run_copy(prior__safetensors=e.bytes_of("prior.safetensors")[:-10]), *SAMPLE], ["prior.safetensors", SAFETENSORS_ERROR]), 1),
    "sample/prior of other channels": (
        lambda e: (["sample", "--run-dir", e.run_copy(prior__safetensors=state_bytes(GatedPixelCNN(codes=32, channels=16, layers=2, kernel=3, grid=(4, 4)))), *SAMPLE],
                   ["prior.safetensors", "embedding.weight has shape (32, 16), the model expects (32, 8)"]), 1),
    "sample/vqvae of other codes": (lambda e: (["sample", "--run-dir", e.run_copy(vqvae__safetensors=other_codes_vqvae()), *SAMPLE], ["vqvae.safetensors", "has shape (16, 8)"]), 1),
    "sample/prior_config a list": (lambda e: (["sample", "--run-dir", e.run_copy(prior_config__json=b"[]"), *SAMPLE], ["prior_config.json"]), 1),
    "sample/prior_config codes 0": (
        lambda e: (["sample", "--run-dir", e.run_copy(prior_config__json=b'{"prior": {"codes": 0}}'), *SAMPLE], ["prior_config.json", "codes should be >= 1"]), 1),
    "sample/prior with NaN weights": (lambda e: (["sample", "--run-dir", nan_prior(e.run_copy()), *SAMPLE], ["prior should have finite parameters", "head.3.bias"]), 1),
    "sample/--alpha 1.5": (lambda e: (["sample", "--run-dir", e.run, "--alpha", "1.5", *SAMPLE], ["alpha should be in [0, 1], got 1.5"]), 1),
    "sample/--alpha -0.1": (lambda e: (["sample", "--run-dir", e.run, "--alpha", "-0.1", *SAMPLE], ["alpha should be in [0, 1], got -0.1"]), 1),
    "sample/--alpha nan": (lambda e: (["sample", "--run-dir", e.run, "--alpha", "nan", *SAMPLE], ["alpha should be in [0, 1], got nan"]), 1),
    "sample/--temperature 1e-50": (lambda e: (["sample", "--run-dir", e.run, "--temperature", "1e-50", *SAMPLE], ["temperature", "rounds to 0.0"]), 1),
    "sample/--best-of below n": (lambda e: (["sample", "--run-dir", e.run, "--num-samples", "4", "--best-of", "2"], ["best-of should be >= n (4), got 2"]), 1),
    # --- generate (the shipped weights) ------------------------------------------------------------
    "generate/--alpha 2": (lambda e: (["generate", "--out", e.tmp / "g.png", "--alpha", "2", "-n", "1"], ["alpha should be in [0, 1], got 2.0"]), 1),
    "generate/--temperature 1e-50": (lambda e: (["generate", "--out", e.tmp / "g.png", "--temperature", "1e-50", "--num-samples", "1"], ["temperature", "rounds to 0.0"]), 1),
    "generate/--best-of below n": (lambda e: (["generate", "--out", e.tmp / "g.png", "-n", "3", "--best-of", "1"], ["best-of should be >= n (3), got 1"]), 1),
    # --- pipeline ----------------------------------------------------------------------------------
    "pipeline/missing data": (lambda e: (["pipeline", "--data", e.tmp / "nowhere", "--out", e.tmp / "o"], ["nowhere", "no such file"]), 1),
    "pipeline/text file as data": (lambda e: (["pipeline", "--data", e.file("a.txt", b"x"), "--out", e.tmp / "o"], ["a.txt", "tar archive"]), 1),
    "pipeline/corrupt image": (
        lambda e: (["pipeline", "--data", (f := e.folder_copy()), "--out", e.tmp / "o", "--quick"], [str(corrupt_image(f, "test")), "PNG/JPEG"]), 1),
    "pipeline/corrupt vqvae in the run": (
        lambda e: (["pipeline", "--data", e.folder, "--quick", "--out",
                    e.run_copy(("latents.safetensors", "interpolation.png", *FRESH_PRIOR, "pegasi.png"), vqvae__safetensors=os.urandom(64))],
                   ["vqvae.safetensors", SAFETENSORS_ERROR]), 1),
}

# How argparse names an option in its messages, where that is not the flag itself.
ARGUMENT = {"-n": "-n/--num-samples", "--num-samples": "-n/--num-samples"}
IMAGE_SUFFIXES = "expected an image grid (.png, .jpg, .jpeg, .webp), an .npz or a directory"

# (argv with {run}, {folder}, {file} and {tmp} filled in, texts): argparse refuses them, status 2.
BAD_ARGUMENTS = [
    *[(["train-vqvae", "--data", "{folder}", "--out", "{tmp}/o", flag, value], [f"argument {flag}", value]) for flag, value in [
        ("--steps", "0"), ("--steps", "-5"), ("--batch-size", "0"), ("--lr", "0"), ("--lr", "inf"), ("--lr", "nan"), ("--lr", "abc"),
        ("--codes", "0"), ("--dim", "-1"), ("--restart-after", "-1"), ("--seed", "-1"), ("--device", "tpu")]],
    (["train-vqvae", "--data", "{folder}", "--out", "{file}"], ["argument --out", "which is a file"]),
    (["train-vqvae", "--out", "{tmp}/o"], ["train-vqvae", "required: --data"]),
    (["select", "--run-dir", "{file}", "--data", "{folder}"], ["argument --run-dir", "which is a file"]),
    (["select", "--run-dir", "{tmp}/r", "--data", "{folder}", "--birds", "0"], ["argument --birds", "got 0"]),
    (["interpolate", "--run-dir", "{run}", "--pairs", "0"], ["argument --pairs", "got 0"]),
    (["interpolate", "--run-dir", "{run}", "--seed", str(2**64)], ["argument --seed", str(2**64)]),
    *[(["train-prior", "--run-dir", "{run}", flag, value], [f"argument {flag}", value]) for flag, value in [
        ("--steps", "0"), ("--lr", "-1"), ("--held-out", "0"), ("--channels", "0"), ("--layers", "x"), ("--seed", "-3")]],
    *[(["sample", "--run-dir", "{run}", flag, value], [f"argument {ARGUMENT.get(flag, flag)}", value]) for flag, value in [
        ("-n", "-1"), ("--num-samples", "0"), ("--alpha", "x"), ("--temperature", "0"), ("--temperature", "-1"),
        ("--temperature", "inf"), ("--top-k", "0"), ("--best-of", "0"), ("--seed", "-1"), ("--backend", "gpu")]],
    (["sample", "--run-dir", "{run}", "--out", "{file}"], ["argument --out", "expected a directory", "which is a file"]),
    (["sample", "--run-dir", "{run}", "--out", "{tmp}/pegasi.gif"], ["argument --out", IMAGE_SUFFIXES, "pegasi.gif"]),
    (["sample", "--run-dir", "{run}", "--out", "{tmp}/pegasi.tar"], ["argument --out", IMAGE_SUFFIXES]),
    (["sample", "--run-dir", "{file}"], ["argument --run-dir", "which is a file"]),
    *[(["generate", "--out", "{tmp}/g.png", flag, value], [f"argument {ARGUMENT.get(flag, flag)}", value]) for flag, value in [
        ("-n", "-1"), ("--temperature", "0"), ("--top-k", "-2")]],
    (["generate", "--out", "{file}"], ["argument --out", "expected a directory", "which is a file"]),
    (["generate", "--out", "{tmp}/g.bmp"], ["argument --out", IMAGE_SUFFIXES, "g.bmp"]),
    (["pipeline", "--data", "{folder}", "--out", "{file}"], ["argument --out", "which is a file"]),
    ([], ["the following arguments are required: COMMAND"]),
    (["frobnicate"], ["invalid choice: 'frobnicate'"]),
]

# Cases that gave a raw IndexError before read_latents checked the codes against config.json and
# load_run checked the prior's codes against the VQ-VAE's (the third field says what was missing).
LATENTS_GAP = "read_latents (then in pegasus/interpolate.py, now pegasus/rundir.py) did not check the codes against config.json: IndexError in the embedding"
FORMER_GAPS = {
    "train-prior/latents codes >= K": (
        lambda e: (["train-prior", "--run-dir", e.run_copy(FRESH_PRIOR, latents__safetensors=latents_bytes(torch.full((3, 2, 4, 4), 999))), *TP], ["latents.safetensors", "999"]),
        1, LATENTS_GAP),
    "train-prior/latents negative codes": (
        lambda e: (["train-prior", "--run-dir", e.run_copy(FRESH_PRIOR, latents__safetensors=latents_bytes(torch.full((3, 2, 4, 4), -1))), *TP], ["latents.safetensors", "-1"]),
        1, LATENTS_GAP),
    "sample/prior with more codes than the vqvae": (
        lambda e: (["sample", "--run-dir", e.run_copy(config__json=json.dumps({"vqvae": {**TINY_MODEL, "codes": 16}}).encode(), vqvae__safetensors=other_codes_vqvae()), *SAMPLE],
                   ["codes"]),
        1, "load_run (then in pegasus/run.py, now pegasus/sample.py) did not check prior.cfg.codes against the VQ-VAE's: IndexError when decoding"),
}


def run_cli(argv: list) -> tuple[int, str]:
    """main(argv) in-process -> (exit status, stderr)."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main([str(a) for a in argv])
        except SystemExit as e:  # argparse
            status = e.code
    return status, err.getvalue()


def check_one_line_error(env: Env, build: Case, status: int) -> None:
    argv, texts = build(env)
    got_status, stderr = run_cli(argv)
    lines = error_lines(stderr)
    assert got_status == status, (got_status, stderr)
    assert len(lines) == 1, stderr
    assert lines[0].startswith("pegasus: error: "), stderr
    assert "Traceback" not in stderr and "unexpected" not in lines[0], stderr
    for text in texts:
        assert text in lines[0], (text, lines[0])


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_line(case, env):
    build, status = CASES[case]
    check_one_line_error(env, build, status)


@pytest.mark.parametrize("argv, texts", [pytest.param(argv, texts, id=" ".join(argv) or "(no command)") for argv, texts in BAD_ARGUMENTS])
def test_bad_argument_is_one_clear_line(argv, texts, env):
    paths = {"run": env.run, "folder": env.folder, "file": env.file("a-file", b""), "tmp": env.tmp}
    check_one_line_error(env, lambda e: ([a.format(**paths) for a in argv], texts), 2)


@pytest.mark.parametrize("case", list(FORMER_GAPS))
def test_former_gaps(case, env):
    build, status, _ = FORMER_GAPS[case]
    check_one_line_error(env, build, status)


def test_every_file_reading_command_is_covered():
    commands = {name.split("/")[0] for name in CASES} | {argv[0] for argv, _ in BAD_ARGUMENTS if argv}
    assert commands >= {"data", "train-vqvae", "select", "interpolate", "train-prior", "sample", "generate", "pipeline"}


def test_unexpected_errors_are_one_line_too(monkeypatch, tmp_path):
    """An exception no check anticipated still prints one line, with its type and --debug."""
    import pegasus.commands.data

    def boom(args):
        raise KeyError("line one\nline two")

    monkeypatch.setattr(pegasus.commands.data, "run", boom)
    status, stderr = run_cli(["data", tmp_path])
    assert status == 1
    assert stderr.splitlines() == ["pegasus: error: KeyError: 'line one\\nline two' (unexpected; run with --debug for the traceback)"]
