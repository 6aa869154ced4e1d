"""The documentation runs: every shell and Python block of README.md and docs/*.md, on tiny data.

Blocks. A ```bash or ```python fence runs unless the comment line just above it (comments may
stack) is `<!-- not run: REASON -->`, with the reason, or one of the README's Quick start markers
(`<!-- quickstart:setup -->`, `<!-- quickstart:tests -->`), which .ci/run reads and runs in CI;
test_quickstart checks that they are found as .ci/run finds them and runs their `pegasus` part.
```text fences are output or layouts and never run; any other fence fails, so nothing is left
unclassified.

Pages. Each page runs in a temporary directory of its own, its blocks in order: bash blocks with
`bash -euo pipefail`, Python blocks in one namespace (in this process, with that directory as the
working directory). The directory holds the data sets the pages name, tiny and in the real on-disk
formats (pegasus.data.synthetic): ../shared/data/cifar10-jpg.tar.gz (an image-folder archive,
32x32, CIFAR-10's classes), ~/data/cifar-10-batches-py (HOME is the directory) and
path/to/stl10_binary.

Commands. `pegasus`, `.venv/bin/pegasus` and `torchrun ... -m pegasus` run the real parser and
command (`pegasus.cli.main`) with the page's arguments, made tiny by `shrink`: every count of steps
is divided by 500, rounded up (2000 VQ-VAE steps -> 4; a command naming none gets its default
shrunk the same way), batches, widths and sample counts of the training and evaluation commands are
appended (argparse keeps an option's last value), so is `--threads 1`, and the pipeline's settings
get the same treatment (`tiny_settings`). So a documented command or option that stops working
fails here, and no figure in the pages is what these tiny runs reach. To skip the 2-5 s of imports
of every command (torch; torch._dynamo with the first optimizer), `pegasus` asks a server that
imported them once to fork a process for it (`_serve`); a command whose environment changes what
is read at import (ATEN_CPU_CAPABILITY, ...) runs in a fresh interpreter instead.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import TINY_MODEL, TINY_PIPELINE

REPO = Path(__file__).resolve().parent.parent
PAGES = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
RUN_LANGUAGES = ("bash", "python")
LANGUAGES = (*RUN_LANGUAGES, "text")
QUICKSTART = ("setup", "tests")

# Variables read when torch or pegasus is imported: a command that sets one of them differently
# from the server's environment runs in a fresh interpreter.
IMPORT_TIME_ENV = (
    "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS",
    "TRITON_INTERPRET", "LD_PRELOAD",
)


# --- reading the pages ------------------------------------------------------------------------

@dataclass
class Block:
    """A fenced block: its page, the line of its fence, its language, its text, and the HTML
    comments just above it (`markers`, without `<!--` and `-->`)."""

    page: str
    line: int
    language: str
    code: str
    markers: list[str]

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    def marker(self, name: str) -> str | None:
        """The text after `<!-- NAME` in one of the block's markers, or None."""
        for m in self.markers:
            if m.startswith(name):
                return m[len(name):].strip()
        return None

    @property
    def quickstart(self) -> str | None:
        return next((m.split(":", 1)[1] for m in self.markers if m.startswith("quickstart:")), None)

    @property
    def runs(self) -> bool:
        return self.language in RUN_LANGUAGES and self.marker("not run:") is None and self.quickstart is None


def read_blocks(page: str) -> list[Block]:
    """The fenced blocks of `page`, with the HTML comments on the lines just above each."""
    lines = (REPO / page).read_text().split("\n")
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        markers, j = [], i - 1
        while j >= 0 and re.fullmatch(r"<!--.*-->", lines[j].strip()):
            markers.insert(0, lines[j].strip()[4:-3].strip())
            j -= 1
        end = next((k for k in range(i + 1, len(lines)) if lines[k].startswith("```")), None)
        if end is None:
            raise AssertionError(f"{page}:{i + 1}: a fence that is never closed")
        blocks.append(Block(page, i + 1, m.group(1), "\n".join(lines[i + 1 : end]) + "\n", markers))
        i = end + 1
    return blocks


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, flags=re.M)}


# --- tiny commands ----------------------------------------------------------------------------

STEPS_PER_TINY_STEP = 500
STEP_OPTIONS = ("--steps", "--pretrain-steps", "--checkpoint-every")
# The defaults the trainers use when a command names no steps (pegasus.training; the VQ-VAE's and
# the prior's), shrunk like a documented value.
DEFAULT_STEPS = {
    "train-vqvae": {"--steps": 2000, "--checkpoint-every": 250},
    "train-prior": {"--steps": 1500, "--checkpoint-every": 250},
}
APPENDED = {
    "train-vqvae": ["--batch-size", "8"],
    "train-prior": ["--batch-size", "8", "--channels", "8", "--layers", "2"],
    "train-classifier": ["--batch-size", "16", "--epochs", "0.5"],
    "evaluate": ["-n", "2", "--test-images", "16"],
}


