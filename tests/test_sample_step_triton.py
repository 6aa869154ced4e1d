"""The Triton kernels of pegasus::sample_row and pegasus::sample_position (pegasus.kernels.sample_step)
against pegasus.reference.

Runs on CUDA (through the dispatcher, whose CUDA kernels of the two ops are the Triton ones), or on
CPU tensors (the launchers, called directly as pegasus.ops does: the dispatcher gives CPU tensors
to the C++ kernels) in Triton's interpreter when TRITON_INTERPRET=1 is set at import
(`TRITON_INTERPRET=1 pytest tests/test_sample_step_triton.py`). The interpreter takes ~20-40 ms per
position and layer on these tiny priors, so the configs are small and chosen for what they cover.
"""
import importlib.util

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from pegasus import GatedPixelCNN, _extension, ops, reference
from pegasus.backends import triton_interpreting
from pegasus.sampling import gumbel_noise

from .conftest import needs_ext, random_prior

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)
if not (torch.cuda.is_available() or triton_interpreting()):
    pytest.skip("needs CUDA or TRITON_INTERPRET=1 (CI sets it)", allow_module_level=True)

from pegasus.kernels import sample_step  # registers the Triton kernels of the ops (for CUDA)

DEVICE = "cpu" if triton_interpreting() else "cuda"
TOLERANCES = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-5, 1e-4)}  # (states, logits) atol


def triton_steps():
    """The steps under test: the wrappers of pegasus.ops with backend="triton" when the schemas are
    loaded (the dispatcher's Triton kernels on CUDA, the launchers on CPU tensors), else the launchers."""
    if _extension.has_cpp_ops():

        def row(*args):
            return ops.sample_row(*args, backend="triton")

        def position(*args):
            return ops.sample_position(*args, backend="triton")

        return row, position
    return sample_step.sample_row, sample_step.sample_position


def setup(codes, layers, kernel, conditional, dtype, batch, grid, channels=6, seed=0):
    """(weights, cond, noise Tensor[B, H, W, K]) of a random prior on DEVICE."""
    if channels == 6:
        prior = random_prior(codes, layers, kernel, conditional, dtype, seed=seed)
    else:  # wider than a 16-channel tile: C is padded and masked inside a larger power of two
        torch.manual_seed(seed)
        prior = GatedPixelCNN(codes=codes, channels=channels, layers=layers, kernel=kernel, conditional=conditional)
        with torch.no_grad():
            for p in prior.parameters():
                p.normal_(0, 0.3)
        prior = prior.to(dtype).eval()
    prior = prior.to(DEVICE)
    cond = prior.sampling_conditioning(torch.linspace(0.1, 0.9, batch, dtype=dtype, device=DEVICE))
    noise = gumbel_noise(batch, grid, codes, seed=seed + 1, dtype=dtype, device=DEVICE)
    return prior.pack_for_sampling(), cond, noise


def assert_states_close(got, want, atol, where):
    for name, g, w in zip(("v_state", "x_state", "v2h_row"), got, want):
        torch.testing.assert_close(g, w, atol=atol, rtol=0, msg=lambda m, name=name: f"{name} at {where}: {m}")


def run_lockstep(weights, cond, noise, temperature, top_k):
    """The raster loop of reference.sample_loop, run with the reference steps and the Triton steps on
    two copies of one state, compared after every step. Returns (grid, logits) of the Triton steps."""
    row_fn, pos_fn = triton_steps()
    batch, height, width, codes = noise.shape
    atol, logits_atol = TOLERANCES[weights[0].dtype]
    ref = reference.new_sampling_state(weights, batch, height, width)
    tri = tuple(t.clone() for t in ref)
    grid = torch.zeros(batch, height, width, dtype=torch.int64, device=DEVICE)
    logits = weights[0].new_empty(batch, height, width, codes)
    for i in range(height):
        reference.sample_row(ref[0], ref[2], weights, cond, i)
        row_fn(tri[0], tri[2], weights, cond, i)
        assert_states_close(tri, ref, atol, f"row {i}")
        ref[1].zero_()
        tri[1].zero_()
        for j in range(width):
            want_codes, want_logits = reference.sample_position(*ref, weights, noise[:, i, j], temperature, top_k, i, j)
            got_codes, got_logits = pos_fn(*tri, weights, noise[:, i, j], temperature, top_k, i, j)
            assert got_codes.dtype == torch.int64 and got_logits.dtype == weights[0].dtype
            torch.testing.assert_close(got_logits, want_logits, atol=logits_atol, rtol=0)
            assert torch.equal(got_codes, want_codes), (i, j, got_codes, want_codes)
            assert_states_close(tri, ref, atol, f"({i}, {j})")
            grid[:, i, j], logits[:, i, j] = got_codes, got_logits
    return grid, logits


