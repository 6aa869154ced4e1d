"""Vector quantisation (van den Oord et al. 2017) with straight-through gradients.

Nearest codes come from `pegasus.ops.nearest_code`, so the quantiser runs on whichever backend is
chosen. Options: EMA codebook updates (decay 0.99, Laplace smoothing) and dead-code restart.
Codes are initialised from the first training batch's encoder outputs, and codes unused for
`restart_after` training steps are re-seeded from the current batch: the zalando notebook's EMA
quantiser maps every latent to one code for its first ~450 updates; this one starts spread out.

Under DistributedDataParallel set `sync = True`: each training step then sums the code counts and
EMA embedding sums over the ranks before the update, and draws (re)seeded codes on rank 0 from all
ranks' vectors, so every rank keeps the codebook one process would have on the whole batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch import Tensor, nn

from pegasus.ops import nearest_code


@dataclass
class QuantizerOutput:
    """quantized: Tensor[B, D, H, W] (straight-through), indices: Tensor[B, H, W] int64,
    loss: codebook + beta * commitment (scalar), perplexity: exp(entropy) of this batch's code use,
    usage: share of the K codes used in this batch."""

    quantized: Tensor
    indices: Tensor
    loss: Tensor
    perplexity: Tensor
    usage: Tensor


def code_perplexity(counts: Tensor) -> Tensor:
    """exp(entropy) of a histogram of code use; counts: Tensor[K]."""
    p = counts.float() / counts.sum().clamp_min(1)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum())


class VectorQuantizer(nn.Module):
    """Map z_e: Tensor[B, D, H, W] to the nearest of K codes of size D.

    Loss (VQ-VAE eq. 3 without the reconstruction term): ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2;
    with `ema=True` the first term is replaced by exponential-moving-average codebook updates made
    from this batch's assignments (after quantisation), and only the commitment term remains.
    Under torch.autocast (or for half inputs) the distances and the codebook are float32; the
    output has z_e's dtype.
    """

    def __init__(
        self,
        codes: int,
        dim: int,
        beta: float = 0.25,
        ema: bool = True,
        decay: float = 0.99,
        eps: float = 1e-5,
        restart_after: int = 2,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        if codes < 1 or dim < 1:
            raise ValueError(f"VectorQuantizer needs codes >= 1 and dim >= 1, got codes={codes}, dim={dim}")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"VectorQuantizer decay should be in (0, 1), got {decay}")
        self.codes, self.dim, self.beta = codes, dim, beta
        self.ema, self.decay, self.eps = ema, decay, eps
        self.restart_after = restart_after
        self.backend = backend
        self.sync = False  # set by the trainer under DDP: see the module docstring
        self.embedding = nn.Parameter(torch.empty(codes, dim).uniform_(-1 / codes, 1 / codes), requires_grad=not ema)
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("steps_unused", torch.zeros(codes, dtype=torch.int64))
        if ema:
            self.register_buffer("ema_count", torch.ones(codes))
            self.register_buffer("ema_sum", self.embedding.detach().clone())

    def extra_repr(self) -> str:
        return f"codes={self.codes}, dim={self.dim}, beta={self.beta}, ema={self.ema}, restart_after={self.restart_after}"

    def lookup(self, indices: Tensor) -> Tensor:
        """indices: Tensor[B, H, W] int64 -> codes: Tensor[B, D, H, W]."""
        return F.embedding(indices, self.embedding).permute(0, 3, 1, 2).contiguous()

    def quantize(self, z_e: Tensor) -> Tensor:
        """Nearest-code indices of z_e: Tensor[B, D, H, W] -> Tensor[B, H, W] int64 (no side effects)."""
        b, d, h, w = z_e.shape
        compute = torch.promote_types(z_e.dtype, torch.float32)
        flat = z_e.detach().to(compute).permute(0, 2, 3, 1).reshape(-1, d)
        indices, _ = nearest_code(flat, self.embedding.detach().to(compute), backend=self.backend)
        return indices.view(b, h, w)

    def forward(self, z_e: Tensor) -> QuantizerOutput:
        if z_e.dim() != 4 or z_e.shape[1] != self.dim:
            raise ValueError(f"VectorQuantizer expected z_e [B, {self.dim}, H, W], got {tuple(z_e.shape)}")
        # float32 at least (float64 stays float64, for gradcheck), whatever autocast would pick.
        compute = torch.promote_types(z_e.dtype, torch.float32)
        with torch.autocast(z_e.device.type, enabled=False):
            z = z_e.to(compute)
            flat = z.permute(0, 2, 3, 1).reshape(-1, self.dim)
            if self.training and not bool(self.initialized):
                self._init_from(self._gathered(flat.detach()))
            codebook = self.embedding.to(compute)
            indices, _ = nearest_code(flat.detach(), codebook.detach(), backend=self.backend)
            counts = torch.bincount(indices, minlength=self.codes)
            if self.training and self.sync:  # the whole batch's counts: EMA, dead codes, logged perplexity
                tdist.all_reduce(counts)
            q = F.embedding(indices, codebook)
            if self.training:  # after the lookup: this batch is quantised with the codes it was assigned
                self._update_codebook(flat.detach(), indices, counts)
            commitment = F.mse_loss(flat, q.detach())
            loss = self.beta * commitment if self.ema else F.mse_loss(q, flat.detach()) + self.beta * commitment
            q = flat + (q - flat).detach()  # straight-through: d quantized / d z_e = identity
            b, _, h, w = z.shape
            quantized = q.view(b, h, w, self.dim).permute(0, 3, 1, 2).to(z_e.dtype)
            return QuantizerOutput(
                quantized=quantized,
                indices=indices.view(b, h, w),
                loss=loss,
                perplexity=code_perplexity(counts),
                usage=(counts > 0).float().mean(),
            )

    def _gathered(self, flat: Tensor) -> Tensor:
        """Every rank's rows of flat: Tensor[M, D], in rank order -> Tensor[world * M, D] (flat
        itself unless syncing; the ranks' batches are the same size)."""
        if not self.sync:
            return flat
        parts = [torch.empty_like(flat) for _ in range(tdist.get_world_size())]
        tdist.all_gather(parts, flat.contiguous())
        return torch.cat(parts)

    def _random_rows(self, flat: Tensor, n: int) -> Tensor:
        # With fewer vectors than codes, repeat them with a little noise so the copies can separate.
        idx = torch.randint(flat.shape[0], (n,), device=flat.device)
        rows = flat[idx]
        if flat.shape[0] < n:
            rows = rows + 0.01 * flat.std().clamp_min(1e-6) * torch.randn_like(rows)
        return rows

    @torch.no_grad()
    def _init_from(self, flat: Tensor) -> None:
        self._reseed(torch.ones(self.codes, dtype=torch.bool, device=flat.device), flat)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _reseed(self, which: Tensor, flat: Tensor) -> None:
        n = int(which.sum())
        rows = self._random_rows(flat, n)
        if self.sync:  # the ranks' RNGs agree, but rank 0's draw is the one that counts
            tdist.broadcast(rows, 0)
        self.embedding.data[which] = rows.to(self.embedding.dtype)
        self.steps_unused[which] = 0
        if self.ema:
            self.ema_count[which] = 1.0
            self.ema_sum[which] = rows.to(self.ema_sum.dtype)

    @torch.no_grad()
    def _update_codebook(self, flat: Tensor, indices: Tensor, counts: Tensor) -> None:
        if self.ema:
            sums = torch.zeros_like(self.ema_sum).index_add_(0, indices, flat.to(self.ema_sum.dtype))
            if self.sync:
                tdist.all_reduce(sums)
            self.ema_count.mul_(self.decay).add_(counts.float(), alpha=1 - self.decay)
            self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            total = self.ema_count.sum()
            smoothed = (self.ema_count + self.eps) / (total + self.codes * self.eps) * total  # Laplace
            self.embedding.data.copy_(self.ema_sum / smoothed[:, None])
        self.steps_unused.add_(1).masked_fill_(counts > 0, 0)
        if self.restart_after > 0:
            dead = self.steps_unused >= self.restart_after
            if bool(dead.any()):
                self._reseed(dead, self._gathered(flat))
