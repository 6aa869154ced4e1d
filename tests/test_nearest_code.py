"""pegasus::nearest_code: every backend against the pure-PyTorch reference.

The "triton" backend runs here on CPU tensors in Triton's interpreter, only when TRITON_INTERPRET=1
(CI sets it; `TRITON_INTERPRET=1 pytest tests/test_nearest_code.py` locally), on small shapes: the
interpreter takes ~20 ms per program and code tile.
"""
import itertools

import pytest
import torch

from pegasus import _extension, backends, reference
from pegasus.ops import nearest_code

from .conftest import needs_ext

HAS_TRITON = backends.unavailable(backends.NEAREST_CODE, "triton", "cpu") is None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="needs triton and TRITON_INTERPRET=1 (CI sets it)")
BACKENDS = ["reference"] + (["cpu"] if _extension.has_cpp_ops() else []) + (["triton"] if HAS_TRITON else [])

# Odd shapes (N, K, D): N in 1, 7, 1000, 4099; K in 1, 3, 512, 513; D in 1, 3, 64, 65. The full
# cross product for the small N, a spread of the large ones (the whole product took ~3 minutes).
SMALL_N = list(itertools.product([1, 7], [1, 3, 512, 513], [1, 3, 64, 65]))
LARGE_N = [(1000, 513, 65), (1000, 1, 3), (1000, 512, 1), (4099, 512, 64), (4099, 3, 65), (4099, 513, 3)]
TRITON_SHAPES = [(1, 1, 1), (7, 3, 3), (70, 65, 17), (33, 130, 64)]  # > 1 block of rows and codes
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def make_inputs(n, k, d, dtype, contiguous, offset=0.0, seed=0):
    """z: Tensor[n, d], codebook: Tensor[k, d] of `dtype`, N(offset, 1) entries drawn in float64."""
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, d, generator=g, dtype=torch.float64) + offset).to(dtype)
    codebook = (torch.randn(k, d, generator=g, dtype=torch.float64) + offset).to(dtype)
    if not contiguous:
        z = z.t().contiguous().t()
        codebook = torch.cat([codebook, codebook], 1)[:, ::2]
        assert not codebook.is_contiguous() or d == 1
    return z, codebook


def exact_sq_dist(z, codebook):
    """Tensor[N, K] of float64 squared direct differences of the inputs as given (no cancellation)."""
    return torch.cdist(z.double(), codebook.double(), compute_mode="donot_use_mm_for_euclid_dist") ** 2


def assert_nearest(z, codebook, indices, min_sq_dist, expected, rtol=1e-5):
    """`indices` equal `expected` except on near-ties, where the two smallest exact distances differ
    by less than `rtol` of the scale the expanded form cancels from (||z - mean||^2 + the code's);
    there the chosen code's exact distance must equal the minimum within that tolerance. The
    returned distance must be the chosen code's exact distance, within float32 rounding (or the
    output dtype's, for half/bfloat16)."""
    assert indices.dtype == torch.int64 and indices.shape == (z.shape[0],)
    assert min_sq_dist.dtype == z.dtype and min_sq_dist.shape == (z.shape[0],)
    if z.shape[0] == 0:
        return
    exact = exact_sq_dist(z, codebook)
    mean = codebook.double().mean(0)
    scale = (z.double() - mean).pow(2).sum(1) + (codebook.double() - mean).pow(2).sum(1).max()
    two = exact.topk(min(2, exact.shape[1]), dim=1, largest=False).values
    gap = two[:, -1] - two[:, 0] if exact.shape[1] > 1 else torch.full_like(scale, float("inf"))
    near_tie = gap <= rtol * scale
    differ = indices != expected
    assert not (differ & ~near_tie).any(), f"{int((differ & ~near_tie).sum())} rows pick another code"
    chosen = exact.gather(1, indices[:, None]).squeeze(1)
    assert (chosen - two[:, 0] <= rtol * scale).all()
    out_rtol = 1e-2 if z.dtype in (torch.half, torch.bfloat16) else 0
    assert ((min_sq_dist.double() - chosen).abs() <= rtol * scale + out_rtol * chosen).all()


def check_backend(backend, shape, dtype, contiguous):
    z, codebook = make_inputs(*shape, dtype, contiguous)
    indices, min_sq_dist = nearest_code(z, codebook, backend=backend)
    ref_idx, _ = reference.nearest_code(z, codebook)
    assert_nearest(z, codebook, indices, min_sq_dist, ref_idx)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "triton"])
