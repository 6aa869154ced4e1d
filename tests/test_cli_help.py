"""The help texts against what the commands do: every option the help shows is accepted and reaches
the stage function its handler calls; every default the help states is the code's; every option
the help names exists; options shared by every command count before the command too; and every
function of the command line stays short."""
import argparse
import ast
import dataclasses
import importlib
import re
from pathlib import Path

import pytest

import pegasus
from pegasus.cli import build_parser, main


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    return next(a for a in build_parser()._actions if a.dest == "command").choices


SUBPARSERS = _subparsers()
SHARED = {"help", "debug", "threads"}  # -h, and the options every command takes (tested below)


class _Server:
    """What `pegasus demo` uses of its server, serving nothing."""

    class runs:
        label = "a run"

    url = "http://127.0.0.1:1/"

    def serve_forever(self):
        pass

    def server_close(self):
        pass


_RUN, _DATASET, _CLASSIFIER = object(), object(), object()
_BENCH_TABLES = ("harness.device_name", "nearest_code.format_table", "sampler.header", "sampler.format_table",
                 "train.header", "train.format_table", "harness.to_json_lines")

STAGES = {
    "data": {"pegasus.data.describe_splits": ("", {})},
    "bench": {"pegasus.bench.nearest_code.run": ([], []), "pegasus.bench.sampler.run": ([], []), "pegasus.bench.train.run": [],
              **{f"pegasus.bench.{name}": "" for name in _BENCH_TABLES}},
    "train-vqvae": {"pegasus.train_vqvae.train_vqvae": {}},
    "select": {"pegasus.data.load_dataset": _DATASET, "pegasus.select.read_ids": [1], "pegasus.select.select_white": [],
               "pegasus.select.write_selection": None, "pegasus.rundir.load_classifier": _CLASSIFIER},
    "interpolate": {"pegasus.interpolate.interpolate": {}},
    "train-prior": {"pegasus.train_prior.train_prior": {}},
    "train-classifier": {"pegasus.train_classifier.train_classifier": {}},
    "sample": {"pegasus.sample.sample_to_file": {}},
    "generate": {"pegasus.sample.sample_to_file": {}, "pegasus.pretrained.pretrained": _RUN},
    "evaluate": {"pegasus.evaluate.evaluate_run": {}, "pegasus.evaluate.format_report": ""},
    "pipeline": {"pegasus.pipeline.run_pipeline": {}},
    "demo": {"pegasus.demo.make_server": _Server()},
}
"""What each command's handler calls, as module.function: the fake returns, recording its arguments."""


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """What a user gives a command: its options and arguments, less the shared ones and a
    positional choice (bench's op), which the tests below go through instead."""
    return [a for a in parser._actions if a.dest not in SHARED and (a.option_strings or not a.choices)]


def _name(action: argparse.Action) -> str:
    return action.option_strings[-1] if action.option_strings else action.dest.upper()


def _value(action: argparse.Action, tmp: Path) -> list[str]:
    """A value the option accepts that differs from its default."""
    if action.nargs == 0:
        return []
    if action.choices:
        return [str([c for c in action.choices if c != action.default][-1])]
    if action.type is None:
        return [str(tmp / f"{action.dest}.png")]
    for text in ("3", "0.37", "8x4x2"):
        try:
            action.type(text)
            return [text]
        except (argparse.ArgumentTypeError, ValueError):
            pass
    raise AssertionError(f"no sample value for {action.option_strings} of type {action.type}")


def _required(parser: argparse.ArgumentParser, tmp: Path, choice: str | None) -> tuple[list[str], dict[str, int]]:
    """The arguments the command cannot run without, and where each one's value stands."""
    argv, where = [], {}
    for action in parser._actions:
        if not action.option_strings and action.dest != "help":
            where[action.dest] = len(argv)
            argv += [choice if action.choices else _value(action, tmp)[0]]
        elif action.required:
            where[action.dest] = len(argv) + 1
            argv += [action.option_strings[-1], *_value(action, tmp)]
    return argv, where


def _plain(x):
    """x with every callable as one marker: the handlers pass fresh functions (progress, log)."""
    if callable(x) and not isinstance(x, type) and not dataclasses.is_dataclass(x) and x not in (_RUN, _DATASET, _CLASSIFIER):
        return "<callable>"
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_plain(v) for v in x)
    return x


