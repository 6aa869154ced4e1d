"""The packed prior is described once (pegasus/packed_prior.py): the packing, the reference steps,
the Triton checks and the C++ header all read that one description."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pegasus import packed_prior
from pegasus.models.pixelcnn import GatedPixelCNN

from .conftest import needs_ext

HEADER = Path(__file__).parents[1] / "csrc" / "packed_prior.h"


def test_cpp_header_is_generated_from_the_description():
    assert HEADER.read_text() == packed_prior.cpp_header(), (
        "csrc/packed_prior.h is stale: run `python -m pegasus.packed_prior > csrc/packed_prior.h` and rebuild"
    )


@pytest.mark.parametrize("layers, kernel, channels, codes", [(1, 3, 4, 5), (3, 5, 6, 11), (8, 5, 64, 512)])
def test_pack_for_sampling_follows_the_layout(layers, kernel, channels, codes):
    prior = GatedPixelCNN(codes=codes, channels=channels, layers=layers, kernel=kernel)
    packed = prior.pack_for_sampling()
    assert len(packed) == packed_prior.count(layers) == 1 + 7 * layers + 4
    assert tuple(t.shape for t in packed) == packed_prior.shapes(layers, kernel, channels, codes)
    assert packed_prior.num_layers(packed) == layers
    assert all(t.is_contiguous() for t in packed)
    # The named views and positions agree with the list.
    last = packed_prior.layer(packed, layers - 1)
    assert last.wos is packed[packed_prior.index("wos", layers - 1)]
    assert packed_prior.head(packed).b2 is packed[packed_prior.index("b2", layers=layers)] is packed[-1]
    assert packed_prior.names(layers)[packed_prior.index("wh", 0)] == "layer0.wh"


def test_num_layers_refuses_a_list_of_another_length():
    with pytest.raises(ValueError, match="expected 1 \\+ 7 \\* layers \\+ 4 tensors"):
        packed_prior.num_layers([torch.zeros(1)] * 6)


@needs_ext
def test_cpp_checks_name_the_tensor_from_the_layout():
    prior = GatedPixelCNN(codes=5, channels=4, layers=2, kernel=3, grid=(2, 2)).eval()
    packed = prior.pack_for_sampling()
    bad = list(packed)
    i = packed_prior.index("wvh", 1)
    bad[i] = bad[i][:, :-1].contiguous()
    noise = torch.zeros(1, 2, 2, 5)
    cond = prior.sampling_conditioning(torch.zeros(1))
    with pytest.raises(RuntimeError, match=rf"weights\[{i}\] \(layer1 wvh\) should be \[8, 8\], got \[8, 7\]"):
        torch.ops.pegasus.sample_loop(bad, cond, noise, 1.0, 0, False)
