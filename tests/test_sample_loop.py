"""The sampling loops against the naive sampler (the ground truth): the pure-PyTorch cached loop
(backend "reference", `pegasus.reference.sample_loop`: the same grids as naive, and its logits
against a full pass of the prior under teacher forcing), the C++ loop (`pegasus::sample_loop`,
backend "cpu") and the Triton steps (backend "triton"); the C++ step ops against
pegasus/reference.py, opcheck, bad input and Ctrl-C.

"triton" runs here on CPU tensors in Triton's interpreter, only when TRITON_INTERPRET=1 (CI sets it):
`pegasus.ops` then runs the Python loop over the Triton launchers.
"""
import functools
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch

from pegasus import GatedPixelCNN, _extension, backends, ops, reference
from pegasus.sampling import gumbel_noise

from .conftest import needs_ext, random_prior
from tests._sampling import draw

HAS_TRITON = backends.unavailable(backends.SAMPLER, "triton", "cpu") is None
LOOP_BACKENDS = ["cpu"] + (["triton"] if HAS_TRITON else [])
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="needs triton and TRITON_INTERPRET=1 (CI sets it)")


def loop_inputs(prior, noise, alpha):
    weights = prior.pack_for_sampling()
    cond = prior.sampling_conditioning(torch.full((noise.shape[0],), alpha, dtype=weights[0].dtype))
    return weights, cond


def forcing_noise(tokens, codes, dtype=torch.float32):
    """Noise Tensor[B, H, W, K] that forces `tokens` Tensor[B, H, W] on every backend (teacher
    forcing): +inf at each position's token, -inf at every other code."""
    noise = torch.full((*tokens.shape, codes), -math.inf, dtype=dtype)
    return noise.scatter_(-1, tokens[..., None], math.inf)


# --- the "reference" sampler: the cached loop in pure PyTorch -----------------------------------


def naive_and_reference(prior, n, noise, **kwargs):
    naive = draw(prior, n, noise=noise, sampler="naive", **kwargs)
    return naive, draw(prior, n, noise=noise, sampler="reference", **kwargs)


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
def test_reference_same_grids_as_naive_float64(kernel, layers, grid, conditional):
    prior = random_prior(13, layers, kernel, conditional, torch.float64, seed=layers * 10 + kernel)
    for seed in range(3):
        noise = gumbel_noise(3, grid, 13, seed=seed, dtype=torch.float64)
        naive, cached = naive_and_reference(prior, 3, noise, alpha=0.25 * seed + 0.2, temperature=0.8)
        assert torch.equal(naive, cached), (seed, naive, cached)


@pytest.mark.parametrize("n, codes, top_k", [(1, 13, None), (2, 1, None), (3, 13, 3), (2, 13, 1)])
def test_reference_batch_one_one_code_and_top_k_float64(n, codes, top_k):
    prior = random_prior(codes, 3, 3, True, torch.float64)
    noise = gumbel_noise(n, (5, 7), codes, seed=1, dtype=torch.float64) * 5  # noise that often beats the logits
    naive, cached = naive_and_reference(prior, n, noise, alpha=0.6, top_k=top_k)
    assert torch.equal(naive, cached)
    if codes == 1:
        assert (cached == 0).all()


