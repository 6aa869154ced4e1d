"""`pegasus select`: pick the whitest birds and horses of a split (or listed ids) into RUN_DIR."""
from __future__ import annotations

import argparse

from pegasus.commands import _args


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "select",
        parents=[common],
        help="pick the whitest birds and horses; write selection.json and a contact sheet",
        description="Score every bird and horse image of a split for whiteness (bright, unsaturated pixels in "
        "the centre minus those on the border; see pegasus.select) and keep the top ones, or the ids listed in "
        "files. Writes RUN_DIR/selection.json and RUN_DIR/selection.png.",
    )
    p.add_argument("--run-dir", required=True, type=_args.run_dir, metavar="RUN_DIR", help="run directory to write into")
    p.add_argument("--data", required=True, help="data set path (see `pegasus data`)")
    p.add_argument("--split", choices=["train", "test"], default="train", help="split to pick from (default train)")
    p.add_argument("--birds", type=_args.positive_int, help="number of birds to keep (default 24)")
    p.add_argument("--horses", type=_args.positive_int, help="number of horses to keep (default 32)")
    p.add_argument("--bird-ids", metavar="FILE", help="use these bird ids (integers, whitespace/comma separated) instead")
    p.add_argument("--horse-ids", metavar="FILE", help="use these horse ids instead")
    p.add_argument("--recognisable", action="store_true", help="white and recognisable: of the pictures a classifier "
                   "gives P(class) >= 0.5 and whiteness >= 0.2, those with the whitest centre")
    p.add_argument("--classifier", metavar="DIR", help="the classifier of --recognisable (implies it; default: the auxiliary "
                   "one shipped with pegasus, not the one `pegasus evaluate` scores with)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pegasus.data import load_dataset
    from pegasus.select import read_ids, select_white, write_selection

    ds = load_dataset(args.data, args.split)
    classifier = None
    if args.recognisable or args.classifier:
        from pegasus.rundir import AUX_CLASSIFIER_DIR, load_classifier

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
