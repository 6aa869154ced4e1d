"""Sampling any number of images in bounded memory (issue 14): sample i depends on (seed, i) and the
model alone, whatever n, batch size or backend; three output forms; the packed prior reused
while the weights stay the same."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pegasus import pretrained
from pegasus.cli import main
from pegasus.models.pixelcnn import GatedPixelCNN
from pegasus.sampling import gumbel_noise

from .conftest import needs_ext
from tests._sampling import draw
from pegasus.sampling import SamplingOptions


def test_noise_of_sample_i_depends_on_seed_and_i_alone():
    whole = gumbel_noise(7, (3, 4), 5, seed=11)
    assert torch.equal(gumbel_noise(3, (3, 4), 5, seed=11, first=4), whole[4:])
    assert torch.equal(gumbel_noise(1, (3, 4), 5, seed=11, first=2)[0], whole[2])
    assert not torch.equal(gumbel_noise(1, (3, 4), 5, seed=12)[0], whole[0])
    assert not torch.equal(whole[0], whole[1])


@needs_ext
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_grids_do_not_depend_on_n_or_the_batch_size(backend):
    prior = pretrained().prior
    whole = draw(prior, 12, alpha=0.3, seed=5, sampler=backend)
    for batch_size in (1, 5, 12, 64):
        assert torch.equal(draw(prior, 12, alpha=0.3, seed=5, sampler=backend, batch_size=batch_size), whole)
    assert torch.equal(draw(prior, 4, alpha=0.3, seed=5, sampler=backend), whole[:4])
    alone = [draw(prior, 1, alpha=0.3, seed=5, sampler=backend,
                            noise=gumbel_noise(1, (8, 8), 512, seed=5, first=i)) for i in (3, 11)]
    assert torch.equal(torch.cat(alone), whole[[3, 11]])


@needs_ext
def test_grids_do_not_depend_on_the_backend():
    prior = pretrained().prior
    assert torch.equal(draw(prior, 3, seed=2, sampler="cpu", batch_size=2), draw(prior, 3, seed=2, sampler="naive"))


@needs_ext
def test_three_output_forms_hold_the_same_images(tmp_path):
    run = pretrained()
    expected = run.sample(10, alpha=0.6, options=SamplingOptions(seed=4)).permute(0, 2, 3, 1).numpy()
    common = ["generate", "-n", "10", "--alpha", "0.6", "--seed", "4", "--batch-size", "3"]
    assert main([*common, "--out", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz") as z:
        assert list(z.keys()) == ["arr_0"] and z["arr_0"].dtype == np.uint8
        assert np.array_equal(z["arr_0"], expected)
    assert main([*common, "--out", str(tmp_path / "dir")]) == 0
    files = sorted((tmp_path / "dir").iterdir())
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(10)]
    assert all(np.array_equal(np.asarray(Image.open(f)), expected[i]) for i, f in enumerate(files))
    assert main([*common, "--out", str(tmp_path / "grid.png")]) == 0
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert np.array_equal(grid[2:66:2, 2:66:2], expected[0])  # the first tile, at scale 2 after a 2 px border


@needs_ext
def test_best_of_needs_a_grid(tmp_path, capsys):
    assert main(["generate", "-n", "2", "--best-of", "4", "--out", str(tmp_path / "s.npz")]) == 1
    assert "--best-of keeps the whitest of all samples: it needs an image grid" in capsys.readouterr().err


def _prior() -> GatedPixelCNN:
    torch.manual_seed(0)
    return GatedPixelCNN(codes=7, channels=4, layers=2, kernel=3, grid=(3, 3)).eval()


def _fresh_pack(prior: GatedPixelCNN) -> list[torch.Tensor]:
    clone = GatedPixelCNN(prior.cfg)
    clone.load_state_dict(prior.state_dict())
    return clone.pack_for_sampling()


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_the_packed_prior_is_reused_while_the_weights_stay():
    prior = _prior()
    assert prior.pack_for_sampling() is prior.pack_for_sampling()
    draw(prior, 2, seed=0)
    assert prior.pack_for_sampling() is prior.pack_for_sampling()


def test_in_place_edits_and_load_state_dict_repack():
    prior = _prior()
    before = prior.pack_for_sampling()
    with torch.no_grad():
        prior.head[3].bias.add_(1.0)  # in place: bumps the version counter
    after = prior.pack_for_sampling()
    assert after is not before and _same(after, _fresh_pack(prior))
    other = _prior()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.5)
    prior.load_state_dict(other.state_dict())
    assert _same(prior.pack_for_sampling(), _fresh_pack(other))
    step = torch.optim.SGD(prior.parameters(), lr=0.1)
    prior(torch.zeros(1, 3, 3, dtype=torch.long), torch.zeros(1)).sum().backward()
    step.step()
    assert _same(prior.pack_for_sampling(), _fresh_pack(prior))
    prior.double()
    assert prior.pack_for_sampling()[0].dtype == torch.float64


def test_writes_through_data_need_the_explicit_invalidation():
    prior = _prior()
    stale = prior.pack_for_sampling()
    prior.embedding.weight.data.mul_(2)  # .data does not bump the version counter
    assert prior.pack_for_sampling() is stale
    prior.invalidate_packed()
    assert _same(prior.pack_for_sampling(), _fresh_pack(prior))


def test_the_nan_guard_sees_a_change_after_a_clean_sample():
    prior = _prior()
    draw(prior, 1, seed=0)  # checked and remembered as finite
    with torch.no_grad():
        prior.head[3].bias[0] = float("nan")
    with pytest.raises(ValueError, match=r"prior should have finite parameters, got NaN or inf in head.3.bias"):
        draw(prior, 1, seed=0)
