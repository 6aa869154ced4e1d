"""Stage 1, VQ-VAE training: resumable, checkpointed, with metrics, reconstructions and loss curves.

It writes config.json, checkpoint.safetensors, metrics.jsonl, vqvae.safetensors, eval.json,
reconstructions.png and loss_curves.png into the run directory (pegasus.rundir describes them).

Under torchrun each of the N processes trains on its own batch_size images of a step's N x
batch_size (pegasus._distributed); rank 0 alone writes the run directory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from pegasus._distributed import Dist, distributed
from pegasus.data import ImageDataset, load_dataset
from pegasus.images import images_to_tensor, save_grid
from pegasus.models.classifier import Classifier, perceptual_distance
from pegasus.models.quantizer import code_perplexity
from pegasus.models.vqvae import VQVAE, VQVAE2, VQVAEConfig, build_vqvae
from pegasus.rundir import AUX_CLASSIFIER_DIR, CHECKPOINT, CONFIG, LOSS_CURVES, METRICS, RECONSTRUCTIONS, VQVAE_EVAL, VQVAE_WEIGHTS, load_classifier, load_vqvae
from pegasus.training import RunFiles, StepLoss, TrainConfig, Trainer, TrainingError, batch_indices, global_slice, train

__all__ = ["TrainConfig", "TrainingError", "VQVAETrainConfig", "evaluate", "train_vqvae"]


def data_variance(images: np.ndarray, limit: int = 10000) -> float:
    """Pixel variance on the [0, 1] scale of the first `limit` images (zalando scales MSE by it)."""
    return float((images[:limit].astype(np.float64) / 255).var())


@dataclass
class VQVAETrainConfig(TrainConfig):
    """TrainConfig with the VQ-VAE's extra terms. perceptual: the weight of `perceptual_distance`
    between reconstructions and originals in the loss (0: MSE alone), measured by the classifier
    in perceptual_net (a `pegasus train-classifier` directory; None: the auxiliary one
    shipped, pegasus.rundir.AUX_CLASSIFIER_DIR, not the one `pegasus evaluate` scores with).
    init: a run directory whose VQ-VAE weights training starts from (None: from scratch)."""

    perceptual: float = 0.0
    perceptual_net: str | None = None
    init: str | None = None

    may_be_zero: ClassVar[tuple[str, ...]] = ("seed", "perceptual")


def _loss(model: VQVAE | VQVAE2, x: Tensor, variance: float, net: Classifier | None = None, weight: float = 0.0) -> dict[str, Tensor]:
    out = model(x)
    mse = torch.nn.functional.mse_loss(out.recon, x)
    parts = {
        "loss": mse / variance + out.vq_loss,
        "mse": mse,
        "vq_loss": out.vq_loss,
        "perplexity": out.perplexity,
        "usage": out.usage,
    }
    if out.top is not None:
        parts["top_perplexity"], parts["top_usage"] = out.top.perplexity, out.top.usage
    if net is not None and weight > 0:
        parts["perceptual"] = perceptual_distance(net, out.recon, x)
        parts["loss"] = parts["loss"] + weight * parts["perceptual"]
    return parts


@torch.no_grad()
def evaluate(model: VQVAE | VQVAE2, images: np.ndarray, device: torch.device, batch_size: int = 500) -> dict[str, float]:
    """Test-split reconstruction MSE on [0, 1] pixels, perplexity and codes in use (of the
    bottom level; a two-level model adds the top level's as top_test_perplexity and
    top_codes_in_use)."""
    model.eval()
    counts = torch.zeros(model.cfg.levels, model.cfg.codes, dtype=torch.int64, device=device)
    sq_err, n_pix = 0.0, 0
    for i in range(0, len(images), batch_size):
        x = images_to_tensor(images[i : i + batch_size], device)
        grids = model.codes(x)
        recon = model.decode_codes(grids)
        sq_err += float(((recon - x) ** 2).sum())
        n_pix += x.numel()
        for level, idx in enumerate(grids):
            counts[level] += torch.bincount(idx.flatten(), minlength=model.cfg.codes)
    summary = {
        "test_mse": sq_err / n_pix,
        "test_perplexity": float(code_perplexity(counts[-1])),
        "codes_in_use": int((counts[-1] > 0).sum()),
        "codes": model.cfg.codes,
        "test_images": len(images),
    }
    if model.cfg.levels == 2:
        summary["top_test_perplexity"] = float(code_perplexity(counts[0]))
        summary["top_codes_in_use"] = int((counts[0] > 0).sum())
    return summary


@torch.no_grad()
def save_reconstructions(model: VQVAE | VQVAE2, images: np.ndarray, path: Path, ncol: int = 8) -> Path:
    """PNG of images (uint8 [N, H, W, 3]) in rows of `ncol`, each row followed by its reconstructions."""
    model.eval()
    device = next(model.parameters()).device
    ncol = min(ncol, len(images))
    x = images_to_tensor(images[: len(images) // ncol * ncol], device)
    recon = model.decode_codes(model.codes(x))
    rows = torch.stack([x.view(-1, ncol, *x.shape[1:]), recon.view(-1, ncol, *x.shape[1:])], 1)
    return save_grid(rows.flatten(0, 2), path, nrow=ncol, scale=max(1, 96 // x.shape[-1]))


def _dataset_info(ds: ImageDataset) -> dict[str, Any]:
    return {"path": ds.source, "format": ds.format, "image_size": list(ds.image_size), "classes": ds.classes}


def train_vqvae(
    data: str | os.PathLike,
    out: str | os.PathLike,
    model_cfg: VQVAEConfig | dict[str, Any] | None = None,
    train_cfg: VQVAETrainConfig | dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    resume: bool = False,
    backend: str | None = None,
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Train a VQ-VAE on the train split of `data`, writing the run directory `out`.

    `model_cfg` / `train_cfg` are configs, or dicts of the fields to change from the defaults.
    With `resume=True` the run continues from `out/checkpoint.safetensors` (or, if that one is
    unreadable, checkpoint.prev.safetensors) with the settings saved in `out/config.json`; the
    given fields must agree with them, except `steps` (to train longer). Under torchrun this
    runs with DistributedDataParallel, `batch_size` images per process. Returns the evaluation
    summary (also written to eval.json), on every rank.
    """
    out = Path(out)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for, but torch sees no CUDA device")
    with distributed(device) as dist:
        return train(_VQVAETrainer(data, out, model_cfg, train_cfg, dist, backend, cache_dir), resume, progress)