def tiny_steps(steps: int) -> int:
    return max(1, math.ceil(steps / STEPS_PER_TINY_STEP))


def shrink(argv: list[str]) -> list[str]:
    """`argv` of a `pegasus` command as the docs give it -> the same command on tiny settings."""
    command = next((a for a in argv if not a.startswith("-")), None)
    out, i = [], 0
    while i < len(argv):
        if argv[i] in STEP_OPTIONS and i + 1 < len(argv):
            out += [argv[i], str(tiny_steps(int(argv[i + 1])))]
            i += 2
        else:
            out.append(argv[i])
            i += 1
    for option, steps in DEFAULT_STEPS.get(command, {}).items():
        if option not in out:
            out += [option, str(tiny_steps(steps))]
    if command and "--threads" not in out:
        # One thread: the tests share a small machine, where every parallel region of two threads
        # waits for a busy core (train-vqvae: 17.6 s against 2.3 s on one thread; see docs/training.md).
        out += ["--threads", "1"]
    return out + APPENDED.get(command, [])


def tiny_settings(cfg: dict) -> dict:
    """A pipeline's settings (pegasus.pipeline.QUICK or FULL) with tiny models, steps and batches."""
    out = {**cfg, "vqvae": {**cfg["vqvae"], **TINY_MODEL}, "prior": {**cfg["prior"], **TINY_PIPELINE["prior"]}, "samples": 4}
    for key, default in (("vqvae_train", 2000), ("prior_train", 1500)):
        train = {"steps": default, **cfg[key], "batch_size": 8}
        for name in ("steps", "pretrain_steps", "checkpoint_every"):
            if name in train:
                train[name] = tiny_steps(train[name])
        out[key] = train
    return out


def run_cli(argv: list[str]) -> int:
    """`pegasus ARGV`, tiny: what `pegasus` runs in these tests (in a forked or a fresh process)."""
    from pegasus import cli, pipeline

    pipeline.QUICK, pipeline.FULL = tiny_settings(pipeline.QUICK), tiny_settings(pipeline.FULL)
    try:
        return cli.main(shrink(argv))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


# What the commands import, imported once by the server: torch.optim imports torch._dynamo when the
# first optimizer is made (3 s). Importing runs none of torch's thread pools, so forks start clean.
PRELOAD = (
    "matplotlib.pyplot", "torch._dynamo", "pegasus.cli", "pegasus.pipeline", "pegasus.pretrained", "pegasus.evaluate",
    "pegasus.interpolate", "pegasus.sample", "pegasus.select", "pegasus.train_classifier", "pegasus.train_prior",
    "pegasus.train_vqvae",
)


def _serve(path: str) -> None:
    """Fork a process per request on the unix socket `path`: the request is the client's
    (stdin, stdout, stderr) and JSON {argv, cwd, env}; the answer, the exit status."""
    import importlib
    import pkgutil
    import signal
    import traceback

    for name in PRELOAD:
        importlib.import_module(name)
    if importlib.util.find_spec("pegasus.commands"):  # the command line's modules, one a command
        for module in pkgutil.iter_modules(importlib.import_module("pegasus.commands").__path__):
            importlib.import_module(f"pegasus.commands.{module.name}")

    def stop(*_: object) -> None:  # reap every child, so that their CPU time counts as the test's
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(path)
    server.listen(8)
    Path(path + ".ready").write_text(json.dumps({k: os.environ.get(k) for k in IMPORT_TIME_ENV}))
    while True:
        while _reaped():
            pass
        conn, _ = server.accept()
        message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        if os.fork() == 0:
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                server.close()
                request = json.loads(message)
                for target, fd in enumerate(fds):
                    os.dup2(fd, target)
                    os.close(fd)
                os.chdir(request["cwd"])
                os.environ.clear()
                os.environ.update(request["env"])
                sys.argv = ["pegasus", *request["argv"]]
                code = run_cli(request["argv"])
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                conn.send(str(code).encode())
                os._exit(code)
        for fd in fds:
            os.close(fd)
        conn.close()


def _reaped() -> bool:
    """Reap one finished child of the server, if any."""
    try:
        return os.waitpid(-1, os.WNOHANG)[0] != 0
    except ChildProcessError:
        return False