@pytest.mark.parametrize(
    "kernel, layers, grid, conditional, batch, codes, dtype",
    [
        (3, 1, (8, 8), True, 3, 13, torch.float64),
        (5, 4, (5, 7), True, 1, 13, torch.float64),
        (3, 2, (5, 7), False, 3, 1, torch.float32),  # one code: always 0
        (5, 3, (3, 1), True, 3, 13, torch.float32),  # narrower than the kernel
        (3, 4, (3, 4), False, 1, 13, torch.float32),
        (5, 2, (8, 8), False, 3, 13, torch.float64),
    ],
)
def test_steps_match_reference(kernel, layers, grid, conditional, batch, codes, dtype):
    weights, cond, noise = setup(codes, layers, kernel, conditional, dtype, batch, grid, seed=layers * 10 + kernel)
    got, _ = run_lockstep(weights, cond, noise, 0.8, 0)
    if codes == 1:
        assert (got == 0).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_top_k_and_temperature(dtype):
    weights, cond, noise = setup(13, 2, 5, True, dtype, 3, (3, 4), seed=3)
    run_lockstep(weights, cond, noise * 3, 0.7, 3)  # noise that often picks a code outside the top 3


def test_wide_channels_several_programs_and_logit_tiles():
    # C=40 pads to a 64-channel tile (masked), K=70 takes two 64-code tiles, B=17 two programs.
    weights, cond, noise = setup(70, 2, 3, True, torch.float32, 17, (2, 3), channels=40)
    run_lockstep(weights, cond, noise, 1.0, 0)


def test_same_as_reference_loop():
    weights, cond, noise = setup(13, 2, 3, True, torch.float64, 2, (4, 5), seed=5)
    want_grid, want_logits = reference.sample_loop(weights, cond, noise, 0.9, 0, return_logits=True)
    got_grid, got_logits = run_lockstep(weights, cond, noise, 0.9, 0)
    assert torch.equal(got_grid, want_grid)
    torch.testing.assert_close(got_logits, want_logits, atol=1e-12, rtol=0)


def mid_grid_inputs(top_k=0, dtype=torch.float64):
    """Arguments of both ops at (row 2, col 3) of a 4x5 grid, the state filled by reference steps."""
    weights, cond, noise = setup(13, 3, 5, True, dtype, 3, (4, 5), seed=7)
    v_state, x_state, v2h_row = reference.new_sampling_state(weights, 3, 4, 5)
    for i in range(3):
        reference.sample_row(v_state, v2h_row, weights, cond, i)
        x_state.zero_()
        for j in range(5 if i < 2 else 3):
            reference.sample_position(v_state, x_state, v2h_row, weights, noise[:, i, j], 1.0, 0, i, j)
    row_args = (v_state, v2h_row, weights, cond, 3)
    position_args = (v_state, x_state, v2h_row, weights, noise[:, 2, 3], 0.7, top_k, 2, 3)
    return row_args, position_args


@needs_ext
@pytest.mark.skipif(DEVICE != "cuda", reason="the dispatcher runs the Triton kernels on CUDA tensors only (the C++ ones on CPU)")
@pytest.mark.parametrize("top_k", [0, 3])
def test_opcheck(top_k):
    row_args, position_args = mid_grid_inputs(top_k)
    torch.library.opcheck(torch.ops.pegasus.sample_position.default, position_args)
    torch.library.opcheck(torch.ops.pegasus.sample_row.default, row_args)


