"""The packed prior: the layout of the weights that the sampling ops read, described once.

`GatedPixelCNN.pack_for_sampling()` returns a list of 1 + 7 * layers + 4 contiguous tensors in the
prior's dtype and device. Matrices are [in, out], so a batch of inputs X[B, in] maps to X @ W. The
sizes: C = channels, k = kernel, h = k // 2, K = codes, and `keep`, the kernel rows (vertical) or
columns (horizontal) a layer keeps: h for layer 0 (mask A: only what lies above, or left of, the
current position), h + 1 for the mask B layers. Masked-out taps are left out, not stored as zeros.

LAYOUT below is the one description. Python reads it here (the packing, the reference steps, the
Triton launchers' checks); C++ reads csrc/packed_prior.h, which `python -m pegasus.packed_prior`
writes from it (tests/test_packed_prior.py checks that the file is current).
"""
from __future__ import annotations

import functools
import sys
from typing import NamedTuple

from torch import Tensor

# (name, shape as expressions over keep, k, c, codes, what it holds). Valid Python and C++ alike.
EMBEDDING = (("embedding", ("codes", "c"), "code embedding"),)
LAYER = (
    ("wv", ("keep * k * c", "2 * c"), "vertical conv, row-major over (row, dx, c)"),
    ("bv", ("2 * c",), "its bias"),
    ("wh", ("keep * c", "2 * c"), "horizontal conv, row-major over (dx, c)"),
    ("wvh", ("2 * c", "2 * c"), "vertical-to-horizontal 1x1"),
    ("bhv", ("2 * c",), "bias of wvh + bias of wh (both enter the horizontal stack once)"),
    ("wos", ("c", "2 * c"), "out and skip 1x1 side by side (columns :C out, C: skip)"),
    ("bos", ("2 * c",), "their biases"),
)
HEAD = (
    ("w1", ("c", "c"), "head 1x1"),
    ("b1", ("c",), "its bias"),
    ("w2", ("c", "codes"), "head 1x1 to the logits"),
    ("b2", ("codes",), "its bias"),
)
LAYOUT = {"embedding": EMBEDDING, "layer": LAYER, "head": HEAD}


class LayerWeights(NamedTuple):
    wv: Tensor
    bv: Tensor
    wh: Tensor
    wvh: Tensor
    bhv: Tensor
    wos: Tensor
    bos: Tensor


class HeadWeights(NamedTuple):
    w1: Tensor
    b1: Tensor
    w2: Tensor
    b2: Tensor


assert LayerWeights._fields == tuple(n for n, _, _ in LAYER) and HeadWeights._fields == tuple(n for n, _, _ in HEAD)


def count(layers: int) -> int:
    """Number of packed tensors of a prior of `layers` layers."""
    return len(EMBEDDING) + len(LAYER) * layers + len(HEAD)


def num_layers(weights: list[Tensor]) -> int:
    """The layer count a packed list implies (ValueError when no count fits)."""
    body = len(weights) - len(EMBEDDING) - len(HEAD)
    if body < len(LAYER) or body % len(LAYER):
        raise ValueError(f"packed prior: expected 1 + 7 * layers + 4 tensors (layers >= 1), got {len(weights)}")
    return body // len(LAYER)


def index(name: str, layer: int = 0, layers: int = 0) -> int:
    """Position of tensor `name` (of `layer` for a layer tensor; the head needs `layers`)."""
    for i, (n, _, _) in enumerate(LAYER):
        if n == name:
            return len(EMBEDDING) + len(LAYER) * layer + i
    for i, (n, _, _) in enumerate(HEAD):
        if n == name:
            return len(EMBEDDING) + len(LAYER) * layers + i
    if name == EMBEDDING[0][0]:
        return 0
    raise KeyError(name)


def layer(weights: list[Tensor], l: int) -> LayerWeights:
    """The 7 tensors of layer `l`."""
    start = len(EMBEDDING) + len(LAYER) * l
    return LayerWeights(*weights[start : start + len(LAYER)])


def head(weights: list[Tensor]) -> HeadWeights:
    return HeadWeights(*weights[len(weights) - len(HEAD) :])