CLIENT = """#!{python}
# `pegasus` in the documentation's tests (tests/test_docs.py): asks the server to run the command.
import json, os, socket, sys
argv = sys.argv[1:]
server_env = json.load(open({ready!r}))
if any(os.environ.get(k) != v for k, v in server_env.items()):
    os.execv({python!r}, [{python!r}, {direct!r}, *argv])
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect({sock!r})
socket.send_fds(s, [json.dumps({{"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}}).encode()], [0, 1, 2])
answer = s.recv(64)
sys.exit(int(answer) if answer else "pegasus (tests/test_docs.py): the forked command died without an exit status")
"""

DIRECT = """#!{python}
# `pegasus` in a fresh interpreter, tiny as in tests/test_docs.py (what `torchrun -m pegasus` runs there).
import sys
sys.path.insert(0, {repo!r})
from tests.test_docs import run_cli
sys.exit(run_cli(sys.argv[1:]))
"""

TORCHRUN = """#!/usr/bin/env bash
# torchrun in tests/test_docs.py: `-m pegasus` runs the tiny command line (bin/pegasus-direct), and
# the rendezvous takes a free port unless the command names one (29500 may be another test's).
case " $* " in *" --master-port"*|*" --master_port"*) ;; *) export PET_MASTER_PORT=$({python!r} -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])');; esac
args=()
while [ $# -gt 0 ]; do
  if [ "$1" = -m ] && [ "${{2:-}}" = pegasus ]; then args+=({direct!r}); shift 2; else args+=("$1"); shift; fi
done
exec {python!r} -m torch.distributed.run "${{args[@]}}"
"""


@pytest.fixture(scope="module")
def commands(tmp_path_factory):
    """A bin/ folder with `pegasus`, `torchrun` and `python`, and the server they use."""
    bin_dir = tmp_path_factory.mktemp("bin")
    sock = str(bin_dir / "pegasus.sock")
    direct = bin_dir / "pegasus-direct"
    paths = {"python": sys.executable, "repo": str(REPO), "sock": sock, "ready": sock + ".ready", "direct": str(direct)}
    (bin_dir / "pegasus").write_text(CLIENT.format(**paths))
    direct.write_text(DIRECT.format(**paths))
    (bin_dir / "torchrun").write_text(TORCHRUN.format(**paths))
    for name in ("pegasus", "pegasus-direct", "torchrun"):
        (bin_dir / name).chmod(0o755)
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (bin_dir / "python").chmod(0o755)
    code = f"import sys; sys.path.insert(0, {str(REPO)!r}); from tests.test_docs import _serve; _serve({sock!r})"
    server = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while not Path(sock + ".ready").exists():
            assert server.poll() is None, "the documentation tests' command server died while starting"
            assert time.monotonic() < deadline, "the documentation tests' command server did not start in 120 s"
            time.sleep(0.1)
        yield bin_dir
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """The data sets the pages name, tiny, in their real formats: {relative path: source}."""
    from pegasus.data import synthetic

    root = tmp_path_factory.mktemp("docs-data")
    folder = synthetic.write_image_folder(root / "folder", n_per_class=4, size=32, ext="jpg", as_tar=True)
    return {
        "shared/data/cifar10-jpg.tar.gz": folder,
        "home/data/cifar-10-batches-py": synthetic.write_cifar10_python(root / "python", n_train=50, n_test=20),
        "main/path/to/stl10_binary": synthetic.write_stl10_binary(root / "stl10", n_train=20, n_test=10),
    }


def page_dir(tmp_path: Path, tiny_data: dict[str, Path], commands: Path) -> Path:
    """tmp_path/main, where a page's blocks run, beside shared/ and home/ as the pages expect."""
    for rel, source in tiny_data.items():
        dest = tmp_path / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy)(source, dest)
    main = tmp_path / "main"
    (main / ".venv" / "bin").mkdir(parents=True, exist_ok=True)
    (main / ".venv" / "bin" / "pegasus").symlink_to(commands / "pegasus")
    return main


def run_bash(block: Block, cwd: Path, commands: Path) -> None:
    env = {**os.environ, "PATH": f"{commands}{os.pathsep}{os.environ['PATH']}", "HOME": str(cwd.parent / "home")}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"{block.where}: the block exited {done.returncode}\n{block.code}\n"
                    f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}", pytrace=False)


# --- the tests --------------------------------------------------------------------------------

