"""Training the classifier that `pegasus evaluate` scores pictures with (pegasus.models.classifier).

Writes into its own directory (not a run directory; one classifier serves every run of a data
set): classifier.json (model, training and data settings), classifier_checkpoint.safetensors,
classifier_metrics.jsonl, classifier.safetensors and classifier_eval.json (test accuracy, per
class). The recipe is that of the fast CIFAR-10 trainers: SGD with Nesterov momentum, a linear
warm-up to lr 0.2 over the first quarter then a linear decay to 0, label smoothing 0.2, random
flips and 2-pixel translations; evaluation averages the logits of each image and its mirror.
Resumable like the other stages: the lr, the batches and the augmentation are functions of
(seed, step).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pegasus.data import load_dataset
from pegasus.images import images_to_tensor
from pegasus.models.classifier import Classifier, ClassifierConfig, accuracy, predict
from pegasus.rundir import (
    CLASSIFIER_CHECKPOINT,
    CLASSIFIER_CONFIG,
    CLASSIFIER_CURVES,
    CLASSIFIER_EVAL,
    CLASSIFIER_METRICS,
    CLASSIFIER_WEIGHTS,
)
from pegasus.training import RunFiles, StepLoss, TrainConfig, Trainer, TrainingError, batch_indices, train

__all__ = ["ClassifierTrainConfig", "accuracy", "train_classifier"]


@dataclass
class ClassifierTrainConfig(TrainConfig):
    """TrainConfig with the classifier's defaults: 8 epochs of CIFAR-10's 50,000 = 782 steps of 512
    (6 epochs gave 84.6% test accuracy, short of the 85% asked for)."""

    steps: int = 782
    batch_size: int = 512
    lr: float = 0.2
    checkpoint_every: int = 100
    weight_decay: float = 5e-4
    label_smoothing: float = 0.2


def lr_at(step: int, steps: int, peak: float) -> float:
    """Linear warm-up from peak/25 to peak over the first quarter of training, then linear to 0."""
    warm = max(1, steps // 4)
    if step < warm:
        return peak * (0.04 + 0.96 * step / warm)
    return peak * max(0.0, (steps - step) / max(1, steps - warm))


def augment(x: Tensor, generator: torch.Generator, shift: int = 2) -> Tensor:
    """Random left-right flips and translations by up to `shift` pixels (reflected borders),
    per image, of x Tensor[B, 3, H, W]."""
    b, _, h, w = x.shape
    flip = torch.rand(b, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = F.pad(x, (shift,) * 4, mode="reflect")
    dy, dx = torch.randint(0, 2 * shift + 1, (2, b), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(b, 3, h, w + 2 * shift)
    x = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(b, 3, h, w)
    return x.gather(3, cols)


def train_classifier(
    data: str | os.PathLike,
    out: str | os.PathLike,
    epochs: float | None = None,
    train_cfg: ClassifierTrainConfig | dict[str, Any] | None = None,
    widths: tuple[int, int, int, int] | None = None,
    device: str | torch.device = "cpu",
    resume: bool = False,
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Train a classifier on the train split of `data` and test it on its test split; writes the
    files of the module docstring to `out` and returns the evaluation (classifier_eval.json).
    epochs: sets train_cfg's steps (epochs * images / batch_size, rounded up)."""
    return train(_ClassifierTrainer(data, Path(out), epochs, train_cfg, widths, torch.device(device), cache_dir), resume, progress)


