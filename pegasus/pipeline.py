"""The whole method in one call: train-vqvae, select, interpolate, train-prior, sample (with
levels=2: a two-level VQ-VAE, then its top prior and its bottom prior).

A step is skipped when all its output files exist (every file is written atomically, so an
existing file is a complete one); a training step that left a checkpoint but no final weights is
resumed. So a killed pipeline, run again with the same arguments, picks up where it stopped.

Under torchrun the two training steps run on every process (DistributedDataParallel); rank 0
alone decides what to skip and runs the other steps while the rest wait.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pegasus._distributed import distributed
from pegasus.checkpoint import has_checkpoint
from pegasus.data import load_dataset
from pegasus.interpolate import interpolate
from pegasus.rundir import (
    AUX_CLASSIFIER_DIR,
    CHECKPOINT,
    CONTACT_SHEET,
    LATENTS,
    PRIOR_CHECKPOINT,
    PRIOR_EVAL,
    PRIOR_WEIGHTS,
    RECONSTRUCTIONS,
    SAMPLES,
    SAMPLING,
    SELECTION,
    STRIPS,
    VQVAE_EVAL,
    VQVAE_WEIGHTS,
    load_classifier,
    prior_dir,
    write_sampling_defaults,
)
from pegasus.sample import sample_to_file
from pegasus.select import select_white, write_selection
from pegasus.train_prior import train_prior
from pegasus.train_vqvae import train_vqvae

# --quick on CIFAR-10 (cached decode), 2-core CPU otherwise idle: 43 s wall in all; the VQ-VAE
# runs 14 steps/s (21 s, test MSE 0.0077), the prior 25 steps/s (12 s, 3.9 held-out bits/position).
QUICK = {
    "vqvae": {"codes": 128, "dim": 32, "hidden": 64, "res_hidden": 32},
    "vqvae_train": {"steps": 300, "batch_size": 128, "checkpoint_every": 100},
    "prior": {"channels": 32, "layers": 4, "kernel": 5},
    "prior_train": {"steps": 300, "batch_size": 64, "checkpoint_every": 100},
    "samples": 16,
}
# The shipped run's recipe after the VQ-VAE (docs/results.md), which adds two fine-tunes of the
# VQ-VAE with the perceptual loss that this pipeline leaves out: white and recognisable picks,
# slerp mixes of every pair and its mirror, a 96-channel prior pre-trained on every bird and horse.
FULL: dict[str, Any] = {
    "vqvae": {},
    "vqvae_train": {},
    "select": {"recognisable": True, "birds": 24, "horses": 48},
    "interpolate": {"mirror": True, "mode": "slerp", "class_grids": True},
    "prior": {"channels": 96, "layers": 8},
    "prior_train": {"steps": 2600, "pretrain_steps": 1200, "checkpoint_every": 100},
    "samples": 64,
    # Written to the run's sampling.json before its samples are drawn, as for the shipped run.
    "temperature": 0.8,
}


def run_pipeline(
    data: str | os.PathLike,
    out: str | os.PathLike,
    quick: bool = False,
    device: str = "cpu",
    progress: bool = True,
    log: Callable[[str], None] = lambda message: None,
    settings: dict[str, Any] | None = None,
    precision: str | None = None,
    levels: int = 1,
) -> dict[str, str]:
    """Run every step that has not run yet into the run directory `out`; returns step -> "ran" or
    "skipped". `settings` (the keys of QUICK, and optionally "select": keywords of select_white
    with "recognisable" for the auxiliary classifier, "interpolate": keywords of interpolate, and
    "temperature": written to the run's sampling.json unless it has one) replaces the FULL or
    QUICK settings. precision:
    "fp32" or "bf16" for both trainings (None: bf16 where supported, see pegasus.training).
    levels: 2 for a two-level VQ-VAE (VQ-VAE-2), whose top prior (RUN_DIR/top/, the prior's
    settings) is trained before its bottom prior."""
    out = Path(out)
    if levels not in (1, 2):
        raise ValueError(f"levels should be 1 or 2, got {levels}")
    cfg = settings if settings is not None else (QUICK if quick else FULL)
    if levels == 2:
        cfg = {**cfg, "vqvae": {**cfg["vqvae"], "levels": 2}}
    if precision is not None:
        cfg = {**cfg, "vqvae_train": {**cfg["vqvae_train"], "precision": precision},
               "prior_train": {**cfg["prior_train"], "precision": precision}}
    done: dict[str, str] = {}
    with distributed(device) as dist:

        def step(name: str, outputs: list[str], action: Callable[[], object], every_rank: bool = False) -> None:
            if dist.on_main(lambda: all((out / f).is_file() for f in outputs)):
                if dist.main:
                    log(f"{name}: skipped, {', '.join(outputs)} exist")
                done[name] = "skipped"
                return
            if dist.main:
                log(f"{name}: running")
            if every_rank:
                action()
            else:
                dist.on_main(action)
            done[name] = "ran"

        step("train-vqvae", [VQVAE_WEIGHTS, VQVAE_EVAL, RECONSTRUCTIONS], lambda: train_vqvae(
            data, out, model_cfg=cfg["vqvae"], train_cfg=cfg["vqvae_train"], device=dist.device,
            resume=dist.on_main(lambda: has_checkpoint(out / CHECKPOINT)), progress=progress), every_rank=True)

        def select() -> None:
            ds = load_dataset(data, "train")
            picks = dict(cfg.get("select", {}))
            if picks.pop("recognisable", False):
                picks["classifier"] = load_classifier(AUX_CLASSIFIER_DIR)
            write_selection(out, ds, "train", select_white(ds, **picks))

        step("select", [SELECTION, CONTACT_SHEET], select)
        step("interpolate", [LATENTS, STRIPS], lambda: interpolate(out, device=dist.device, **cfg.get("interpolate", {})))
        for level in ("top", "bottom")[2 - levels :]:
            folder = prior_dir(out, level).relative_to(out)
            step("train-prior" + ("-top" if level == "top" else ""), [str(folder / PRIOR_WEIGHTS), str(folder / PRIOR_EVAL)],
                 lambda level=level: train_prior(
                     out, prior_cfg=cfg["prior"], train_cfg=cfg["prior_train"], device=dist.device, level=level,
                     resume=dist.on_main(lambda: has_checkpoint(prior_dir(out, level) / PRIOR_CHECKPOINT)), progress=progress),
                 every_rank=True)
        def sample() -> None:
            if "temperature" in cfg and not (out / SAMPLING).is_file():
                write_sampling_defaults(out, cfg["temperature"], note="the pipeline's recipe (pegasus.pipeline.FULL)")
            sample_to_file(out, out / SAMPLES, n=cfg["samples"], device=dist.device)

        step("sample", [SAMPLES], sample)
    return done