@pytest.mark.parametrize("kernel, layers, conditional", [(3, 2, True), (5, 4, False), (5, 8, True)])
def test_reference_forced_logits_and_grids_float32(kernel, layers, conditional):
    """Teacher forcing through the noise: the reference loop's logits at every position against a
    full pass of the prior over the forced grid; and the sampled grids against naive's."""
    prior = random_prior(17, layers, kernel, conditional, torch.float32)
    for seed, grid in enumerate([(8, 8), (5, 7)]):
        alpha = torch.full((4,), 0.4)
        tokens = torch.randint(0, 17, (4, *grid), generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            full = prior(tokens, alpha).permute(0, 2, 3, 1)
            weights, cond = prior.pack_for_sampling(), prior.sampling_conditioning(alpha)
        forced, logits = ops.sample_loop(weights, cond, forcing_noise(tokens, 17), 1.0, 0, True, backend="reference")
        assert torch.equal(forced, tokens)
        torch.testing.assert_close(logits, full, atol=1e-4, rtol=0)
        naive, cached = naive_and_reference(prior, 4, gumbel_noise(4, grid, 17, seed=seed), alpha=0.4)
        assert torch.equal(naive, cached)


@pytest.mark.parametrize("backend", ["naive", "reference", pytest.param("cpu", marks=needs_ext)] + (["triton"] if HAS_TRITON else []))
def test_forcing_noise_forces_the_tokens_on_every_backend(backend):
    """+inf noise at a code and -inf elsewhere picks that code whatever the logits, on every backend
    (what the teacher-forced logits checks above rely on)."""
    prior = random_prior(7, 2, 3, True, torch.float32, seed=3)
    tokens = torch.randint(0, 7, (2, 3, 4), generator=torch.Generator().manual_seed(1))
    noise = forcing_noise(tokens, 7)
    assert torch.equal(draw(prior, 2, alpha=0.3, temperature=0.7, noise=noise, sampler=backend), tokens)
    assert torch.equal(draw(prior, 2, alpha=0.3, top_k=7, noise=noise, sampler=backend), tokens)


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
def test_bad_input_same_errors_as_naive(kwargs):
    prior = random_prior(11, 2, 3, True, torch.float32)
    errors = []
    for backend in ("naive", "reference"):
        with pytest.raises(ValueError) as info:
            draw(prior, **{"n": 2, **kwargs, "sampler": backend})
        errors.append(str(info.value))
    assert errors[0] == errors[1]


# --- the C++ loop ("cpu") and the Triton steps ("triton") ---------------------------------------


@needs_ext
@pytest.mark.parametrize("backend", LOOP_BACKENDS)
@pytest.mark.parametrize(
    "kernel, layers, grid, conditional",
    [
        (3, 1, (8, 8), True),
        (3, 2, (5, 7), False),
        (3, 4, (8, 8), False),
        (5, 1, (5, 7), True),
        (5, 3, (8, 8), True),
        (5, 4, (5, 7), True),
        (5, 2, (3, 1), False),  # narrower than the kernel
    ],
)
def test_same_grids_as_naive_float64(backend, kernel, layers, grid, conditional):
    prior = random_prior(13, layers, kernel, conditional, torch.float64, seed=layers * 10 + kernel)
    for seed in range(3 if backend == "cpu" else 2):
        noise = gumbel_noise(3, grid, 13, seed=seed, dtype=torch.float64)
        kwargs = {"alpha": 0.3 * seed + 0.1, "temperature": 0.8, "noise": noise}
        ref = draw(prior, 3, sampler="naive", **kwargs)
        assert torch.equal(draw(prior, 3, sampler=backend, **kwargs), ref), (seed, ref)


@needs_ext
@pytest.mark.parametrize("backend", LOOP_BACKENDS)
@pytest.mark.parametrize("n, codes, top_k", [(1, 13, None), (2, 1, None), (3, 13, 3), (2, 13, 1)])
def test_batch_one_one_code_and_top_k_float64(backend, n, codes, top_k):
    prior = random_prior(codes, 3, 3, True, torch.float64)
    noise = gumbel_noise(n, (5, 7), codes, seed=1, dtype=torch.float64) * 5  # noise that often beats the logits
    ref = draw(prior, n, alpha=0.6, top_k=top_k, noise=noise, sampler="naive")
    assert torch.equal(draw(prior, n, alpha=0.6, top_k=top_k, noise=noise, sampler=backend), ref)
    if codes == 1:
        assert (ref == 0).all()


@needs_ext
@pytest.mark.parametrize("backend", LOOP_BACKENDS)
@pytest.mark.parametrize("kernel, layers, conditional", [(3, 2, True), (5, 4, False), (5, 8, True)])
def test_logits_and_grids_float32(backend, kernel, layers, conditional):
    """Every position's logits against a full pass of the prior over the sampled grid (the logits at
    (i, j) depend only on earlier positions, so they are the ones the sampler saw), and the grids
    against the naive sampler's."""
    prior = random_prior(17, layers, kernel, conditional, torch.float32)
    for seed, grid in enumerate([(8, 8), (5, 7)]):
        noise = gumbel_noise(4, grid, 17, seed=seed)
        weights, cond = loop_inputs(prior, noise, 0.4)
        out, logits = ops.sample_loop(weights, cond, noise, 1.0, 0, True, backend=backend)
        with torch.no_grad():
            full = prior(out, torch.full((4,), 0.4)).permute(0, 2, 3, 1)
        torch.testing.assert_close(logits, full, atol=1e-4, rtol=0)
        assert torch.equal(out, draw(prior, 4, alpha=0.4, noise=noise, sampler="naive"))


@needs_ext
def step_inputs(channels, codes, batch, dtype):
    """(packed weights, cond at alpha 0.7, noise [batch, 4, 6, codes]) of a seeded 3-layer prior whose
    weights are scaled to keep the activations O(1) at any width."""
    torch.manual_seed(channels + batch)
    prior = GatedPixelCNN(codes=codes, channels=channels, layers=3, kernel=5).to(dtype).eval()
    with torch.no_grad():
        for p in prior.parameters():
            p.normal_(0, 1 / channels**0.5)
    noise = gumbel_noise(batch, (4, 6), codes, seed=4, dtype=dtype)
    return (*loop_inputs(prior, noise, 0.7), noise)


@pytest.mark.parametrize(
    "channels, codes, batch, dtype, atol",
    [
        (6, 11, 2, torch.float64, 1e-12),  # 2C = 12: one 8-wide double block and a scalar tail of 4
        (20, 37, 5, torch.float32, 1e-5),  # 2C = 40: 16-wide blocks and a tail of 8; 4-row blocks and a tail of 1
        (20, 37, 5, torch.float64, 1e-12),  # 8-wide double blocks
        (64, 512, 9, torch.float32, 1e-4),  # the trained configuration's widths
    ],
)
def test_steps_match_reference_ops(channels, codes, batch, dtype, atol):
    """The C++ step kernels (with the vector code of csrc/cpu/vec_kernels.h in the build this CPU
    picks; test_every_vector_build_matches_the_reference runs the others) leave the same state as
    the reference step ops, position by position."""
    weights, cond, noise = step_inputs(channels, codes, batch, dtype)
    ref_state = reference.new_sampling_state(weights, batch, 4, 6)
    cpu_state = [t.clone() for t in ref_state]
    for i in range(4):
        reference.sample_row(ref_state[0], ref_state[2], weights, cond, i)
        torch.ops.pegasus.sample_row(cpu_state[0], cpu_state[2], weights, cond, i)
        ref_state[1].zero_()
        cpu_state[1].zero_()
        for j in range(6):
            ref = reference.sample_position(ref_state[0], ref_state[1], ref_state[2], weights, noise[:, i, j], 0.9, 0, i, j)
            got = torch.ops.pegasus.sample_position(cpu_state[0], cpu_state[1], cpu_state[2], weights, noise[:, i, j], 0.9, 0, i, j)
            assert torch.equal(got[0], ref[0])
            torch.testing.assert_close(got[1], ref[1], atol=atol, rtol=0)
            for a, b in zip(cpu_state, ref_state):
                torch.testing.assert_close(a, b, atol=atol, rtol=0)


# Priors for the vector builds' test: (channels, codes, batch, dtype), widths that exercise the
# AVX-512 6x4 and AVX2 4x2 blocks, their row and column tails, and the batch split.
BUILD_CASES = [(6, 11, 3, torch.float64), (20, 37, 5, torch.float32), (40, 513, 2, torch.float32), (64, 512, 9, torch.float32)]
# pegasus::nearest_code runs the same builds (nearest_rows): (N, K, D, dtype) with row tails of
# the 6- and 4-row blocks, code counts off every panel width (8, 16, 64), and K=1.
NEAREST_BUILD_CASES = [(97, 11, 3, torch.float64), (203, 70, 64, torch.float32), (1001, 513, 64, torch.float32), (13, 1, 5, torch.float32)]
# The builds of csrc/cpu/vec_kernels*, lowest first, as ATEN_CPU_CAPABILITY and pegasus._C name them.
VECTOR_BUILDS = ("default", "avx2", "avx512")
_BUILD_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, ROOT)
    from tests.test_sample_loop import BUILD_CASES, NEAREST_BUILD_CASES, nearest_inputs, step_inputs
    out = {"torch": torch.backends.cpu.get_cpu_capability(), "capability": torch.ops.pegasus._cpu_capability()}
    for channels, codes, batch, dtype in BUILD_CASES:
        weights, cond, noise = step_inputs(channels, codes, batch, dtype)
        out[channels] = torch.ops.pegasus.sample_loop(weights, cond, noise, 0.9, 0, True)
    out["nearest"] = [torch.ops.pegasus.nearest_code(*nearest_inputs(*case)) for case in NEAREST_BUILD_CASES]
    torch.save(out, sys.argv[1])
    """
)


def nearest_inputs(n, k, d, dtype):
    """Seeded z: Tensor[N, D] and codebook: Tensor[K, D] for NEAREST_BUILD_CASES."""
    g = torch.Generator().manual_seed(n * 7 + k)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randn(k, d, generator=g, dtype=dtype)


def _run_build(capability, path):
    """The (grid, logits) of every BUILD_CASES prior, and the capabilities torch and pegasus._C picked,
    from a child whose ATEN_CPU_CAPABILITY is `capability` (None: unset, each picks the best this CPU
    has). Under scripts/cpu_matrix.sh sys.executable starts qemu again, so the child runs on the
    same emulated CPU."""
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    env["OMP_NUM_THREADS"] = "2"
    if capability is not None:
        env["ATEN_CPU_CAPABILITY"] = capability
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # 600 s: a child takes ~5 s natively, ~60 s under qemu-x86_64 on a core shared with other jobs.
    subprocess.run([sys.executable, "-c", f"ROOT = {root!r}\n" + _BUILD_SCRIPT, str(path)], check=True, env=env, timeout=600)
    return torch.load(path, weights_only=False)


@functools.cache
def _build_reference(channels, codes, batch, dtype):
    """The reference loop's (grid, logits) of one BUILD_CASES prior, once for every build."""
    return reference.sample_loop(*step_inputs(channels, codes, batch, dtype), 0.9, 0, True)


