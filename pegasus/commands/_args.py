"""What several commands share: argument types (each error names what was expected and what was
found), the options written alike in several commands, and readers of the parsed arguments."""
from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit integer


def int_at_least(low: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


positive_int = int_at_least(1, "a positive integer")
non_negative_int = int_at_least(0, "an integer >= 0")


def seed(text: str) -> int:
    value = int_at_least(0, f"an integer in 0..{MAX_SEED}")(text)
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an integer in 0..{MAX_SEED}, got {value}")
    return value


def port(text: str) -> int:
    value = int_at_least(0, "a port in 0..65535")(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 0..65535, got {value}")
    return value


def _finite_float(what: str, ok: Callable[[float], bool]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (ok(value) and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


positive_float = _finite_float("a finite positive number", lambda v: v > 0)  # --lr inf trained to NaN weights and exited 0
non_negative_float = _finite_float("a finite number >= 0", lambda v: v >= 0)


def run_dir(text: str) -> str:
    """A run directory: it may not exist yet, but it may not be a file."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"expected a run directory, got {text!r}, which is a file")
    return text


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: cuda when present")


def add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=["fp32", "bf16"], help="fp32, or bf16: the forward pass under bfloat16 autocast "
                   "(quantiser, losses, EMA statistics and checkpoints stay float32). Default: bf16 where the CPU has "
                   "avx512_bf16/amx_bf16 (read by CPUID) or the GPU supports it, else fp32 (`pegasus info` says which); "
                   "bf16 on a CPU without them is emulated, ~20x slower, and warns; a resumed run may switch it")


def device(choice: str) -> str:
    """--device: "auto" is cuda when torch sees one, else cpu."""
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def given(settings: dict) -> dict:
    """The settings given on the command line (argparse leaves the others None)."""
    return {k: v for k, v in settings.items() if v is not None}


def train_settings(args: argparse.Namespace, *extra: str) -> dict:
    """The training-loop settings given on the command line (TrainConfig fields, plus `extra`)."""
    names = ("steps", "batch_size", "lr", "seed", "checkpoint_every", "precision", *extra)
    return given({name: getattr(args, name) for name in names})


def report(summary: dict, wrote: str) -> int:
    """Print what a stage returned and wrote, on rank 0 only; exit status 0."""
    if is_rank0():
        print(json.dumps(summary, indent=2))
        print(f"wrote {wrote}")
    return 0


def is_rank0() -> bool:
    """False in the processes torchrun starts besides rank 0: they work, but print nothing."""
    return os.environ.get("RANK", "0") == "0"