def _calls(monkeypatch, command: str, argv: list[str]) -> tuple[int, list]:
    calls = []
    for target, result in STAGES[command].items():
        def fake(*args, _name=target, _result=result, **kwargs):
            calls.append((_name, _plain(args), _plain(kwargs)))
            return _result

        module, name = target.rsplit(".", 1)
        # By the module object: `pegasus.pretrained` is also the function the package exports.
        monkeypatch.setattr(importlib.import_module(module), name, fake)
    return main(argv), calls


def _cases():
    for command, parser in SUBPARSERS.items():
        positional = next((a.choices for a in parser._actions if not a.option_strings and a.choices), None)
        for action in _options(parser):
            # A positional choice (bench's op): the option is tried under each one its help names,
            # or under every one when it names none.
            named = [c for c in positional or [] if re.search(rf"\b{c}\b", action.help)]
            for choice in named or positional or [None]:
                yield pytest.param(command, action.dest, choice, id=f"{command}-{_name(action)}-{choice}")


def test_every_command_with_options_has_its_stages_declared():
    assert {c for c, p in SUBPARSERS.items() if _options(p)} == set(STAGES)


@pytest.mark.parametrize(("command", "dest", "choice"), list(_cases()))
def test_every_option_reaches_the_stage(command, dest, choice, monkeypatch, tmp_path, capsys):
    """Given (or, when required, given another value), the option changes what the handler passes
    on, or the command refuses it (exit 1): an option that is parsed and then dropped fails here."""
    monkeypatch.chdir(tmp_path)
    parser = SUBPARSERS[command]
    action = next(a for a in parser._actions if a.dest == dest)
    base, where = _required(parser, tmp_path, choice)
    status, without = _calls(monkeypatch, command, [command, *base])
    assert status == 0, capsys.readouterr().err
    if dest in where:
        argv = [*base[: where[dest]], str(tmp_path / "another"), *base[where[dest] + 1 :]]
    else:
        argv = [*base, action.option_strings[-1], *_value(action, tmp_path)]
    status, given = _calls(monkeypatch, command, [command, *argv])
    err = capsys.readouterr().err
    if status == 1:
        assert err.startswith("pegasus: error: ") and _name(action) in err, err  # refused, and says why
        return
    assert status == 0, err
    assert given != without, f"{command} {_name(action)}: parsed, but the stage receives the same as without it"


