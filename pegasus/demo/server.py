"""The demo's HTTP server: one page (index.html) and a small JSON API, on the standard library.

  GET  /             the page (one HTML file, its script and style inline: nothing from elsewhere)
  GET  /api/info     the run, its default temperature, the sampler backends that run here, the limits
  POST /api/grid     {run, n, alpha, temperature, top_k, seed, backend} -> the sample grid
  POST /api/strip    {run, temperature, top_k, seed, backend} -> sample 0 of the seed at alphas 0 .. 1

The two POSTs answer 400 with {"error": "..."} for a bad value and 503 when the queue is full;
otherwise 200 with newline-delimited JSON events: {"event": "queued", "ahead": k} while waiting,
{"event": "progress", "done": i, "total": n} after each batch, then {"event": "done", "image":
"data:image/png;base64,...", "sampling_ms": ..., "ms_per_image": ...} or {"event": "error", ...}.

Bounds: one sampling job runs at a time (the C++ sampler already uses every core; two at once only
share them) and at most `waiting` more wait for their turn; further requests get 503 at once, so
a burst costs a thread and a parsed request each, never a job's memory. A job's memory is bounded
by MAX_SAMPLES and its batch size (the Gumbel noise of one batch: 33 MB for 256 samples at 8x8).
"""
from __future__ import annotations

import base64
import errno
import ipaddress
import itertools
import json
import select
import socket
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
from torch import Tensor

from pegasus import backends
from pegasus.checkpoint import CheckpointError
from pegasus.demo.settings import MAX_SAMPLES, BadRequest, Settings, check_top_k, parse_settings
from pegasus.images import encode_image, make_grid
from pegasus.rundir import Run, load_run
from pegasus.sampling import SamplingOptions

STRIP_ALPHAS = tuple(i / 8 for i in range(9))
"""The alphas of the strip: one seed's first sample from bird (0) to horse (1)."""

PROGRESS_STEPS = 8
"""Grids larger than 8x8 are sampled in up to this many batches, each reported as it ends. An 8x8
grid of 16 takes ~80 ms in one batch on 2 cores, too short to show progress; 16 at 24x24 takes
~0.25-0.5 s, and batches of at least 4 keep the C++ loop's per-batch cost small."""

_MAX_BODY = 4096  # bytes of a request's JSON: the settings are a few short fields
_CACHED_RUNS = 4  # run directories kept loaded besides the server's own (~9 MB each for the shipped size)


class Busy(Exception):
    """The queue is full (HTTP 503)."""


class Limiter:
    """At most `running` jobs at once and `waiting` more in line; `admit` raises Busy beyond that."""

    def __init__(self, running: int = 1, waiting: int = 8) -> None:
        self._turns = threading.Semaphore(running)
        self._lock = threading.Lock()
        self._admitted = 0
        self.running, self.waiting = running, waiting

    @contextmanager
    def admit(self) -> Iterator[int]:
        """Hold a place in line for the block; yields how many jobs were admitted before this one."""
        with self._lock:
            if self._admitted >= self.running + self.waiting:
                raise Busy(f"the demo is busy ({self._admitted} requests running or waiting); try again in a moment")
            ahead = self._admitted
            self._admitted += 1
        try:
            yield ahead
        finally:
            with self._lock:
                self._admitted -= 1

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Run the block when one of the `running` slots is free (inside `admit`)."""
        with self._turns:
            yield


class Runs:
    """The server's own run, and the run directories the page names, loaded once and cached."""

    def __init__(self, default: Run, label: str) -> None:
        self.default, self.label = default, label
        self._cache: OrderedDict[Path, Run] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str) -> Run:
        """The run `name` names ("" = the server's own); BadRequest when it does not load."""
        if not name:
            return self.default
        path = Path(name).expanduser().resolve()
        with self._lock:
            if path not in self._cache:
                try:
                    self._cache[path] = load_run(path)
                except (CheckpointError, OSError, ValueError) as e:
                    raise BadRequest(f"run directory {name!r} does not load: {' '.join(str(e).split())}") from None
                if len(self._cache) > _CACHED_RUNS:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(path)
            return self._cache[path]