@needs_ext
def test_fake_shapes():

    _, position_args = mid_grid_inputs()
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in position_args]
        fake[3] = [mode.from_tensor(w) for w in position_args[3]]
        codes, logits = torch.ops.pegasus.sample_position(*fake)
    assert codes.shape == (3,) and codes.dtype == torch.int64
    assert logits.shape == (3, 13) and logits.dtype == torch.float64


BAD_INPUT = [
    ("x_state float32", r"sample_position: x_state should be torch.float64 on cpu like the weights, got torch.float32 on cpu"),
    ("v2h_row strided", r"sample_position: v2h_row should be contiguous, got strides"),
    ("noise K-1", r"sample_position: noise should be torch.float64 \[B=3, K=13\] on cpu, got torch.float64 \[3, 12\] on cpu"),
    ("col W", r"sample_position: col should be in \[0, W=5\), got 5"),
    ("weights[3] shape", r"sample_position: weights\[3\] \(layer0\.\w+\) should be \[12, 12\], got \[12, 13\]"),
    ("row weights short", r"packed prior: expected 1 \+ 7 \* layers \+ 4 tensors \(layers >= 1\), got 25"),
    ("row cond float32", r"sample_row: cond should be torch.float64 on cpu like the weights, got torch.float32 on cpu"),
]


def _bad_call(kind: str) -> tuple[str, tuple]:
    """(op, arguments) of one bad call of BAD_INPUT."""
    row_args, position_args = mid_grid_inputs()
    v_state, x_state, v2h_row, weights, noise, *rest = position_args
    bad = list(weights)
    bad[3] = torch.zeros(12, 13, dtype=torch.float64)
    return {
        "x_state float32": ("sample_position", (v_state, x_state.float(), v2h_row, weights, noise, *rest)),
        "v2h_row strided": ("sample_position", (v_state, x_state, v2h_row.transpose(2, 3).contiguous().transpose(2, 3), weights, noise, *rest)),
        "noise K-1": ("sample_position", (v_state, x_state, v2h_row, weights, noise[:, :12], *rest)),
        "col W": ("sample_position", (v_state, x_state, v2h_row, weights, noise, 0.7, 0, 2, 5)),
        "weights[3] shape": ("sample_position", (v_state, x_state, v2h_row, bad, noise, *rest)),
        "row weights short": ("sample_row", (row_args[0], row_args[1], weights[:-1], row_args[3], 3)),
        "row cond float32": ("sample_row", (row_args[0], row_args[1], weights, row_args[3].float(), 3)),
    }[kind]


@pytest.mark.skipif(DEVICE != "cpu", reason="the messages name CPU tensors")
@pytest.mark.parametrize("kind, message", BAD_INPUT, ids=[k for k, _ in BAD_INPUT])
def test_bad_input_one_rule_for_every_backend_and_the_fake(kind, message):
    """The step ops' rules are written once (pegasus.ops): the wrappers check them before any
    backend, so the Triton launchers check nothing per step, and the fakes are the same rules."""
    op, args = _bad_call(kind)
    for backend in ["reference", "triton"] + (["cpu"] if _extension.has_cpp_ops() else []):
        with pytest.raises(ValueError, match=message):
            getattr(ops, op)(*args, backend=backend)
    if _extension.has_cpp_ops():
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            fake = [[mode.from_tensor(w) for w in a] if isinstance(a, list) else mode.from_tensor(a) if isinstance(a, torch.Tensor) else a
                    for a in args]
            with pytest.raises(ValueError, match=message):
                getattr(torch.ops.pegasus, op)(*fake)


@pytest.mark.skipif(DEVICE != "cpu", reason="CPU tensors")
def test_cpu_tensors_need_the_interpreter(monkeypatch):
    from pegasus import backends

    row_args, _ = mid_grid_inputs()
    monkeypatch.setattr(backends, "triton_interpreting", lambda: False)
    with pytest.raises(RuntimeError, match=r"runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1; got tensors on cpu"):
        ops.sample_row(*row_args, backend="triton")
