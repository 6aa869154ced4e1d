"""The `pegasus` command line: one console script with subcommands (also `python -m pegasus`).

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
import json
import math
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

_MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit integer


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line like every other error of the command line (argparse
    prints the whole usage first, which for train-vqvae is 8 lines); the subcommands inherit it."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("pegasus").strip()
        self.exit(2, f"pegasus: error: {command + ': ' if command else ''}{message} (see `{self.prog} --help`)\n")


def _int_at_least(low: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _seed(text: str) -> int:
    value = _int_at_least(0, f"an integer in 0..{_MAX_SEED}")(text)
    if value > _MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an integer in 0..{_MAX_SEED}, got {value}")
    return value


def _port(text: str) -> int:
    value = _int_at_least(0, "a port in 0..65535")(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 0..65535, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):  # --lr inf trained to NaN weights and exited 0
        raise argparse.ArgumentTypeError(f"expected a finite positive number, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {value}")
    return value


def _run_dir(text: str) -> str:
    """A run directory: it may not exist yet, but it may not be a file."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"expected a run directory, got {text!r}, which is a file")
    return text


def _samples_out(text: str) -> str:
    """Where samples go: an image grid (.png, .jpg, .jpeg, .webp), an .npz, or a directory (a name
    without a suffix, or an existing directory)."""
    from pegasus.images import IMAGE_FORMATS
    from pegasus.sample import output_kind

    try:
        output_kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an image grid ({', '.join(IMAGE_FORMATS)}), an .npz or a directory, got {text!r}"
        ) from None
    if Path(text).exists() and not Path(text).is_dir() and output_kind(text) == "dir":
        raise argparse.ArgumentTypeError(f"expected a directory, got {text!r}, which is a file")
    return text


def _cmd_data(args: argparse.Namespace) -> int:
    from pegasus.data import DatasetError, describe_splits

    text, errors = describe_splits(args.path)
    print(text)
    if errors:
        # Every command needs both splits (train-vqvae evaluates on test), so a broken one fails
        # the check, after the summary of what did load.
        split, error = next(iter(errors.items()))
        raise DatasetError(f"{split} split: {error}") from error
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    from pegasus import __version__, _extension, backends
    from pegasus.machine import BUSY_REGION_S, cpu_isa, cpu_name, isa_text, parallel_region_s
    from pegasus.pretrained import WEIGHTS_DIR
    from pegasus.training import bf16_supported, resolve_precision

    print(f"pegasus {__version__}, torch {torch.__version__}")
    if _extension.has_cpp_ops():
        # Which build of the C++ steps' vector code runs (csrc/cpu/vec_kernels.cpp).
        ext = f"loaded (CPU kernels built for {torch.ops.pegasus._cpu_capability()}; ATEN_CPU_CAPABILITY lowers it)"
    else:
        ext = f"NOT loaded: {_extension.cpp_load_error()}"
    print(f"C++ extension pegasus._C: {ext}")
    isa, source = cpu_isa()
    print(f"CPU: {cpu_name()}: {isa_text(isa)} ({source}); torch's CPU kernels built for {torch.backends.cpu.get_cpu_capability()}")
    threads = torch.get_num_threads()
    if threads > 1:
        region = parallel_region_s()
        busy = ": another process is using a core (pegasus.machine)" if region > BUSY_REGION_S else ""
        print(f"threads: {threads}; a parallel region of them takes {region * 1e3:.2f} ms{busy}")
    else:
        print("threads: 1")
    print(f"CUDA: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'not available'}")
    # What train-vqvae, train-prior and train-classifier pick without --precision (--device auto).
    device = "cuda" if torch.cuda.is_available() else "cpu"
    why = bf16_supported(device)[1]
    print(f"training precision (auto, {device}): {resolve_precision(None, device)}, because {why}")
    print("backends:")
    for line in backends.describe():
        print(f"  {line}")
    shipped = "present" if (WEIGHTS_DIR / "prior.safetensors").is_file() else "MISSING"
    print(f"pretrained weights ({WEIGHTS_DIR}): {shipped}")
    return 0


