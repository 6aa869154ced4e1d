"""VQ-VAE encoder/decoder after zalando's pytorch-vq-vae (the seed's reference code), with one
code level (`VQVAE`) or two (`VQVAE2`, after Razavi et al. 2019, VQ-VAE-2).

Encoder: stride-2 4x4 convs (two for the default downsampling factor 4), a 3x3 conv, a residual
stack, and a 1x1 conv to D. Decoder: the mirror image with transposed convs. Images enter in [0, 1]
and are centred (x - 0.5) inside, as zalando does; reconstructions come back on the [0, 1] scale.

Both classes share `codes(x)` (the code grids of images, coarsest level first) and
`decode_codes(grids)`, which the training loop's evaluation and pictures use; `build_vqvae(cfg)`
makes the one that cfg.levels asks for.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from pegasus.models.quantizer import QuantizerOutput, VectorQuantizer


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
    levels: int = 1

    def __post_init__(self) -> None:
        if self.downsample < 2 or self.downsample & (self.downsample - 1):
            raise ValueError(f"downsample should be a power of two >= 2, got {self.downsample}")
        if self.levels not in (1, 2):
            raise ValueError(f"levels should be 1 or 2, got {self.levels}")
        for name in ("codes", "dim", "hidden", "res_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} should be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        """The fields, without `levels` when it is 1: one-level runs' config.json and the configs
        stamped in their weights stay what they were before two-level models existed, so runs
        written before and after load and resume alike."""
        fields = asdict(self)
        if fields["levels"] == 1:
            del fields["levels"]
        return fields

    @property
    def factors(self) -> list[int]:
        """Downsampling factor of each level's grid, coarsest first: [f] or [2f, f]."""
        return [self.downsample] if self.levels == 1 else [2 * self.downsample, self.downsample]


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


def _downsampling(channels: int, cfg: VQVAEConfig, factor: int) -> list[nn.Module]:
    """Stride-2 4x4 convs down by `factor` to cfg.hidden channels, a 3x3 conv, a residual stack."""
    steps = int(math.log2(factor))
    layers: list[nn.Module] = []
    for i in range(steps):
        out = cfg.hidden if i == steps - 1 else cfg.hidden // 2
        layers += [nn.Conv2d(channels, out, 4, stride=2, padding=1), nn.ReLU()]
        channels = out
    return layers + [nn.Conv2d(channels, cfg.hidden, 3, padding=1), _residual_stack(cfg.hidden, cfg.res_hidden, cfg.res_layers)]


class Encoder(nn.Module):
    """x: Tensor[B, 3, H, W] centred -> z_e: Tensor[B, D, H/f, W/f]."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(*_downsampling(3, cfg, cfg.downsample), nn.Conv2d(cfg.hidden, cfg.dim, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _upsampling(channels: int, cfg: VQVAEConfig, factor: int, out_channels: int) -> list[nn.Module]:
    """A 3x3 conv to cfg.hidden channels, a residual stack, stride-2 4x4 transposed convs up by
    `factor` to out_channels."""
    steps = int(math.log2(factor))
    layers: list[nn.Module] = [nn.Conv2d(channels, cfg.hidden, 3, padding=1), _residual_stack(cfg.hidden, cfg.res_hidden, cfg.res_layers)]
    channels = cfg.hidden
    for i in range(steps):
        last = i == steps - 1
        out = out_channels if last else cfg.hidden // 2
        layers.append(nn.ConvTranspose2d(channels, out, 4, stride=2, padding=1))
        if not last:
            layers.append(nn.ReLU())
        channels = out
    return layers


class Decoder(nn.Module):
    """z_q: Tensor[B, D, h, w] -> centred images Tensor[B, 3, h*f, w*f]."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(*_upsampling(cfg.dim, cfg, cfg.downsample, 3))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


@dataclass
class VQVAEOutput:
    """recon: Tensor[B, 3, H, W] on the [0, 1] scale (not clamped), indices: Tensor[B, h, w],
    vq_loss, perplexity and usage as in `QuantizerOutput` (of the finest level; vq_loss summed over
    the levels); top: the top level's QuantizerOutput of a two-level VQVAE2, else None."""

    recon: Tensor
    indices: Tensor
    vq_loss: Tensor
    perplexity: Tensor
    usage: Tensor
    top: QuantizerOutput | None = None


