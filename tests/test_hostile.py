"""Hostile input for `pegasus.ops.nearest_code` and `pegasus.sample_indices`, property-tested with
hypothesis: odd and empty shapes, 1e30 and subnormals, large offsets, NaN and inf in every input,
temperatures from 5e-324 to 1e300.

The property: every backend gives the ground truth's answer (nearest_code: the reference's, the same
indices except on provable near-ties, distances within rounding; samplers: the naive sampler's, the
same grids, except where the two codes' scores tie within rounding at the first position that
differs), or every backend raises the same
ValueError, whose message names the argument. The rules for NaN and inf that make this hold are
documented in `pegasus.ops.nearest_code` (rows that may not be finite: index 0, distance NaN) and
`pegasus.sampling.check_sampling_args` (NaN/inf priors and unrepresentable temperatures refused;
NaN/inf noise allowed, a NaN score wins as in torch.argmax).

Examples are derandomized with no database, so CI runs the same cases every time. "triton" runs on
CPU tensors in Triton's interpreter, only when TRITON_INTERPRET=1, on a few tiny cases.
"""
import copy
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pegasus import GatedPixelCNN, _extension, backends, reference
from pegasus.ops import nearest_code
from pegasus.sampling import gumbel_noise
from tests._sampling import draw

HAS_CPP = _extension.has_cpp_ops()
TRITON_NC = backends.unavailable(backends.NEAREST_CODE, "triton", "cpu") is None
TRITON_SAMPLER = backends.unavailable(backends.SAMPLER, "triton", "cpu") is None
needs_triton_nc = pytest.mark.skipif(not TRITON_NC, reason="needs triton and TRITON_INTERPRET=1 (CI sets it)")
needs_triton_sampler = pytest.mark.skipif(not TRITON_SAMPLER, reason="needs triton and TRITON_INTERPRET=1 (CI sets it)")
NC_BACKENDS = ["reference"] + (["cpu"] if HAS_CPP else [])
SAMPLERS = ["naive", "reference"] + (["cpu"] if HAS_CPP else [])

NAN, INF = float("nan"), float("inf")