@pytest.fixture(scope="module")
def vector_builds(tmp_path_factory):
    """({build: child output} for every build this CPU runs, {build: why not} for the others).
    The first child picks for itself; the others ask only for builds at or below both its picks:
    torch obeys ATEN_CPU_CAPABILITY without asking the CPU, so avx512 on a CPU without AVX-512
    dies with SIGILL (exit 132)."""
    tmp = tmp_path_factory.mktemp("vector-builds")
    best = _run_build(None, tmp / "best.pt")
    picks = f"torch picks {best['torch']}, pegasus._C picks {best['capability']}"
    # A torch capability that is no x86 build (SVE256 on aarch64, VSX) allows only "default" here.
    torch_best = best["torch"].lower()
    ceiling = min(VECTOR_BUILDS.index(best["capability"]), VECTOR_BUILDS.index(torch_best) if torch_best in VECTOR_BUILDS else 0)
    results, missing = {best["capability"]: best}, {}
    for level, build in enumerate(VECTOR_BUILDS):
        if build in results:
            continue
        if level > ceiling:
            missing[build] = f"this CPU cannot run the {build} build ({picks} with ATEN_CPU_CAPABILITY unset)"
            continue
        results[build] = _run_build(build, tmp / f"{build}.pt")
        assert results[build]["capability"] == build, (build, results[build]["capability"], picks)
    return results, missing