def _centred(x: Tensor) -> Tensor:
    """Images on the [0, 1] scale -> x - 0.5 in channels_last: oneDNN's convolutions run on NHWC
    activations without reorders, the 4x4 transposed ones most of all (256 x 128 x 8 x 8 -> 64
    channels: 39 ms forward against 70 ms in NCHW, one Zen 4 core), and the quantiser's NHWC rows
    become a view. A float32 training step of the default model fed contiguous NCHW images, one
    core, interleaved steps: 758 ms against 841 ms. The loaders' batches are channels_last already
    (images_to_tensor), so training on them gains nothing here: the same weights, bit for bit, after
    2000 steps. The weights stay NCHW; the outputs are NCHW (`decode`)."""
    return (x - 0.5).contiguous(memory_format=torch.channels_last)


class VQVAE(nn.Module):
    """Encoder -> VectorQuantizer -> Decoder. Images: Tensor[B, 3, H, W] float in [0, 1],
    H and W multiples of `downsample` (CIFAR-10 32x32 -> 8x8 latents, STL-10 96x96 -> 24x24)."""

    def __init__(self, cfg: VQVAEConfig | None = None, backend: str | None = None, **kwargs) -> None:
        super().__init__()
        self.cfg = cfg if cfg is not None else VQVAEConfig(**kwargs)
        if self.cfg.levels != 1:
            raise ValueError(f"VQVAE is the one-level model; got a config with levels={self.cfg.levels} (use VQVAE2 or build_vqvae)")
        self.encoder = Encoder(self.cfg)
        self.quantizer = _quantizer(self.cfg, backend)
        self.decoder = Decoder(self.cfg)

    @property
    def quantizers(self) -> list[VectorQuantizer]:
        return [self.quantizer]

    def _check_images(self, x: Tensor) -> None:
        f = self.cfg.downsample
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(
                f"VQVAE expected images [B, 3, H, W] with H and W multiples of {f}, got {tuple(x.shape)}"
            )

    def encode(self, x: Tensor) -> Tensor:
        """Continuous latents: x: Tensor[B, 3, H, W] in [0, 1] -> z_e: Tensor[B, D, H/f, W/f]."""
        self._check_images(x)
        return self.encoder(_centred(x))

    def quantize(self, z_e: Tensor) -> Tensor:
        """z_e: Tensor[B, D, h, w] -> code indices Tensor[B, h, w] int64."""
        return self.quantizer.quantize(z_e)

    def decode(self, z_q: Tensor) -> Tensor:
        """Quantised latents Tensor[B, D, h, w] -> images Tensor[B, 3, H, W] on the [0, 1] scale."""
        return (self.decoder(z_q) + 0.5).contiguous()

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Code grids Tensor[B, h, w] int64 -> images Tensor[B, 3, H, W] on the [0, 1] scale."""
        return self.decode(self.quantizer.lookup(indices))

    def forward(self, x: Tensor) -> VQVAEOutput:
        q = self.quantizer(self.encode(x))
        return VQVAEOutput(self.decode(q.quantized), q.indices, q.loss, q.perplexity, q.usage)

    def latent_codes(self, z_e: Tensor) -> list[Tensor]:
        """[code grid Tensor[B, h, w] int64] of continuous latents z_e (`encode`'s; one level)."""
        return [self.quantize(z_e)]

    def codes(self, x: Tensor) -> list[Tensor]:
        """[code grid Tensor[B, h, w] int64] of images x (one level)."""
        return self.latent_codes(self.encode(x))

    def decode_codes(self, grids: list[Tensor]) -> Tensor:
        """`codes`' list -> images Tensor[B, 3, H, W] on the [0, 1] scale."""
        (indices,) = grids
        return self.decode_indices(indices)


def _quantizer(cfg: VQVAEConfig, backend: str | None) -> VectorQuantizer:
    return VectorQuantizer(cfg.codes, cfg.dim, beta=cfg.beta, ema=cfg.ema, decay=cfg.decay, restart_after=cfg.restart_after, backend=backend)


class VQVAE2(nn.Module):
    """Two code levels (Razavi et al. 2019): a top grid at 1/(2f) of the image side for the global
    shape and a bottom grid at 1/f for the detail (f = cfg.downsample: 4x4 and 8x8 codes for
    32x32 images, 12x12 and 24x24 for 96x96), each with its own codebook of cfg.codes x cfg.dim.

      bottom features  h_b = encoder_bottom(x)                        [hidden, H/f]
      top              z_t = encoder_top(h_b) (one more stride 2)     -> quantised q_t   [D, H/2f]
      bottom           z_b = 1x1 conv of [h_b, decoder_top(q_t)]      -> quantised q_b   [D, H/f]
      image            decoder([q_b, upsample(q_t)])

    so the bottom codes are chosen knowing the top ones, and the decoder sees both. Training sums
    both quantisers' losses; each level keeps its EMA codebook and dead-code restarts."""

    def __init__(self, cfg: VQVAEConfig | None = None, backend: str | None = None, **kwargs) -> None:
        super().__init__()
        self.cfg = cfg if cfg is not None else VQVAEConfig(levels=2, **kwargs)
        if self.cfg.levels != 2:
            raise ValueError(f"VQVAE2 is the two-level model; got a config with levels={self.cfg.levels} (use VQVAE)")
        c = self.cfg
        self.encoder_bottom = nn.Sequential(*_downsampling(3, c, c.downsample))
        self.encoder_top = nn.Sequential(*_downsampling(c.hidden, c, 2), nn.Conv2d(c.hidden, c.dim, 1))
        self.quantizer_top = _quantizer(c, backend)
        self.decoder_top = nn.Sequential(*_upsampling(c.dim, c, 2, c.dim))
        self.pre_bottom = nn.Conv2d(c.hidden + c.dim, c.dim, 1)
        self.quantizer_bottom = _quantizer(c, backend)
        self.upsample_top = nn.ConvTranspose2d(c.dim, c.dim, 4, stride=2, padding=1)
        self.decoder = nn.Sequential(*_upsampling(2 * c.dim, c, c.downsample, 3))

    @property
    def quantizers(self) -> list[VectorQuantizer]:
        return [self.quantizer_top, self.quantizer_bottom]

    def _check_images(self, x: Tensor) -> None:
        f = 2 * self.cfg.downsample
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"VQVAE2 expected images [B, 3, H, W] with H and W multiples of {f}, got {tuple(x.shape)}")

    def _bottom_latents(self, features: Tensor, q_top: Tensor) -> Tensor:
        return self.pre_bottom(torch.cat([features, self.decoder_top(q_top)], 1))

    def decode(self, q_top: Tensor, q_bottom: Tensor) -> Tensor:
        """Quantised latents Tensor[B, D, h/2, w/2] and Tensor[B, D, h, w] -> images on the [0, 1] scale."""
        return (self.decoder(torch.cat([q_bottom, self.upsample_top(q_top)], 1)) + 0.5).contiguous()

    def encode(self, x: Tensor) -> Tensor:
        """The continuous latents both levels are computed from: the bottom encoder's features
        x: Tensor[B, 3, H, W] in [0, 1] -> Tensor[B, hidden, H/f, W/f] (interpolation mixes these)."""
        self._check_images(x)
        return self.encoder_bottom(_centred(x))

    def latent_codes(self, features: Tensor) -> list[Tensor]:
        """[top grid Tensor[B, h/2, w/2], bottom grid Tensor[B, h, w]] int64 of `encode`'s features."""
        top = self.quantizer_top.quantize(self.encoder_top(features))
        bottom = self.quantizer_bottom.quantize(self._bottom_latents(features, self.quantizer_top.lookup(top)))
        return [top, bottom]

    def codes(self, x: Tensor) -> list[Tensor]:
        """[top grid Tensor[B, H/2f, W/2f], bottom grid Tensor[B, H/f, W/f]] int64 of images x."""
        return self.latent_codes(self.encode(x))

    def decode_codes(self, grids: list[Tensor]) -> Tensor:
        """[top grid, bottom grid] (as `codes` gives) -> images Tensor[B, 3, H, W] on the [0, 1] scale."""
        top, bottom = grids
        if top.shape[-2] * 2 != bottom.shape[-2] or top.shape[-1] * 2 != bottom.shape[-1]:
            raise ValueError(f"VQVAE2 expected a top grid half the bottom grid's size, got {tuple(top.shape)} and {tuple(bottom.shape)}")
        return self.decode(self.quantizer_top.lookup(top), self.quantizer_bottom.lookup(bottom))

    def forward(self, x: Tensor) -> VQVAEOutput:
        features = self.encode(x)
        top = self.quantizer_top(self.encoder_top(features))
        bottom = self.quantizer_bottom(self._bottom_latents(features, top.quantized))
        recon = self.decode(top.quantized, bottom.quantized)
        return VQVAEOutput(recon, bottom.indices, top.loss + bottom.loss, bottom.perplexity, bottom.usage, top=top)


def build_vqvae(cfg: VQVAEConfig, backend: str | None = None) -> VQVAE | VQVAE2:
    """The model cfg.levels asks for."""
    return VQVAE2(cfg, backend=backend) if cfg.levels == 2 else VQVAE(cfg, backend=backend)

