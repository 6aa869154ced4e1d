"""Sampling (the default backend): Gumbel-max with explicit noise, top-k, temperature, bad input."""
import math

import pytest
import torch

import pegasus
from pegasus import GatedPixelCNN
from pegasus.reference import choose_codes
from pegasus.sampling import gumbel_noise
from tests._sampling import draw


@pytest.fixture(scope="module")
def prior():
    torch.manual_seed(0)
    return GatedPixelCNN(codes=11, channels=8, layers=2, kernel=3, grid=(3, 4)).eval()


def teacher_forced_logits(prior, grid, alpha):
    """Logits Tensor[B, H, W, K] of the final grid: by causality, those the sampler saw."""
    with torch.no_grad():
        return prior(grid, torch.full((len(grid),), alpha)).permute(0, 2, 3, 1)


def test_same_noise_same_grid_and_gumbel_max(prior):
    noise = gumbel_noise(5, (3, 4), 11, seed=3)
    a = draw(prior, 5, alpha=0.3, temperature=0.7, noise=noise)
    b = draw(prior, 5, alpha=0.3, temperature=0.7, noise=noise.clone())
    assert a.shape == (5, 3, 4) and a.dtype == torch.int64 and torch.equal(a, b)
    # Every code is the Gumbel-max choice of the logits at its position.
    expected = (teacher_forced_logits(prior, a, 0.3) / 0.7 + noise).argmax(-1)
    assert torch.equal(a, expected)
    # The seed path draws exactly gumbel_noise(seed); other seeds give other grids.
    assert torch.equal(draw(prior, 5, alpha=0.3, temperature=0.7, seed=3), a)
    assert not torch.equal(draw(prior, 5, alpha=0.3, temperature=0.7, seed=4), a)


def test_noise_that_makes_one_code_win(prior):
    noise = torch.zeros(2, 3, 4, 11)
    noise[..., 7] = 1e4
    assert (draw(prior, 2, noise=noise) == 7).all()
    noise[1, 2, 3] = 0
    noise[1, 2, 3, 2] = 1e4  # one position of one sample picks code 2
    grid = draw(prior, 2, noise=noise)
    assert grid[1, 2, 3] == 2 and (grid.flatten()[:-1] == 7).all()


def test_top_k(prior):
    noise = gumbel_noise(4, (3, 4), 11, seed=0) * 50  # noise that would pick almost any code
    grid = draw(prior, 4, alpha=0.8, top_k=3, noise=noise)
    logits = teacher_forced_logits(prior, grid, 0.8)
    top3 = logits.topk(3, dim=-1).indices
    assert (top3 == grid[..., None]).any(-1).all()
    assert not (logits.topk(3, dim=-1).indices == draw(prior, 4, alpha=0.8, noise=noise)[..., None]).any(-1).all()
    # top_k=1 is greedy decoding: every code is the argmax of its logits, whatever the noise.
    greedy = draw(prior, 4, alpha=0.8, top_k=1, noise=noise)
    assert torch.equal(greedy, teacher_forced_logits(prior, greedy, 0.8).argmax(-1))
    assert torch.equal(choose_codes(torch.tensor([[1.0, 3.0, 2.0]]), torch.tensor([[9.0, 0.0, 5.0]]), 1.0, 2), torch.tensor([2]))
    # top_k <= 0 means every code: the noise wins here.
    assert torch.equal(choose_codes(torch.tensor([[1.0, 3.0, 2.0]]), torch.tensor([[9.0, 0.0, 5.0]]), 1.0, 0), torch.tensor([0]))


def test_gumbel_noise_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(1)
    expected = torch.rand(2)
    torch.manual_seed(1)
    g = gumbel_noise(3, (2, 2), 5, seed=9)
    assert torch.equal(torch.rand(2), expected)
    assert torch.equal(g, gumbel_noise(3, (2, 2), 5, seed=9)) and torch.isfinite(g).all()
    assert abs(float(gumbel_noise(64, (8, 8), 64, seed=0).mean()) - 0.5772) < 0.01  # Euler-Mascheroni


def test_other_grid_sizes_from_noise(prior):
    assert draw(prior, 2, noise=gumbel_noise(2, (5, 2), 11, seed=0)).shape == (2, 5, 2)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"alpha": -0.1}, ValueError, r"alpha should be in \[0, 1\], got -0.1"),
        ({"alpha": 1.5}, ValueError, r"alpha should be in \[0, 1\], got 1.5"),
        ({"n": 0}, ValueError, "n should be an integer >= 1, got 0"),
        ({"temperature": 0.0}, ValueError, "temperature should be a finite number > 0, got 0.0"),
        ({"temperature": math.nan}, ValueError, "temperature should be a finite number > 0, got nan"),
        ({"top_k": 0}, ValueError, "top_k should be an integer >= 1 or None, got 0"),
        ({"noise": torch.zeros(2, 3, 4, 10)}, ValueError, r"noise should be Gumbel noise \[n=2, H, W, K=11\], got \(2, 3, 4, 10\)"),
        ({"noise": torch.zeros(2, 3, 4, 11, dtype=torch.int64)}, ValueError, "noise should be a floating-point tensor, got torch.int64"),
        ({"noise": torch.zeros(2, 3, 4)}, ValueError, r"noise should be Gumbel noise \[n=2, H, W, K=11\], got \(2, 3, 4\)"),
        ({"backend": "fast"}, ValueError, r"backend should be one of reference, cpu, triton \(sampler backends\), got 'fast'"),
    ],
)
def test_bad_input(prior, kwargs, error, match):
    with pytest.raises(error, match=match):
        draw(prior, **{"n": 2, **kwargs})


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"temperature": -1.0}, "temperature should be a finite number > 0, got -1.0"),
        ({"temperature": True}, "temperature should be a finite number > 0, got True"),
        ({"top_k": 2.0}, "top_k should be an integer >= 1 or None, got 2.0"),
        ({"seed": -1}, "seed should be an integer >= 0, got -1"),
        ({"method": "fast"}, "method should be one of cached, naive, got 'fast'"),
        ({"backend": "naive"}, r"backend 'naive' is a sampling method, not a kernel backend: SamplingOptions\(method='naive'\)"),
        ({"method": "naive", "backend": "cpu"}, "backend='cpu' picks the step ops of the cached method; method 'naive' runs none"),
        ({"batch_size": 0}, "batch_size should be an integer >= 1 or None, got 0"),
    ],
)
def test_options_are_checked_when_made(fields, match):
    with pytest.raises(ValueError, match=match):
        pegasus.SamplingOptions(**fields)
    with pytest.raises(ValueError, match=match):
        pegasus.SamplingOptions().replace(**fields)


def test_options_are_one_keyword_after_alpha(prior):
    """The public call: options by keyword only; the methods agree for the same options."""
    options = pegasus.SamplingOptions(temperature=0.7, top_k=4, seed=3)
    with pytest.raises(TypeError):
        pegasus.sample_indices(prior, 2, 0.5, options)
    cached = pegasus.sample_indices(prior, 2, 0.5, options=options)
    assert torch.equal(cached, pegasus.sample_indices(prior, 2, 0.5, options=options.replace(method="naive")))
    assert torch.equal(cached, pegasus.sample_indices(prior, 2, 0.5, options=options.replace(batch_size=1)))
