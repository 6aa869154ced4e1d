"""The "cached" sampler: the same grids as the reference with the same Gumbel noise, its logits
against a full recompute when the tokens are forced, and the reference's errors."""
import math

import pytest
import torch

from pegasus import GatedPixelCNN
from pegasus.cached_sampling import cached_logits
from pegasus.sampling import gumbel_noise, sample_indices


def random_prior(codes: int, layers: int, kernel: int, conditional: bool, dtype: torch.dtype, seed: int = 0) -> GatedPixelCNN:
    """A random prior whose biases are random too (nn.Conv2d's default init leaves them small but
    nonzero; randomising them makes a wrongly placed bias or padding visible in the logits)."""
    torch.manual_seed(seed)
    prior = GatedPixelCNN(codes=codes, channels=6, layers=layers, kernel=kernel, conditional=conditional)
    with torch.no_grad():
        for p in prior.parameters():
            p.normal_(0, 0.5)
    return prior.to(dtype).eval()


def both(prior, n, noise, **kwargs):
    ref = sample_indices(prior, n, noise=noise, backend="reference", **kwargs)
    return ref, sample_indices(prior, n, noise=noise, backend="cached", **kwargs)


@pytest.mark.parametrize(
    "kernel, layers, grid, conditional",
    [
        (3, 1, (8, 8), True),
        (3, 2, (5, 7), False),
        (3, 4, (8, 8), True),
        (5, 1, (5, 7), True),
        (5, 3, (8, 8), False),
        (5, 4, (5, 7), True),
        (5, 2, (3, 1), True),  # narrower than the kernel: every column is padding-adjacent
    ],
)
def test_same_grids_as_reference_float64(kernel, layers, grid, conditional):
    prior = random_prior(13, layers, kernel, conditional, torch.float64, seed=layers * 10 + kernel)
    for seed in range(3):
        noise = gumbel_noise(3, grid, 13, seed=seed, dtype=torch.float64)
        ref, cached = both(prior, 3, noise, alpha=0.25 * seed + 0.2, temperature=0.8)
        assert torch.equal(ref, cached), (seed, ref, cached)


@pytest.mark.parametrize("n, codes, top_k", [(1, 13, None), (2, 1, None), (3, 13, 3), (2, 13, 1)])
def test_batch_one_one_code_and_top_k_float64(n, codes, top_k):
    prior = random_prior(codes, 3, 3, True, torch.float64)
    noise = gumbel_noise(n, (5, 7), codes, seed=1, dtype=torch.float64) * 5  # noise that often beats the logits
    ref, cached = both(prior, n, noise, alpha=0.6, top_k=top_k)
    assert torch.equal(ref, cached)
    if codes == 1:
        assert (cached == 0).all()


@pytest.mark.parametrize("kernel, layers, conditional", [(3, 2, True), (5, 4, False), (5, 8, True)])
def test_forced_logits_and_grids_float32(kernel, layers, conditional):
    prior = random_prior(17, layers, kernel, conditional, torch.float32)
    for seed, grid in enumerate([(8, 8), (5, 7)]):
        alpha = torch.full((4,), 0.4)
        tokens = torch.randint(0, 17, (4, *grid), generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            full = prior(tokens, alpha)
        torch.testing.assert_close(cached_logits(prior, tokens, alpha), full, atol=1e-4, rtol=0)
        ref, cached = both(prior, 4, gumbel_noise(4, grid, 17, seed=seed), alpha=0.4)
        assert torch.equal(ref, cached)


def test_cached_logits_rejects_bad_grids():
    prior = random_prior(5, 1, 3, True, torch.float32)
    with pytest.raises(ValueError, match=r"grid should be int64 code grids \[B, H, W\], got torch.float32 \(2, 3\)"):
        cached_logits(prior, torch.zeros(2, 3), torch.zeros(2))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alpha": -0.1},
        {"alpha": 1.5},
        {"n": 0},
        {"temperature": 0.0},
        {"temperature": math.nan},
        {"top_k": 0},
        {"noise": torch.zeros(2, 3, 4, 10)},
        {"noise": torch.zeros(2, 3, 4, 11, dtype=torch.int64)},
    ],
)
def test_bad_input_same_errors_as_reference(kwargs):
    prior = random_prior(11, 2, 3, True, torch.float32)
    errors = []
    for backend in ("reference", "cached"):
        with pytest.raises(ValueError) as info:
            sample_indices(prior, **{"n": 2, **kwargs, "backend": backend})
        errors.append(str(info.value))
    assert errors[0] == errors[1]
