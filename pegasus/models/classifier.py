"""A small image classifier, trained by pegasus itself, that `pegasus evaluate` scores pictures with.

Three conv groups (conv, max-pool, batch norm, GELU, conv, batch norm, GELU) after a conv stem,
then a global max pool and a linear head, in the manner of the fast CIFAR-10 trainers (Keller
Jordan's airbench): at widths 32/128/128 it is 0.5M parameters (2 MB in float32) and trains to
85-87% CIFAR-10 test accuracy in about 5 minutes on 2 CPU cores under bfloat16 autocast.

forward(x: float Tensor[B, 3, H, W] in [0, 1]) -> logits Tensor[B, classes]; `features(x)` ->
Tensor[B, widths[-1]], the pooled activations that the Frechet distance and the diversity of
`pegasus evaluate` are measured in; `feature_maps(x)`, the activations of every stage, which the
VQ-VAE's perceptual loss compares (`perceptual_distance`). Images of another size are resized to
`image_size` first.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pegasus.images import images_to_tensor


@dataclass
class ClassifierConfig:
    """classes: the class names, in label order; image_size: (H, W) it was trained at; widths: the
    stem and the three conv groups."""

    classes: list[str] = field(default_factory=list)
    image_size: tuple[int, int] = (32, 32)
    widths: tuple[int, int, int, int] = (16, 32, 128, 128)

    def __post_init__(self) -> None:
        self.image_size, self.widths = tuple(self.image_size), tuple(self.widths)
        if len(self.classes) < 2:
            raise ValueError(f"a classifier needs >= 2 classes, got {self.classes}")
        if len(self.widths) != 4 or min(self.widths) < 1:
            raise ValueError(f"widths should be 4 positive numbers (stem, 3 groups), got {self.widths}")
        if len(self.image_size) != 2 or min(self.image_size) < 8:
            raise ValueError(f"image_size should be (H, W) with both >= 8, got {self.image_size}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _group(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(c_out), nn.GELU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.GELU(),
    )


class Classifier(nn.Module):
    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        self.cfg = cfg
        stem, *groups = cfg.widths
        # Per-channel pixel mean and std of the training split, set by training (saved with the weights).
        self.register_buffer("mean", torch.full((1, 3, 1, 1), 0.5))
        self.register_buffer("std", torch.full((1, 3, 1, 1), 0.25))
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem), nn.GELU())
        self.groups = nn.Sequential(*(_group(a, b) for a, b in zip([stem, *groups[:-1]], groups)))
        self.head = nn.Linear(groups[-1], len(cfg.classes), bias=False)

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        """The activations after the stem and after each conv group: [Tensor[B, C_i, H_i, W_i]] * 4."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"the classifier expects images Tensor[B, 3, H, W], got {tuple(x.shape)}")
        if tuple(x.shape[-2:]) != self.cfg.image_size:
            x = F.interpolate(x, size=self.cfg.image_size, mode="bilinear", antialias=True, align_corners=False)
        maps = [self.stem((x - self.mean) / self.std)]
        for group in self.groups:
            maps.append(group(maps[-1]))
        return maps

    def features(self, x: Tensor) -> Tensor:
        return torch.amax(self.feature_maps(x)[-1], dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        # The 1/9 scale of airbench: logits start small, which suits label smoothing and SGD at lr 0.2.
        return self.head(self.features(x)) / 9

    def class_index(self, name: str) -> int:
        """Label of the class called `name` (case-insensitive); ValueError naming the classes."""
        lower = [c.lower() for c in self.cfg.classes]
        if name.lower() not in lower:
            raise ValueError(f"the classifier has no {name!r} class; its classes are {self.cfg.classes}")
        return lower.index(name.lower())


def perceptual_distance(net: Classifier, a: Tensor, b: Tensor) -> Tensor:
    """Mean over `net`'s stages of the squared distance between the activations of a and b, each
    position's channel vector scaled to unit length first (as LPIPS does, without its learned
    weights): a differentiable measure of how differently the classifier sees two images."""
    total = a.new_zeros(())
    for fa, fb in zip(net.feature_maps(a), net.feature_maps(b)):
        fa, fb = F.normalize(fa.float(), dim=1), F.normalize(fb.float(), dim=1)
        total = total + (fa - fb).pow(2).sum(1).mean()
    return total / (len(net.groups) + 1)


@torch.no_grad()
def predict(model: Classifier, images: np.ndarray | Tensor, batch_size: int = 500, features: bool = False) -> Tensor:
    """Class probabilities Tensor[N, classes] (or, with features, Tensor[N, F]) of uint8 images
    [N, H, W, 3] (array) or [N, 3, H, W] (tensor), each averaged with its mirror image."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        chunk = images[i : i + batch_size]
        x = images_to_tensor(chunk, device) if isinstance(chunk, np.ndarray) else chunk.to(device).float().div(255)
        if features:
            out.append(((model.features(x) + model.features(x.flip(3))) / 2).float().cpu())
        else:
            out.append(((model(x).float().softmax(1) + model(x.flip(3)).float().softmax(1)) / 2).cpu())
    return torch.cat(out)


def accuracy(model: Classifier, images: np.ndarray | Tensor, labels: np.ndarray | Tensor) -> float:
    """Share of `images` whose most probable class (mirror-averaged) is its label."""
    return float((predict(model, images).argmax(1) == torch.as_tensor(np.asarray(labels))).float().mean())
