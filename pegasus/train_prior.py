"""Stage 4, training the GatedPixelCNN prior on the interpolated code grids of a run directory.

Reads RUN_DIR/latents.safetensors (`pegasus interpolate`) and the VQ-VAE's config.json; writes
prior_config.json, prior_checkpoint.safetensors, prior_metrics.jsonl, prior.safetensors,
prior_eval.json and prior_loss_curves.png (pegasus.rundir describes them). A two-level run has two
priors: the top one (level "top", its files in RUN_DIR/top/) and the bottom one (the run's own
files), which reads each grid's top grid.

The held-out split is by pair: a seeded `held_out` share of the bird/horse pairs, every alpha of
them, so the held-out NLL measures grids of pairs the prior never saw. It is measured at every
checkpoint, and the weights with the lowest one are kept (prior_best.safetensors, then
prior.safetensors): a prior trained on a few dozen picks starts to memorise them.

With `pretrain_steps` the first steps train on class_latents.safetensors instead (every bird and
horse of the split at alpha 0 and 1, `pegasus interpolate --class-grids`): thousands of animals
teach the prior what birds and horses look like, and the interpolation grids of the white picks
that follow teach it whiteness and the mixes in between.

Under torchrun each of the N processes trains on its own batch_size grids of a step's N x
batch_size; rank 0 reads the run directory for all of them and alone writes to it.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from pegasus._distributed import Dist, distributed
from pegasus.checkpoint import atomic_write_text, load_checkpoint, load_tensors, read_checkpoint, save_weights, stamp
from pegasus.images import save_loss_curves
from pegasus.models.pixelcnn import GatedPixelCNN, PixelCNNConfig
from pegasus.rundir import (
    CLASS_LATENTS,
    LATENTS,
    PRIOR_BEST,
    PRIOR_CHECKPOINT,
    PRIOR_CONFIG,
    PRIOR_CURVES,
    PRIOR_EVAL,
    PRIOR_METRICS,
    PRIOR_WEIGHTS,
    latents_meta,
    prior_dir,
    read_class_latents,
    read_latents,
    vqvae_config,
)
from pegasus.training import TrainConfig, TrainingError, batch_indices, fit, global_slice, run_settings


@dataclass
class PriorTrainConfig(TrainConfig):
    """TrainConfig with the prior's defaults, and the share of pairs held out for evaluation."""

    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    checkpoint_every: int = 250
    held_out: float = 0.1
    pretrain_steps: int = 0
    may_be_zero: ClassVar[tuple[str, ...]] = ("seed", "pretrain_steps")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.held_out < 1:
            raise ValueError(f"held-out should be in (0, 1), got {self.held_out}")
        if not 0 <= self.pretrain_steps < self.steps:
            raise ValueError(f"pretrain-steps should be in 0..steps-1 ({self.steps - 1}), got {self.pretrain_steps}")


@dataclass
class PriorData:
    """Grids Tensor[N, h, w] int64 with their alphas Tensor[N] float32, for train and held-out, and
    for a bottom prior the top grids Tensor[N, h/2, w/2] each is conditioned on (else None)."""

    train: Tensor
    train_alpha: Tensor
    held: Tensor
    held_alpha: Tensor
    train_top: Tensor | None = None
    held_top: Tensor | None = None


def split_latents(latents: dict[str, Tensor], held_out: float, seed: int) -> PriorData:
    """Hold out round(held_out * P) of the P distinct bird/horse pairs (at least 1), chosen by
    `seed`, with all their alphas and their mirrored copies (`interpolate --mirror`): a pair seen
    mirrored in training would make the held-out NLL look better than it is. With latents["top"],
    the top grids are split alongside (a bottom prior's conditioning)."""
    ind, alphas, top = latents["indices"], latents["alphas"].float(), latents.get("top")
    ids = latents["pairs"].numpy() if "pairs" in latents else np.arange(ind.shape[0])[:, None]
    _, group = np.unique(ids, axis=0, return_inverse=True)
    group = group.reshape(-1)
    p = int(group.max()) + 1
    if p < 2:
        raise TrainingError(f"latents.safetensors holds {p} bird/horse pair; the prior needs >= 2 to hold one out")
    n_held = min(p - 1, max(1, round(held_out * p)))
    is_held = np.isin(group, np.random.default_rng([seed, 1]).permutation(p)[:n_held])
    held, train = torch.from_numpy(np.flatnonzero(is_held)), torch.from_numpy(np.flatnonzero(~is_held))

    def flat(rows: Tensor) -> tuple[Tensor, Tensor]:
        return ind[rows].flatten(0, 1), alphas.repeat(len(rows))

    tops = (None, None) if top is None else (top[train].flatten(0, 1), top[held].flatten(0, 1))
    return PriorData(*flat(train), *flat(held), *tops)