def _batch_size(run: Run, n: int) -> int:
    height, width = run.prior.cfg.grid
    return n if height * width <= 64 else max(4, -(-n // PROGRESS_STEPS))


def _options(s: Settings, batch_size: int | None = None) -> SamplingOptions:
    return SamplingOptions(temperature=s.temperature, top_k=s.top_k, seed=s.seed, backend=s.backend, batch_size=batch_size)


def _grid_job(run: Run, s: Settings) -> tuple[int, Iterator[Tensor], dict[str, Any]]:
    batches = run.iter_samples(s.n, s.alpha, options=_options(s, _batch_size(run, s.n)))
    return s.n, batches, {"nrow": 8, "alpha": s.alpha}


def _strip_job(run: Run, s: Settings) -> tuple[int, Iterator[Tensor], dict[str, Any]]:
    # Every alpha's sampler is set up (and its arguments checked) now, before the 200 is sent.
    parts = [run.iter_samples(1, a, options=_options(s)) for a in STRIP_ALPHAS]
    return len(STRIP_ALPHAS), itertools.chain.from_iterable(parts), {"nrow": len(STRIP_ALPHAS), "alphas": list(STRIP_ALPHAS)}


JOBS: dict[str, Callable[[Run, Settings], tuple[int, Iterator[Tensor], dict[str, Any]]]] = {
    "/api/grid": _grid_job,
    "/api/strip": _strip_job,
}


def loopback(host: str) -> bool:
    """Whether `host` (a name or an address, IPv6 with or without brackets) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _unexpected(e: Exception) -> str:
    """The page's line for an error that is a bug; the traceback goes to the server's stderr."""
    traceback.print_exc()
    return f"unexpected {type(e).__name__}: {' '.join(str(e).split())} (the server's terminal has the traceback)"


class DemoServer(ThreadingHTTPServer):
    """ThreadingHTTPServer holding the runs, the backend menu and the limiter."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], runs: Runs, limiter: Limiter) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.runs, self.limiter = runs, limiter
        self.backends, self.backend_notes = backends.runnable(backends.SAMPLER, "cpu")
        self.default_backend = backends.resolve(backends.SAMPLER, None, "cpu", torch.float32)
        # On loopback, requests must name a loopback host: a page elsewhere that rebinds its own
        # DNS name to 127.0.0.1 would otherwise reach the API (which loads any run directory named).
        self.loopback_only = loopback(address[0])
        self.page = files("pegasus.demo").joinpath("index.html").read_bytes()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def info(self) -> dict[str, Any]:
        run = self.runs.default
        return {
            "run": self.runs.label,
            "grid": list(run.prior.cfg.grid),
            "codes": run.prior.cfg.codes,
            "temperature": run.temperature,
            "backends": self.backends,
            "backend_notes": self.backend_notes,
            "default_backend": self.default_backend,
            "max_samples": MAX_SAMPLES,
            "strip_alphas": list(STRIP_ALPHAS),
        }


class _Handler(BaseHTTPRequestHandler):
    server: DemoServer
    timeout = 60  # seconds a client may take to send its request
    # Nothing but this origin: the page works offline, and no script or image can come from a CDN.
    _CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; connect-src 'self'"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # one line per request on stderr drowns the URL the CLI printed

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", self._CSP)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, record: dict[str, Any]) -> None:
        self._send(status, json.dumps(record).encode(), "application/json")

    def _host_ok(self) -> bool:
        if not self.server.loopback_only:
            return True
        host = urlsplit("//" + (self.headers.get("Host") or "")).hostname or ""
        if loopback(host):
            return True
        self._json(HTTPStatus.FORBIDDEN, {"error": f"this demo answers only on loopback addresses, got Host {self.headers.get('Host')!r}"})
        return False

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        if not self._host_ok():
            return
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
        elif path == "/api/info":
            self._json(HTTPStatus.OK, self.server.info())
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {path[:80]}"})

    def do_POST(self) -> None:  # noqa: N802
        if not self._host_ok():
            return
        job = JOBS.get(self.path)
        if job is None:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {self.path[:80]}"})
            return
        try:
            s = parse_settings(self._read_json(), self.server.backends, self.server.default_backend)
            run = self.server.runs.get(s.run)
            check_top_k(s, run.prior.cfg.codes)
            total, batches, extra = job(run, s)  # the sampler checks its arguments here, before any work
        except (ValueError, RuntimeError, MemoryError) as e:  # BadRequest is a ValueError
            self._json(HTTPStatus.BAD_REQUEST, {"error": " ".join(str(e).split())})
            return
        except Exception as e:  # noqa: BLE001 - a bug: the page gets a line, the terminal the traceback
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": _unexpected(e)})
            return
        try:
            with self.server.limiter.admit() as ahead:
                self._stream(s, run, total, batches, extra, ahead)
        except Busy as e:
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(e)})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the tab closed or left the page: stop sampling for it

    def _read_json(self) -> Any:
        if "json" not in (self.headers.get("Content-Type") or ""):
            # A cross-site form can post text/plain without asking; JSON needs the browser's consent.
            raise BadRequest(f"expected Content-Type application/json, got {self.headers.get('Content-Type')!r}")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise BadRequest(f"bad Content-Length {self.headers.get('Content-Length')!r}") from None
        if not 0 < length <= _MAX_BODY:
            raise BadRequest(f"the request body should be 1..{_MAX_BODY} bytes of JSON, got {length}")
        try:
            return json.loads(self.rfile.read(length))
        except ValueError as e:
            raise BadRequest(f"the request body is not JSON ({e})") from None

    def _client_gone(self) -> bool:
        """Whether the client closed the connection: after its request was read, the socket reads
        as ready only at its end (HTTP/1.0: nothing else may follow)."""
        ready, _, _ = select.select([self.connection], [], [], 0)
        try:
            return bool(ready) and not self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            return True

    def _event(self, record: dict[str, Any]) -> None:
        self.wfile.write(json.dumps(record).encode() + b"\n")

    def _stream(self, s: Settings, run: Run, total: int, batches: Iterator[Tensor], extra: dict[str, Any], ahead: int) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if ahead >= self.server.limiter.running:
            self._event({"event": "queued", "ahead": ahead})
        with self.server.limiter.turn():
            if self._client_gone():
                return  # a tab closed while it waited: its turn goes to the next in line
            try:
                images, seconds = [], 0.0
                while True:
                    t0 = time.perf_counter()  # sampling and decoding, not the PNG
                    batch = next(batches, None)
                    if batch is None:
                        break
                    seconds += time.perf_counter() - t0
                    images.append(batch)
                    self._event({"event": "progress", "done": sum(map(len, images)), "total": total})
            except (ValueError, RuntimeError, MemoryError) as e:
                self._event({"event": "error", "error": " ".join(str(e).split())})
                return
            except (BrokenPipeError, ConnectionResetError):
                raise
            except Exception as e:  # noqa: BLE001 - as in do_POST
                self._event({"event": "error", "error": _unexpected(e)})
                return
        images = torch.cat(images)
        grid = make_grid(images, nrow=extra.pop("nrow"), scale=max(1, 64 // images.shape[-1]))
        self._event({
            "event": "done",
            "image": "data:image/png;base64," + base64.b64encode(encode_image(grid)).decode(),
            "samples": total,
            "grid": list(run.prior.cfg.grid),
            "image_size": images.shape[-1],
            "backend": s.backend,
            "seed": s.seed,
            "sampling_ms": seconds * 1e3,
            "ms_per_image": seconds * 1e3 / total,
            **extra,
        })


def make_server(run: str | Path | Run | None = None, host: str = "127.0.0.1", port: int = 7860, *,
                running: int = 1, waiting: int = 8) -> DemoServer:
    """A DemoServer bound to (host, port) (port 0: a free one; `.url` says which), serving `run`
    (None: the shipped run, pegasus.pretrained()). A run that does not load raises CheckpointError
    now, a port in use OSError naming it. Call `.serve_forever()` (in a thread, in tests)."""
    from pegasus.pretrained import pretrained
    from pegasus.rundir import WEIGHTS_DIR

    if run is None:
        run = pretrained()
    elif not isinstance(run, Run):
        run = load_run(run)
    shipped = Path(run.run_dir).resolve() == WEIGHTS_DIR.resolve()
    runs = Runs(run, "the shipped run (pegasus.pretrained())" if shipped else str(run.run_dir))
    try:
        return DemoServer((host, port), runs, Limiter(running, waiting))
    except OSError as e:
        raise OSError(f"cannot serve on {host} port {port}: {e.strerror or e}"
                      + ("; pick another with --port (0 picks a free one)" if e.errno == errno.EADDRINUSE else "")) from None
