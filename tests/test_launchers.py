"""Every option of every subcommand has one spelling that means the same under `pegasus CMD` and
`torchrun ... -m pegasus CMD`: torchrun's parser takes unambiguous prefixes of its own options, so
`--run` became its `--run-path` and `--n` was ambiguous with `--nnodes` (issue 12)."""
from __future__ import annotations

import pytest

from pegasus.cli import build_parser


def _subcommands():
    return next(a for a in build_parser()._actions if a.dest == "command").choices


def _options(command: str) -> list[str]:
    return [o for a in _subcommands()[command]._actions for o in a.option_strings if o not in ("-h", "--help")]


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_option_passes_through_torchrun(command):
    from torch.distributed.run import get_args_parser

    launcher = get_args_parser()
    for option in _options(command):
        try:
            args = launcher.parse_args(["--nproc-per-node", "2", "-m", "pegasus", command, option, "1"])
        except SystemExit:
            pytest.fail(f"torchrun's parser rejects `pegasus {command} {option}` (it takes it for one of its own options)")
        assert args.training_script_args == [command, option, "1"], (command, option, args)


def test_run_directories_are_spelled_run_dir_everywhere():
    for command in ("select", "interpolate", "train-prior", "sample"):
        assert "--run-dir" in _options(command) and "--run" not in _options(command)