def _shape(text: str) -> tuple[int, int, int]:
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected NxKxD with positive integers, got {text!r}")
    n, k, d = (int(p) for p in parts)
    return n, k, d


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.op == "sampler":
        return _bench_sampler(args)
    if args.op == "train":
        return _bench_train(args)
    from pegasus.bench import harness, nearest_code

    shapes = args.shape or (nearest_code.QUICK_SHAPES if args.quick else nearest_code.FULL_SHAPES)
    records, notes = nearest_code.run(shapes, device=args.device, min_run_time=args.min_run_time,
                                      progress=lambda line: print(line, file=sys.stderr), capability=args.cpu_capability)
    lowered = "" if args.cpu_capability == "native" else f", every provider lowered to {args.cpu_capability}"
    print(f"nearest_code on {harness.device_name(args.device)}{lowered}")
    print(nearest_code.format_table(records))
    return _bench_notes_and_json(args, records, notes)


def _bench_notes_and_json(args: argparse.Namespace, records: list, notes: list[str]) -> int:
    from pegasus.bench import harness

    for note in notes:
        print(f"note: {note}")
    if args.json:
        with open(args.json, "w") as f:
            f.write(harness.to_json_lines(records))
        print(f"wrote {len(records)} records to {args.json}")
    return 0


def _bench_train(args: argparse.Namespace) -> int:
    from pegasus.bench import train

    if args.shape:
        raise ValueError("--shape is for nearest-code; the training bench times the default configurations")
    records = train.run(steps=4 if args.quick else 10, device=args.device, progress=lambda line: print(line, file=sys.stderr))
    print(train.header(args.device))
    print(train.format_table(records))
    return _bench_notes_and_json(args, records, [])


def _bench_sampler(args: argparse.Namespace) -> int:
    from pegasus.bench import sampler

    if args.shape:
        raise ValueError("--shape is for nearest-code; the sampler's cases are set by --quick")
    if args.levels == 2:
        cases = sampler.TWO_LEVEL_CASES[:1] if args.quick else sampler.TWO_LEVEL_CASES
    else:
        cases = sampler.QUICK_CASES if args.quick else sampler.FULL_CASES
    records, notes = sampler.run(cases, device=args.device, min_run_time=args.min_run_time,
                                 progress=lambda line: print(line, file=sys.stderr), levels=args.levels)
    print(sampler.header(args.device, args.levels))
    print(sampler.format_table(records))
    if any(r.naive_rows_timed for r in records):
        rows = max(r.naive_rows_timed or 0 for r in records)
        print(f"note: the naive sampler at 24x24 was timed over its first {rows} row(s) (two levels: and half as many "
              "top rows) and scaled by the row count (each naive step is one full pass over the grid, so every row costs the same)")
    return _bench_notes_and_json(args, records, notes)


def _device(choice: str) -> str:
    """--device: "auto" is cuda when torch sees one, else cpu."""
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def _given(settings: dict) -> dict:
    """The settings given on the command line (argparse leaves the others None)."""
    return {k: v for k, v in settings.items() if v is not None}


def _train_settings(args: argparse.Namespace, *extra: str) -> dict:
    """The training-loop settings given on the command line (TrainConfig fields, plus `extra`)."""
    names = ("steps", "batch_size", "lr", "seed", "checkpoint_every", "precision", *extra)
    return _given({name: getattr(args, name) for name in names})


def _is_rank0() -> bool:
    """False in the processes torchrun starts besides rank 0: they work, but print nothing."""
    import os

    return os.environ.get("RANK", "0") == "0"


