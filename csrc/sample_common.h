// Shape checks shared by the cached-sampling ops (csrc/cpu/sample_step.cpp, csrc/sample_loop.cpp).
// The layouts are documented in pegasus/reference.py ("Cached sampling ops") and in
// GatedPixelCNN.pack_for_sampling (pegasus/models/pixelcnn.py).
#pragma once

#include <ATen/ATen.h>

namespace pegasus {

// The sizes a packed prior implies, checked once against every packed tensor.
struct PackedPrior {
  int64_t layers, channels, codes, kernel, half;  // half = kernel / 2
};

// weights: 1 + 7 * layers + 4 tensors (see pack_for_sampling). Checks every shape, dtype, device and
// contiguity, so the kernels can index raw pointers without reading out of bounds.
inline PackedPrior check_weights(at::TensorList weights) {
  TORCH_CHECK(weights.size() >= 12 && (weights.size() - 5) % 7 == 0,
              "sampling: weights should be the 1 + 7 * layers + 4 tensors of pack_for_sampling(), got ",
              weights.size(), " tensors");
  PackedPrior p{};
  p.layers = static_cast<int64_t>((weights.size() - 5) / 7);
  const at::Tensor& emb = weights[0];
  TORCH_CHECK(emb.dim() == 2 && emb.size(0) >= 1 && emb.size(1) >= 1,
              "sampling: weights[0] (embedding) should be [K, C] with K, C >= 1, got ", emb.sizes());
  TORCH_CHECK(emb.scalar_type() == at::kFloat || emb.scalar_type() == at::kDouble,
              "sampling: weights should be float32 or float64, got ", emb.scalar_type());
  p.codes = emb.size(0);
  p.channels = emb.size(1);
  const int64_t c = p.channels;
  // Layer 0 (mask A) keeps h columns of the horizontal kernel: that gives h.
  const at::Tensor& wh0 = weights[3];
  TORCH_CHECK(wh0.dim() == 2 && wh0.size(0) % c == 0 && wh0.size(0) / c >= 1,
              "sampling: weights[3] (layer 0 wh) should be [h * C, 2C], got ", wh0.sizes());
  p.half = wh0.size(0) / c;
  p.kernel = 2 * p.half + 1;
  const int64_t k = p.kernel, h = p.half;
  auto expect = [&](size_t i, at::IntArrayRef want, const char* what) {
    const at::Tensor& t = weights[i];
    TORCH_CHECK(t.sizes() == want, "sampling: weights[", i, "] (", what, ") should be ", want, ", got ",
                t.sizes());
    TORCH_CHECK(t.scalar_type() == emb.scalar_type(), "sampling: weights[", i, "] is ", t.scalar_type(),
                " but weights[0] is ", emb.scalar_type());
    TORCH_CHECK(t.device() == emb.device(), "sampling: weights[", i, "] is on ", t.device(),
                " but weights[0] is on ", emb.device());
    TORCH_CHECK(t.is_contiguous(), "sampling: weights[", i, "] (", what, ") should be contiguous");
  };
  expect(0, {p.codes, c}, "embedding");
  for (int64_t l = 0; l < p.layers; ++l) {
    const size_t base = 1 + 7 * static_cast<size_t>(l);
    const int64_t keep = l == 0 ? h : h + 1;
    expect(base + 0, {keep * k * c, 2 * c}, "wv");
    expect(base + 1, {2 * c}, "bv");
    expect(base + 2, {keep * c, 2 * c}, "wh");
    expect(base + 3, {2 * c, 2 * c}, "wvh");
    expect(base + 4, {2 * c}, "bhv");
    expect(base + 5, {c, 2 * c}, "wos");
    expect(base + 6, {2 * c}, "bos");
  }
  const size_t head = 1 + 7 * static_cast<size_t>(p.layers);
  expect(head + 0, {c, c}, "w1");
  expect(head + 1, {c}, "b1");
  expect(head + 2, {c, p.codes}, "w2");
  expect(head + 3, {p.codes}, "b2");
  return p;
}

inline void check_state(const char* name, const at::Tensor& t, const at::Tensor& like, at::IntArrayRef want) {
  TORCH_CHECK(t.sizes() == want, "sampling: ", name, " should be ", want, ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "sampling: ", name, " is ", t.scalar_type(),
              " but the weights are ", like.scalar_type());
  TORCH_CHECK(t.device() == like.device(), "sampling: ", name, " is on ", t.device(),
              " but the weights are on ", like.device());
  TORCH_CHECK(t.is_contiguous(), "sampling: ", name, " should be contiguous");
}

// v_state [L, B, h+1, W+2h, C] gives B and W; returns them.
inline std::pair<int64_t, int64_t> check_v_state(const at::Tensor& v_state, const PackedPrior& p,
                                                 const at::Tensor& like) {
  TORCH_CHECK(v_state.dim() == 5, "sampling: v_state should be [L, B, h+1, W+2h, C], got ", v_state.sizes());
  const int64_t batch = v_state.size(1), width = v_state.size(3) - 2 * p.half;
  TORCH_CHECK(batch >= 1 && width >= 1, "sampling: v_state ", v_state.sizes(), " has no batch or no columns");
  check_state("v_state", v_state, like, {p.layers, batch, p.half + 1, width + 2 * p.half, p.channels});
  return {batch, width};
}

}  // namespace pegasus
