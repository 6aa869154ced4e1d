"""Benchmark of training speed (`pegasus bench train`): images/s of a VQ-VAE step and grids/s of a
prior step, float32 against bfloat16 autocast, side by side in one process.

The peer is the VQ-VAE that tutorials train: the same encoder and decoder (pegasus.models.vqvae),
with the quantiser written the usual way in plain PyTorch: the full N x K distance matrix by
matmul, argmin, one-hot encodings, and the EMA codebook update through one-hot matmuls
(`PlainQuantizer`). pegasus's own step is `VQVAE` with its fused nearest-code lookup and
index-based EMA updates, in float32 (`fp32`) or with the forward pass under bfloat16 autocast
(`bf16`; the quantiser stays float32), as `pegasus train-vqvae --precision` runs it.

Each measurement: a fixed batch of random images (speed does not depend on their content), in
channels_last as the data loaders give them, two warm-up steps, then the median of `steps` timed
optimizer steps (forward, backward, Adam).
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pegasus.bench.harness import device_name, markdown_table, ratio

__all__ = ["PlainQuantizer", "PlainVQVAE", "Record", "format_table", "run"]


class PlainQuantizer(nn.Module):
    """The tutorial quantiser (zalando's pytorch-vq-vae VectorQuantizerEMA): distances by matmul,
    argmin, one-hot encodings, EMA updates through one-hot matmuls."""

    def __init__(self, codes: int, dim: int, beta: float = 0.25, decay: float = 0.99, eps: float = 1e-5) -> None:
        super().__init__()
        self.codes, self.beta, self.decay, self.eps = codes, beta, decay, eps
        self.register_buffer("embedding", torch.randn(codes, dim))
        self.register_buffer("cluster_size", torch.zeros(codes))
        self.register_buffer("ema_w", self.embedding.clone())

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d).float()
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.embedding.t() + self.embedding.pow(2).sum(1)
        encodings = F.one_hot(dist.argmin(1), self.codes).float()
        quantized = (encodings @ self.embedding).view(b, h, w, d).permute(0, 3, 1, 2)
        if self.training:
            with torch.no_grad():
                self.cluster_size.mul_(self.decay).add_(encodings.sum(0), alpha=1 - self.decay)
                n = self.cluster_size.sum()
                size = (self.cluster_size + self.eps) / (n + self.codes * self.eps) * n
                self.ema_w.mul_(self.decay).add_(encodings.t() @ flat, alpha=1 - self.decay)
                self.embedding.copy_(self.ema_w / size[:, None])
        loss = self.beta * F.mse_loss(z.float(), quantized.detach())
        return z + (quantized - z).detach(), loss


class PlainVQVAE(nn.Module):
    """pegasus's encoder and decoder around `PlainQuantizer`."""

    def __init__(self, cfg) -> None:
        from pegasus.models.vqvae import Decoder, Encoder

        super().__init__()
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        self.quantizer = PlainQuantizer(cfg.codes, cfg.dim, cfg.beta, cfg.decay)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z_q, vq_loss = self.quantizer(self.encoder(x - 0.5))
        return self.decoder(z_q) + 0.5, vq_loss


@dataclass
class Record:
    """One (model, precision) measurement; speedup: the plain fp32 step's time / this one's."""

    op: str
    model: str
    precision: str
    batch: int
    device: str
    median_s: float
    items_per_s: float
    speedup_vs_plain_fp32: float | None = None
    speedup_vs_fp32: float | None = None


def _time(step: Callable[[], None], steps: int) -> float:
    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _autocast(precision: str, device: str):
    return torch.autocast(device, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def _vqvae_step(model_name: str, precision: str, x: Tensor, device: str) -> Callable[[], None]:
    from pegasus.models.vqvae import VQVAE, VQVAEConfig

    torch.manual_seed(0)
    cfg = VQVAEConfig()
    model = (VQVAE(cfg) if model_name == "pegasus" else PlainVQVAE(cfg)).to(device).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def step() -> None:
        with _autocast(precision, device):
            if model_name == "pegasus":
                out = model(x)
                loss = F.mse_loss(out.recon.float(), x) / 0.06 + out.vq_loss
            else:
                recon, vq_loss = model(x)
                loss = F.mse_loss(recon.float(), x) / 0.06 + vq_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _prior_step(precision: str, grids: Tensor, alphas: Tensor, device: str) -> Callable[[], None]:
    from pegasus.models.pixelcnn import GatedPixelCNN

    torch.manual_seed(0)
    prior = GatedPixelCNN().to(device).train()
    optimizer = torch.optim.Adam(prior.parameters(), lr=1e-3)

    def step() -> None:
        with _autocast(precision, device):
            loss = F.cross_entropy(prior(grids, alphas), grids)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def run(
    steps: int = 10,
    vqvae_batch: int = 256,
    prior_batch: int = 64,
    device: str = "cpu",
    precisions: Sequence[str] = ("fp32", "bf16"),
    progress: Callable[[str], None] | None = None,
) -> list[Record]:
    """Time the plain VQ-VAE (fp32), pegasus's VQ-VAE and the prior at each precision."""
    g = torch.Generator().manual_seed(0)
    # Both models get the batches training gives them: channels_last, as images_to_tensor makes
    # them (the loaders' NHWC arrays, permuted). Contiguous NCHW batches would slow the plain
    # model's convolutions by ~1.1x that training never pays (pegasus's VQVAE makes its own
    # activations channels_last either way).
    x = torch.rand(vqvae_batch, 3, 32, 32, generator=g).to(device).contiguous(memory_format=torch.channels_last)
    grids = torch.randint(0, 512, (prior_batch, 8, 8), generator=g).to(device)
    alphas = torch.rand(prior_batch, generator=g).to(device)
    cases = [("vqvae", "plain", "fp32")] + [("vqvae", "pegasus", p) for p in precisions] + [("prior", "pegasus", p) for p in precisions]
    records = []
    for op, model, precision in cases:
        if op == "vqvae":
            median = _time(_vqvae_step(model, precision, x, device), steps)
            batch = vqvae_batch
        else:
            median = _time(_prior_step(precision, grids, alphas, device), steps)
            batch = prior_batch
        rec = Record(op, model, precision, batch, device, median, batch / median)
        records.append(rec)
        if progress is not None:
            progress(f"{op} {model} {precision}: {median * 1e3:.0f} ms a step, {rec.items_per_s:.0f} per s")
    plain = next(r for r in records if r.model == "plain")
    for rec in records:
        fp32 = next((r for r in records if r.op == rec.op and r.model == "pegasus" and r.precision == "fp32"), None)
        if rec.op == "vqvae":
            rec.speedup_vs_plain_fp32 = plain.median_s / rec.median_s
        if fp32 is not None and rec.model == "pegasus":
            rec.speedup_vs_fp32 = fp32.median_s / rec.median_s
    return records


_COLUMNS = (("step", "<"), ("model", "<"), ("precision", "<"), ("batch", ">"), ("median ms", ">"), ("items/s", ">"),
            ("vs plain fp32", ">"), ("vs pegasus fp32", ">"))


def format_table(records: Sequence[Record]) -> str:
    """Markdown table: step | model | precision | batch | median ms | items/s | speedups."""
    return markdown_table(_COLUMNS, [
        (r.op, r.model, r.precision, r.batch, f"{r.median_s * 1e3:.0f}",
         f"{r.items_per_s:.0f} {'images' if r.op == 'vqvae' else 'grids'}", ratio(r.speedup_vs_plain_fp32, 2), ratio(r.speedup_vs_fp32, 2))
        for r in records
    ])


def header(device: str) -> str:
    return f"training steps (VQ-VAE: default config, 32x32 images; prior: default config, 8x8 grids) on {device_name(device)}"
