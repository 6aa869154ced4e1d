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
from pegasus.checkpoint import load_tensors, save_weights
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
from pegasus.training import RunFiles, StepLoss, TrainConfig, Trainer, TrainingError, Validate, batch_indices, global_slice, train


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
        return train(_PriorTrainer(Path(run_dir), files, prior_cfg, train_cfg, dist, level), resume, progress)


def _at_level(path: Path, tensors: dict[str, Tensor], level: str) -> dict[str, Tensor]:
    """The grids the prior of `level` models under "indices" (and, for a bottom prior of a two-level
    run, the top grids it reads under "top")."""
    if level == "bottom":
        return tensors
    if "top" not in tensors:
        raise TrainingError(f"{path}: holds no top grids (a one-level run); --level top needs a two-level VQ-VAE (train-vqvae --levels 2)")
    return {**{k: v for k, v in tensors.items() if k != "top"}, "indices": tensors["top"]}


class _PriorTrainer(Trainer):
    """The prior's hooks for `pegasus.training.train`, for the prior of `level` whose files are in
    `files` (RUN_DIR or RUN_DIR/top)."""

    desc, unit, model_key = "train-prior", "grids", "prior"
    postfix = [("nats", "loss", ".3f"), ("bits", "bits", ".2f"), ("grids_s", "grids_per_s", ".0f")]
    curves = {"loss": "train cross-entropy (nats / position)", "heldout_bits": "held-out bits / position"}

    def __init__(
        self,
        run_dir: Path,
        files: Path,
        prior_cfg: PixelCNNConfig | dict[str, Any] | None,
        train_cfg: PriorTrainConfig | dict[str, Any] | None,
        dist: Dist,
        level: str,
    ) -> None:
        self.run_dir, self.asked, self.level = run_dir, (prior_cfg, train_cfg), level
        self.dist, self.device = dist, dist.device
        self.files = RunFiles(files, PRIOR_CONFIG, PRIOR_CHECKPOINT, PRIOR_METRICS, PRIOR_WEIGHTS, PRIOR_EVAL, PRIOR_CURVES)
        self.best_path = files / PRIOR_BEST

    def requested(self) -> tuple[dict[str, Any], dict[str, Any]]:
        out = self.run_dir
        latents, self.codes, self.mode = self.dist.on_main(
            lambda: (read_latents(out), vqvae_config(out).codes, latents_meta(out).get("mode", "linear"))
        )
        self.latents = _at_level(out / LATENTS, latents, self.level)
        if self.dist.main:
            self.files.folder.mkdir(exist_ok=True)
        prior_cfg, train_cfg = self.asked
        model_over = prior_cfg.to_dict() if isinstance(prior_cfg, PixelCNNConfig) else dict(prior_cfg or {})
        train_over = dict(train_cfg.__dict__) if isinstance(train_cfg, PriorTrainConfig) else dict(train_cfg or {})
        return model_over, train_over

    def configure(self, model_fields: dict[str, Any], train_fields: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
        latents, grid = self.latents, list(self.latents["indices"].shape[-2:])
        # A bottom prior of a two-level run reads the top grids; their codebook has the same size.
        self.cfg = PixelCNNConfig(**{**model_fields, "codes": self.codes, "grid": grid, "top_codes": self.codes if "top" in latents else 0})
        self.train_cfg = tcfg = PriorTrainConfig(**train_fields)
        self.data = split_latents(latents, tcfg.held_out, tcfg.seed)
        self.info = {"pairs": int(latents["indices"].shape[0]), "alphas": [round(a, 6) for a in latents["alphas"].tolist()],
                     "train_grids": len(self.data.train), "heldout_grids": len(self.data.held), "mode": self.mode, "level": self.level}
        self.classes = None
        if tcfg.pretrain_steps:
            path = self.run_dir / CLASS_LATENTS
            self.classes = classes = _at_level(path, self.dist.on_main(lambda: read_class_latents(self.run_dir)), self.level)
            if tuple(classes["indices"].shape[-2:]) != tuple(grid):
                raise TrainingError(f"{path}: grids of {list(classes['indices'].shape[-2:])}, the latents' are {grid}")
            self.info["class_grids"] = int(classes["indices"].shape[0])
        return tcfg, {"prior": self.cfg.to_dict(), "train": tcfg.__dict__, "latents": self.info, "world_size": self.dist.world}

    def build(self, resume: bool) -> tuple[nn.Module, torch.optim.Optimizer]:
        self.prior = GatedPixelCNN(self.cfg).to(self.device)
        return self.prior, torch.optim.Adam(self.prior.parameters(), lr=self.train_cfg.lr)

    def start(self, resume: bool) -> tuple[StepLoss, Validate]:
        prior, tcfg, dist, data, classes = self.prior, self.train_cfg, self.dist, self.data, self.classes
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
            top = None if tops is None else tops[idx].to(self.device)
            loss = _cross_entropy(prior, grids[idx].to(self.device), alphas[idx].to(self.device), trained, top)
            return {"loss": loss, "bits": loss.detach() / math.log(2)}, len(idx)

        # Held-out NLL at each checkpoint on (up to) 2048 held-out grids spread over the split; from the
        # end of pre-training on, the best weights so far are kept in prior_best.safetensors.
        check = torch.from_numpy(np.unique(np.linspace(0, len(data.held) - 1, min(2048, len(data.held))).round().astype(np.int64)))
        if not resume and dist.main:
            self.best_path.unlink(missing_ok=True)  # left by a run that did not get to write a checkpoint

        def validate(s: int) -> dict[str, float]:
            top = None if data.held_top is None else data.held_top[check]
            bits = evaluate_prior(prior, data.held[check], data.held_alpha[check], top=top)["bits_per_position"]
            if dist.main and s >= tcfg.pretrain_steps and bits < _best_bits(self.best_path):
                meta = {"config": json.dumps(self.cfg.to_dict()), "heldout_bits": repr(bits), "step": str(s)}
                save_weights(self.best_path, prior, metadata=meta)
            return {"heldout_bits": bits}

        return step_loss, validate

    def final_weights(self, step: int) -> None:
        self.best_step = step
        if self.best_path.is_file():
            tensors, meta = load_tensors(self.best_path)
            self.prior.load_state_dict(tensors)
            self.best_step = int(meta["step"])

    def summarise(self, step: int) -> dict[str, Any]:
        data = self.data
        held = evaluate_prior(self.prior, data.held, data.held_alpha, top=data.held_top)
        seen = evaluate_prior(self.prior, data.train, data.train_alpha, top=data.train_top)
        return {
            "heldout_nll_nats": held["nll_nats"],
            "heldout_bits_per_position": held["bits_per_position"],
            "train_nll_nats": seen["nll_nats"],
            "train_bits_per_position": seen["bits_per_position"],
            "uniform_bits_per_position": math.log2(self.codes),
            **self.info,
            "steps": step,
            "best_step": self.best_step,
        }