def _cross_entropy(
    prior: GatedPixelCNN, grids: Tensor, alphas: Tensor, net: nn.Module | None = None, top: Tensor | None = None
) -> Tensor:
    """Mean NLL in nats per position of grids Tensor[B, h, w] under the prior (run as `net`, its
    DDP wrapper, when given; a bottom prior reads the top grids `top`)."""
    alpha = alphas if prior.cfg.conditional else None
    return F.cross_entropy((prior if net is None else net)(grids, alpha, top), grids)


@torch.no_grad()
def evaluate_prior(
    prior: GatedPixelCNN, grids: Tensor, alphas: Tensor, batch_size: int = 256, top: Tensor | None = None
) -> dict[str, float]:
    """NLL of grids Tensor[N, h, w] (alphas Tensor[N]; top Tensor[N, h/2, w/2] for a bottom prior):
    nats and bits per position."""
    prior.eval()
    device = next(prior.parameters()).device
    total = 0.0
    for i in range(0, len(grids), batch_size):
        g, a = grids[i : i + batch_size].to(device), alphas[i : i + batch_size].to(device)
        t = None if top is None else top[i : i + batch_size].to(device)
        total += float(_cross_entropy(prior, g, a, top=t)) * len(g)
    nats = total / len(grids)
    return {"nll_nats": nats, "bits_per_position": nats / math.log(2)}


def _best_bits(path: Path) -> float:
    """The held-out bits of the weights kept in prior_best.safetensors (inf when there are none)."""
    if not path.is_file():
        return math.inf
    return float(load_tensors(path)[1].get("heldout_bits", "inf"))


def train_prior(
    run_dir: str | os.PathLike,
    prior_cfg: PixelCNNConfig | dict[str, Any] | None = None,
    train_cfg: PriorTrainConfig | dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    resume: bool = False,
    progress: bool = True,
    level: str = "bottom",
) -> dict[str, Any]:
    """Train the prior of RUN_DIR on its latents.safetensors; returns the evaluation (prior_eval.json).

    level: "bottom", the run's prior (for a two-level run, of its bottom grids, conditioned on alpha
    and on the top grids), or "top": a two-level run's top prior, written to RUN_DIR/top/.

    prior_cfg / train_cfg: configs, or dicts of the fields to change from the defaults (codes and
    grid always come from the latents). With resume=True training continues from
    prior_checkpoint.safetensors (or, if unreadable, the previous one) with the saved settings;
    only `steps` may change. Under torchrun this runs with DistributedDataParallel, `batch_size`
    grids per process.
    """
    files = prior_dir(run_dir, level)  # checks the level
    with distributed(device) as dist:
        return _train_prior(Path(run_dir), files, prior_cfg, train_cfg, dist, resume, progress, level)


def _at_level(path: Path, tensors: dict[str, Tensor], level: str) -> dict[str, Tensor]:
    """The grids the prior of `level` models under "indices" (and, for a bottom prior of a two-level
    run, the top grids it reads under "top")."""
    if level == "bottom":
        return tensors
    if "top" not in tensors:
        raise TrainingError(f"{path}: holds no top grids (a one-level run); --level top needs a two-level VQ-VAE (train-vqvae --levels 2)")
    return {**{k: v for k, v in tensors.items() if k != "top"}, "indices": tensors["top"]}


