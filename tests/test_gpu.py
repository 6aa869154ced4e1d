"""The Triton kernels on a real GPU against the references (skipped without CUDA; CI has none, so
these run on a lent GPU machine: see docs/development.md)."""
import pytest
import torch

from pegasus import GatedPixelCNN, backends, ops, reference
from pegasus.ops import nearest_code
from pegasus.sampling import gumbel_noise

from .conftest import random_prior
from tests._sampling import draw

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _no_tf32():
    # cuDNN convolutions default to TF32 (10-bit mantissa): the reference's own float32 logits
    # were 1.2e-4 off on an H200. The kernels use IEEE float32 throughout.
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("n, k, d", [(1, 1, 1), (7, 3, 65), (4099, 513, 64), (36864, 512, 64), (1000, 1024, 256)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nearest_code_triton_matches_reference(n, k, d, dtype):
    g = torch.Generator().manual_seed(n + k + d)
    z = torch.randn(n, d, generator=g, dtype=dtype).to(CUDA)
    codebook = torch.randn(k, d, generator=g, dtype=dtype).to(CUDA)
    idx, dist = nearest_code(z, codebook, backend="triton")
    ref_idx, ref_dist = reference.nearest_code(z, codebook)
    torch.testing.assert_close(dist, ref_dist, rtol=1e-4, atol=1e-4)
    differ = idx != ref_idx
    if differ.any():  # only near-ties may pick another code: its distance must equal the minimum
        chosen = (z[differ] - codebook[idx[differ]]).pow(2).sum(1)
        torch.testing.assert_close(chosen, ref_dist[differ], rtol=1e-4, atol=1e-4)
        assert differ.float().mean() < 1e-3


def test_triton_is_the_default_on_cuda():
    assert backends.resolve(backends.NEAREST_CODE, None, CUDA) == "triton"
    param = next(random_prior(5, 1, 3, True, torch.float32).to(CUDA).parameters())
    assert backends.resolve(backends.SAMPLER, None, param.device, param.dtype) == "triton"


@pytest.mark.parametrize(
    "kernel, layers, grid, conditional", [(3, 1, (8, 8), True), (3, 4, (5, 7), False), (5, 3, (8, 8), True), (5, 2, (3, 1), False)]
)
def test_triton_sampler_same_grids_float64(kernel, layers, grid, conditional):
    prior = random_prior(13, layers, kernel, conditional, torch.float64, seed=layers + kernel).to(CUDA)
    for seed in range(2):
        noise = gumbel_noise(3, grid, 13, seed=seed, dtype=torch.float64, device=CUDA)
        kwargs = {"alpha": 0.4, "temperature": 0.8, "noise": noise}
        ref = draw(prior, 3, sampler="naive", **kwargs)
        assert torch.equal(draw(prior, 3, sampler="triton", **kwargs), ref)


@pytest.mark.parametrize("grid, batch", [((8, 8), 16), ((24, 24), 2)])
def test_triton_sampler_default_prior_float32(grid, batch):
    """The trained configuration (64 channels, 8 layers, kernel 5, 512 codes): every position's
    logits against a full pass over the sampled grid, and the grids against the naive sampler's."""
    torch.manual_seed(0)
    prior = GatedPixelCNN().to(CUDA).eval()
    noise = gumbel_noise(batch, grid, 512, seed=1, device=CUDA)
    alpha = torch.full((batch,), 0.5, device=CUDA)
    weights = prior.pack_for_sampling()
    out, logits = ops.sample_loop(weights, prior.sampling_conditioning(alpha), noise, 1.0, 0, True, backend="triton")
    with torch.no_grad():
        full = prior(out, alpha).permute(0, 2, 3, 1)
    torch.testing.assert_close(logits, full, atol=1e-4, rtol=0)
    assert torch.equal(out, draw(prior, batch, noise=noise, sampler="naive"))


def test_triton_sampler_top_k():
    prior = random_prior(13, 2, 5, True, torch.float32, seed=4).to(CUDA)
    noise = gumbel_noise(4, (5, 6), 13, seed=2, device=CUDA) * 3
    ref = draw(prior, 4, top_k=3, noise=noise, sampler="naive")
    assert torch.equal(draw(prior, 4, top_k=3, noise=noise, sampler="triton"), ref)


@pytest.mark.parametrize("kernel, layers, grid", [(3, 2, (4, 6)), (5, 3, (8, 8))])
def test_triton_bottom_prior_same_grids_float64(kernel, layers, grid):
    """The bottom prior of a two-level model: its top grid's conditioning (cond_map) through the
    Triton row kernel, against the naive sampler."""
    prior = random_prior(13, layers, kernel, True, torch.float64, seed=kernel, top_codes=7).to(CUDA)
    top = torch.randint(0, 7, (3, grid[0] // 2, grid[1] // 2), generator=torch.Generator().manual_seed(1)).to(CUDA)
    noise = gumbel_noise(3, grid, 13, seed=5, dtype=torch.float64, device=CUDA)
    kwargs = {"alpha": 0.6, "temperature": 0.9, "noise": noise, "top": top}
    assert torch.equal(draw(prior, 3, sampler="triton", **kwargs), draw(prior, 3, sampler="naive", **kwargs))
