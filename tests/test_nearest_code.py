"""pegasus::nearest_code: every backend against the pure-PyTorch reference."""
import pytest
import torch

from pegasus import _extension, reference
from pegasus.ops import nearest_code

from .conftest import needs_ext

BACKENDS = ["reference"] + (["cpu"] if _extension.has_cpp_ops() else [])
# (N, K, D): K=1, K=513, D=1 and 3, N not a multiple of any block size.
SHAPES = [(1, 1, 1), (7, 3, 3), (1000, 513, 65), (4099, 512, 64), (33, 1, 8)]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def sample_inputs(n, k, d, dtype, contiguous, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    codebook = torch.randn(k, d, generator=g, dtype=torch.float64)
    z, codebook = z.to(dtype), codebook.to(dtype)
    if not contiguous:
        z = z.t().contiguous().t()
        codebook = torch.cat([codebook, codebook], 1)[:, ::2]
        assert not z.is_contiguous() or d == 1 or n == 1
    return z, codebook


def assert_nearest(z, codebook, indices, min_sq_dist, rtol=1e-5):
    """Indices equal the float64 direct-difference argmin, except on near-ties, where the chosen
    code's distance must equal the minimum within rtol."""
    exact = torch.cdist(z.double(), codebook.double(), compute_mode="donot_use_mm_for_euclid_dist") ** 2
    best = exact.min(1).values
    chosen = exact.gather(1, indices[:, None]).squeeze(1)
    torch.testing.assert_close(chosen, best, rtol=rtol, atol=1e-6)
    torch.testing.assert_close(min_sq_dist.double(), chosen, rtol=max(rtol, 1e-2 if z.dtype in (torch.half, torch.bfloat16) else rtol), atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("contiguous", [True, False])
def test_matches_reference(backend, shape, dtype, contiguous):
    z, codebook = sample_inputs(*shape, dtype, contiguous)
    indices, min_sq_dist = nearest_code(z, codebook, backend=backend)
    assert indices.dtype == torch.int64 and indices.shape == (shape[0],)
    assert min_sq_dist.dtype == dtype and min_sq_dist.shape == (shape[0],)
    ref_idx, _ = reference.nearest_code(z, codebook)
    differ = indices != ref_idx
    # Where the two disagree, both must be (near-)nearest: compare against exact float64 distances.
    rtol = 1e-5 if dtype in (torch.float32, torch.float64) else 1e-2
    assert_nearest(z.float(), codebook.float(), indices, min_sq_dist, rtol=rtol)
    if differ.any():
        assert_nearest(z[differ].float(), codebook.float(), ref_idx[differ], min_sq_dist[differ], rtol=rtol)


@needs_ext
@pytest.mark.parametrize("shape", SHAPES[:3], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("contiguous", [True, False])
def test_opcheck(shape, dtype, contiguous):
    z, codebook = sample_inputs(*shape, dtype, contiguous)
    torch.library.opcheck(torch.ops.pegasus.nearest_code.default, (z, codebook))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_go_to_lowest_index(backend):
    codebook = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    z = torch.tensor([[0.5, 0.5], [1.0, 0.0]])  # equidistant from all / codes 0 and 2 identical
    indices, _ = nearest_code(z, codebook, backend=backend)
    assert indices.tolist() == [0, 0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_input(backend):
    indices, min_sq_dist = nearest_code(torch.zeros(0, 4), torch.randn(5, 4), backend=backend)
    assert indices.shape == (0,) and min_sq_dist.shape == (0,)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_rows_get_index_zero_and_nan_distance(backend):
    z = torch.tensor([[float("nan"), 0.0], [2.0, 2.0]])
    codebook = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    indices, min_sq_dist = nearest_code(z, codebook, backend=backend)
    assert indices.tolist() == [0, 1]
    assert torch.isnan(min_sq_dist[0]) and min_sq_dist[1] == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "z, codebook, message",
    [
        (torch.zeros(4, 3), torch.zeros(0, 3), r"codebook is empty \(K=0\)"),
        (torch.zeros(4, 3), torch.zeros(5, 2), r"z is \(4, 3\) and codebook is \(5, 2\): D differs"),
        (torch.zeros(4, 3, dtype=torch.int64), torch.zeros(5, 3, dtype=torch.int64), "one floating dtype, got torch.int64"),
        (torch.zeros(4, 3), torch.zeros(5, 3, dtype=torch.float64), "got torch.float32 and torch.float64"),
        (torch.zeros(2, 4, 3), torch.zeros(5, 3), r"z should be a 2-D tensor \[N, D\], got shape \(2, 4, 3\)"),
        (torch.zeros(4, 3), torch.zeros(5), r"codebook should be a 2-D tensor \[K, D\], got shape \(5,\)"),
        (torch.zeros(4, 3), torch.zeros(5, 3, device="meta"), "z is on cpu but codebook is on meta"),
    ],
)
def test_bad_input(backend, z, codebook, message):
    with pytest.raises(ValueError, match=message):
        nearest_code(z, codebook, backend=backend)


@needs_ext
def test_cpp_kernel_checks_its_own_inputs():
    # Called through the dispatcher directly, the C++ kernel still refuses bad shapes.
    with pytest.raises(RuntimeError, match="z has D=3 but codebook has D=2"):
        torch.ops.pegasus.nearest_code(torch.zeros(4, 3), torch.zeros(5, 2))
    with pytest.raises(RuntimeError, match=r"codebook is empty \(K=0\)"):
        torch.ops.pegasus.nearest_code(torch.zeros(4, 3), torch.zeros(0, 3))