@pytest.mark.parametrize("page", PAGES)
def test_every_block_is_classified(page):
    for block in read_blocks(page):
        assert block.language in LANGUAGES, (
            f"{block.where}: a ```{block.language} fence: use bash or python (run by tests/test_docs.py, or marked "
            "<!-- not run: REASON -->), or text for output and layouts"
        )
        reason = block.marker("not run:")
        assert reason is None or len(reason) >= 10, f"{block.where}: `not run:` needs its reason, got {reason!r}"
        assert not (block.quickstart and page != "README.md"), f"{block.where}: Quick start markers belong in README.md"
        unknown = [m for m in block.markers if not m.startswith(("not run:", "quickstart:"))]
        assert not unknown, f"{block.where}: unknown markers {unknown} (known: `not run: REASON`, `quickstart:NAME`)"


@pytest.mark.parametrize("page", PAGES)
def test_page_runs(page, tmp_path, tiny_data, commands, monkeypatch):
    import torch

    cwd = page_dir(tmp_path, tiny_data, commands)
    monkeypatch.chdir(cwd)
    namespace: dict = {"__name__": "__docs__"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the commands run (`shrink`): a busy core slows two threads down
    try:
        for block in read_blocks(page):
            if not block.runs:
                continue
            if block.language == "bash":
                run_bash(block, cwd, commands)
            else:
                exec(compile(block.code, block.where, "exec"), namespace)
    finally:
        torch.set_num_threads(threads)


def test_quickstart(tmp_path, tiny_data, commands):
    """.ci/run's own extraction finds both blocks; the setup's `pegasus` commands run (the rest of it,
    and the tests, run in CI)."""
    ci = (REPO / ".ci" / "run").read_text()
    function = re.search(r"^quickstart\(\) \{.*?^\}$", ci, flags=re.S | re.M)
    assert function, ".ci/run: its quickstart() function was not found"
    found = {}
    for name in QUICKSTART:
        done = subprocess.run(["bash", "-c", f"{function.group(0)}\nquickstart {name}"], cwd=REPO, capture_output=True, text=True, check=True)
        found[name] = done.stdout.strip()
    assert "pip install" in found["setup"] and "pytest" in found["tests"], found
    readme = {b.quickstart: b.code.strip() for b in read_blocks("README.md") if b.quickstart}
    assert readme == found
    parts = [p.strip() for p in found["setup"].split("&&") if p.strip().startswith(".venv/bin/pegasus ")]
    assert parts, "README.md: the setup command runs no `.venv/bin/pegasus` command"
    cwd = page_dir(tmp_path, tiny_data, commands)
    for part in parts:
        run_bash(Block("README.md", 0, "bash", part, []), cwd, commands)


def test_links_resolve():
    """Every relative link of the pages names a file that exists, and a heading of it when it has #."""
    for page in PAGES:
        text = re.sub(r"```.*?```", "", (REPO / page).read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (REPO / page).parent / path if path else REPO / page
            assert dest.exists(), f"{page}: a link to {target}, which does not exist"
            if anchor:
                assert anchor in anchors(dest), f"{page}: a link to {target}: no such heading in {dest.relative_to(REPO)}"


def test_layout_names_files_that_exist():
    """docs/layout.md: every path in its tree exists (pegasus/... under pegasus/, and the top ones)."""
    (tree,) = [b for b in read_blocks("docs/layout.md") if b.language == "text"]
    parent, missing = None, []
    for line in tree.code.split("\n"):
        m = re.match(r"^( *)(\.?[\w./-]+)\s", line + " ")
        if not m or m.group(2).startswith("--"):
            continue
        indent, name = len(m.group(1)), m.group(2)
        if indent == 0:
            parent = name if name.endswith("/") else None
            path = name
        elif parent and line.startswith("  ") and not line.startswith("    "):
            path = parent + name
        else:
            continue
        if not (REPO / path).exists():
            missing.append(path)
    assert not missing, f"docs/layout.md names paths that do not exist: {missing}"


def test_cli_table_matches_the_parser():
    """docs/cli.md: a row for every command, and every option a row names is one its parser takes."""
    from pegasus.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    rows = re.findall(r"^\| `pegasus ([a-z-]+)(?: ([a-z][a-z-]*))?([^`]*)` \|", (REPO / "docs" / "cli.md").read_text(), flags=re.M)
    documented = {command for command, _, _ in rows}
    assert documented == set(sub.choices), f"docs/cli.md documents {sorted(documented)}, the parser has {sorted(sub.choices)}"
    for command, _, rest in rows:
        accepted = {o for action in sub.choices[command]._actions for o in action.option_strings}
        named = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", rest))
        assert named <= accepted, f"docs/cli.md: `pegasus {command}` names {sorted(named - accepted)}, which its parser does not take"
