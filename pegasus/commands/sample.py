"""`pegasus sample` (a run directory's prior) and `pegasus generate` (the weights shipped with
pegasus): the same sampling options, and one call of `sample_to_file` for both."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pegasus import backends
from pegasus.commands import _args
from pegasus.sampling import METHODS

_OUT = "an image grid (.png, .jpg, .webp; up to 1024 samples), an .npz (uint8 [N, H, W, 3] as arr_0) or a directory (one PNG per sample)"


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    sampling = _sampling_options()
    p = sub.add_parser(
        "sample",
        parents=[common, sampling],
        help="sample pegasi from the prior and decode them to a PNG grid (or an .npz, or a directory)",
        description="Sample code grids from RUN_DIR's prior (Gumbel-max, raster order) and decode them with its VQ-VAE.",
    )
    p.add_argument("--run-dir", required=True, type=_args.run_dir, metavar="RUN_DIR", help="run directory with vqvae.safetensors and prior.safetensors")
    p.add_argument("--out", type=_samples_out, help=f"{_OUT}. Default RUN_DIR/pegasi.png")
    p.set_defaults(func=run_sample)

    p = sub.add_parser(
        "generate",
        parents=[common, sampling],
        help="sample pegasi from the weights shipped with pegasus (no data, no network, seconds on a CPU)",
        description="Sample code grids from the pretrained prior shipped inside the package "
        "(pegasus.pretrained(): trained on CIFAR-10) and decode them to 32x32 images (a PNG grid unless --out says otherwise).",
    )
    p.add_argument("--out", type=_samples_out, default="pegasi.png", help=f"{_OUT}. Default pegasi.png")
    p.set_defaults(func=run_generate)


def _sampling_options() -> argparse.ArgumentParser:
    sampling = argparse.ArgumentParser(add_help=False)
    sampling.add_argument("-n", "--num-samples", dest="n", type=_args.positive_int, default=64, help="images to write (default 64)")
    sampling.add_argument("--alpha", type=float, default=0.5, help="0 = bird, 1 = horse (default 0.5)")
    sampling.add_argument("--temperature", type=_args.positive_float, help="logits are divided by it (default: the run's, "
                          "from its sampling.json; 1.0 without one)")
    sampling.add_argument("--top-k", type=_args.positive_int, help="sample among the k most likely codes only")
    sampling.add_argument("--seed", type=_args.seed, default=0, help="seed of the Gumbel noise (default 0)")
    sampling.add_argument("--method", choices=METHODS, default="cached", help="cached: the cached raster loop over a "
                          "backend's step ops (default); naive: a full pass of the prior per position, the ground truth "
                          "(same grids for the same seed, hundreds of times slower)")
    sampling.add_argument("--backend", choices=backends.SAMPLER.names(), help="kernels of the cached method's step ops, "
                          "same grids for the same seed: " + "; ".join(f"{b.name}: {b.summary}" for b in backends.SAMPLER.backends)
                          + f". Default: the fastest available ({backends.SAMPLER.env} when set)")
    sampling.add_argument("--best-of", type=_args.positive_int, metavar="M", help="sample M and keep the n whitest (image grids only)")
    sampling.add_argument("--batch-size", type=_args.positive_int, default=256, metavar="B",
                          help="samples drawn at a time (default 256): memory grows with B, not with n; sample i "
                          "is the same whatever B")
    sampling.add_argument("--keep-top", metavar="FROM.png", help="two-level runs: every sample keeps the top codes of this "
                          "picture (encoded by the run's VQ-VAE; the coarse level: colours and layout in the CIFAR-10 run); "
                          "only the bottom codes are sampled")
    sampling.add_argument("--keep-bottom", metavar="FROM.png", help="two-level runs: every sample keeps this picture's "
                          "bottom codes; only the top codes are sampled")
    return sampling


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


def run_sample(args: argparse.Namespace) -> int:
    from pegasus.rundir import SAMPLES

    return _sample(args.run_dir, args.out or str(Path(args.run_dir) / SAMPLES), args, say_where=False)


def run_generate(args: argparse.Namespace) -> int:
    from pegasus.pretrained import pretrained

    return _sample(pretrained(), args.out, args, say_where=True)


def _sample(run: object, out: str, args: argparse.Namespace, say_where: bool) -> int:
    from pegasus.machine import guarded_threads
    from pegasus.sample import sample_to_file
    from pegasus.sampling import SamplingOptions

    # The sampler guards its own threads (pegasus.sampling); this guard also covers decoding (the
    # same bits on 1 and 2 threads) and writing. 64 samples with another process on a core: 2.36 s
    # on 2 threads, 0.75 with the sampler guarded, 0.42 with this guard, 0.40 on 1 thread.
    with guarded_threads("sampling and decoding"):
        options = SamplingOptions(temperature=args.temperature, top_k=args.top_k, seed=args.seed, method=args.method,
                                  backend=args.backend, batch_size=args.batch_size)
        summary = sample_to_file(
            run, out, n=args.n, alpha=args.alpha, options=options, best_of=args.best_of,
            progress=_args.is_rank0() and sys.stderr.isatty(), keep_top=args.keep_top, keep_bottom=args.keep_bottom,
        )
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}))
    if say_where:
        print(f"wrote {out}")
    return 0