class _ClassifierTrainer(Trainer):
    """The classifier's hooks for `pegasus.training.train`: one process, no torchrun group."""

    desc, unit, model_key = "train-classifier", "images", "classifier"
    dist = None
    postfix = [("loss", "loss", ".3f"), ("acc", "acc", ".3f"), ("img_s", "images_per_s", ".0f")]
    curves = {"loss": "cross-entropy (label smoothing)", "acc": "training accuracy"}

    def __init__(
        self,
        data: str | os.PathLike,
        out: Path,
        epochs: float | None,
        train_cfg: ClassifierTrainConfig | dict[str, Any] | None,
        widths: tuple[int, int, int, int] | None,
        device: torch.device,
        cache_dir: str | os.PathLike | None,
    ) -> None:
        self.data, self.epochs, self.asked, self.widths, self.device, self.cache_dir = data, epochs, train_cfg, widths, device, cache_dir
        self.files = RunFiles(
            out, CLASSIFIER_CONFIG, CLASSIFIER_CHECKPOINT, CLASSIFIER_METRICS, CLASSIFIER_WEIGHTS, CLASSIFIER_EVAL, CLASSIFIER_CURVES
        )

    def requested(self) -> tuple[dict[str, Any], dict[str, Any]]:
        self.train_ds = load_dataset(self.data, "train", cache_dir=self.cache_dir)
        self.test_ds = load_dataset(self.data, "test", cache_dir=self.cache_dir)
        train_over = dict(self.asked.__dict__) if isinstance(self.asked, ClassifierTrainConfig) else dict(self.asked or {})
        if self.epochs is not None:
            if not self.epochs > 0:
                raise ValueError(f"epochs should be > 0, got {self.epochs}")
            batch = train_over.get("batch_size", ClassifierTrainConfig.batch_size)
            train_over["steps"] = math.ceil(self.epochs * len(self.train_ds) / batch)
        model_over = {"classes": list(self.train_ds.classes), "image_size": list(self.train_ds.image_size)}
        if self.widths is not None:
            model_over["widths"] = list(self.widths)
        return model_over, train_over

    def configure(self, model_fields: dict[str, Any], train_fields: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
        self.cfg, self.train_cfg = ClassifierConfig(**model_fields), ClassifierTrainConfig(**train_fields)
        tcfg = self.train_cfg
        if len(self.train_ds) < tcfg.batch_size:
            raise TrainingError(f"{self.data}: the train split has {len(self.train_ds)} images, fewer than --batch-size {tcfg.batch_size}")
        data = {"path": self.train_ds.source, "format": self.train_ds.format}
        return tcfg, {"classifier": self.cfg.to_dict(), "train": tcfg.__dict__, "data": data}

    def build(self, resume: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        model = Classifier(self.cfg)
        pixels = torch.from_numpy(np.array(self.train_ds.images[:10000])).float().div(255)
        model.mean.copy_(pixels.mean((0, 1, 2)).view(1, 3, 1, 1))
        model.std.copy_(pixels.std((0, 1, 2)).view(1, 3, 1, 1))
        self.model = model.to(self.device, memory_format=torch.channels_last)
        decay = [p for p in self.model.parameters() if p.dim() > 1]
        rest = [p for p in self.model.parameters() if p.dim() <= 1]
        self.optimizer = torch.optim.SGD(
            [{"params": decay, "weight_decay": self.train_cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
            lr=self.train_cfg.lr, momentum=0.9, nesterov=True,
        )
        return self.model, self.optimizer

    def start(self, resume: bool) -> tuple[StepLoss, None]:
        model, optimizer, tcfg, images = self.model, self.optimizer, self.train_cfg, self.train_ds.images
        labels = torch.from_numpy(np.asarray(self.train_ds.labels))

        def step_loss(s: int) -> tuple[dict[str, Tensor], int]:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(s, tcfg.steps, tcfg.lr)
            idx = np.sort(batch_indices(len(images), tcfg.batch_size, s, tcfg.seed))
            g = torch.Generator().manual_seed(tcfg.seed * 1_000_003 + s)
            x = augment(images_to_tensor(images[idx]), g).to(self.device).contiguous(memory_format=torch.channels_last)
            y = labels[idx].to(self.device)
            logits = model(x).float()
            loss = F.cross_entropy(logits, y, label_smoothing=tcfg.label_smoothing)
            return {"loss": loss, "acc": (logits.argmax(1) == y).float().mean()}, len(idx)

        return step_loss, None

    def summarise(self, step: int) -> dict[str, Any]:
        probs = predict(self.model, self.test_ds.images)
        test_labels = torch.from_numpy(np.asarray(self.test_ds.labels))
        hit = probs.argmax(1) == test_labels
        classes = enumerate(self.cfg.classes)
        return {
            "test_accuracy": float(hit.float().mean()),
            "per_class": {c: float(hit[test_labels == k].float().mean()) for k, c in classes if (test_labels == k).any()},
            "test_images": len(self.test_ds),
            "steps": step,
            "epochs": round(step * self.train_cfg.batch_size / len(self.train_ds), 3),
        }