@needs_ext
@pytest.mark.parametrize("build", VECTOR_BUILDS)
def test_every_vector_build_matches_the_reference(vector_builds, build):
    """The C++ steps' vector code is built for AVX-512 (csrc/cpu/vec_kernels_avx512.cpp), AVX2+FMA
    (csrc/cpu/vec_kernels_avx2.cpp) and portably (csrc/cpu/vec_kernels.cpp). ATEN_CPU_CAPABILITY
    lowers the build a process picks, so every build this CPU can run is checked here against the
    reference loop: same grids, logits within tolerance. A build the CPU lacks is skipped, and the
    skip says what torch and pegasus._C picked."""
    results, missing = vector_builds
    if build in missing:
        pytest.skip(missing[build])
    for channels, codes, batch, dtype in BUILD_CASES:
        ref_grid, ref_logits = _build_reference(channels, codes, batch, dtype)
        grid, logits = results[build][channels]
        assert torch.equal(grid, ref_grid), (build, channels)
        atol = 1e-12 if dtype == torch.float64 else 2e-5
        torch.testing.assert_close(logits, ref_logits, atol=atol, rtol=0, msg=f"{build}, C={channels}")


@needs_ext
def test_avx2_and_avx512_builds_agree_bit_for_bit(vector_builds):
    """AVX2 and AVX-512 sum in the same order with fused multiply-adds, so their logits agree bit for bit."""
    results, missing = vector_builds
    for build in ("avx2", "avx512"):
        if build in missing:
            pytest.skip(missing[build])
    for channels, *_ in BUILD_CASES:
        assert torch.equal(results["avx2"][channels][1], results["avx512"][channels][1]), channels