def _size(expr: str, sizes: dict[str, int]) -> int:
    return int(eval(expr, {"__builtins__": {}}, sizes))  # LAYOUT's own constant expressions only


@functools.lru_cache(maxsize=32)
def shapes(layers: int, kernel: int, channels: int, codes: int) -> tuple[tuple[int, ...], ...]:
    """The shape of every packed tensor, in order."""
    h = kernel // 2
    sizes = {"k": kernel, "c": channels, "codes": codes}
    out = [tuple(_size(e, {**sizes, "keep": 0}) for e in shape) for _, shape, _ in EMBEDDING]
    for l in range(layers):
        keep = h if l == 0 else h + 1
        out += [tuple(_size(e, {**sizes, "keep": keep}) for e in shape) for _, shape, _ in LAYER]
    out += [tuple(_size(e, {**sizes, "keep": 0}) for e in shape) for _, shape, _ in HEAD]
    return tuple(out)


def names(layers: int) -> list[str]:
    """"embedding", "layer0.wv", ..., "head.b2": what each position holds, for messages."""
    return (
        [n for n, _, _ in EMBEDDING]
        + [f"layer{l}.{n}" for l in range(layers) for n, _, _ in LAYER]
        + [f"head.{n}" for n, _, _ in HEAD]
    )


def cpp_header() -> str:
    """csrc/packed_prior.h: LAYOUT for C++."""

    def enum(prefix: str, group: tuple) -> str:
        return ", ".join(f"k{prefix}{n.capitalize()} = {i}" for i, (n, _, _) in enumerate(group))

    def shape_fn(fn: str, enum_type: str, group: tuple) -> str:
        cases = "\n".join(
            f"    case {i}: return {{{{{', '.join(shape + ('0',) * (2 - len(shape)))}}}, {len(shape)}}};  // {n}: {what}"
            for i, (n, shape, what) in enumerate(group)
        )
        return (
            f"inline Shape {fn}({enum_type} t, int64_t keep, int64_t k, int64_t c, int64_t codes) {{\n"
            f"  (void)keep; (void)k; (void)codes;\n  switch (static_cast<int>(t)) {{\n{cases}\n  }}\n  return {{}};\n}}"
        )

    def name_fn(fn: str, enum_type: str, group: tuple) -> str:
        names_ = ", ".join(f'"{n}"' for n, _, _ in group)
        return f"inline const char* {fn}({enum_type} t) {{\n  static const char* names[] = {{{names_}}};\n  return names[t];\n}}"

    return f"""// Generated from pegasus/packed_prior.py by `python -m pegasus.packed_prior > csrc/packed_prior.h`.
// Do not edit: change LAYOUT there and regenerate (tests/test_packed_prior.py checks this file).
// The packed prior: 1 + {len(LAYER)} * layers + {len(HEAD)} tensors; shapes over keep (h for layer 0, mask A;
// h + 1 after), k (kernel), c (channels), codes (K).
#pragma once

#include <cstdint>

namespace pegasus {{
namespace packed {{

enum Layer : int64_t {{ {enum("", LAYER)} }};
enum Head : int64_t {{ {enum("", HEAD)} }};
constexpr int64_t kLayerTensors = {len(LAYER)};
constexpr int64_t kHeadTensors = {len(HEAD)};

// A packed tensor's shape: `dim` sizes (1 or 2) in `size`.
struct Shape {{
  int64_t size[2];
  int64_t dim;
}};

constexpr int64_t kEmbedding = 0;
inline int64_t count(int64_t layers) {{ return {len(EMBEDDING)} + kLayerTensors * layers + kHeadTensors; }}
inline int64_t layer_index(int64_t l, Layer t) {{ return {len(EMBEDDING)} + kLayerTensors * l + t; }}
inline int64_t head_index(int64_t layers, Head t) {{ return {len(EMBEDDING)} + kLayerTensors * layers + t; }}

{shape_fn("layer_shape", "Layer", LAYER)}

{shape_fn("head_shape", "Head", HEAD)}

{name_fn("layer_name", "Layer", LAYER)}

{name_fn("head_name", "Head", HEAD)}

}}  // namespace packed
}}  // namespace pegasus
"""


if __name__ == "__main__":
    sys.stdout.write(cpp_header())
