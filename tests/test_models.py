"""VectorQuantizer and VQVAE: straight-through gradients, EMA updates, restarts, autocast, shapes."""
import pytest
import torch

from pegasus import VQVAE, VectorQuantizer, VQVAEConfig, _extension
from pegasus.models.quantizer import code_perplexity

BACKENDS = ["reference"] + (["cpu"] if _extension.has_cpp_ops() else [])


def clustered(n_clusters=16, per=64, dim=8, seed=0):
    """z_e [B, D, 4, 4] drawn around n_clusters well separated centres."""
    g = torch.Generator().manual_seed(seed)
    centres = 5 * torch.randn(n_clusters, dim, generator=g)
    pts = centres.repeat_interleave(per, 0) + 0.05 * torch.randn(n_clusters * per, dim, generator=g)
    pts = pts[torch.randperm(len(pts), generator=g)]
    return pts.view(-1, 4, 4, dim).permute(0, 3, 1, 2).contiguous(), centres


@pytest.mark.parametrize("ema", [True, False])
def test_straight_through_gradients(ema):
    torch.manual_seed(0)
    vq = VectorQuantizer(6, 3, ema=ema).double().eval()
    with torch.no_grad():
        vq.embedding.copy_(torch.randn(6, 3, dtype=torch.float64))
    vq.initialized.fill_(True)
    # Points near codes: a finite-difference step never changes the chosen code.
    z = vq.embedding.detach()[torch.tensor([0, 3, 5, 1])] + 0.01 * torch.randn(4, 3, dtype=torch.float64)
    z = z.view(1, 2, 2, 3).permute(0, 3, 1, 2).contiguous().requires_grad_()
    if ema:  # loss = beta * ||z - sg[e]||^2 is a true function of z near the codes: gradcheck it
        assert torch.autograd.gradcheck(lambda t: vq(t).loss, (z,))
    else:  # stop-gradients make the loss differ from its derivative: check the formulas instead
        out = vq(z)
        gz, ge = torch.autograd.grad(out.loss, (z, vq.embedding))
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 3)
        idx = out.indices.flatten()
        n = flat.numel()
        q = vq.embedding.detach()[idx]
        torch.testing.assert_close(gz.permute(0, 2, 3, 1).reshape(-1, 3), 2 * 0.25 * (flat - q) / n)
        expect_ge = torch.zeros_like(ge).index_add_(0, idx, 2 * (q - flat) / n)
        torch.testing.assert_close(ge, expect_ge)
    # Straight-through: a downstream g sees d g(ST(z)) / dz = g'(q), with g itself gradchecked.
    g = torch.nn.Conv2d(3, 2, 1).double()
    q = vq(z).quantized.detach().requires_grad_()
    torch.testing.assert_close(q, vq.lookup(vq(z).indices))
    assert torch.autograd.gradcheck(lambda t: g(t).tanh(), (q,))
    (grad_through,) = torch.autograd.grad(g(vq(z).quantized).tanh().sum(), z)
    (grad_at_q,) = torch.autograd.grad(g(q).tanh().sum(), q)
    torch.testing.assert_close(grad_through, grad_at_q)


