"""`pegasus demo` at the HTTP level (no browser): the page, the API, every bad value, the limiter,
progress on a 24x24 run, and the command line. tests/test_demo_browser.py drives the page itself."""
from __future__ import annotations

import base64
import io
import json
import re
import socket
import threading
import urllib.error
import urllib.request
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image

import pegasus
from pegasus import backends
from pegasus.cli import main
from pegasus.demo import MAX_SAMPLES, make_server
from pegasus.images import make_grid
from pegasus.rundir import Run
from pegasus.sampling import SamplingOptions


@contextmanager
def serving(run=None, **limits):
    server = make_server(run, port=0, **limits)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def run():
    return pegasus.pretrained()


@pytest.fixture(scope="module")
def server(run):
    with serving(run) as s:
        yield s


def get(server, path, headers=None):
    request = urllib.request.Request(server.url.rstrip("/") + path, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def post(server, path, body, content_type="application/json"):
    """(status, [events]) for a 200, (status, {"error": ...}) otherwise."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(server.url.rstrip("/") + path, data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, [json.loads(line) for line in reply.read().splitlines()]
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def decode(event):
    assert event["image"].startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(event["image"].split(",", 1)[1]))).convert("RGB"))


def test_page_loads_nothing_from_elsewhere(server):
    status, headers, page = get(server, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    text = page.decode()
    for element in ("alpha", "temperature", "top-k", "seed", "n", "backend", "run", "generate", "download", "grid", "strip", "progress"):
        assert f'id="{element}"' in text, element
    # No CDN, fonts or telemetry: no address of another origin anywhere in the page, and the
    # Content-Security-Policy would block one if it crept in.
    assert not re.search(r"(https?:)?//[a-z0-9]", text, re.I), re.search(r"(https?:)?//[a-z0-9].{0,40}", text, re.I)
    assert "default-src 'none'" in headers["Content-Security-Policy"]


def test_info_lists_the_backends_that_run_here(server):
    status, _, body = get(server, "/api/info")
    info = json.loads(body)
    assert status == 200
    assert info["backends"] == backends.runnable(backends.SAMPLER, "cpu")[0]
    assert info["default_backend"] in info["backends"]
    assert info["grid"] == [8, 8] and info["max_samples"] == MAX_SAMPLES and "shipped" in info["run"]
    assert info["temperature"] == server.runs.default.temperature


def test_grid_is_the_librarys_samples_with_their_time(server, run):
    status, events = post(server, "/api/grid", {"n": "16", "alpha": "0.25", "seed": "3", "temperature": "0.9", "top_k": "100"})
    assert status == 200
    assert [e["event"] for e in events] == ["progress", "done"]
    done = events[-1]
    assert done["samples"] == 16 and done["grid"] == [8, 8] and done["backend"] == server.default_backend
    assert done["sampling_ms"] > 0 and done["ms_per_image"] == pytest.approx(done["sampling_ms"] / 16)
    expected = make_grid(run.sample(16, alpha=0.25, options=SamplingOptions(seed=3, temperature=0.9, top_k=100)), nrow=8, scale=2)
    np.testing.assert_array_equal(decode(done), expected)


def test_strip_is_sample_zero_from_bird_to_horse(server, run):
    status, events = post(server, "/api/strip", {"seed": 5})
    assert status == 200
    assert [e["done"] for e in events if e["event"] == "progress"] == list(range(1, 10))
    done = events[-1]
    assert done["alphas"] == [i / 8 for i in range(9)]
    strip = [run.sample(1, alpha=a, options=SamplingOptions(seed=5)) for a in done["alphas"]]
    np.testing.assert_array_equal(decode(done), make_grid(torch.cat(strip), nrow=9, scale=2))


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"n": 0}, "n should be an integer in 1..256, got 0"),
        ({"n": MAX_SAMPLES + 1}, f"n should be an integer in 1..{MAX_SAMPLES}, got {MAX_SAMPLES + 1}"),
        ({"n": "lots"}, "n should be an integer in 1..256, got 'lots'"),
        ({"n": 2.5}, "n should be an integer"),
        ({"temperature": "0"}, "temperature should be a finite number > 0, got 0"),
        ({"temperature": -1}, "temperature should be a finite number > 0, got -1"),
        ({"temperature": "inf"}, "temperature should be a finite number > 0, got inf"),
        ({"temperature": "1e-300"}, "temperature should be a finite number > 0 in the prior's dtype"),
        ({"alpha": 1.5}, "alpha should be a number in 0..1"),
        ({"alpha": "nan"}, "alpha should be a number in 0..1"),
        ({"top_k": 0}, "top_k should be an integer in 1.."),
        ({"top_k": 513}, "top_k should be in 1..512 (the run's codes; empty = all), got 513"),
        ({"seed": "abc"}, "seed should be an integer in 0..9223372036854775807, got 'abc'"),
        ({"seed": -1}, "seed should be an integer in 0.."),
        ({"seed": 2**63}, "seed should be an integer in 0.."),
        ({"backend": "gpu"}, "backend should be one of"),
        ({"run": "/no/such/run"}, "run directory '/no/such/run' does not load: /no/such/run/config.json is missing"),
        ({"run": 3}, "run should be a run directory"),
        ({"colour": "white"}, "unknown field 'colour'"),
        (["n", 3], "the request should be a JSON object, got list"),
    ],
)
def test_bad_values_are_one_line_400s_and_the_server_goes_on(server, body, names):
    status, reply = post(server, "/api/grid", body)
    assert status == 400
    assert names in reply["error"] and "\n" not in reply["error"] and "Traceback" not in reply["error"]
    assert get(server, "/api/info")[0] == 200


def test_a_run_directory_that_does_not_load(server, tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    status, reply = post(server, "/api/strip", {"run": str(tmp_path)})
    assert status == 400 and reply["error"].startswith(f"run directory {str(tmp_path)!r} does not load: ")


def test_another_run_directory_from_the_page(server, tiny_run):
    status, events = post(server, "/api/grid", {"run": str(tiny_run), "n": 3})
    assert status == 200 and events[-1]["grid"] == [4, 4] and events[-1]["samples"] == 3


@pytest.mark.parametrize(
    ("data", "content_type", "message"),
    [
        (b'{"n": 3}', "text/plain", "expected Content-Type application/json"),
        (b"{n: 3", "application/json", "the request body is not JSON"),
        (b"", "application/json", "the request body should be 1..4096 bytes"),
        (b" " * 5000, "application/json", "the request body should be 1..4096 bytes"),
    ],
)
def test_malformed_requests(server, data, content_type, message):
    status, reply = post(server, "/api/grid", data, content_type)
    assert status == 400 and message in reply["error"]


def test_unknown_paths_and_foreign_hosts(server):
    assert get(server, "/nope")[0] == 404
    assert post(server, "/api/nope", {})[0] == 404
    # A page on another site whose DNS name was rebound to 127.0.0.1 sends its own name as Host.
    status, _, body = get(server, "/api/info", headers={"Host": "evil.example:80"})
    assert status == 403 and "loopback" in json.loads(body)["error"]
    assert get(server, "/api/info", headers={"Host": f"localhost:{server.server_address[1]}"})[0] == 200


def test_two_tabs_at_once_both_get_their_images(server):
    replies = {}

    def tab(seed):
        replies[seed] = post(server, "/api/grid", {"n": 16, "seed": seed})

    tabs = [threading.Thread(target=tab, args=(seed,)) for seed in (1, 2)]
    for t in tabs:
        t.start()
    for t in tabs:
        t.join()
    assert {seed: (status, events[-1]["event"]) for seed, (status, events) in replies.items()} == {1: (200, "done"), 2: (200, "done")}
    assert not np.array_equal(decode(replies[1][1][-1]), decode(replies[2][1][-1]))


def test_the_queue_is_bounded(run):
    with serving(run, running=1, waiting=1) as server:
        limiter = server.limiter
        with limiter.admit(), limiter.turn():  # a job that holds the only slot
            queued = {}
            waiter = threading.Thread(target=lambda: queued.update(reply=post(server, "/api/grid", {"n": 2})))
            waiter.start()
            while limiter._admitted < 2:  # the waiter is in line
                threading.Event().wait(0.01)
            status, reply = post(server, "/api/grid", {"n": 2})  # one more than running + waiting
            assert status == 503 and "busy" in reply["error"]
        waiter.join()
        status, events = queued["reply"]
        assert status == 200 and events[0] == {"event": "queued", "ahead": 1} and events[-1]["event"] == "done"
        assert post(server, "/api/grid", {"n": 2})[0] == 200  # the line is free again


def test_progress_while_a_24x24_run_samples():
    # The shipped prior is convolutional: asked for 24x24 grids it samples them, and the VQ-VAE
    # decodes them to 96x96 images, like an STL-10 run.
    run = pegasus.pretrained()
    run.prior.cfg.grid = (24, 24)
    with serving(run) as server:
        status, events = post(server, "/api/grid", {"n": 16})
    assert status == 200
    assert [e["done"] for e in events if e["event"] == "progress"] == [4, 8, 12, 16]
    done = events[-1]
    assert done["grid"] == [24, 24] and done["image_size"] == 96
    assert decode(done).shape == (2 * (96 + 2) + 2, 8 * (96 + 2) + 2, 3)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_a_port_in_use_is_one_line(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["demo", "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"pegasus: error: cannot serve on 127.0.0.1 port {port}: Address already in use; pick another with --port")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "70000"], "argument --port: expected a port in 0..65535, got 70000"),
        (["--port", "x"], "argument --port: expected a port in 0..65535, got 'x'"),
        (["--host", "no.such.host.invalid"], "pegasus: error: cannot serve on no.such.host.invalid port"),
    ],
)
def test_cli_bad_options_are_one_line(argv, message, capsys):
    try:
        code = main(["demo", *argv])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code in (1, 2) and err.count("\n") == 1 and message in err


def test_cli_a_run_directory_that_does_not_load(tmp_path, capsys):
    assert main(["demo", "--run-dir", str(tmp_path), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pegasus: error: ") and "config.json is missing" in err


def test_cli_prints_the_url_and_warns_off_loopback(monkeypatch, capsys):
    from pegasus.demo import DemoServer

    def serve_forever(self):
        raise KeyboardInterrupt  # Ctrl-C at once

    monkeypatch.setattr(DemoServer, "serve_forever", serve_forever)
    port = _free_port()
    assert main(["demo", "--host", "0.0.0.0", "--port", str(port)]) == 0
    out, err = capsys.readouterr()
    assert f"on http://0.0.0.0:{port}/ (Ctrl-C stops it)" in out and "the shipped run" in out
    assert "pegasus: warning: --host 0.0.0.0 serves the demo to other machines" in err
    assert main(["demo", "--port", "0"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_a_request_whose_tab_closed_while_waiting_is_not_sampled(monkeypatch):
    run = pegasus.pretrained()
    decoded = []
    monkeypatch.setattr(run, "decode", lambda grids: decoded.append(len(grids)) or Run.decode(run, grids))
    with serving(run, running=1, waiting=2) as server:
        limiter = server.limiter
        with limiter.admit(), limiter.turn():
            body = json.dumps({"n": 4}).encode()
            with socket.create_connection(server.server_address[:2]) as tab:
                tab.sendall(b"POST /api/grid HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                            + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                while limiter._admitted < 2:
                    threading.Event().wait(0.01)
        while limiter._admitted:  # the closed tab's request leaves the line
            threading.Event().wait(0.01)
        assert decoded == []
        assert post(server, "/api/grid", {"n": 4})[0] == 200 and decoded == [4]


def test_a_bug_is_one_line_on_the_page_and_the_server_goes_on(server, monkeypatch, capsys):
    from pegasus.demo import server as demo_server

    def broken(run, settings):
        raise TypeError("a bug")

    def broken_while_sampling(run, settings):
        def batches():
            raise TypeError("a bug while sampling")
            yield

        return 1, batches(), {"nrow": 8}

    monkeypatch.setitem(demo_server.JOBS, "/api/strip", broken)
    status, reply = post(server, "/api/strip", {})
    assert status == 500 and reply["error"] == "unexpected TypeError: a bug (the server's terminal has the traceback)"
    monkeypatch.setitem(demo_server.JOBS, "/api/strip", broken_while_sampling)
    status, events = post(server, "/api/strip", {})
    assert status == 200 and events == [{"event": "error", "error": "unexpected TypeError: a bug while sampling "
                                         "(the server's terminal has the traceback)"}]
    assert capsys.readouterr().err.count("Traceback") == 2
    assert post(server, "/api/grid", {"n": 2})[0] == 200
