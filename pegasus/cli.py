"""The `pegasus` command line: one console script with subcommands (also `python -m pegasus`).

Errors caused by input (a bad data set, a run directory that does not fit, a wrong argument) are
printed as one line and exit with status 1; `--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Sequence


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _cmd_data(args: argparse.Namespace) -> int:
    from pegasus.data import describe

    print(describe(args.path))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    from pegasus import __version__, _extension
    from pegasus.backend import _triton_unavailable, resolve_backend

    print(f"pegasus {__version__}, torch {torch.__version__}")
    ext = "loaded" if _extension.has_cpp_ops() else f"NOT loaded: {_extension.cpp_load_error()}"
    print(f"C++ extension pegasus._C: {ext}")
    print(f"Triton (nearest_code): {_triton_unavailable('nearest_code') or 'available'}")
    print(f"CUDA: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'not available'}")
    print(f"default backend for CPU tensors: {resolve_backend(None, torch.device('cpu'), 'nearest_code')}")
    return 0


def _cmd_train_vqvae(args: argparse.Namespace) -> int:
    import torch

    from pegasus.train import train_vqvae

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = {"codes": args.codes, "dim": args.dim, "restart_after": args.restart_after}
    if args.no_ema:
        model["ema"] = False
    train = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "checkpoint_every": args.checkpoint_every,
    }
    summary = train_vqvae(
        args.data,
        args.out,
        model_cfg={k: v for k, v in model.items() if v is not None},
        train_cfg={k: v for k, v in train.items() if v is not None},
        device=device,
        resume=args.resume,
        backend=args.backend,
    )
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}/: vqvae.safetensors config.json eval.json reconstructions.png loss_curves.png metrics.jsonl")
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    parser = argparse.ArgumentParser(
        prog="pegasus",
        description="White winged horses from a VQ-VAE and an autoregressive prior over its latents.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("data", parents=[common], help="describe a data set: format, image size, class counts")
    p.add_argument("path", help="CIFAR-10 (python or binary), stl10_binary/, or an image-folder dir/.tar/.tar.gz")
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("info", parents=[common], help="versions, the C++ extension, Triton and the default backend")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser(
        "train-vqvae",
        parents=[common],
        help="train the VQ-VAE on a whole data set",
        description="Train the VQ-VAE on the train split and evaluate on the test split. Settings not "
        "given take the defaults shown (or, with --resume, the values saved in RUN_DIR/config.json).",
    )
    p.add_argument("--data", required=True, help="data set path (see `pegasus data`)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to write")
    p.add_argument("--steps", type=_positive_int, help="total optimizer steps (default 2000)")
    p.add_argument("--batch-size", type=_positive_int, help="images per step (default 256)")
    p.add_argument("--lr", type=_positive_float, help="Adam learning rate (default 1e-3)")
    p.add_argument("--codes", type=_positive_int, help="codebook size K (default 512)")
    p.add_argument("--dim", type=_positive_int, help="code dimension D (default 64)")
    p.add_argument("--seed", type=int, help="seed of initialisation and batch order (default 0)")
    p.add_argument("--no-ema", action="store_true", help="learn the codebook by gradient instead of EMA updates")
    p.add_argument("--restart-after", type=int, help="re-seed codes unused for this many steps; 0 disables (default 2; raise it when a step holds few latents)")
    p.add_argument("--checkpoint-every", type=_positive_int, help="steps between checkpoints (default 250)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: cuda when present")
    p.add_argument("--backend", choices=["reference", "cpu", "triton"], help="nearest-code backend (default: best available)")
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR from its last checkpoint")
    p.set_defaults(func=_cmd_train_vqvae)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("pegasus: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI's boundary: one line, not a traceback
        if args.debug:
            traceback.print_exc()
        else:
            print(f"pegasus: error: {e}", file=sys.stderr)
            from pegasus.checkpoint import CheckpointError
            from pegasus.data import DatasetError
            from pegasus.train import TrainingError

            if not isinstance(e, (DatasetError, CheckpointError, TrainingError, ValueError, OSError, RuntimeError)):
                print(f"pegasus: ({type(e).__name__}; run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