class _VQVAETrainer(Trainer):
    """The VQ-VAE's hooks for `pegasus.training.train`."""

    desc, unit, model_key = "train-vqvae", "images", "vqvae"

    def __init__(
        self,
        data: str | os.PathLike,
        out: Path,
        model_cfg: VQVAEConfig | dict[str, Any] | None,
        train_cfg: VQVAETrainConfig | dict[str, Any] | None,
        dist: Dist,
        backend: str | None,
        cache_dir: str | os.PathLike | None,
    ) -> None:
        self.data, self.asked, self.backend, self.cache_dir = data, (model_cfg, train_cfg), backend, cache_dir
        self.dist, self.device = dist, dist.device
        self.files = RunFiles(out, CONFIG, CHECKPOINT, METRICS, VQVAE_WEIGHTS, VQVAE_EVAL, LOSS_CURVES)

    def requested(self) -> tuple[dict[str, Any], dict[str, Any]]:
        model_cfg, train_cfg = self.asked
        model_over = model_cfg.to_dict() if isinstance(model_cfg, VQVAEConfig) else dict(model_cfg or {})
        train_over = dict(train_cfg.__dict__) if isinstance(train_cfg, TrainConfig) else dict(train_cfg or {})
        return model_over, {k: v for k, v in train_over.items() if not (k in ("perceptual_net", "init") and v is None)}

    def configure(self, model_fields: dict[str, Any], train_fields: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
        self.cfg, self.train_cfg = VQVAEConfig(**model_fields), VQVAETrainConfig(**train_fields)
        with self.dist.node_first():  # one process per node decodes into the cache
            self.train_ds = load_dataset(self.data, "train", cache_dir=self.cache_dir)
            self.test_ds = load_dataset(self.data, "test", cache_dir=self.cache_dir)
        h, w = self.train_ds.image_size
        factor = self.cfg.factors[0]  # the coarsest level's
        if h % factor or w % factor:
            levels = f" of the top level (--levels 2: twice --downsample {self.cfg.downsample})" if self.cfg.levels == 2 else ""
            raise TrainingError(f"{self.data}: images are {h}x{w}, not multiples of the downsampling factor {factor}{levels}")
        data = _dataset_info(self.train_ds)
        return self.train_cfg, {"vqvae": self.cfg.to_dict(), "train": self.train_cfg.__dict__, "data": data, "world_size": self.dist.world}

    def build(self, resume: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        self.model = build_vqvae(self.cfg, backend=self.backend).to(self.device)
        for quantizer in self.model.quantizers:
            quantizer.sync = self.dist.active
        optimizer = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=self.train_cfg.lr)
        init = self.train_cfg.init
        if init and not resume:
            start = load_vqvae(init)
            if start.cfg != self.cfg:
                raise TrainingError(f"--init {init}: its VQ-VAE settings {start.cfg.to_dict()} differ from this run's {self.cfg.to_dict()}")
            self.model.load_state_dict(start.state_dict())
        self.net = None
        if self.train_cfg.perceptual > 0:
            self.net = load_classifier(self.train_cfg.perceptual_net or AUX_CLASSIFIER_DIR, self.device)
            self.net.requires_grad_(False)
        return self.model, optimizer

    def start(self, resume: bool) -> tuple[StepLoss, None]:
        tcfg, dist, images = self.train_cfg, self.dist, self.train_ds.images
        variance = data_variance(images)
        # The codebook's EMA buffers are kept equal by the quantizer itself (sync), not re-broadcast.
        trained = DistributedDataParallel(self.model, forward_sync_buffers=False) if dist.active else self.model

        def step_loss(s: int) -> tuple[dict[str, Tensor], int]:
            idx = global_slice(np.sort(batch_indices(len(images), tcfg.batch_size * dist.world, s, tcfg.seed)), dist)
            return _loss(trained, images_to_tensor(images[idx], self.device), variance, self.net, tcfg.perceptual), len(idx)

        return step_loss, None

    @property
    def postfix(self) -> list[tuple[str, str, str]]:
        top = [("top_ppl", "top_perplexity", ".0f")] if self.cfg.levels == 2 else []
        return [("loss", "loss", ".3f"), ("mse", "mse", ".4f"), ("ppl", "perplexity", ".0f"), *top, ("img_s", "images_per_s", ".0f")]

    @property
    def curves(self) -> dict[str, str]:
        top = {"top_perplexity": "top codes' perplexity"} if self.cfg.levels == 2 else {}
        return {"loss": "loss (MSE/var + commitment)", "mse": "reconstruction MSE", "perplexity": "code perplexity"} | top

    def summarise(self, step: int) -> dict[str, Any]:
        return {**evaluate(self.model, self.test_ds.images, self.device), "steps": step}

    def pictures(self) -> None:
        # 32 test images spread over the split (image folders list it class by class).
        spread = np.linspace(0, len(self.test_ds) - 1, min(32, len(self.test_ds))).astype(np.int64)
        save_reconstructions(self.model, self.test_ds.images[spread], self.files.folder / RECONSTRUCTIONS)
