"""VQ-VAE encoder/decoder after zalando's pytorch-vq-vae (the seed's reference code).

Encoder: stride-2 4x4 convs (two for the default downsampling factor 4), a 3x3 conv, a residual
stack, and a 1x1 conv to D. Decoder: the mirror image with transposed convs. Images enter in [0, 1]
and are centred (x - 0.5) inside, as zalando does; reconstructions come back on the [0, 1] scale.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from torch import Tensor, nn

from pegasus.models.quantizer import VectorQuantizer


@dataclass
class VQVAEConfig:
    """Everything needed to rebuild a VQVAE; saved as JSON next to the weights."""

    codes: int = 512
    dim: int = 64
    hidden: int = 128
    res_hidden: int = 32
    res_layers: int = 2
    downsample: int = 4
    beta: float = 0.25
    ema: bool = True
    decay: float = 0.99
    restart_after: int = 2

    def __post_init__(self) -> None:
        if self.downsample < 2 or self.downsample & (self.downsample - 1):
            raise ValueError(f"downsample should be a power of two >= 2, got {self.downsample}")
        for name in ("codes", "dim", "hidden", "res_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} should be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


class _Residual(nn.Module):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, hidden, 3, padding=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


def _residual_stack(channels: int, hidden: int, layers: int) -> nn.Sequential:
    return nn.Sequential(*[_Residual(channels, hidden) for _ in range(layers)], nn.ReLU())


class Encoder(nn.Module):
    """x: Tensor[B, 3, H, W] centred -> z_e: Tensor[B, D, H/f, W/f]."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        steps = int(math.log2(cfg.downsample))
        layers: list[nn.Module] = []
        channels = 3
        for i in range(steps):
            out = cfg.hidden if i == steps - 1 else cfg.hidden // 2
            layers += [nn.Conv2d(channels, out, 4, stride=2, padding=1), nn.ReLU()]
            channels = out
        layers += [
            nn.Conv2d(channels, cfg.hidden, 3, padding=1),
            _residual_stack(cfg.hidden, cfg.res_hidden, cfg.res_layers),
            nn.Conv2d(cfg.hidden, cfg.dim, 1),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """z_q: Tensor[B, D, h, w] -> centred images Tensor[B, 3, h*f, w*f]."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        steps = int(math.log2(cfg.downsample))
        layers: list[nn.Module] = [
            nn.Conv2d(cfg.dim, cfg.hidden, 3, padding=1),
            _residual_stack(cfg.hidden, cfg.res_hidden, cfg.res_layers),
        ]
        channels = cfg.hidden
        for i in range(steps):
            last = i == steps - 1
            out = 3 if last else cfg.hidden // 2
            layers.append(nn.ConvTranspose2d(channels, out, 4, stride=2, padding=1))
            if not last:
                layers.append(nn.ReLU())
            channels = out
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


@dataclass
class VQVAEOutput:
    """recon: Tensor[B, 3, H, W] on the [0, 1] scale (not clamped), indices: Tensor[B, h, w],
    vq_loss, perplexity and usage as in `QuantizerOutput`."""

    recon: Tensor
    indices: Tensor
    vq_loss: Tensor
    perplexity: Tensor
    usage: Tensor


class VQVAE(nn.Module):
    """Encoder -> VectorQuantizer -> Decoder. Images: Tensor[B, 3, H, W] float in [0, 1],
    H and W multiples of `downsample` (CIFAR-10 32x32 -> 8x8 latents, STL-10 96x96 -> 24x24)."""

    def __init__(self, cfg: VQVAEConfig | None = None, backend: str | None = None, **kwargs) -> None:
        super().__init__()
        self.cfg = cfg if cfg is not None else VQVAEConfig(**kwargs)
        self.encoder = Encoder(self.cfg)
        self.quantizer = VectorQuantizer(
            self.cfg.codes,
            self.cfg.dim,
            beta=self.cfg.beta,
            ema=self.cfg.ema,
            decay=self.cfg.decay,
            restart_after=self.cfg.restart_after,
            backend=backend,
        )
        self.decoder = Decoder(self.cfg)

    def _check_images(self, x: Tensor) -> None:
        f = self.cfg.downsample
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(
                f"VQVAE expected images [B, 3, H, W] with H and W multiples of {f}, got {tuple(x.shape)}"
            )

    def encode(self, x: Tensor) -> Tensor:
        """Continuous latents: x: Tensor[B, 3, H, W] in [0, 1] -> z_e: Tensor[B, D, H/f, W/f]."""
        self._check_images(x)
        return self.encoder(x - 0.5)

    def quantize(self, z_e: Tensor) -> Tensor:
        """z_e: Tensor[B, D, h, w] -> code indices Tensor[B, h, w] int64."""
        return self.quantizer.quantize(z_e)

    def decode(self, z_q: Tensor) -> Tensor:
        """Quantised latents Tensor[B, D, h, w] -> images Tensor[B, 3, H, W] on the [0, 1] scale."""
        return self.decoder(z_q) + 0.5

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Code grids Tensor[B, h, w] int64 -> images Tensor[B, 3, H, W] on the [0, 1] scale."""
        return self.decode(self.quantizer.lookup(indices))

    def forward(self, x: Tensor) -> VQVAEOutput:
        q = self.quantizer(self.encode(x))
        return VQVAEOutput(self.decode(q.quantized), q.indices, q.loss, q.perplexity, q.usage)