@needs_ext
@pytest.mark.parametrize("build", VECTOR_BUILDS)
def test_every_vector_build_finds_the_nearest_codes(vector_builds, build):
    """pegasus::nearest_code's fused kernel (nearest_rows) in every build this CPU runs: the
    reference's codes except on near-ties (tests/test_nearest_code.py's rule)."""
    from .test_nearest_code import assert_nearest

    results, missing = vector_builds
    if build in missing:
        pytest.skip(missing[build])
    for case, (indices, min_sq_dist) in zip(NEAREST_BUILD_CASES, results[build]["nearest"]):
        z, codebook = nearest_inputs(*case)
        assert_nearest(z, codebook, indices, min_sq_dist, reference.nearest_code(z, codebook)[0])


def opcheck_samples():
    """(op name, args) at a mid-grid position, with a non-zero state from a few reference steps."""
    prior = random_prior(7, 2, 3, True, torch.float64, seed=5)
    noise = gumbel_noise(2, (3, 4), 7, seed=6, dtype=torch.float64)
    weights, cond = loop_inputs(prior, noise, 0.5)
    v_state, x_state, v2h_row = reference.new_sampling_state(weights, 2, 3, 4)
    reference.sample_row(v_state, v2h_row, weights, cond, 0)
    for j in range(4):
        reference.sample_position(v_state, x_state, v2h_row, weights, noise[:, 0, j], 1.0, 0, 0, j)
    reference.sample_row(v_state, v2h_row, weights, cond, 1)
    x_state.zero_()
    reference.sample_position(v_state, x_state, v2h_row, weights, noise[:, 1, 0], 1.0, 0, 1, 0)
    return [
        ("sample_row", (v_state.clone(), v2h_row.clone(), weights, cond, 2)),
        ("sample_position", (v_state.clone(), x_state.clone(), v2h_row.clone(), weights, noise[:, 1, 1].contiguous(), 0.7, 3, 1, 1)),
        ("sample_loop", (weights, cond, noise, 1.0, 0, True)),
        ("sample_loop", (weights, cond, noise, 0.5, 2, False)),
    ]


@needs_ext
@pytest.mark.parametrize("name, args", opcheck_samples(), ids=lambda x: x if isinstance(x, str) else "")
def test_opcheck(name, args):
    torch.library.opcheck(getattr(torch.ops.pegasus, name).default, args)