def _cmd_train_vqvae(args: argparse.Namespace) -> int:
    from pegasus.train_vqvae import train_vqvae

    model = {"codes": args.codes, "dim": args.dim, "restart_after": args.restart_after, "levels": args.levels}
    if args.no_ema:
        model["ema"] = False
    summary = train_vqvae(
        args.data,
        args.out,
        model_cfg=_given(model),
        train_cfg=_train_settings(args, "perceptual", "perceptual_net", "init"),
        device=_device(args.device),
        resume=args.resume,
        backend=args.backend,
    )
    if not _is_rank0():
        return 0
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}/: vqvae.safetensors config.json eval.json reconstructions.png loss_curves.png metrics.jsonl")
    return 0


def _cmd_select(args: argparse.Namespace) -> int:
    from pegasus.data import load_dataset
    from pegasus.select import read_ids, select_white, write_selection

    ds = load_dataset(args.data, args.split)
    classifier = None
    if args.recognisable or args.classifier:
        from pegasus.pretrained import AUX_CLASSIFIER_DIR
        from pegasus.rundir import load_classifier

        classifier = load_classifier(args.classifier or AUX_CLASSIFIER_DIR)
    picks = select_white(
        ds,
        birds=args.birds,
        horses=args.horses,
        bird_ids=read_ids(args.bird_ids) if args.bird_ids else None,
        horse_ids=read_ids(args.horse_ids) if args.horse_ids else None,
        classifier=classifier,
    )
    write_selection(args.run_dir, ds, args.split, picks)
    for sel in picks:
        sure = f", P({sel.name}) {min(sel.confidence):.2f} .. {max(sel.confidence):.2f}" if sel.confidence else ""
        print(f"{sel.name}s: {len(sel.ids)} picks, whiteness {min(sel.scores):.3f} .. {max(sel.scores):.3f}{sure}")
    print(f"wrote {args.run_dir}/: selection.json selection.png")
    return 0


def _cmd_interpolate(args: argparse.Namespace) -> int:
    from pegasus.interpolate import DEFAULT_ALPHAS, interpolate

    summary = interpolate(args.run_dir, pairs=args.pairs, alphas=args.alphas or DEFAULT_ALPHAS, seed=args.seed, mirror=args.mirror,
                          mode=args.mode, data=args.data, class_grids=args.class_grids)
    print(json.dumps(summary))
    print(f"wrote {args.run_dir}/: latents.safetensors interpolation.png{' class_latents.safetensors' if args.class_grids else ''}")
    return 0


def _cmd_train_prior(args: argparse.Namespace) -> int:
    from pegasus.train_prior import train_prior

    from pegasus.rundir import prior_dir

    prior = {"channels": args.channels, "layers": args.layers, "kernel": args.kernel}
    if args.unconditional:
        prior["conditional"] = False
    summary = train_prior(
        args.run_dir,
        prior_cfg=_given(prior),
        train_cfg=_train_settings(args, "held_out", "pretrain_steps"),
        device=_device(args.device),
        resume=args.resume,
        level=args.level,
    )
    if not _is_rank0():
        return 0
    print(json.dumps(summary, indent=2))
    print(f"wrote {prior_dir(args.run_dir, args.level)}/: prior.safetensors prior_config.json prior_eval.json prior_metrics.jsonl prior_loss_curves.png")
    return 0


