"""`pegasus demo`: serve the local sampling page until Ctrl-C."""
from __future__ import annotations

import argparse
import sys

from pegasus.commands import _args


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "demo",
        parents=[common],
        help="a local web page to sample pegasi with sliders (alpha, temperature, top-k, seed, backend)",
        description="Serve the demo page and its API on HOST:PORT until Ctrl-C, sampling the shipped run or "
        "RUN_DIR's. It loads nothing from the network; one sampling job runs at a time and a few wait in line.",
    )
    p.add_argument("--run-dir", type=_args.run_dir, metavar="RUN_DIR", help="run directory to sample (default: the shipped run)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_args.port, default=7860,
                   help="port to listen on (default 7860; 0 picks a free one)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pegasus.demo import make_server
    from pegasus.demo.server import loopback

    server = make_server(args.run_dir, host=args.host, port=args.port)
    if not loopback(args.host):
        print(f"pegasus: warning: --host {args.host} serves the demo to other machines, without authentication; "
              "its page can load any run directory this user can read", file=sys.stderr)
    print(f"pegasus demo: {server.runs.label} on {server.url} (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("pegasus demo: stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0