@needs_ext
@pytest.mark.parametrize("backend", LOOP_BACKENDS)
def test_default_prior_config_float32(backend):
    """The configuration the package trains (64 channels, 8 layers, kernel 5, 512 codes) at 3x2."""
    torch.manual_seed(0)
    prior = GatedPixelCNN().eval()
    noise = gumbel_noise(2, (3, 2), 512, seed=0)
    ref = draw(prior, 2, noise=noise, sampler="naive")
    assert torch.equal(draw(prior, 2, noise=noise, sampler=backend), ref)


def resolve_for(prior, backend=None):
    """The sampler backend that runs `prior` (on its device, in its dtype)."""
    param = next(prior.parameters())
    return backends.resolve(backends.SAMPLER, backend, param.device, param.dtype)


@needs_ext
def test_default_backend_is_the_fastest_available():
    prior = random_prior(5, 1, 3, True, torch.float32)
    assert resolve_for(prior) == "cpu"
    assert resolve_for(prior.double()) == "cpu"
    assert resolve_for(random_prior(5, 1, 3, True, torch.bfloat16)) == "reference"
    assert backends.resolve("sampler", None, "cpu", torch.float32) == "cpu"
    assert backends.default("sampler", "cpu", torch.bfloat16) == "reference"


@needs_ext
def test_pegasus_sampler_backend_environment(monkeypatch):
    prior = random_prior(5, 1, 3, True, torch.float32)
    monkeypatch.setenv("PEGASUS_SAMPLER_BACKEND", "reference")
    assert resolve_for(prior) == "reference"
    assert resolve_for(prior, "cpu") == "cpu"  # the argument comes first
    monkeypatch.setenv("PEGASUS_SAMPLER_BACKEND", "fast")
    with pytest.raises(ValueError, match=r"PEGASUS_SAMPLER_BACKEND should be one of reference, cpu, triton \(sampler backends\), got 'fast'"):
        resolve_for(prior)
    with pytest.raises(ValueError, match=r"backend should be one of reference, cpu, triton \(sampler backends\), got 'cached'"):
        draw(prior, 2, sampler="cached")


def test_retired_pegasus_backend_variable_names_the_new_ones(monkeypatch):
    prior = random_prior(5, 1, 3, True, torch.float32)
    monkeypatch.setenv("PEGASUS_BACKEND", "reference")
    with pytest.raises(ValueError, match="PEGASUS_BACKEND is no longer read: set PEGASUS_NEAREST_CODE_BACKEND .* or PEGASUS_SAMPLER_BACKEND"):
        draw(prior, 2, sampler="reference")


@needs_ext
def test_unsupported_prior_is_refused_before_the_loop():
    prior = random_prior(5, 1, 3, True, torch.bfloat16)
    with pytest.raises(RuntimeError, match="sampler backend 'cpu' unavailable: its kernels take float32 and float64, got bfloat16"):
        draw(prior, 2, sampler="cpu")


@needs_ext
@pytest.mark.skipif(HAS_TRITON, reason="checks the error raised when Triton cannot run")
def test_triton_unavailable_says_why():
    with pytest.raises(RuntimeError, match="sampler backend 'triton' unavailable: "):
        draw(random_prior(5, 1, 3, True, torch.float32), 2, sampler="triton")


@pytest.fixture(scope="module")
def small():
    prior = random_prior(7, 2, 3, True, torch.float32, seed=9)
    noise = gumbel_noise(2, (3, 4), 7, seed=1)
    weights, cond = loop_inputs(prior, noise, 0.5)
    state = reference.new_sampling_state(weights, 2, 3, 4)
    return weights, cond, noise, state


def _drop(weights, i):
    return weights[:i] + weights[i + 1 :]