def _cmd_train_classifier(args: argparse.Namespace) -> int:
    from pegasus.train_classifier import train_classifier

    summary = train_classifier(
        args.data, args.out, epochs=args.epochs, train_cfg=_given({"batch_size": args.batch_size, "seed": args.seed, "precision": args.precision}),
        device=_device(args.device), resume=args.resume,
    )
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}/: classifier.safetensors classifier.json classifier_eval.json classifier_metrics.jsonl classifier_loss_curves.png")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pegasus.evaluate import evaluate_run, format_report
    from pegasus.pretrained import WEIGHTS_DIR

    run_dir = args.run_dir or WEIGHTS_DIR
    out = args.out or (args.run_dir if args.run_dir else "pegasus-evaluation")
    report = evaluate_run(
        run_dir, classifier=args.classifier, n=args.n, data=args.data, out=out, seed=args.seed, temperature=args.temperature,
        top_k=args.top_k, backend=args.backend, test_images=args.test_images, device=_device(args.device),
        progress=sys.stderr.isatty(),
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
        print(f"wrote {out}/: evaluation.json evaluation.png evaluation_samples.png")
    return 0


def _sample(run: object, out: str, args: argparse.Namespace, say_where: bool) -> int:
    from pegasus.machine import guarded_threads
    from pegasus.sample import sample_to_file

    # The sampler guards its own threads (pegasus.sampling); this guard also covers decoding (the
    # same bits on 1 and 2 threads) and writing. 64 samples with another process on a core: 2.36 s
    # on 2 threads, 0.75 with the sampler guarded, 0.42 with this guard, 0.40 on 1 thread.
    with guarded_threads("sampling and decoding"):
        summary = sample_to_file(
            run, out, n=args.n, alpha=args.alpha, temperature=args.temperature, top_k=args.top_k, seed=args.seed,
            backend=args.backend, best_of=args.best_of, batch_size=args.batch_size, progress=_is_rank0() and sys.stderr.isatty(),
            keep_top=args.keep_top, keep_bottom=args.keep_bottom,
        )
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}))
    if say_where:
        print(f"wrote {out}")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from pegasus.rundir import SAMPLES

    return _sample(args.run_dir, args.out or str(Path(args.run_dir) / SAMPLES), args, say_where=False)


def _cmd_generate(args: argparse.Namespace) -> int:
    from pegasus.pretrained import pretrained

    return _sample(pretrained(), args.out, args, say_where=True)


def _cmd_pipeline(args: argparse.Namespace) -> int:
    import time

    from pegasus.pipeline import run_pipeline

    t0 = time.perf_counter()
    done = run_pipeline(args.data, args.out, quick=args.quick, precision=args.precision, levels=args.levels,
                        log=lambda m: print(f"pipeline: {m}", file=sys.stderr))
    if not _is_rank0():
        return 0
    print(json.dumps({**done, "wall_s": round(time.perf_counter() - t0, 1)}))
    print(f"wrote {args.out}/pegasi.png")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
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


def _add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=["fp32", "bf16"], help="fp32, or bf16: the forward pass under bfloat16 autocast "
                   "(quantiser, losses, EMA statistics and checkpoints stay float32). Default: bf16 where the CPU has "
                   "avx512_bf16/amx_bf16 (read by CPUID) or the GPU supports it, else fp32 (`pegasus info` says which); "
                   "bf16 on a CPU without them is emulated, ~20x slower, and warns; --resume may switch it")


