"""`pegasus bench OP`: time an op's backends (nearest-code, the sampler) or the training steps."""
from __future__ import annotations

import argparse
import sys

from pegasus.commands import _args


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "bench",
        parents=[common],
        help="benchmark an op's backends against the reference (nearest-code also against FAISS)",
        description="Time every available backend of the op (nearest-code: each in a fresh process, which also gives "
        "its peak extra memory), print a table and optionally write one JSON record per (shape, backend).",
    )
    p.add_argument("op", choices=["nearest-code", "sampler", "train"], help="what to benchmark (train: VQ-VAE and prior "
                   "training steps in fp32 and bf16, beside the plain PyTorch VQ-VAE)")
    p.add_argument("--json", metavar="FILE", help="write the records here, one JSON object per line")
    p.add_argument("--quick", action="store_true", help="nearest-code: N=4096 and 36864 at K=512 only (default: N in 4096, 36864, "
                   "262144; K in 512, 1024). sampler: 8x8 at batch 1 and 16 only (default: 8x8 and 24x24 at batch 1, 16, 64). train: 4 timed steps instead of 10")
    p.add_argument("--shape", type=_shape, action="append", metavar="NxKxD", help="benchmark this shape instead (repeatable)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default: cpu")
    p.add_argument("--min-run-time", type=_args.positive_float, default=1.0, metavar="S", help="nearest-code and sampler: "
                   "seconds of timing per measurement (default 1; the training bench times a number of steps, see --quick)")
    p.add_argument("--cpu-capability", choices=["native", "avx2"], default="native",
                   help="nearest-code on the CPU: avx2 runs every provider (pegasus, torch, FAISS and its OpenBLAS) as on an "
                        "AVX2-only CPU, on a CPU that has AVX-512 (default: native)")
    p.add_argument("--levels", type=int, choices=[1, 2], default=1, help="sampler: 2 times two-level sampling (a top grid "
                   "of half the side, then the bottom grid given it): 4x4+8x8 and 12x12+24x24, batch 16 (default 1)")
    p.set_defaults(func=run)


def _shape(text: str) -> tuple[int, int, int]:
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected NxKxD with positive integers, got {text!r}")
    n, k, d = (int(p) for p in parts)
    return n, k, d


def run(args: argparse.Namespace) -> int:
    return {"nearest-code": _nearest_code, "sampler": _sampler, "train": _train}[args.op](args)


def _progress(line: str) -> None:
    print(line, file=sys.stderr)


def _nearest_code(args: argparse.Namespace) -> int:
    from pegasus.bench import harness, nearest_code

    shapes = args.shape or (nearest_code.QUICK_SHAPES if args.quick else nearest_code.FULL_SHAPES)
    records, notes = nearest_code.run(shapes, device=args.device, min_run_time=args.min_run_time,
                                      progress=_progress, capability=args.cpu_capability)
    lowered = "" if args.cpu_capability == "native" else f", every provider lowered to {args.cpu_capability}"
    print(f"nearest_code on {harness.device_name(args.device)}{lowered}")
    print(nearest_code.format_table(records))
    return _notes_and_json(args, records, notes)


def _train(args: argparse.Namespace) -> int:
    from pegasus.bench import train

    if args.shape:
        raise ValueError("--shape is for nearest-code; the training bench times the default configurations")
    records = train.run(steps=4 if args.quick else 10, device=args.device, progress=_progress)
    print(train.header(args.device))
    print(train.format_table(records))
    return _notes_and_json(args, records, [])


def _sampler(args: argparse.Namespace) -> int:
    from pegasus.bench import sampler

    if args.shape:
        raise ValueError("--shape is for nearest-code; the sampler's cases are set by --quick")
    if args.levels == 2:
        cases = sampler.TWO_LEVEL_CASES[:1] if args.quick else sampler.TWO_LEVEL_CASES
    else:
        cases = sampler.QUICK_CASES if args.quick else sampler.FULL_CASES
    records, notes = sampler.run(cases, device=args.device, min_run_time=args.min_run_time, progress=_progress, levels=args.levels)
    print(sampler.header(args.device, args.levels))
    print(sampler.format_table(records))
    if any(r.naive_rows_timed for r in records):
        rows = max(r.naive_rows_timed or 0 for r in records)
        print(f"note: the naive sampler at 24x24 was timed over its first {rows} row(s) (two levels: and half as many "
              "top rows) and scaled by the row count (each naive step is one full pass over the grid, so every row costs the same)")
    return _notes_and_json(args, records, notes)


def _notes_and_json(args: argparse.Namespace, records: list, notes: list[str]) -> int:
    from pegasus.bench import harness

    for note in notes:
        print(f"note: {note}")
    if args.json:
        with open(args.json, "w") as f:
            f.write(harness.to_json_lines(records))
        print(f"wrote {len(records)} records to {args.json}")
    return 0