@needs_ext
@pytest.mark.parametrize(
    "call, match",
    [
        (lambda w, c, n, s: torch.ops.pegasus.sample_loop(w, c, n[..., :5], 1.0, 0, False), r"noise should be Gumbel noise \[B, H, W, K=7\]"),
        (lambda w, c, n, s: torch.ops.pegasus.sample_loop(w, c, n.double(), 1.0, 0, False), "noise should be Float on cpu like the weights, got Double"),
        (lambda w, c, n, s: torch.ops.pegasus.sample_loop(w, c, n[:0], 1.0, 0, False), r"with B, H, W >= 1"),
        (lambda w, c, n, s: torch.ops.pegasus.sample_loop(w, c, n, 0.0, 0, False), "temperature should be > 0, got 0"),
        (lambda w, c, n, s: torch.ops.pegasus.sample_loop(w, c, n, float("nan"), 0, False), "temperature should be > 0"),
        (lambda w, c, n, s: torch.ops.pegasus.sample_loop(w, c[:, :1], n, 1.0, 0, False), r"cond should be \[2, 2, 12\], got \[2, 1, 12\]"),
        (lambda w, c, n, s: torch.ops.pegasus.sample_loop(_drop(w, 3), c, n, 1.0, 0, False), "weights should be the 1 \\+ 7 \\* layers \\+ 4 tensors"),
        (lambda w, c, n, s: torch.ops.pegasus.sample_loop(w[:2] + [w[2].double()] + w[3:], c, n, 1.0, 0, False), r"weights\[2\] is Double but weights\[0\] is Float"),
        (lambda w, c, n, s: torch.ops.pegasus.sample_loop(w[:2] + [w[2][:5]] + w[3:], c, n, 1.0, 0, False), r"weights\[2\] \(layer0 bv\) should be \[12\], got \[5\]"),
        (lambda w, c, n, s: torch.ops.pegasus.sample_loop([w[0].t()] + w[1:], c, n, 1.0, 0, False), r"weights\[3\] \(layer 0 wh\) should be \[h \* C, 2C\], got \[6, 12\]"),
        (lambda w, c, n, s: torch.ops.pegasus.sample_loop(w[:1] + [w[1].t().contiguous().t()] + w[2:], c, n, 1.0, 0, False), r"weights\[1\] \(layer0 wv\) should be contiguous"),
        (lambda w, c, n, s: torch.ops.pegasus.sample_row(s[0][:, :1].contiguous(), s[2], w, c, 0), r"v2h_row should be \[2, 1, 4, 12\], got \[2, 2, 4, 12\]"),
        (lambda w, c, n, s: torch.ops.pegasus.sample_row(s[0], s[2], w, c, -1), "row should be >= 0, got -1"),
        (lambda w, c, n, s: torch.ops.pegasus.sample_row(s[0][:, :1], s[2], w, c, 0), "v_state should be contiguous"),
        (lambda w, c, n, s: torch.ops.pegasus.sample_row(s[0].transpose(2, 3), s[2], w, c, 0), r"v_state \[2, 2, 6, 2, 6\] has no batch or no columns"),
        (lambda w, c, n, s: torch.ops.pegasus.sample_position(s[0], s[1], s[2], w, n[:, 0, 0], 1.0, 0, 0, 4), r"col should be in \[0, 4\), got 4"),
        (lambda w, c, n, s: torch.ops.pegasus.sample_position(s[0], s[1][:, :, :3], s[2], w, n[:, 0, 0], 1.0, 0, 0, 0), r"x_state should be \[2, 2, 5, 6\], got \[2, 2, 3, 6\]"),
        (lambda w, c, n, s: torch.ops.pegasus.sample_position(s[0], s[1], s[2], w, n[:1, 0, 0], 1.0, 0, 0, 0), r"noise should be \[B=2, K=7\], got \[1, 7\]"),
    ],
)
def test_bad_input_raises_before_any_work(small, call, match):
    weights, cond, noise, state = small
    with pytest.raises(RuntimeError, match=match):
        call(weights, cond, noise, [t.clone() for t in state])


@needs_ext
def test_gil_is_released_while_sampling():
    """Another Python thread keeps running while the C++ loop samples: the loop runs without the
    GIL (holding it, the other thread would be stopped for the whole call)."""
    torch.manual_seed(0)
    prior = GatedPixelCNN(channels=32, layers=4).eval()
    noise = gumbel_noise(4, (16, 16), 512, seed=0)
    ticks, done = [], threading.Event()

    def count():
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    thread = threading.Thread(target=count)
    thread.start()
    try:
        start = time.perf_counter()
        draw(prior, 4, noise=noise, sampler="cpu")
        end = time.perf_counter()
    finally:
        done.set()
        thread.join()
    during = [t for t in ticks if start < t < end]
    # Holding the GIL for the whole call would leave no tick inside it; without the GIL the other
    # thread ticks every millisecond or so. The loop takes the GIL briefly between rows only.
    assert len(during) >= 5, (len(during), end - start)