def build_parser() -> argparse.ArgumentParser:
    from pegasus import backends

    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    common.add_argument("--threads", type=_positive_int, metavar="N",
                        help="CPU threads (torch.set_num_threads; default: torch's, one a core). Without it (and without "
                        "OMP_NUM_THREADS), sampling runs on 1 thread while another process keeps a core busy")
    parser = _Parser(
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
    p.add_argument("--min-run-time", type=_positive_float, default=1.0, metavar="S", help="seconds of timing per measurement (default 1)")
    p.add_argument("--cpu-capability", choices=["native", "avx2"], default="native",
                   help="nearest-code on the CPU: avx2 runs every provider (pegasus, torch, FAISS and its OpenBLAS) as on an "
                        "AVX2-only CPU, on a CPU that has AVX-512 (default: native)")
    p.add_argument("--levels", type=int, choices=[1, 2], default=1, help="sampler: 2 times two-level sampling (a top grid "
                   "of half the side, then the bottom grid given it): 4x4+8x8 and 12x12+24x24, batch 16 (default 1)")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser(
        "train-vqvae",
        parents=[common],
        help="train the VQ-VAE on a whole data set",
        description="Train the VQ-VAE on the train split and evaluate on the test split. Settings not "
        "given take the defaults shown (or, with --resume, the values saved in RUN_DIR/config.json).",
    )
    p.add_argument("--data", required=True, help="data set path (see `pegasus data`)")
    p.add_argument("--out", required=True, type=_run_dir, metavar="RUN_DIR", help="run directory to write")
    p.add_argument("--steps", type=_positive_int, help="total optimizer steps (default 2000)")
    p.add_argument("--batch-size", type=_positive_int, help="images per step and process (default 256; N processes under torchrun: N x that per step)")
    p.add_argument("--lr", type=_positive_float, help="Adam learning rate (default 1e-3)")
    p.add_argument("--codes", type=_positive_int, help="codebook size K (default 512)")
    p.add_argument("--dim", type=_positive_int, help="code dimension D (default 64)")
    p.add_argument("--levels", type=int, choices=[1, 2], help="code levels (default 1); 2: a top grid at 1/8 of the image "
                   "side over a bottom one at 1/4, as in VQ-VAE-2, each with its own codebook (interpolation, the prior "
                   "and sampling work on one level so far)")
    p.add_argument("--seed", type=_seed, help="seed of initialisation and batch order (default 0)")
    p.add_argument("--no-ema", action="store_true", help="learn the codebook by gradient instead of EMA updates")
    p.add_argument("--restart-after", type=_non_negative_int, help="re-seed codes unused for this many steps; 0 disables (default 2; raise it when a step holds few latents)")
    p.add_argument("--checkpoint-every", type=_positive_int, help="steps between checkpoints (default 250)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: cuda when present")
    p.add_argument("--backend", choices=backends.NEAREST_CODE.names(), help="nearest-code backend (default: the fastest "
                   f"available; {backends.NEAREST_CODE.env} when set; see `pegasus info`)")
    p.add_argument("--perceptual", type=_non_negative_float, metavar="W", help="add W x the perceptual distance between "
                   "reconstructions and originals (a classifier's activations, LPIPS-style) to the loss (default 0: MSE only)")
    p.add_argument("--perceptual-net", metavar="DIR", help="the classifier of --perceptual (a train-classifier directory; "
                   "default: the one shipped for it, not the one `pegasus evaluate` scores with)")
    p.add_argument("--init", type=_run_dir, metavar="RUN_DIR", help="start from this run's VQ-VAE weights (same settings) instead of from scratch")
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR from its last checkpoint")
    _add_precision(p)
    p.set_defaults(func=_cmd_train_vqvae)

    p = sub.add_parser(
        "select",
        parents=[common],
        help="pick the whitest birds and horses; write selection.json and a contact sheet",
        description="Score every bird and horse image of a split for whiteness (bright, unsaturated pixels in "
        "the centre minus those on the border; see pegasus.select) and keep the top ones, or the ids listed in "
        "files. Writes RUN_DIR/selection.json and RUN_DIR/selection.png.",
    )
    p.add_argument("--run-dir", required=True, type=_run_dir, metavar="RUN_DIR", help="run directory to write into")
    p.add_argument("--data", required=True, help="data set path (see `pegasus data`)")
    p.add_argument("--split", choices=["train", "test"], default="train", help="split to pick from (default train)")
    p.add_argument("--birds", type=_positive_int, help="number of birds to keep (default 24)")
    p.add_argument("--horses", type=_positive_int, help="number of horses to keep (default 32)")
    p.add_argument("--bird-ids", metavar="FILE", help="use these bird ids (integers, whitespace/comma separated) instead")
    p.add_argument("--horse-ids", metavar="FILE", help="use these horse ids instead")
    p.add_argument("--recognisable", action="store_true", help="white and recognisable: of the pictures a classifier "
                   "gives P(class) >= 0.5 and whiteness >= 0.2, those with the whitest centre")
    p.add_argument("--classifier", metavar="DIR", help="the classifier of --recognisable (implies it; default: the auxiliary "
                   "one shipped with pegasus, not the one `pegasus evaluate` scores with)")
    p.set_defaults(func=_cmd_select)

    p = sub.add_parser(
        "interpolate",
        parents=[common],
        help="interpolate the encodings of bird/horse pairs and quantise them",
        description="For each bird/horse pair of RUN_DIR/selection.json and each alpha, quantise "
        "(1 - alpha) z_bird + alpha z_horse. Writes RUN_DIR/latents.safetensors and RUN_DIR/interpolation.png.",
    )
    p.add_argument("--run-dir", required=True, type=_run_dir, metavar="RUN_DIR", help="run directory with vqvae.safetensors and selection.json")
    p.add_argument("--pairs", type=_positive_int, help="a seeded random sample of this many pairs (default: all pairs)")
    p.add_argument("--alphas", type=float, nargs="+", help="interpolation weights in [0, 1] (default 0 0.1 ... 1)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the pair sample (default 0)")
    p.add_argument("--mirror", action="store_true", help="also interpolate every pair mirrored left to right (twice the grids)")
    p.add_argument("--mode", choices=["linear", "slerp", "regions"], default="linear", help="linear: mix every position "
                   "(default); slerp: turn each position's vector along the great circle, keeping its length; regions: "
                   "the alpha share of positions, in smooth random blobs, from the horse, the rest from the bird")
    p.add_argument("--class-grids", action="store_true", help="also encode every bird and horse of the split (and mirrors) "
                   "into class_latents.safetensors, for train-prior --pretrain-steps")
    p.add_argument("--data", help="the data set, if not at the path recorded in RUN_DIR/selection.json")
    p.set_defaults(func=_cmd_interpolate)

    p = sub.add_parser(
        "train-prior",
        parents=[common],
        help="train the gated PixelCNN prior on the interpolated latent grids",
        description="Train pegasus.GatedPixelCNN on RUN_DIR/latents.safetensors, conditioned on alpha, with a "
        "held-out split of the pairs. Settings not given take the defaults shown (or, with --resume, the saved ones).",
    )
    p.add_argument("--run-dir", required=True, type=_run_dir, metavar="RUN_DIR", help="run directory with latents.safetensors")
    p.add_argument("--steps", type=_positive_int, help="total optimizer steps (default 1500)")
    p.add_argument("--batch-size", type=_positive_int, help="grids per step and process (default 64; N processes under torchrun: N x that per step)")
    p.add_argument("--lr", type=_positive_float, help="Adam learning rate (default 1e-3)")
    p.add_argument("--channels", type=_positive_int, help="channels of each stack (default 64)")
    p.add_argument("--layers", type=_positive_int, help="gated layers (default 8)")
    p.add_argument("--kernel", type=_positive_int, help="odd kernel size (default 5)")
    p.add_argument("--unconditional", action="store_true", help="ignore alpha: an unconditional prior")
    p.add_argument("--held-out", type=_positive_float, help="share of the pairs held out for evaluation (default 0.1)")
    p.add_argument("--pretrain-steps", type=_non_negative_int, help="train the first N of --steps on every bird and horse of "
                   "the data set (RUN_DIR/class_latents.safetensors, `interpolate --class-grids`), then on the picks' "
                   "interpolations (default 0)")
    p.add_argument("--seed", type=_seed, help="seed of initialisation, split and batch order (default 0)")
    p.add_argument("--checkpoint-every", type=_positive_int, help="steps between checkpoints (default 250)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: cuda when present")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/prior_checkpoint.safetensors")
    p.add_argument("--level", choices=["bottom", "top"], default="bottom", help="bottom (default): the run's prior; for a "
                   "two-level run, of its bottom grids, conditioned on alpha and the top grids. top: a two-level run's "
                   "top prior, written to RUN_DIR/top/")
    _add_precision(p)
    p.set_defaults(func=_cmd_train_prior)

    p = sub.add_parser(
        "train-classifier",
        parents=[common],
        help="train the small classifier that `pegasus evaluate` scores pictures with",
        description="Train pegasus.models.classifier on the train split (about 5 minutes for CIFAR-10 on 2 CPU cores "
        "in bf16) and test it on the test split. One is shipped with pegasus (CIFAR-10); train your own for another "
        "data set.",
    )
    p.add_argument("--data", required=True, help="data set path (see `pegasus data`)")
    p.add_argument("--out", required=True, type=_run_dir, metavar="DIR", help="directory to write")
    p.add_argument("--epochs", type=_positive_float, help="passes over the train split (default: 782 steps, 8 epochs of CIFAR-10)")
    p.add_argument("--batch-size", type=_positive_int, help="images per step (default 512)")
    p.add_argument("--seed", type=_seed, help="seed of initialisation, batch order and augmentation (default 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: cuda when present")
    p.add_argument("--resume", action="store_true", help="continue DIR from its last checkpoint")
    _add_precision(p)
    p.set_defaults(func=_cmd_train_classifier)

    # The sampling options `sample`, `generate` and `evaluate` share.
    sampling = argparse.ArgumentParser(add_help=False)
    sampling.add_argument("-n", "--num-samples", dest="n", type=_positive_int, default=64, help="images to write (default 64)")
    sampling.add_argument("--alpha", type=float, default=0.5, help="0 = bird, 1 = horse (default 0.5)")
    sampling.add_argument("--temperature", type=_positive_float, help="logits are divided by it (default: the run's, "
                          "from its sampling.json; 1.0 without one)")
    sampling.add_argument("--top-k", type=_positive_int, help="sample among the k most likely codes only")
    sampling.add_argument("--seed", type=_seed, default=0, help="seed of the Gumbel noise (default 0)")
    sampling.add_argument("--backend", choices=backends.SAMPLER.names(), help="sampler, same grids for the same seed: "
                          + "; ".join(f"{b.name}: {b.summary}" for b in backends.SAMPLER.backends)
                          + f". Default: the fastest available ({backends.SAMPLER.env} when set)")
    sampling.add_argument("--best-of", type=_positive_int, metavar="M", help="sample M and keep the n whitest (image grids only)")
    sampling.add_argument("--batch-size", type=_positive_int, default=256, metavar="B",
                          help="samples drawn at a time (default 256): memory grows with B, not with n; sample i "
                          "is the same whatever B")
    sampling.add_argument("--keep-top", metavar="FROM.png", help="two-level runs: every sample keeps the top codes of this "
                          "picture (encoded by the run's VQ-VAE; the coarse level: colours and layout in the CIFAR-10 run); "
                          "only the bottom codes are sampled")
    sampling.add_argument("--keep-bottom", metavar="FROM.png", help="two-level runs: every sample keeps this picture's "
                          "bottom codes; only the top codes are sampled")

    p = sub.add_parser(
        "sample",
        parents=[common, sampling],
        help="sample pegasi from the prior and decode them to a PNG grid",
        description="Sample code grids from RUN_DIR's prior (Gumbel-max, raster order) and decode them with its VQ-VAE.",
    )
    p.add_argument("--run-dir", required=True, type=_run_dir, metavar="RUN_DIR", help="run directory with vqvae.safetensors and prior.safetensors")
    p.add_argument("--out", type=_samples_out, help="an image grid (.png, .jpg, .webp; up to 1024 samples), an .npz "
                   "(uint8 [N, H, W, 3] as arr_0) or a directory (one PNG per sample). Default RUN_DIR/pegasi.png")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser(
        "generate",
        parents=[common, sampling],
        help="sample pegasi from the weights shipped with pegasus (no data, no network, seconds on a CPU)",
        description="Sample code grids from the pretrained prior shipped inside the package "
        "(pegasus.pretrained(): trained on CIFAR-10) and decode them to a PNG grid of 32x32 images.",
    )
    p.add_argument("--out", type=_samples_out, default="pegasi.png", help="an image grid (.png, .jpg, .webp; up to 1024 "
                   "samples), an .npz (uint8 [N, H, W, 3] as arr_0) or a directory (one PNG per sample). Default pegasi.png")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser(
        "evaluate",
        parents=[common],
        help="how much of the birds and horses each stage keeps, scored by a classifier; a table, JSON, a plot",
        description="Score the picks, their reconstructions, interpolations and the prior's samples at alphas 0, 0.25, "
        "0.5, 0.75, 1 with a classifier: P(bird), P(horse), whiteness, diversity and a Frechet distance in the "
        "classifier's features (the FID formula, not Inception FID); and the test accuracy on reconstructions.",
    )
    p.add_argument("--run-dir", type=_run_dir, metavar="RUN_DIR", help="run directory (default: the run shipped with pegasus)")
    p.add_argument("-n", "--num-samples", dest="n", type=_int_at_least(2, "an integer >= 2"), default=256,
                   help="samples and interpolated pairs per alpha (default 256)")
    p.add_argument("--classifier", metavar="DIR", help="a `pegasus train-classifier` directory (default: the shipped CIFAR-10 one)")
    p.add_argument("--data", help="the data set, if not at the path recorded in RUN_DIR/selection.json")
    p.add_argument("--out", type=_run_dir, metavar="DIR", help="where to write the report (default RUN_DIR; ./pegasus-evaluation for the shipped run)")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the samples and the pair sample (default 0)")
    p.add_argument("--temperature", type=_positive_float, help="sampling temperature (default: the run's, from its "
                   "sampling.json; 1.0 without one)")
    p.add_argument("--top-k", type=_positive_int, help="sample among the k most likely codes only")
    p.add_argument("--backend", choices=backends.SAMPLER.names(), help="sampler backend (default: the fastest available)")
    p.add_argument("--test-images", type=_positive_int, help="score only the first N test images (default all)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: cuda when present")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "pipeline",
        parents=[common],
        help="train-vqvae, select, interpolate, train-prior and sample in one go (resumable)",
        description="Run every step into RUN_DIR, skipping those whose outputs exist, so a killed pipeline resumes.",
    )
    p.add_argument("--data", required=True, help="data set path (see `pegasus data`)")
    p.add_argument("--out", required=True, type=_run_dir, metavar="RUN_DIR", help="run directory to write")
    p.add_argument("--quick", action="store_true", help="tiny settings that finish in a few minutes on a CPU")
    p.add_argument("--levels", type=int, choices=[1, 2], default=1, help="code levels (default 1); 2: a two-level "
                   "VQ-VAE (VQ-VAE-2) with a top prior and a bottom prior conditioned on the top codes")
    _add_precision(p)
    p.set_defaults(func=_cmd_pipeline)

    p = sub.add_parser(
        "demo",
        parents=[common],
        help="a local web page to sample pegasi with sliders (alpha, temperature, top-k, seed, backend)",
        description="Serve the demo page and its API on HOST:PORT until Ctrl-C, sampling the shipped run or "
        "RUN_DIR's. It loads nothing from the network; one sampling job runs at a time and a few wait in line.",
    )
    p.add_argument("--run-dir", type=_run_dir, metavar="RUN_DIR", help="run directory to sample (default: the shipped run)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=7860,
                   help="port to listen on (default 7860; 0 picks a free one)")
    p.set_defaults(func=_cmd_demo)
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads is not None:
        from pegasus.machine import set_threads

        set_threads(args.threads)
    try:
        try:
            return args.func(args)
        finally:
            _leave_process_group()
    except KeyboardInterrupt:
        _close_progress_bars()
        print("pegasus: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI's boundary: one line, not a traceback
        _close_progress_bars()
        if args.debug:
            traceback.print_exc()
            return 1
        from pegasus.checkpoint import CheckpointError
        from pegasus.data import DatasetError
        from pegasus.training import TrainingError

        message = " ".join(str(e).split()) or repr(e)  # one line, even for multi-line messages
        if not isinstance(e, (DatasetError, CheckpointError, TrainingError, ValueError, OSError, RuntimeError, MemoryError)):
            message = f"{type(e).__name__}: {message} (unexpected; run with --debug for the traceback)"
        print(f"pegasus: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
