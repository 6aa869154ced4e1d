"""`pegasus evaluate`: score each stage of a run (picks, reconstructions, interpolations, samples)
with a classifier; a table, JSON and plots."""
from __future__ import annotations

import argparse
import json
import sys

from pegasus import backends
from pegasus.commands import _args


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "evaluate",
        parents=[common],
        help="how much of the birds and horses each stage keeps, scored by a classifier; a table, JSON, a plot",
        description="Score the picks, their reconstructions, interpolations and the prior's samples at alphas 0, 0.25, "
        "0.5, 0.75, 1 with a classifier: P(bird), P(horse), whiteness, diversity and a Frechet distance in the "
        "classifier's features (the FID formula, not Inception FID); and the test accuracy on reconstructions.",
    )
    p.add_argument("--run-dir", type=_args.run_dir, metavar="RUN_DIR", help="run directory (default: the run shipped with pegasus)")
    p.add_argument("-n", "--num-samples", dest="n", type=_args.int_at_least(2, "an integer >= 2"), default=256,
                   help="samples and interpolated pairs per alpha (default 256)")
    p.add_argument("--classifier", metavar="DIR", help="a `pegasus train-classifier` directory (default: the shipped CIFAR-10 one)")
    p.add_argument("--data", help="the data set, if not at the path recorded in RUN_DIR/selection.json")
    p.add_argument("--out", type=_args.run_dir, metavar="DIR", help="where to write the report (default RUN_DIR; ./pegasus-evaluation for the shipped run)")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    p.add_argument("--seed", type=_args.seed, default=0, help="seed of the samples and the pair sample (default 0)")
    p.add_argument("--temperature", type=_args.positive_float, help="sampling temperature (default: the run's, from its "
                   "sampling.json; 1.0 without one)")
    p.add_argument("--top-k", type=_args.positive_int, help="sample among the k most likely codes only")
    p.add_argument("--backend", choices=backends.SAMPLER.names(), help="kernels of the sampler's step ops, same samples on every one (default: the fastest available)")
    p.add_argument("--test-images", type=_args.positive_int, help="score only the first N test images (default all)")
    _args.add_device(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pegasus.evaluate import evaluate_run, format_report
    from pegasus.rundir import WEIGHTS_DIR

    run_dir = args.run_dir or WEIGHTS_DIR
    out = args.out or (args.run_dir if args.run_dir else "pegasus-evaluation")
    report = evaluate_run(
        run_dir, classifier=args.classifier, n=args.n, data=args.data, out=out, seed=args.seed, temperature=args.temperature,
        top_k=args.top_k, backend=args.backend, test_images=args.test_images, device=_args.device(args.device),
        progress=sys.stderr.isatty(),
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
        print(f"wrote {out}/: evaluation.json evaluation.png evaluation_samples.png")
    return 0