@needs_ext
def test_ctrl_c_stops_the_loop_between_rows(tmp_path):
    script = textwrap.dedent(
        """
        import signal, sys, torch
        # A shell's background job (`pytest ... &`) starts with SIGINT ignored and its children
        # inherit that, so Python would install no handler and sample to the end: restore Ctrl-C.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from pegasus import GatedPixelCNN
        from pegasus.sampling import SamplingOptions, gumbel_noise, sample_indices
        prior = GatedPixelCNN(codes=16, channels=256, layers=8).eval()
        noise = gumbel_noise(16, (256, 24), 16, seed=0)  # ~1 minute of sampling if never stopped
        print("sampling", flush=True)
        try:
            sample_indices(prior, 16, options=SamplingOptions(backend="cpu"), noise=noise)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(3)
        print("finished", flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert proc.stdout.readline().strip() == "sampling"
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        # Returns as soon as the child exits; 300 s because under qemu-aarch64 on a busy core the
        # child needed more than 60 (scripts/aarch64_check.sh with torch 2.13.0).
        out, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 3 and out.strip() == "interrupted", (proc.returncode, out)


@needs_triton
def test_triton_loop_steps_are_the_triton_kernels(monkeypatch):
    """backend="triton" on CPU tensors (interpreter) runs the loop over the Triton launchers of
    pegasus.kernels.sample_step: one row step per row, one position step per position."""
    from pegasus.kernels import sample_step

    calls = {"row": 0, "position": 0}
    row, position = sample_step.sample_row, sample_step.sample_position

    def counted_row(*args):
        calls["row"] += 1
        return row(*args)

    def counted_position(*args):
        calls["position"] += 1
        return position(*args)

    monkeypatch.setattr(sample_step, "sample_row", counted_row)
    monkeypatch.setattr(sample_step, "sample_position", counted_position)
    prior = random_prior(7, 2, 3, True, torch.float64, seed=2)
    noise = gumbel_noise(2, (3, 3), 7, seed=0, dtype=torch.float64)
    weights, cond = loop_inputs(prior, noise, 0.5)
    grid, _ = ops.sample_loop(weights, cond, noise, 1.0, 0, False, backend="triton")
    assert calls == {"row": 3, "position": 9}
    assert torch.equal(grid, draw(prior, 2, noise=noise, sampler="naive"))


@pytest.mark.parametrize("backend", ["reference"] + (["cpu"] if _extension.has_cpp_ops() else []))
def test_the_loop_wrapper_checks_its_inputs_on_every_backend(backend):
    from pegasus import ops

    prior = GatedPixelCNN(codes=5, channels=4, layers=2, kernel=3).eval()
    weights, cond = prior.pack_for_sampling(), prior.sampling_conditioning(torch.zeros(2))
    cases = [
        (torch.zeros(2, 3, 3, 5), 0.0, "temperature should be a finite number > 0, got 0.0"),
        (torch.zeros(2, 3, 3, 5, dtype=torch.float64), 1.0, "noise should be torch.float32 on cpu like the weights, got torch.float64"),
        (torch.zeros(2, 3, 3, 4), 1.0, r"noise should be Gumbel noise \[B, H, W, K=5\] with B, H, W >= 1, got \(2, 3, 3, 4\)"),
        (torch.zeros(3, 3, 3, 5), 1.0, r"sample_loop: cond should be \[2, 3, 8\], got \[2, 2, 8\]"),
    ]
    for noise, temperature, message in cases:
        with pytest.raises(ValueError, match=message):
            ops.sample_loop(weights, cond, noise, temperature, 0, backend=backend)