def _invocations(help_text: str) -> set[str]:
    """The option strings of the help's option list (each line's left column)."""
    heads = [line.strip().split("  ")[0] for line in help_text.splitlines() if line.strip().startswith("-")]
    return {s for head in heads for s in re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", head)}


@pytest.mark.parametrize("command", list(SUBPARSERS))
def test_the_help_lists_exactly_the_parsers_options(command):
    parser = SUBPARSERS[command]
    assert _invocations(parser.format_help()) == set(parser._option_string_actions)


def _mentions(text: str, commands) -> list[tuple[str | None, str]]:
    """The options a help text names, each with the command it is named with (`train-prior
    --level top`), or None for the command whose help it is."""
    found = []
    for m in re.finditer(r"(?<![\w-])(--[a-z][\w-]*)", text):
        before = re.search(r"([a-z][\w-]*) $", text[: m.start()])
        found.append((before.group(1) if before and before.group(1) in commands else None, m.group(1)))
    return found


@pytest.mark.parametrize("command", list(SUBPARSERS))
def test_the_help_names_only_options_that_exist(command):
    parser = SUBPARSERS[command]
    texts = [parser.description or "", *(a.help or "" for a in parser._actions)]
    for text in texts:
        for other, option in _mentions(text, SUBPARSERS):
            assert option in SUBPARSERS[other or command]._option_string_actions, f"{command}: {text!r} names {other or command} {option}"
        for name in re.findall(r"`pegasus ([\w-]+)", text):
            assert name in SUBPARSERS, f"{command}: {text!r} names `pegasus {name}`"


def _code_defaults() -> dict[tuple[str, str], object]:
    """The defaults of the options the parser leaves None, as the code that fills them in has them."""
    from pegasus.interpolate import DEFAULT_ALPHAS
    from pegasus.models import PixelCNNConfig, VQVAEConfig
    from pegasus.select import DEFAULT_PICKS
    from pegasus.train_classifier import ClassifierTrainConfig
    from pegasus.train_prior import PriorTrainConfig
    from pegasus.train_vqvae import VQVAETrainConfig

    vq, vq_train, prior, prior_train = VQVAEConfig(), VQVAETrainConfig(), PixelCNNConfig(), PriorTrainConfig()
    return {
        **{("train-vqvae", f): getattr(vq_train, f) for f in ("steps", "batch_size", "lr", "seed", "checkpoint_every", "perceptual")},
        **{("train-vqvae", f): getattr(vq, f) for f in ("codes", "dim", "levels", "restart_after")},
        **{("train-prior", f): getattr(prior_train, f) for f in ("steps", "batch_size", "lr", "seed", "checkpoint_every", "held_out", "pretrain_steps")},
        **{("train-prior", f): getattr(prior, f) for f in ("channels", "layers", "kernel")},
        **{("train-classifier", f): getattr(ClassifierTrainConfig(), f) for f in ("batch_size", "seed")},
        ("select", "birds"): DEFAULT_PICKS["bird"],
        ("select", "horses"): DEFAULT_PICKS["horse"],
        ("interpolate", "alphas"): DEFAULT_ALPHAS,
    }


def _stated_default(action: argparse.Action) -> list[str] | None:
    """What the help says the default is: "(default 2000)", "(default 0 0.1 ... 1)", a choice's
    "(default: native)" or "cached: ... (default)"."""
    m = re.search(r"\(default:? (\d[\w.-]*(?: \d[\w.-]*| \.\.\.)*)(?=[);:])", action.help or "")
    if m:
        return m.group(1).split()
    for choice in action.choices or []:
        if re.search(rf"\(default:? {choice}\)|(?:^|; ){choice}(?::[^;]*)? \(default\)", action.help):
            return [str(choice)]
    return None


def _same(stated: list[str], value: object) -> bool:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if "..." in stated:  # "0 0.1 ... 1": the first ones and the last
        i = stated.index("...")
        return _same(stated[:i], values[:i]) and _same(stated[i + 1 :], values[len(values) - len(stated) + i + 1 :])
    if len(stated) != len(values):
        return False
    try:
        return all(float(s) == float(v) for s, v in zip(stated, values))
    except (TypeError, ValueError):
        return stated == [str(v) for v in values]


def test_every_stated_default_is_the_codes():
    code = _code_defaults()
    checked = set()
    for command, parser in SUBPARSERS.items():
        for action in _options(parser):
            stated = _stated_default(action)
            if stated is None:
                continue
            key = (command, action.dest)
            value = code[key] if action.default is None and key in code else action.default
            assert value is not None, f"{command} {_name(action)}: the help states a default, add it to _code_defaults"
            assert _same(stated, value), f"{command} {_name(action)}: the help says {' '.join(stated)}, the code {value!r}"
            checked.add(key)
    assert set(code) <= checked, f"no default stated for {sorted(set(code) - checked)}"


def test_the_shared_options_count_before_the_command_too(monkeypatch, tmp_path, capsys):
    """argparse copies a subcommand's defaults over the main parser's values: `pegasus --threads 1
    generate` used to ignore its 1, and `pegasus --debug data ...` its --debug."""
    threads = []
    monkeypatch.setattr("pegasus.machine.set_threads", threads.append)
    monkeypatch.setattr("pegasus.data.describe_splits", lambda path: ("", {}))
    assert main(["--threads", "1", "data", str(tmp_path)]) == 0
    assert main(["data", str(tmp_path), "--threads", "2"]) == 0
    assert main(["--threads", "1", "data", str(tmp_path), "--threads", "2"]) == 0  # the later one
    assert main(["data", str(tmp_path)]) == 0
    assert threads == [1, 2, 2]
    monkeypatch.undo()
    assert main(["--debug", "data", str(tmp_path / "nowhere")]) == 1
    assert "Traceback" in capsys.readouterr().err


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.end_lineno - node.lineno + 1


def test_no_function_of_the_command_line_is_over_60_lines():
    package = Path(pegasus.__file__).parent
    files = [package / "cli.py", *sorted((package / "commands").glob("*.py"))]
    long = {f"{path.name}:{name}": n for path in files for name, n in _functions(path) if n > 60}
    assert not long
