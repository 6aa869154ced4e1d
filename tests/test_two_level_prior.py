"""The bottom prior of a two-level model (GatedPixelCNN with top_codes): conditioned on alpha and on
the whole top grid through a stack added into every gated layer, and sampled by every backend with
that conditioning as one more input of the step ops and of the C++ loop (`cond_map`), computed once
before the loop. Same rule as one level: identical grids for the same noise, in float64, against
the naive sampler (the whole prior rerun at every position)."""
import pytest
import torch

from pegasus import GatedPixelCNN, ops, reference
from pegasus.models.pixelcnn import PixelCNNConfig
from pegasus.sampling import gumbel_noise

from .conftest import needs_ext, random_prior
from .test_sample_loop import HAS_TRITON, LOOP_BACKENDS, needs_triton
from tests._sampling import draw

TOP = 7  # top codebook size of the tests' priors


def bottom_prior(layers=3, kernel=3, conditional=True, dtype=torch.float64, seed=0, codes=11):
    return random_prior(codes, layers, kernel, conditional, dtype, seed=seed, top_codes=TOP)


def top_grids(n, grid, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, TOP, (n, grid[0] // 2, grid[1] // 2), generator=g)


def test_config_round_trip_and_old_configs():
    assert "top_codes" not in PixelCNNConfig().to_dict()  # one-level runs' stamps stay as they were
    cfg = PixelCNNConfig(top_codes=5, grid=(6, 4))
    assert PixelCNNConfig(**cfg.to_dict()) == cfg and cfg.top_grid == (3, 2)
    with pytest.raises(ValueError, match="top_codes should be >= 0"):
        PixelCNNConfig(top_codes=-1)


def test_causal_in_the_bottom_grid_and_reads_the_whole_top_grid():
    prior = bottom_prior(layers=2)
    grid = torch.randint(0, 11, (1, 6, 6))
    top = top_grids(1, (6, 6))
    emb = prior.embed(grid).detach().requires_grad_(True)
    logits = prior.forward_embedded(emb, torch.tensor([0.3], dtype=torch.float64), top)
    logits[0, :, 2, 3].sum().backward()
    seen = emb.grad[0].abs().sum(0) > 0
    later = torch.zeros(6, 6, dtype=torch.bool)
    later.view(-1)[2 * 6 + 3 :] = True
    assert not seen[later].any()  # nothing at or after (2, 3) in raster order
    # every top code counts somewhere: changing one far corner of the top grid moves the logits
    other = top.clone()
    other[0, -1, -1] = (other[0, -1, -1] + 1) % TOP
    a = torch.tensor([0.3], dtype=torch.float64)
    assert not torch.allclose(prior(grid, a, top)[0, :, 5, 5], prior(grid, a, other)[0, :, 5, 5])


@pytest.mark.parametrize(
    "kernel, layers, grid, conditional",
    [(3, 1, (4, 4), True), (3, 3, (6, 8), False), (5, 2, (8, 6), True), (5, 4, (2, 2), True)],
)
def test_reference_same_grids_as_naive_float64(kernel, layers, grid, conditional):
    prior = bottom_prior(layers, kernel, conditional, seed=layers * 10 + kernel)
    for seed in range(2):
        noise = gumbel_noise(3, grid, 11, seed=seed, dtype=torch.float64)
        top = top_grids(3, grid, seed)
        kw = dict(noise=noise, alpha=0.3 + 0.4 * seed, temperature=0.9, top=top)
        naive = draw(prior, 3, sampler="naive", **kw)
        assert torch.equal(naive, draw(prior, 3, sampler="reference", **kw)), seed
        # the top grid matters: another one gives another bottom grid for the same noise
        other = draw(prior, 3, sampler="reference", **{**kw, "top": (top + 1) % TOP})
        assert not torch.equal(naive, other)


@needs_ext
@pytest.mark.parametrize("backend", LOOP_BACKENDS)
@pytest.mark.parametrize("kernel, layers, grid, n", [(3, 2, (4, 6), 3), (5, 3, (6, 6), 1)])
def test_fast_loops_same_grids_as_naive_float64(backend, kernel, layers, grid, n):
    prior = bottom_prior(layers, kernel, seed=kernel + layers)
    noise = gumbel_noise(n, grid, 11, seed=4, dtype=torch.float64)
    kw = dict(noise=noise, alpha=0.7, temperature=0.8, top=top_grids(n, grid, 4))
    naive = draw(prior, n, sampler="naive", **kw)
    assert torch.equal(naive, draw(prior, n, sampler=backend, **kw))


@needs_ext
def test_cpu_row_step_matches_reference_with_cond_map_float32():
    prior = bottom_prior(layers=3, kernel=5, dtype=torch.float32, seed=3)
    batch, (height, width) = 3, (6, 4)
    weights = prior.pack_for_sampling()
    cond = prior.sampling_conditioning(torch.tensor([0.1, 0.5, 0.9]))
    cond_map = prior.sampling_conditioning_map(top_grids(batch, (height, width)), batch)
    assert cond_map.shape == (3, batch, height, width, 12)
    ref = reference.new_sampling_state(weights, batch, height, width)
    ref[0].normal_()
    cpu = [t.clone() for t in ref]
    for row in range(height):
        reference.sample_row(ref[0], ref[2], weights, cond, row, cond_map)
        torch.ops.pegasus.sample_row(cpu[0], cpu[2], weights, cond, row, cond_map)
        torch.testing.assert_close(cpu[0], ref[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cpu[2], ref[2], atol=1e-5, rtol=1e-5)


@needs_ext
def test_opcheck_with_cond_map():
    prior = bottom_prior(layers=2, dtype=torch.float32)
    weights = prior.pack_for_sampling()
    cond = prior.sampling_conditioning(torch.tensor([0.2, 0.6]))
    cond_map = prior.sampling_conditioning_map(top_grids(2, (4, 4)), 2)
    noise = gumbel_noise(2, (4, 4), 11, seed=0)
    v_state, _, v2h_row = reference.new_sampling_state(weights, 2, 4, 4)
    torch.library.opcheck(torch.ops.pegasus.sample_row.default, (v_state, v2h_row, weights, cond, 1, cond_map))
    torch.library.opcheck(torch.ops.pegasus.sample_loop.default, (weights, cond, noise, 1.0, 0, True, cond_map))


@needs_ext
@pytest.mark.parametrize("backend", ["reference"] + LOOP_BACKENDS)
def test_bad_cond_map_is_refused_naming_it(backend):
    prior = bottom_prior(layers=2, dtype=torch.float32)
    weights = prior.pack_for_sampling()
    cond = prior.sampling_conditioning(torch.tensor([0.2, 0.6]))
    noise = gumbel_noise(2, (4, 4), 11, seed=0)
    good = prior.sampling_conditioning_map(top_grids(2, (4, 4)), 2)
    for bad in (good[:, :1], good[..., :3, :], good.double()):
        with pytest.raises(ValueError, match="cond_map should be"):
            ops.sample_loop(weights, cond, noise, 1.0, 0, cond_map=bad, backend=backend)
    with pytest.raises(RuntimeError, match="cond_map should be"):
        torch.ops.pegasus.sample_loop(weights, cond, noise, 1.0, 0, False, good[:, :, :3])
    v_state, _, v2h_row = reference.new_sampling_state(weights, 2, 4, 4)
    with pytest.raises(RuntimeError, match=r"cond_map should be \[L, B, H, W, 2C\] with H > row 2"):
        torch.ops.pegasus.sample_row(v_state, v2h_row, weights, cond, 2, good[:, :, :2].contiguous())


@needs_triton
def test_triton_row_step_matches_reference_with_cond_map():
    from pegasus.kernels import sample_step

    prior = bottom_prior(layers=2, kernel=3, dtype=torch.float64, seed=5)
    weights = prior.pack_for_sampling()
    cond = prior.sampling_conditioning(torch.tensor([0.2, 0.8], dtype=torch.float64))
    cond_map = prior.sampling_conditioning_map(top_grids(2, (4, 6)), 2)
    ref = reference.new_sampling_state(weights, 2, 4, 6)
    ref[0].normal_()
    tri = [t.clone() for t in ref]
    for row in range(4):
        reference.sample_row(ref[0], ref[2], weights, cond, row, cond_map)
        sample_step.sample_row(tri[0], tri[2], weights, cond, row, cond_map)
        torch.testing.assert_close(tri[0], ref[0], atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(tri[2], ref[2], atol=1e-12, rtol=1e-12)


def test_top_is_checked_before_sampling():
    bottom, one = bottom_prior(layers=1), random_prior(11, 1, 3, True, torch.float64)
    cases = [
        (bottom, None, "it needs the top grids"),
        (bottom, torch.zeros(2, 3, 2, dtype=torch.int64), r"top should be int64 code grids \[2, 2, 2\]"),
        (bottom, torch.zeros(2, 2, 2), r"top should be int64"),
        (bottom, torch.full((2, 2, 2), TOP), r"top should hold codes in 0..6"),
        (one, torch.zeros(2, 2, 2, dtype=torch.int64), "not conditioned on top codes"),
    ]
    for prior, top, message in cases:
        with pytest.raises(ValueError, match=message):
            draw(prior, 2, noise=gumbel_noise(2, (4, 4), 11, seed=0, dtype=torch.float64), top=top)
    with pytest.raises(ValueError, match="even height and width"):
        draw(bottom, 1, noise=gumbel_noise(1, (3, 4), 11, seed=0, dtype=torch.float64), top=torch.zeros(1, 1, 2, dtype=torch.int64))


def test_noise_streams_are_independent():
    a = gumbel_noise(2, (2, 2), 5, seed=3)
    assert torch.equal(a, gumbel_noise(2, (2, 2), 5, seed=3, stream=0))
    b = gumbel_noise(2, (2, 2), 5, seed=3, stream=1)
    assert not torch.isclose(a, b).any()
    assert torch.equal(b[1:], gumbel_noise(1, (2, 2), 5, seed=3, first=1, stream=1))


def test_memory_estimate_counts_the_conditioning(monkeypatch):
    from pegasus import sampling

    monkeypatch.setattr(sampling, "_available_ram", lambda: 10 * 2**20)
    with pytest.raises(MemoryError, match="noise \\(8x8 positions x 6144 bytes each\\).*at most 26 fit now"):
        sampling.check_fits(64, (8, 8), 512, torch.device("cpu"))
    with pytest.raises(MemoryError, match="noise and conditioning .*10240 bytes each.*at most 16 fit now"):
        sampling.check_fits(64, (8, 8), 512, torch.device("cpu"), cond_map_values=8 * 128)