def test_quantized_output_is_the_nearest_code():
    vq = VectorQuantizer(16, 8).eval()
    z, _ = clustered()
    out = vq(z)
    q = vq.lookup(out.indices)
    torch.testing.assert_close(out.quantized, q)
    assert out.indices.shape == (z.shape[0], 4, 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_data_initialisation_prevents_collapse(backend):
    torch.manual_seed(0)
    z, centres = clustered(n_clusters=16)
    vq = VectorQuantizer(32, 8, backend=backend).train()
    out = vq(z)
    # Codes start on data: the very first batch already spreads over the clusters.
    assert out.perplexity > 8 and bool(vq.initialized)
    for _ in range(30):
        out = vq(z)
    # Still spread over the 16 clusters (a collapsed quantiser has perplexity ~1), and most
    # cluster centres have a code of their own nearby.
    assert out.perplexity > 12
    d = torch.cdist(centres, vq.embedding.detach()).min(1).values
    assert (d < 0.5).sum() >= 13


def test_ema_update_matches_formula():
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 2, decay=0.9, restart_after=0).train()
    vq.initialized.fill_(True)
    codes = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [10.0, 10.0]])
    vq.embedding.data.copy_(codes)
    vq.ema_sum.copy_(codes)
    z = torch.tensor([[0.1, 0.0], [0.0, -0.1], [0.9, 0.1], [0.2, 0.9]]).view(1, 2, 2, 2).permute(0, 3, 1, 2)
    out = vq(z)
    assert out.indices.flatten().tolist() == [0, 0, 1, 2]
    torch.testing.assert_close(out.quantized, codes[[0, 0, 1, 2]].view(1, 2, 2, 2).permute(0, 3, 1, 2))  # old codes
    count = 0.9 * torch.ones(4) + 0.1 * torch.tensor([2.0, 1.0, 1.0, 0.0])
    total = count.sum()
    smoothed = (count + 1e-5) / (total + 4 * 1e-5) * total
    sums = 0.9 * codes + 0.1 * torch.tensor([[0.1, -0.1], [0.9, 0.1], [0.2, 0.9], [0.0, 0.0]])
    torch.testing.assert_close(vq.ema_count, count)
    torch.testing.assert_close(vq.embedding.detach(), sums / smoothed[:, None])
    assert vq.steps_unused.tolist() == [0, 0, 0, 1]


@pytest.mark.parametrize("ema", [True, False])
def test_dead_codes_restart_from_encoder_outputs(ema):
    torch.manual_seed(0)
    z, _ = clustered(n_clusters=4, dim=8)
    vq = VectorQuantizer(8, 8, ema=ema, restart_after=3).train()
    vq(z)
    with torch.no_grad():  # push two codes far away: no latent picks them any more
        vq.embedding.data[[1, 5]] = 1e3
        if ema:
            vq.ema_sum[[1, 5]] = 1e3
    for _ in range(3):
        vq(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 8)
    near = torch.cdist(vq.embedding.detach()[[1, 5]], flat).min(1).values
    assert near.max() < 1.0, "dead codes were not re-seeded from the batch"
    assert vq.steps_unused[[1, 5]].tolist() == [0, 0]
    if ema:
        assert vq.ema_count[[1, 5]].tolist() == [1.0, 1.0]


def test_autocast_computes_in_float32_and_returns_input_dtype():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 8).eval()
    z, _ = clustered()
    ref = vq(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vq(z.bfloat16())
    assert out.quantized.dtype == torch.bfloat16
    assert out.loss.dtype == torch.float32
    assert (out.indices == ref.indices).float().mean() > 0.99


@pytest.mark.parametrize("size, latent", [(32, 8), (96, 24), (16, 4)])
def test_vqvae_shapes(size, latent):
    model = VQVAE(codes=16, dim=8, hidden=16, res_hidden=8).eval()
    x = torch.rand(2, 3, size, size)
    out = model(x)
    assert out.recon.shape == x.shape and out.indices.shape == (2, latent, latent)
    assert model.decode_indices(out.indices).shape == x.shape


def test_vqvae_downsample_factor_and_bad_input():
    model = VQVAE(codes=16, dim=8, hidden=16, res_hidden=8, downsample=8).eval()
    assert model.encode(torch.rand(1, 3, 32, 32)).shape == (1, 8, 4, 4)
    with pytest.raises(ValueError, match=r"H and W multiples of 8, got \(1, 3, 30, 32\)"):
        model.encode(torch.rand(1, 3, 30, 32))
    with pytest.raises(ValueError, match="downsample should be a power of two >= 2, got 3"):
        VQVAEConfig(downsample=3)


def test_backends_agree_inside_the_model():
    if len(BACKENDS) < 2:
        pytest.skip("pegasus._C not loaded")
    x = torch.rand(4, 3, 16, 16)
    outs = []
    for backend in BACKENDS:
        torch.manual_seed(0)
        model = VQVAE(codes=32, dim=8, hidden=16, res_hidden=8, backend=backend).train()
        outs.append(model(x))
    assert torch.equal(outs[0].indices, outs[1].indices)
    torch.testing.assert_close(outs[0].recon, outs[1].recon)


def test_perplexity():
    assert code_perplexity(torch.tensor([5, 0, 0, 0])).item() == pytest.approx(1.0)
    assert code_perplexity(torch.tensor([3, 3, 3, 3])).item() == pytest.approx(4.0)