def hostile(max_examples: int) -> settings:
    """Fixed examples (derandomized, no example database) and no per-example deadline: the first
    call of a backend compiles or loads kernels, and the machines running CI are shared."""
    return settings(
        max_examples=max_examples, deadline=None, derandomize=True, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --- nearest_code ---------------------------------------------------------------------------------

NC_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Injected one at a time into z or the codebook: NaN, infinities, values whose squares overflow
# float32 (1e30, 3e38) or even float64 (1e300), subnormals of float32 (1e-40) and float64 (5e-324).
SPECIALS = [NAN, INF, -INF, 1e30, -1e30, 3e38, 1e300, 1e-40, 5e-324, 0.0, -0.0]


@st.composite
def nc_inputs(draw, sizes=(0, 1, 2, 3, 5, 7, 70), codes=(1, 2, 3, 5, 9, 65), dims=(0, 1, 2, 3, 5, 17)):
    """(z Tensor[N, D], codebook Tensor[K, D]) of one dtype: N(offset, scale) entries drawn in
    float64, with exact duplicates (ties), rows equal to a code (distance 0), hostile values, and
    non-contiguous layouts (transposed, offset and strided, a row stride of 0)."""
    dtype = draw(st.sampled_from(NC_DTYPES))
    n, k, d = draw(st.sampled_from(sizes)), draw(st.sampled_from(codes)), draw(st.sampled_from(dims))
    scale = draw(st.sampled_from([0.0, 1e-40, 1e-20, 1e-3, 1.0, 1e3, 1e15, 1e30]))
    offset = draw(st.sampled_from([0.0, 1.0, 1e3, 1e7, -1e30]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    z = torch.randn(n, d, generator=g, dtype=torch.float64) * scale + offset
    codebook = torch.randn(k, d, generator=g, dtype=torch.float64) * scale + offset
    if k > 1 and draw(st.booleans()):
        codebook[draw(st.integers(1, k - 1))] = codebook[0]
    if n > 0 and draw(st.booleans()):
        z[draw(st.integers(0, n - 1))] = codebook[draw(st.integers(0, k - 1))]
    for in_z, where, value in draw(st.lists(st.tuples(st.booleans(), st.integers(0, 10**6), st.sampled_from(SPECIALS)), max_size=3)):
        t = z if in_z else codebook
        if t.numel():
            t.view(-1)[where % t.numel()] = value
    z, codebook = z.to(dtype), codebook.to(dtype)
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided", "one row expanded"]))
    if layout == "transposed":
        z = z.t().contiguous().t()
    elif layout == "strided":  # the same values at a storage offset, with strides of 2 in both dimensions
        buffer = torch.zeros(2 * n + 1, 2 * d + 1, dtype=dtype)
        buffer[1::2, 1::2] = z
        z = buffer[1::2, 1::2]
    elif layout == "one row expanded" and n > 0:  # row stride 0
        z = z[:1].expand(n, d)
    if draw(st.booleans()):
        codebook = torch.cat([codebook, codebook], 1)[:, ::2]
    return z, codebook


def _compute(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def check_nearest(z, codebook, got, ref):
    """One backend's (indices, min_sq_dist) against the reference's and the exact float64 answer."""
    n, d = z.shape
    k = codebook.shape[0]
    indices, dist = got
    ref_idx, ref_dist = ref
    assert indices.dtype == torch.int64 and indices.shape == (n,)
    assert dist.dtype == z.dtype and dist.shape == (n,)
    assert ((indices >= 0) & (indices < k)).all()
    # Rows that may not be finite: index 0 and distance NaN on every backend, and only those are NaN.
    flagged = torch.isnan(ref_dist)
    assert torch.equal(torch.isnan(dist), flagged)
    assert (indices[flagged] == 0).all() and (ref_idx[flagged] == 0).all()
    zd, ed = z.double(), codebook.double()
    finite_rows = torch.isfinite(zd).all(1) & bool(torch.isfinite(ed).all())
    assert flagged[~finite_rows].all(), "a row holding NaN or inf was not flagged"
    small = float(zd.abs().amax()) if n * d else 0.0
    small += 3 * float(ed.abs().amax()) if d else 0.0
    if small < 1e17:  # far from overflow in float32, at any D used here
        assert not flagged.any(), "a row far from overflow was flagged"
    ok = ~flagged
    if not ok.any():
        return
    zd, idx, ridx, out = zd[ok], indices[ok], ref_idx[ok], dist[ok]
    exact = torch.cdist(zd, ed, compute_mode="donot_use_mm_for_euclid_dist") ** 2 if d else torch.zeros(len(zd), k, dtype=torch.float64)
    mean = ed.mean(0)
    scale = (zd - mean).pow(2).sum(1) + (ed - mean).pow(2).sum(1).max()
    compute = _compute(z.dtype)
    rtol = 1e-5 if compute == torch.float32 else 1e-10
    # Products of subnormals flush to zero: distances below D * tiny carry no information.
    tol = rtol * scale + (d + 2) * torch.finfo(compute).tiny
    best = exact.min(1).values
    chosen = exact.gather(1, idx[:, None]).squeeze(1)
    assert (chosen - best <= tol).all(), "a code farther than the nearest beyond rounding"
    ref_chosen = exact.gather(1, ridx[:, None]).squeeze(1)
    differ = idx != ridx
    assert ((chosen - ref_chosen).abs()[differ] <= tol[differ]).all(), "another code than the reference's, not a near-tie"
    # Distances: the chosen code's, within rounding; a distance beyond the dtype's range is inf.
    info = torch.finfo(z.dtype)
    got_c, want_c = out.double().clamp(max=info.max), chosen.clamp(max=info.max)
    out_tol = 2 * info.eps * want_c + 2 * info.tiny * info.eps  # rounding to z's dtype, subnormals too
    assert (out >= 0).all()
    assert ((got_c - want_c).abs() <= tol + out_tol).all(), (out, chosen)


@pytest.mark.parametrize("backend", NC_BACKENDS)
@hostile(300)
@given(inputs=nc_inputs())
def test_nearest_code_matches_reference_on_hostile_values(backend, inputs):
    z, codebook = inputs
    ref = reference.nearest_code(z, codebook)
    check_nearest(z, codebook, nearest_code(z, codebook, backend=backend), ref)


@needs_triton_nc
@hostile(40)
@given(inputs=nc_inputs(sizes=(0, 1, 3, 70), codes=(1, 3, 65), dims=(0, 1, 3, 17)))
def test_nearest_code_triton_interpreter_on_hostile_values(inputs):
    z, codebook = inputs
    check_nearest(z, codebook, nearest_code(z, codebook, backend="triton"), reference.nearest_code(z, codebook))


def _bad_nc_input(kind: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(z, codebook, text the error must contain) for one kind of bad input."""
    z, e = torch.zeros(4, 3, dtype=dtype), torch.zeros(5, 3, dtype=dtype)
    return {
        "z 1-D": (torch.zeros(3, dtype=dtype), e, "z should be a 2-D tensor"),
        "z 3-D": (torch.zeros(2, 4, 3, dtype=dtype), e, "z should be a 2-D tensor"),
        "codebook 1-D": (z, torch.zeros(3, dtype=dtype), "codebook should be a 2-D tensor"),
        "codebook empty": (z, torch.zeros(0, 3, dtype=dtype), "codebook is empty (K=0)"),
        "D differs": (z, torch.zeros(5, 4, dtype=dtype), "D differs"),
        "dtypes differ": (z, e.to(torch.float64 if dtype != torch.float64 else torch.float32), "z and codebook should share one floating dtype"),
        "int": (z.to(torch.int64), e.to(torch.int64), "z and codebook should share one floating dtype"),
        "float8": (z.to(torch.float8_e4m3fn), e.to(torch.float8_e4m3fn), "supported: float16, bfloat16, float32, float64"),
        "complex": (z.to(torch.complex64), e.to(torch.complex64), "z and codebook should share one floating dtype"),
        "bool": (z.bool(), e.bool(), "z and codebook should share one floating dtype"),
    }[kind]


BAD_NC_KINDS = ["z 1-D", "z 3-D", "codebook 1-D", "codebook empty", "D differs", "dtypes differ", "int", "float8", "complex", "bool"]


@pytest.mark.parametrize("kind", BAD_NC_KINDS)
@pytest.mark.parametrize("dtype", NC_DTYPES, ids=str)
def test_nearest_code_bad_input_same_error_on_every_backend(kind, dtype):
    z, codebook, text = _bad_nc_input(kind, dtype)
    messages = set()
    for backend in NC_BACKENDS + (["triton"] if TRITON_NC else []):
        with pytest.raises(ValueError) as info:
            nearest_code(z, codebook, backend=backend)
        messages.add(str(info.value))
    assert len(messages) == 1
    message = messages.pop()
    assert message.startswith("nearest_code: ") and text in message


@pytest.mark.parametrize("backend", NC_BACKENDS + (["triton"] if TRITON_NC else []))
def test_nearest_code_documented_non_finite_rule(backend):
    """Pinned examples of the rule: a row that may not be finite gets index 0 and distance NaN,
    whatever the arithmetic would have made of it; the other rows are untouched."""
    z = torch.tensor([[INF, 0.0], [1.0, 1.0], [INF, -INF], [1e30, 0.0], [NAN, 1.0], [-1e-40, 5.0]])
    codebook = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0], [0.0, 5.0]])
    indices, dist = nearest_code(z, codebook, backend=backend)
    assert indices.tolist() == [0, 1, 0, 0, 0, 3]
    assert torch.isnan(dist[[0, 2, 3, 4]]).all() and dist[1] == 0 and dist[5] == pytest.approx(1e-80, abs=1e-30)
    for bad in (INF, 1e30, NAN):  # anywhere in the codebook: every row, through the mean
        e = codebook.clone()
        e[2, 1] = bad
        indices, dist = nearest_code(z[1:2], e, backend=backend)
        assert indices.tolist() == [0] and torch.isnan(dist).all()
    # float64 has room for 1e30: the same row is an ordinary one there.
    indices, dist = nearest_code(torch.tensor([[1e30, 0.0]], dtype=torch.float64), codebook.double(), backend=backend)
    assert not torch.isnan(dist).any() and dist[0] == pytest.approx(1e60, rel=1e-12)


# --- samplers -------------------------------------------------------------------------------------


def make_prior(codes, layers, kernel, channels, conditional, dtype, scale, seed, poison=None) -> GatedPixelCNN:
    """A prior whose every parameter is N(0, scale^2), drawn from its own generator; poison:
    (parameter position, flat position, value) to write into one of them."""
    with torch.random.fork_rng():
        prior = GatedPixelCNN(codes=codes, channels=channels, layers=layers, kernel=kernel, conditional=conditional)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        params = list(prior.parameters())
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * scale)
        if poison is not None:
            p = params[poison[0] % len(params)]
            p.view(-1)[poison[1] % p.numel()] = poison[2]
    return prior.to(dtype).eval()


# Largest weight scale per dtype that cannot overflow the activations at these sizes (the logits
# grow like 1e3 * scale^3): beyond it the naive sampler's whole-grid pass multiplies inf activations of
# positions not sampled yet by masked-out zeros, which gives NaN where the cached loops read nothing.
SCALES = {torch.float64: [0.0, 1e-300, 1e-30, 0.5, 3.0, 1e10, 1e30], torch.float32: [0.0, 1e-30, 0.5, 3.0, 1e3]}
TEMPERATURES = [5e-324, 1e-300, 1e-40, 1e-30, 1e-3, 0.7, 1.0, 1e3, 1e30, 1e300]
NOISE_SPECIALS = [NAN, INF, -INF, 1e308, -1e308, 5e-324, 0.0]


@st.composite
def sampler_case(draw, max_n=3, max_side=3, layers=(1, 2), codes=(1, 2, 3, 5, 17)):
    """kwargs of a prior and of sample_indices: sizes, weight scale, sometimes a NaN or inf weight,
    temperature, top_k, alpha, and Gumbel noise with hostile values injected (and sometimes a
    position where every code is -inf)."""
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    k = draw(st.sampled_from(codes))
    prior = {
        "codes": k, "layers": draw(st.sampled_from(layers)), "kernel": draw(st.sampled_from([3, 5])),
        "channels": draw(st.sampled_from([1, 2, 3, 6])), "conditional": draw(st.booleans()), "dtype": dtype,
        "scale": draw(st.sampled_from(SCALES[dtype])), "seed": draw(st.integers(0, 2**16)),
        "poison": draw(st.tuples(st.integers(0, 99), st.integers(0, 10**6), st.sampled_from([NAN, INF, -INF])))
        if draw(st.integers(0, 3)) == 0 else None,
    }
    n = draw(st.integers(1, max_n))
    grid = (draw(st.integers(1, max_side)), draw(st.integers(1, max_side)))
    noise = gumbel_noise(n, grid, k, seed=draw(st.integers(0, 2**16)), dtype=torch.float64)
    noise *= draw(st.sampled_from([1.0, 0.0, 1e-300, 5.0, 1e300]))
    for where, value in draw(st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(NOISE_SPECIALS)), max_size=3)):
        noise.view(-1)[where % noise.numel()] = value
    if draw(st.booleans()):
        noise.view(-1, k)[draw(st.integers(0, 10**6)) % (noise.numel() // k)] = -INF
    call = {
        "n": n, "alpha": draw(st.sampled_from([0.0, -0.0, 0.3, 1.0])),
        "temperature": draw(st.sampled_from(TEMPERATURES)), "top_k": draw(st.sampled_from([None, 1, 2, k, k + 3])),
        "noise": noise.to(draw(st.sampled_from([torch.float64, torch.float32]))),
    }
    return prior, call


def outcome(prior, call, backend):
    """The grid, or (exception type, message)."""
    try:
        return draw(prior, sampler=backend, **call)
    except Exception as e:  # noqa: BLE001 - compared across backends
        return type(e), str(e)


def assert_same_choice_or_tie(prior, call, ref, got):
    """`got` equals the naive sampler's grid `ref`, or at the first position where a sample differs the
    two codes' scores tie within rounding (or sit at the top-k boundary), recomputed in float64
    from the naive grid: both backends saw the same codes before that position."""
    if torch.equal(ref, got):
        return
    b = int((ref != got).flatten(1).any(1).nonzero()[0])
    flat = int((ref[b] != got[b]).flatten().nonzero()[0])
    i, j = divmod(flat, ref.shape[2])
    a, c = int(ref[b, i, j]), int(got[b, i, j])
    dtype = prior.embedding.weight.dtype
    with torch.no_grad():
        logits = copy.deepcopy(prior).double()(ref[b : b + 1], torch.tensor([float(call["alpha"])], dtype=torch.float64))[0, :, i, j]
    t = float(call["temperature"])
    noise = call["noise"][b, i, j].to(dtype).double()  # as every backend rounds it
    rtol = 1e-9 if dtype == torch.float64 else 1e-3
    err = rtol * (float(logits.abs().max()) + 1)  # rounding of a logit
    scores = logits / t + noise
    sa, sc = float(scores[a]), float(scores[c])
    la, lc, ga, gc = float(logits[a]), float(logits[c]), float(noise[a]), float(noise[c])
    if sa == sc:  # an exact tie, +-inf included: which one wins is rounding
        tie = True
    elif not (math.isfinite(sa) and math.isfinite(sc)):  # NaN, or inf against a finite score
        huge = 0.5 * torch.finfo(torch.float64).max  # both at the overflow edge of logits / t
        tie = abs(sa) >= huge and abs(sc) >= huge and abs(la - lc) <= 2 * err
    else:  # compared as logits (times t), so that a tiny t cannot overflow the tolerance
        tie = abs(la - lc + t * (ga - gc)) <= 2 * err + rtol * t * (abs(ga) + abs(gc))
    if call["top_k"] is not None and call["top_k"] < len(logits):
        kth = float(logits.topk(call["top_k"]).values[-1])
        tie = tie or min(abs(la - kth), abs(lc - kth)) <= err
    assert tie, f"sample {b} at ({i}, {j}): naive chose {a} (score {sa}), the backend {c} (score {sc})"


def check_samplers(prior_kwargs, call, backends):
    prior = make_prior(**prior_kwargs)
    ref = outcome(prior, call, "naive")
    for backend in backends:
        got = outcome(prior, call, backend)
        if isinstance(ref, tuple):
            assert got == ref, backend  # the same exception type and message
            assert ref[0] is ValueError
        else:
            assert isinstance(got, torch.Tensor), (backend, got)
            assert got.dtype == torch.int64 and got.shape == ref.shape
            assert ((got >= 0) & (got < prior.cfg.codes)).all()
            assert_same_choice_or_tie(prior, call, ref, got)
    return ref


@hostile(150)
@given(case=sampler_case())
def test_samplers_match_naive_on_hostile_values(case):
    prior_kwargs, call = case
    ref = check_samplers(prior_kwargs, call, SAMPLERS[1:])
    dtype = prior_kwargs["dtype"]
    t = torch.tensor(call["temperature"], dtype=dtype).item()
    if t == 0 or math.isinf(t):  # the documented refusals
        assert isinstance(ref, tuple) and "temperature" in ref[1] and f"rounds to {t}" in ref[1]
    elif prior_kwargs["poison"] is not None:
        assert isinstance(ref, tuple) and "prior should have finite parameters, got NaN or inf in " in ref[1]
    else:
        assert isinstance(ref, torch.Tensor), ref


@needs_triton_sampler
@hostile(20)
@given(case=sampler_case(max_n=2))
def test_samplers_triton_interpreter_on_hostile_values(case):
    prior_kwargs, call = case
    check_samplers(prior_kwargs, call, ["triton"])


def test_tie_check_has_teeth():
    """assert_same_choice_or_tie accepts a grid that differs only where two scores tie exactly, and
    rejects one that differs where they do not."""
    prior = make_prior(3, 1, 3, 2, True, torch.float64, 0.5, 0)
    noise = gumbel_noise(1, (2, 2), 3, seed=0, dtype=torch.float64)
    call = {"n": 1, "alpha": 0.5, "temperature": 1.0, "top_k": None, "noise": noise}
    ref = draw(prior, sampler="naive", **call)
    wrong = ref.clone()
    wrong[0, 0, 1] = (ref[0, 0, 1] + 1) % 3
    with pytest.raises(AssertionError, match=r"sample 0 at \(0, 1\)"):
        assert_same_choice_or_tie(prior, call, ref, wrong)
    with torch.no_grad():  # codes 0 and 1 get equal logits everywhere: a tie whenever the noise ties
        prior.head[3].weight[1] = prior.head[3].weight[0]
        prior.head[3].bias[1] = prior.head[3].bias[0]
    call["noise"] = torch.zeros(1, 2, 2, 3, dtype=torch.float64)
    call["noise"][..., 2] = -INF
    ref = draw(prior, sampler="naive", **call)
    assert (ref == 0).all()
    assert_same_choice_or_tie(prior, call, ref, torch.ones_like(ref))


BAD_SAMPLER_ARGS = [
    ({"n": 0}, "n should be an integer >= 1"),
    ({"n": -3}, "n should be an integer >= 1"),
    ({"n": True}, "n should be an integer >= 1"),
    ({"n": 2.0}, "n should be an integer >= 1"),
    ({"alpha": NAN}, "alpha should be in [0, 1]"),
    ({"alpha": -1e-300}, "alpha should be in [0, 1]"),
    ({"alpha": 1.0000001}, "alpha should be in [0, 1]"),
    ({"alpha": INF}, "alpha should be in [0, 1]"),
    ({"temperature": 0.0}, "temperature should be a finite number > 0"),
    ({"temperature": -0.0}, "temperature should be a finite number > 0"),
    ({"temperature": -1.0}, "temperature should be a finite number > 0"),
    ({"temperature": NAN}, "temperature should be a finite number > 0"),
    ({"temperature": INF}, "temperature should be a finite number > 0"),
    ({"temperature": 1e-46}, "temperature should be a finite number > 0 in the prior's dtype torch.float32"),
    ({"temperature": 1e39}, "temperature should be a finite number > 0 in the prior's dtype torch.float32"),
    ({"top_k": 0}, "top_k should be an integer >= 1 or None"),
    ({"top_k": True}, "top_k should be an integer >= 1 or None"),
    ({"top_k": 1.5}, "top_k should be an integer >= 1 or None"),
    ({"noise": torch.zeros(2, 0, 3, 5)}, "noise should have a grid of H, W >= 1, got (2, 0, 3, 5)"),
    ({"noise": torch.zeros(2, 3, 0, 5)}, "noise should have a grid of H, W >= 1, got (2, 3, 0, 5)"),
    ({"noise": torch.zeros(2, 3, 3, 4)}, "noise should be Gumbel noise"),
    ({"noise": torch.zeros(3, 3, 3, 5)}, "noise should be Gumbel noise"),
    ({"noise": torch.zeros(2, 3, 3, 5, dtype=torch.int64)}, "noise should be a floating-point tensor"),
]


@pytest.mark.parametrize("kwargs, text", BAD_SAMPLER_ARGS, ids=lambda x: repr(x)[:40] if isinstance(x, dict) else None)
def test_sampler_bad_arguments_same_error_on_every_backend(kwargs, text):
    prior = make_prior(5, 1, 3, 2, True, torch.float32, 0.5, 0)
    errors = set()
    for backend in SAMPLERS + (["triton"] if TRITON_SAMPLER else []):
        with pytest.raises(ValueError) as info:
            draw(prior, **{"n": 2, **kwargs, "sampler": backend})
        errors.add(str(info.value))
    assert len(errors) == 1
    assert text in errors.pop()


@pytest.mark.parametrize("name", ["embedding.weight", "alpha_embedding.0.weight", "cond.0.bias", "layers.0.vertical.weight", "layers.0.horizontal.bias", "head.3.bias"])
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_sampler_refuses_a_prior_with_nan_or_inf(name, bad):
    """Before the check, a NaN in a masked-out tap (or an inf in code 0's embedding, which fills the
    positions not sampled yet) gave all-zero grids on the naive sampler and other grids on the C++ loop."""
    prior = make_prior(5, 1, 3, 2, True, torch.float64, 0.5, 0)
    params = dict(prior.named_parameters())
    with torch.no_grad():
        params[name].view(-1)[-1] = bad
    for backend in SAMPLERS + (["triton"] if TRITON_SAMPLER else []):
        with pytest.raises(ValueError, match=f"prior should have finite parameters, got NaN or inf in {name}"):
            draw(prior, 2, sampler=backend)


@pytest.mark.parametrize("backend", SAMPLERS[1:] + (["triton"] if TRITON_SAMPLER else []))
def test_sampler_documented_noise_rule(backend):
    """Pinned: +inf noise forces a code, -inf forbids it, a position where every code is -inf gets
    code 0, and a NaN score wins (the first one, as torch.argmax)."""
    prior = make_prior(5, 1, 3, 2, True, torch.float64, 0.5, 0)
    noise = gumbel_noise(1, (2, 3), 5, seed=0, dtype=torch.float64)
    noise[0, 0, 0, 3] = INF
    noise[0, 0, 1, :] = -INF
    noise[0, 0, 2, 2] = NAN
    noise[0, 0, 2, 4] = NAN
    noise[0, 1, 0, :4] = -INF
    grid = draw(prior, 1, noise=noise, sampler=backend)
    assert grid[0, 0].tolist() == [3, 0, 2] and grid[0, 1, 0] == 4
    assert torch.equal(grid, draw(prior, 1, noise=noise, sampler="naive"))