@pytest.mark.parametrize("shape", SMALL_N + LARGE_N, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("contiguous", [True, False])
def test_matches_reference(backend, shape, dtype, contiguous):
    check_backend(backend, shape, dtype, contiguous)


@needs_triton
@pytest.mark.parametrize("shape", TRITON_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("contiguous", [True, False])
def test_triton_interpreter_matches_reference(shape, dtype, contiguous):
    check_backend("triton", shape, dtype, contiguous)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_large_shared_offset_stays_exact(backend, dtype):
    # Vectors 1e3 away from the origin, 1 apart: the uncentred expanded form loses ~1e6 * 6e-8
    # = 0.06 to cancellation in float32, as much as the gap between the nearest codes.
    n = 64 if backend == "triton" else 2000
    z, codebook = make_inputs(n, 128, 16, dtype, True, offset=1e3)
    expected = exact_sq_dist(z, codebook).argmin(1)
    indices, min_sq_dist = nearest_code(z, codebook, backend=backend)
    assert_nearest(z, codebook, indices, min_sq_dist, expected)
    if dtype == torch.float32:  # the test has teeth: without centring, float32 gets codes wrong
        zf, ef = z.float(), codebook.float()
        naive = (zf.pow(2).sum(1, keepdim=True) - 2 * zf @ ef.t() + ef.pow(2).sum(1)).argmin(1)
        assert (naive != expected).float().mean() > 0.05


def sample_inputs():
    """(z, codebook) pairs for opcheck: odd shapes, float32/float64, (non-)contiguous."""
    for shape, dtype, contiguous in itertools.product(
        [(1, 1, 1), (7, 3, 3), (1000, 513, 65), (33, 1, 8)], [torch.float32, torch.float64], [True, False]
    ):
        yield make_inputs(*shape, dtype, contiguous)


@needs_ext
def test_opcheck_every_sample():
    for z, codebook in sample_inputs():
        torch.library.opcheck(torch.ops.pegasus.nearest_code.default, (z, codebook))


@needs_ext
def test_torch_compile_fullgraph():
    @torch.compile(fullgraph=True)
    def quantise(z, codebook):
        indices, min_sq_dist = nearest_code(z * 2, codebook, backend="cpu")
        return codebook[indices], min_sq_dist.sum()

    z, codebook = make_inputs(100, 16, 8, torch.float32, True)
    codes, total = quantise(z, codebook)
    indices, min_sq_dist = nearest_code(z * 2, codebook, backend="cpu")
    torch.testing.assert_close(codes, codebook[indices])
    torch.testing.assert_close(total, min_sq_dist.sum())


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_go_to_lowest_index(backend):
    # Only ties that survive rounding can be tested: here the codebook mean (0.5, 0.5) and every
    # centred vector are exact in binary, so the equal distances are computed equal.
    codebook = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    z = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]])  # equidistant from all / 0 = 2 / 1 = 3
    indices, _ = nearest_code(z, codebook, backend=backend)
    assert indices.tolist() == [0, 0, 1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_input(backend):
    indices, min_sq_dist = nearest_code(torch.zeros(0, 4), torch.randn(5, 4), backend=backend)
    assert indices.shape == (0,) and min_sq_dist.shape == (0,)
    assert indices.dtype == torch.int64 and min_sq_dist.dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_rows_get_index_zero_and_nan_distance(backend):
    z = torch.tensor([[float("nan"), 0.0], [2.0, 2.0], [0.0, float("nan")]])
    codebook = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    indices, min_sq_dist = nearest_code(z, codebook, backend=backend)
    assert indices.tolist() == [0, 1, 0]
    assert torch.isnan(min_sq_dist[0]) and min_sq_dist[1] == 0 and torch.isnan(min_sq_dist[2])


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_codebook_makes_every_row_nan(backend):
    # The codebook mean carries the NaN into every centred vector: the same on every backend.
    codebook = torch.tensor([[0.0, 0.0], [float("nan"), 2.0], [1.0, 1.0]])
    indices, min_sq_dist = nearest_code(torch.ones(3, 2), codebook, backend=backend)
    assert indices.tolist() == [0, 0, 0] and torch.isnan(min_sq_dist).all()


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
    with pytest.raises(RuntimeError, match="expected a floating dtype, got Long"):
        torch.ops.pegasus.nearest_code(torch.zeros(4, 3, dtype=torch.long), torch.zeros(5, 3, dtype=torch.long))


@needs_triton
def test_triton_refuses_wide_codes():
    with pytest.raises(ValueError, match="D=300 is above the kernel's limit of 256"):
        nearest_code(torch.zeros(4, 300), torch.zeros(5, 300), backend="triton")
