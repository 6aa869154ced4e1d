"""The `pegasus` command line: one console script with subcommands (also `python -m pegasus`).

Each command's options, help and handler live together in a module of `pegasus.commands`; this
file assembles them, reads the options every command shares and turns errors into one line.

Every error is one line on stderr, `pegasus: error: ...`, naming the argument or file at fault:
input errors (a bad data set, a run directory that does not fit, a wrong value) exit with status 1,
command-line syntax errors with status 2 (argparse's), and `--debug` shows the traceback instead.

Every option is spelled so that it means the same after torchrun (`torchrun ... -m pegasus CMD`):
torchrun's parser takes any unambiguous prefix of its own options, so no option here is a prefix
of one of torchrun's (`--run` was taken for its `--run-path`, `--n` clashed with `--nnodes`);
tests/test_cli.py checks every option against torchrun's parser.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from pegasus.commands import (
    _args,
    bench,
    data,
    demo,
    evaluate,
    info,
    interpolate,
    pipeline,
    sample,
    select,
    train_classifier,
    train_prior,
    train_vqvae,
)

COMMANDS = (data, info, bench, train_vqvae, select, interpolate, train_prior, train_classifier, sample, evaluate, pipeline, demo)
"""The command modules, in the order `pegasus --help` lists them; each has `add(sub, common)`."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line like every other error of the command line (argparse
    prints the whole usage first, which for train-vqvae is 8 lines); the subcommands inherit it."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("pegasus").strip()
        self.exit(2, f"pegasus: error: {command + ': ' if command else ''}{message} (see `{self.prog} --help`)\n")


def _add_shared(p: argparse.ArgumentParser, **default: object) -> None:
    """The options every command takes, before the command's name or after it."""
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors", **default)
    p.add_argument("--threads", type=_args.positive_int, metavar="N",
                   help="CPU threads (torch.set_num_threads; default: torch's, one a core). Without it (and without "
                   "OMP_NUM_THREADS), sampling runs on 1 thread while another process keeps a core busy", **default)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pegasus", description="White winged horses from a VQ-VAE and an autoregressive prior over its latents.")
    _add_shared(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # After the command's name the shared options default to nothing: argparse copies a
    # subcommand's defaults over what the main parser read, so `pegasus --threads 1 generate`
    # ignored its 1 while the copy after the name defaulted to None.
    common = _Parser(add_help=False)
    _add_shared(common, default=argparse.SUPPRESS)
    for command in COMMANDS:
        command.add(sub, common)
    return parser


def _close_progress_bars() -> None:
    """Close the tqdm bars an exception left open (the training loops close theirs only when they
    finish), so that the error starts its own line instead of trailing the bar's."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _leave_process_group() -> None:
    """Under torchrun, leave the process group while the interpreter is whole (see
    pegasus._distributed.leave); a no-op in a single process."""
    if "torch.distributed" in sys.modules:
        from pegasus._distributed import leave

        leave()


def _one_line(e: Exception) -> str:
    """The error as `pegasus: error: ...` prints it: one line; the type and a hint at --debug when
    no check anticipated it."""
    from pegasus.checkpoint import CheckpointError
    from pegasus.data import DatasetError
    from pegasus.training import TrainingError

    message = " ".join(str(e).split()) or repr(e)  # one line, even for multi-line messages
    if not isinstance(e, (DatasetError, CheckpointError, TrainingError, ValueError, OSError, RuntimeError, MemoryError)):
        message = f"{type(e).__name__}: {message} (unexpected; run with --debug for the traceback)"
    return message


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads is not None:
        from pegasus.machine import set_threads

        set_threads(args.threads)
    try:
        try:
            code = args.func(args)
            sys.stdout.flush()  # a closed pipe shows here, inside the boundary, not at exit
            return code
        finally:
            _leave_process_group()
    except BrokenPipeError:
        # `pegasus info | head -3`: the reader has gone, so there is no one to tell. Python's recipe:
        # point stdout at /dev/null so that the flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a writer whose pipe closed
    except KeyboardInterrupt:
        _close_progress_bars()
        print("pegasus: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI's boundary: one line, not a traceback
        _close_progress_bars()
        if args.debug:
            traceback.print_exc()
            return 1
        print(f"pegasus: error: {_one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
