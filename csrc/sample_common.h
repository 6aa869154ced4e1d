// Shape checks shared by the cached-sampling ops (csrc/cpu/sample_step.cpp, csrc/sample_loop.cpp).
// The state layouts are documented in pegasus/reference.py ("Cached sampling ops"), the packed
// weights in csrc/packed_prior.h (generated from pegasus/packed_prior.py).
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "packed_prior.h"

namespace pegasus {

// The sizes a packed prior implies, checked once against every packed tensor.
struct PackedPrior {
  int64_t layers, channels, codes, kernel, half;  // half = kernel / 2
};

// weights: the packed prior (csrc/packed_prior.h, generated from pegasus/packed_prior.py). Checks
// every shape, dtype, device and contiguity, so the kernels can index raw pointers without reading
// out of bounds.
inline PackedPrior check_weights(at::TensorList weights) {
  const int64_t n = static_cast<int64_t>(weights.size());
  const int64_t body = n - 1 - packed::kHeadTensors;
  TORCH_CHECK(body >= packed::kLayerTensors && body % packed::kLayerTensors == 0,
              "sampling: weights should be the 1 + ", packed::kLayerTensors, " * layers + ", packed::kHeadTensors,
              " tensors of pack_for_sampling(), got ", n, " tensors");
  PackedPrior p{};
  p.layers = body / packed::kLayerTensors;
  const at::Tensor& emb = weights[packed::kEmbedding];
  TORCH_CHECK(emb.dim() == 2 && emb.size(0) >= 1 && emb.size(1) >= 1,
              "sampling: weights[0] (embedding) should be [K, C] with K, C >= 1, got ", emb.sizes());
  TORCH_CHECK(emb.scalar_type() == at::kFloat || emb.scalar_type() == at::kDouble,
              "sampling: weights should be float32 or float64, got ", emb.scalar_type());
  p.codes = emb.size(0);
  p.channels = emb.size(1);
  const int64_t c = p.channels;
  // Layer 0 (mask A) keeps h columns of the horizontal kernel: that gives h.
  const int64_t wh0_index = packed::layer_index(0, packed::kWh);
  const at::Tensor& wh0 = weights[wh0_index];
  TORCH_CHECK(wh0.dim() == 2 && wh0.size(0) % c == 0 && wh0.size(0) / c >= 1, "sampling: weights[", wh0_index,
              "] (layer 0 wh) should be [h * C, 2C], got ", wh0.sizes());
  p.half = wh0.size(0) / c;
  p.kernel = 2 * p.half + 1;
  // Runs at every step of the loop (H*W times a sample): messages are only built on failure.
  auto expect = [&](int64_t i, const packed::Shape& want, const char* part, int64_t l, const char* name) {
    const at::Tensor& t = weights[i];
    const at::IntArrayRef want_sizes(want.size, want.dim);
    TORCH_CHECK(t.sizes() == want_sizes, "sampling: weights[", i, "] (", part, l < 0 ? "" : std::to_string(l), " ",
                name, ") should be ", want_sizes, ", got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == emb.scalar_type(), "sampling: weights[", i, "] is ", t.scalar_type(),
                " but weights[0] is ", emb.scalar_type());
    TORCH_CHECK(t.device() == emb.device(), "sampling: weights[", i, "] is on ", t.device(),
                " but weights[0] is on ", emb.device());
    TORCH_CHECK(t.is_contiguous(), "sampling: weights[", i, "] (", part, l < 0 ? "" : std::to_string(l), " ", name,
                ") should be contiguous");
  };
  expect(packed::kEmbedding, packed::Shape{{p.codes, c}, 2}, "", -1, "embedding");
  for (int64_t l = 0; l < p.layers; ++l) {
    const int64_t keep = l == 0 ? p.half : p.half + 1;
    for (int64_t t = 0; t < packed::kLayerTensors; ++t) {
      const auto which = static_cast<packed::Layer>(t);
      expect(packed::layer_index(l, which), packed::layer_shape(which, keep, p.kernel, c, p.codes), "layer", l,
             packed::layer_name(which));
    }
  }
  for (int64_t t = 0; t < packed::kHeadTensors; ++t) {
    const auto which = static_cast<packed::Head>(t);
    expect(packed::head_index(p.layers, which), packed::head_shape(which, 0, p.kernel, c, p.codes), "head", -1,
           packed::head_name(which));
  }
  return p;
}

// The sizes of weights the caller already checked: check_weights without the checks.
inline PackedPrior packed_sizes(at::TensorList weights) {
  PackedPrior p{};
  p.layers = (static_cast<int64_t>(weights.size()) - 1 - packed::kHeadTensors) / packed::kLayerTensors;
  p.codes = weights[packed::kEmbedding].size(0);
  p.channels = weights[packed::kEmbedding].size(1);
  p.half = weights[packed::layer_index(0, packed::kWh)].size(0) / p.channels;
  p.kernel = 2 * p.half + 1;
  return p;
}

// True on this thread while pegasus::sample_loop runs its steps. The loop checked its weights, noise
// and conditioning once, at its entry, and allocated the states itself, so the C++ step kernels it
// calls skip their own checks: check_weights walks all 1 + 7L + 4 packed tensors, and a sample
// makes H*W + H step calls. A step op called on its own checks everything.
inline bool& in_checked_loop() {
  static thread_local bool flag = false;
  return flag;
}

// Marks the steps run in its scope as the checked loop's (in_checked_loop), until it ends or throws.
class CheckedLoop {
 public:
  CheckedLoop() { in_checked_loop() = true; }
  ~CheckedLoop() { in_checked_loop() = false; }
  CheckedLoop(const CheckedLoop&) = delete;
  CheckedLoop& operator=(const CheckedLoop&) = delete;
};

inline void check_state(const char* name, const at::Tensor& t, const at::Tensor& like, at::IntArrayRef want) {
  TORCH_CHECK(t.sizes() == want, "sampling: ", name, " should be ", want, ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "sampling: ", name, " is ", t.scalar_type(),
              " but the weights are ", like.scalar_type());
  TORCH_CHECK(t.device() == like.device(), "sampling: ", name, " is on ", t.device(),
              " but the weights are on ", like.device());
  TORCH_CHECK(t.is_contiguous(), "sampling: ", name, " should be contiguous");
}

// cond_map [L, B, H, W, 2C] (per-position gate offsets) for a batch of B and W columns, read at
// row `row` < H; returns H.
inline int64_t check_cond_map(const at::Tensor& cond_map, const PackedPrior& p, const at::Tensor& like,
                              int64_t batch, int64_t width, int64_t row) {
  TORCH_CHECK(cond_map.dim() == 5 && cond_map.size(2) > row, "sampling: cond_map should be [L, B, H, W, 2C] with H > row ",
              row, ", got ", cond_map.sizes());
  check_state("cond_map", cond_map, like, {p.layers, batch, cond_map.size(2), width, 2 * p.channels});
  return cond_map.size(2);
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