def _train_prior(
    out: Path,
    files: Path,
    prior_cfg: PixelCNNConfig | dict[str, Any] | None,
    train_cfg: PriorTrainConfig | dict[str, Any] | None,
    dist: Dist,
    resume: bool,
    progress: bool,
    level: str,
) -> dict[str, Any]:
    device = dist.device
    latents, codes, mode = dist.on_main(lambda: (read_latents(out), vqvae_config(out).codes, latents_meta(out).get("mode", "linear")))
    latents = _at_level(out / LATENTS, latents, level)
    grid = list(latents["indices"].shape[-2:])
    if dist.main:
        files.mkdir(exist_ok=True)

    model_over = prior_cfg.to_dict() if isinstance(prior_cfg, PixelCNNConfig) else dict(prior_cfg or {})
    train_over = dict(train_cfg.__dict__) if isinstance(train_cfg, PriorTrainConfig) else dict(train_cfg or {})
    model_fields, train_fields = dist.on_main(
        lambda: run_settings(files, PRIOR_CONFIG, PRIOR_CHECKPOINT, "prior", model_over, train_over, resume, dist.world, device)
    )
    # A bottom prior of a two-level run reads the top grids; their codebook has the same size.
    cfg = PixelCNNConfig(**{**model_fields, "codes": codes, "grid": grid, "top_codes": codes if "top" in latents else 0})
    tcfg = PriorTrainConfig(**train_fields)
    data = split_latents(latents, tcfg.held_out, tcfg.seed)
    info = {"pairs": int(latents["indices"].shape[0]), "alphas": [round(a, 6) for a in latents["alphas"].tolist()],
            "train_grids": len(data.train), "heldout_grids": len(data.held), "mode": mode, "level": level}
    classes = None
    if tcfg.pretrain_steps:
        classes = _at_level(out / CLASS_LATENTS, dist.on_main(lambda: read_class_latents(out)), level)
        if tuple(classes["indices"].shape[-2:]) != tuple(grid):
            raise TrainingError(f"{out / CLASS_LATENTS}: grids of {list(classes['indices'].shape[-2:])}, the latents' are {grid}")
        info["class_grids"] = int(classes["indices"].shape[0])
    config = stamp({"prior": cfg.to_dict(), "train": tcfg.__dict__, "latents": info, "world_size": dist.world})
    dist.on_main(lambda: atomic_write_text(files / PRIOR_CONFIG, json.dumps(config, indent=2)))

    torch.manual_seed(tcfg.seed)
    prior = GatedPixelCNN(cfg).to(device)
    optimizer = torch.optim.Adam(prior.parameters(), lr=tcfg.lr)
    step = 0
    if resume:  # rank 0 reads the file; every rank loads the same bytes
        used, blob = dist.on_main(lambda: read_checkpoint(files / PRIOR_CHECKPOINT))
        step, _ = load_checkpoint(used, prior, optimizer, map_location=device, data=blob, config=cfg.to_dict())
    # static_graph: the last layer's `out` conv feeds nothing (only its skip does); its grads stay
    # None on every rank, as in one process, and DDP checks for that once instead of every step.
    trained = DistributedDataParallel(prior, static_graph=True) if dist.active else prior

    def step_loss(s: int) -> tuple[dict[str, Tensor], int]:
        if s < tcfg.pretrain_steps:
            grids, alphas, tops = classes["indices"], classes["alphas"], classes.get("top")
        else:
            grids, alphas, tops = data.train, data.train_alpha, data.train_top
        batch = batch_indices(len(grids), tcfg.batch_size * dist.world, s, tcfg.seed)
        idx = torch.from_numpy(global_slice(batch, dist))
        top = None if tops is None else tops[idx].to(device)
        loss = _cross_entropy(prior, grids[idx].to(device), alphas[idx].to(device), trained, top)
        return {"loss": loss, "bits": loss.detach() / math.log(2)}, len(idx)

    # Held-out NLL at each checkpoint on (up to) 2048 held-out grids spread over the split; from the
    # end of pre-training on, the best weights so far are kept in prior_best.safetensors.
    check = torch.from_numpy(np.unique(np.linspace(0, len(data.held) - 1, min(2048, len(data.held))).round().astype(np.int64)))
    best_path = files / PRIOR_BEST
    if not resume and dist.main:
        best_path.unlink(missing_ok=True)  # left by a run that did not get to write a checkpoint

    def validate(s: int) -> dict[str, float]:
        top = None if data.held_top is None else data.held_top[check]
        bits = evaluate_prior(prior, data.held[check], data.held_alpha[check], top=top)["bits_per_position"]
        if dist.main and s >= tcfg.pretrain_steps and bits < _best_bits(best_path):
            save_weights(best_path, prior, metadata={"config": json.dumps(cfg.to_dict()), "heldout_bits": repr(bits), "step": str(s)})
        return {"heldout_bits": bits}

    records, step = fit(
        prior, optimizer, step_loss, tcfg, files / PRIOR_CHECKPOINT, files / PRIOR_METRICS, step, resume,
        desc="train-prior", unit="grids", progress=progress, dist=dist, config=cfg.to_dict(),
        postfix=[("nats", "loss", ".3f"), ("bits", "bits", ".2f"), ("grids_s", "grids_per_s", ".0f")], validate=validate,
    )

    def finish() -> dict[str, Any]:
        best_step = step
        if best_path.is_file():
            tensors, meta = load_tensors(best_path)
            prior.load_state_dict(tensors)
            best_step = int(meta["step"])
        save_weights(files / PRIOR_WEIGHTS, prior, metadata={"config": json.dumps(cfg.to_dict())})
        held = evaluate_prior(prior, data.held, data.held_alpha, top=data.held_top)
        train = evaluate_prior(prior, data.train, data.train_alpha, top=data.train_top)
        summary = {
            "heldout_nll_nats": held["nll_nats"],
            "heldout_bits_per_position": held["bits_per_position"],
            "train_nll_nats": train["nll_nats"],
            "train_bits_per_position": train["bits_per_position"],
            "uniform_bits_per_position": math.log2(codes),
            **info,
            "steps": step,
            "best_step": best_step,
        }
        atomic_write_text(files / PRIOR_EVAL, json.dumps(summary, indent=2))
        if records:
            curves = {"loss": "train cross-entropy (nats / position)", "heldout_bits": "held-out bits / position"}
            save_loss_curves(records, files / PRIOR_CURVES, curves)
        return summary

    return dist.on_main(finish)
