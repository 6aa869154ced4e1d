"""A finished run directory as one object: its VQ-VAE, its prior(s) and its sampling defaults.

>>> run = pegasus.load_run("runs/c10")
>>> images = run.sample(64, alpha=0.5, options=pegasus.SamplingOptions(seed=0))  # uint8 [64, 3, 32, 32]

Sampling to files (pegasus.sample), evaluation (pegasus.evaluate), the demo and the shipped weights
(pegasus.pretrained) all start from a `Run`.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from pegasus.checkpoint import CheckpointError
from pegasus.images import to_uint8
from pegasus.models import VQVAE, VQVAE2
from pegasus.models.pixelcnn import GatedPixelCNN
from pegasus.rundir.layout import DEFAULT_TEMPERATURE, PRIOR_CONFIG, load_prior, load_vqvae, read_sampling_defaults
from pegasus.sampling import SamplingOptions, iter_sample_indices, sample_indices

__all__ = ["Run", "load_run"]


@dataclass
class Run:
    """run_dir, vqvae (eval mode) and prior (eval mode) of a trained run directory, and the
    temperature its samples are drawn at when a call names none (RUN_DIR/sampling.json, else 1.0).
    A two-level run (VQVAE2) also has top_prior: its grids are sampled top first (top_prior), then
    bottom (prior, conditioned on the top grids)."""

    run_dir: Path
    vqvae: VQVAE | VQVAE2
    prior: GatedPixelCNN
    temperature: float = DEFAULT_TEMPERATURE
    top_prior: GatedPixelCNN | None = None

    @property
    def levels(self) -> int:
        """1, or 2 for a two-level run."""
        return 1 if self.top_prior is None else 2

    def temperature_for(self, temperature: float | None) -> float:
        """The temperature a call samples at: the one it names, else the run's."""
        return self.temperature if temperature is None else temperature

    def options_for(self, options: SamplingOptions | None) -> SamplingOptions:
        """`options` (None: the defaults) with the run's temperature where they name none."""
        options = options or SamplingOptions()
        return options.replace(temperature=self.temperature_for(options.temperature))

    def sample_indices(self, n: int, alpha: float = 0.5, *, options: SamplingOptions | None = None,
                       noise: Tensor | None = None) -> Tensor:
        """Code grids Tensor[n, h, w] int64 from the prior of a one-level run (a two-level run's
        grids: `sample_codes`). options: `SamplingOptions` (temperature None: the run's); noise: as
        `pegasus.sample_indices`."""
        if self.levels != 1:
            raise ValueError(f"{self.run_dir} is a two-level run: sample_codes gives its [top, bottom] grids")
        return sample_indices(self.prior, n, alpha, options=self.options_for(options), noise=noise)

    def sample_codes(self, n: int, alpha: float = 0.5, *, options: SamplingOptions | None = None,
                     top: Tensor | None = None, bottom: Tensor | None = None) -> list[Tensor]:
        """The code grids of n samples, one Tensor[n, h_l, w_l] int64 per level (`VQVAE.codes`' order:
        [grid], or [top, bottom] for a two-level run). options as `sample_indices`.

        Two-level runs only: top, Tensor[n, h/2, w/2] or one grid [h/2, w/2] for all: keep these top
        grids (the coarse level: colours and layout, in the CIFAR-10 run) and sample only the bottom
        ones given them; bottom,
        Tensor[n, h, w] or [h, w]: keep these bottom grids and sample new top grids for them. Sample
        i's top grid comes from the seed's noise stream 0, its bottom grid from stream 1
        (`gumbel_noise`), so a kept level leaves the other level's draws as they were."""
        return [torch.cat(level) for level in zip(*self._iter_codes(n, alpha, self.options_for(options), top, bottom))]

    def _iter_codes(self, n: int, alpha: float, options: SamplingOptions, top: Tensor | None,
                    bottom: Tensor | None) -> Iterator[list[Tensor]]:
        """`sample_codes` one batch at a time (options.batch_size): every level's grids per batch.
        Arguments are checked at the call, before the first batch."""
        self._check_level_options(top, bottom)
        if self.levels == 1:
            return ([grids] for grids in iter_sample_indices(self.prior, n, alpha, options=options))
        # The top grids of all n first (h/2 x w/2 codes each: small), then the bottom ones batch by batch.
        tops = self._top_grids(n, alpha, top, options)
        if bottom is not None:
            bottoms = _kept(bottom, n, self.prior.cfg.grid, "bottom").to(tops.device)
            batch = options.batch_size or n
            return ([tops[i : i + batch], bottoms[i : i + batch]] for i in range(0, n, batch))
        return _with_tops(tops, iter_sample_indices(self.prior, n, alpha, options=options, top=tops, stream=1))

    def _check_level_options(self, top: Tensor | None, bottom: Tensor | None) -> None:
        if self.levels == 1:
            if top is not None or bottom is not None:
                raise ValueError(f"{self.run_dir} is a one-level run: top= and bottom= need a two-level run (train-vqvae --levels 2)")
            return
        if top is not None and bottom is not None:
            raise ValueError("keep top= or bottom=, not both: there would be nothing left to sample")

    def _top_grids(self, n: int, alpha: float, top: Tensor | None, options: SamplingOptions) -> Tensor:
        """The n top grids of a two-level sample: the kept ones, else drawn from the top prior."""
        if top is None:
            return sample_indices(self.top_prior, n, alpha, options=options)
        return _kept(top, n, self.top_prior.cfg.grid, "top").to(_device(self.top_prior))

    @torch.no_grad()
    def encode(self, images: Tensor) -> list[Tensor]:
        """uint8 images Tensor[n, 3, H, W] (the run's image size) -> their code grids, one Tensor per
        level (`VQVAE.codes`), e.g. to keep a picture's top grid: `run.sample(8, top=run.encode(x)[0])`."""
        device = _device(self.vqvae)
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images should be uint8 [n, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        return [g.cpu() for g in self.vqvae.codes(images.to(device).float() / 255)]

    @torch.no_grad()
    def decode(self, codes: Tensor | list[Tensor]) -> Tensor:
        """Code grids (a Tensor[n, h, w] of a one-level run, or `sample_codes`' list) -> uint8 images
        Tensor[n, 3, H, W]."""
        device = _device(self.vqvae)
        levels = [codes] if isinstance(codes, Tensor) else list(codes)
        return to_uint8(self.vqvae.decode_codes([g.to(device) for g in levels])).cpu()

    def iter_samples(self, n: int, alpha: float = 0.5, *, options: SamplingOptions | None = None,
                     top: Tensor | None = None, bottom: Tensor | None = None) -> Iterator[Tensor]:
        """`sample` one batch at a time (options.batch_size): uint8 Tensor[b, 3, H, W] per batch,
        in order. Arguments are checked at the call, before the first batch."""
        codes = self._iter_codes(n, alpha, self.options_for(options), top, bottom)
        # a one-level run's grids go to decode as one Tensor, as `decode` documents them
        return (self.decode(c if self.levels == 2 else c[0]) for c in codes)

    def sample(self, n: int, alpha: float = 0.5, *, options: SamplingOptions | None = None,
               top: Tensor | None = None, bottom: Tensor | None = None) -> Tensor:
        """n sampled, decoded images: uint8 Tensor[n, 3, H, W]. options: `SamplingOptions`
        (temperature None: the run's; with batch_size, the noise and decoding go batch by batch,
        only the images are kept whole); top= / bottom= as `sample_codes`, for a two-level run."""
        return torch.cat(list(self.iter_samples(n, alpha, options=options, top=top, bottom=bottom)))

    @torch.no_grad()
    def swap_levels(self, codes: list[Tensor]) -> Tensor:
        """What each level holds, as a picture: for n two-level samples' [top, bottom] grids
        (`sample_codes`), uint8 images Tensor[n, n, 3, H, W] whose cell (r, c) decodes sample r's
        top codes with sample c's bottom codes: a row shares its top codes, a column its bottom
        codes, and the diagonal holds the samples themselves."""
        if self.levels != 2:
            raise ValueError(f"{self.run_dir} is a one-level run: swap_levels needs a two-level run")
        top, bottom = codes
        n = len(top)
        rows = top[:, None].expand(n, n, *top.shape[1:]).flatten(0, 1)
        cols = bottom[None].expand(n, n, *bottom.shape[1:]).flatten(0, 1)
        return self.decode([rows, cols]).view(n, n, 3, *self.image_size)

    @property
    def grids(self) -> list[tuple[int, int]]:
        """The (h, w) of every level's grid, top first."""
        return [p.cfg.grid for p in (self.top_prior, self.prior) if p is not None]

    @property
    def image_size(self) -> tuple[int, int]:
        """The (H, W) of the run's images: its finest grid times the VQ-VAE's downsampling."""
        h, w = self.prior.cfg.grid
        return h * self.vqvae.cfg.downsample, w * self.vqvae.cfg.downsample


def _with_tops(tops: Tensor, bottoms: Iterator[Tensor]) -> Iterator[list[Tensor]]:
    """[top grids, bottom grids] of each batch of `bottoms`, in order."""
    first = 0
    for grids in bottoms:
        yield [tops[first : first + len(grids)], grids]
        first += len(grids)


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _kept(grids: Tensor, n: int, grid: tuple[int, int], name: str) -> Tensor:
    """Grids a caller keeps: Tensor[n, h, w] or one [h, w] for all n, int64 -> Tensor[n, h, w]."""
    if not isinstance(grids, Tensor) or grids.dtype != torch.int64 or tuple(grids.shape[-2:]) != tuple(grid) or grids.dim() not in (2, 3):
        got = f"{grids.dtype} {list(grids.shape)}" if isinstance(grids, Tensor) else type(grids).__name__
        raise ValueError(f"{name} should be int64 code grids [n, {grid[0]}, {grid[1]}] or one [{grid[0]}, {grid[1]}], got {got}")
    if grids.dim() == 2:
        return grids.expand(n, *grid)
    if len(grids) != n:
        raise ValueError(f"{name} holds {len(grids)} grids for n={n} samples")
    return grids


def load_run(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> Run:
    """The VQ-VAE and the prior of RUN_DIR (the top prior too, RUN_DIR/top/, for a two-level run),
    and its default temperature (`read_sampling_defaults`). A missing file raises CheckpointError
    naming it and the command that makes it."""
    run_dir = Path(run_dir)
    vqvae, prior = load_vqvae(run_dir, device), load_prior(run_dir, device)
    if prior.cfg.codes != vqvae.cfg.codes:
        raise CheckpointError(
            f"{run_dir}: the prior models {prior.cfg.codes} codes ({PRIOR_CONFIG}) but the VQ-VAE has "
            f"{vqvae.cfg.codes} codes (config.json): they come from different runs"
        )
    top_prior = None
    if vqvae.cfg.levels == 2:
        top_prior = load_prior(run_dir, device, "top")
        if not prior.cfg.top_codes or top_prior.cfg.top_codes or top_prior.cfg.codes != vqvae.cfg.codes:
            raise CheckpointError(
                f"{run_dir}: a two-level VQ-VAE needs a bottom prior conditioned on the top grids ({PRIOR_CONFIG}, "
                f"train-prior) and a top prior (top/{PRIOR_CONFIG}, train-prior --level top) of its {vqvae.cfg.codes} codes"
            )
        if tuple(2 * g for g in top_prior.cfg.grid) != tuple(prior.cfg.grid):
            raise CheckpointError(f"{run_dir}: the top prior's grid {list(top_prior.cfg.grid)} is not half the bottom prior's {list(prior.cfg.grid)}")
    elif prior.cfg.top_codes:
        raise CheckpointError(f"{run_dir}: {PRIOR_CONFIG} is a bottom prior (conditioned on top grids) but the VQ-VAE has one level")
    return Run(run_dir, vqvae, prior, top_prior=top_prior, **read_sampling_defaults(run_dir))
