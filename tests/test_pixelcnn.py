"""GatedPixelCNN: causality and the absence of a blind spot, proven by gradients; conditioning."""
import json

import pytest
import torch

from pegasus import GatedPixelCNN, PixelCNNConfig


def receptive_field(height: int, width: int, i: int, j: int, layers: int, kernel: int) -> torch.Tensor:
    """Bool [H, W]: the positions the logits at (i, j) must depend on, derived from the layer
    equations: rows i - L*h .. i - 1 with columns j - L*h .. j + L*h, and row i, columns
    j - L*h .. j - 1 (h = kernel // 2)."""
    r = layers * (kernel // 2)
    field = torch.zeros(height, width, dtype=torch.bool)
    field[max(0, i - r) : i, max(0, j - r) : j + r + 1] = True
    field[i, max(0, j - r) : j] = True
    return field


@pytest.mark.parametrize(
    "kernel, layers, height, width, conditional",
    [(3, 1, 5, 6, True), (3, 2, 7, 9, False), (5, 3, 8, 8, True), (3, 6, 6, 5, True)],
)
def test_masks_by_gradient(kernel, layers, height, width, conditional):
    """Each output position depends on no position at or after it in raster order, and on every
    earlier position inside its receptive field (no blind spot). The last case's field covers the
    whole past of every position."""
    torch.manual_seed(0)
    prior = GatedPixelCNN(codes=7, channels=4, layers=layers, kernel=kernel, conditional=conditional).double()
    # The head is position-wise (1x1 convs), so it cannot move a dependence; but a ReLU that is
    # zero at one position hides it from the gradient (seen with 4 channels), so test without them.
    prior.head[0] = prior.head[2] = torch.nn.Identity()
    x = prior.embed(torch.randint(0, 7, (1, height, width))).detach().requires_grad_()
    alpha = torch.tensor([0.3], dtype=torch.float64) if conditional else None
    logits = prior.forward_embedded(x, alpha)
    for i in range(height):
        for j in range(width):
            (grad,) = torch.autograd.grad(logits[0, :, i, j].sum(), x, retain_graph=True)
            depends = grad[0].abs().sum(0) != 0
            expected = receptive_field(height, width, i, j, layers, kernel)
            assert torch.equal(depends, expected), (i, j, depends.int(), expected.int())
            if layers * (kernel // 2) >= max(height, width):  # the field is the whole raster past
                assert torch.equal(depends, torch.arange(height * width).view(height, width) < i * width + j)


def test_first_position_depends_on_nothing_but_alpha():
    torch.manual_seed(0)
    prior = GatedPixelCNN(codes=5, channels=4, layers=2, kernel=3)
    a = prior(torch.randint(0, 5, (1, 4, 4)), torch.tensor([0.2]))[0, :, 0, 0]
    b = prior(torch.randint(0, 5, (1, 4, 4)), torch.tensor([0.2]))[0, :, 0, 0]
    assert torch.allclose(a, b)


def test_conditioning_changes_outputs():
    torch.manual_seed(0)
    prior = GatedPixelCNN(codes=9, channels=8, layers=2, kernel=3)
    idx = torch.randint(0, 9, (2, 4, 4))
    out0 = prior(idx, torch.tensor([0.0, 0.0]))
    out1 = prior(idx, torch.tensor([1.0, 1.0]))
    assert out0.shape == (2, 9, 4, 4)
    assert (out0 - out1).abs().amax(dim=1).min() > 0  # every position sees alpha
    with pytest.raises(ValueError, match=r"needs alpha of shape \(2,\), got None"):
        prior(idx)
    uncond = GatedPixelCNN(codes=9, channels=8, layers=2, kernel=3, conditional=False)
    assert torch.equal(uncond(idx, torch.tensor([0.0, 0.0])), uncond(idx))


def test_config_round_trip_and_errors():
    cfg = PixelCNNConfig(codes=16, grid=[3, 5])
    assert cfg.grid == (3, 5)
    assert PixelCNNConfig(**json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="kernel should be odd and >= 3, got 4"):
        PixelCNNConfig(kernel=4)
    with pytest.raises(ValueError, match="layers should be >= 1, got 0"):
        PixelCNNConfig(layers=0)
    with pytest.raises(ValueError, match=r"int64 code grids \[B, H, W\], got torch.float32 \(2, 3\)"):
        GatedPixelCNN(codes=4, channels=4, layers=1)(torch.zeros(2, 3), torch.zeros(2))
