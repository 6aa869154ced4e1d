// CPU kernels of the cached sampler's two steps, pegasus::sample_row and pegasus::sample_position
// (schemas in csrc/ops.cpp; the pure-PyTorch reference is pegasus/reference.py, which documents the
// state tensors). Matrix products go to at::addmm_out (MKL/oneDNN, threaded); the gates, the
// residuals, the Gumbel-max choice and the gathers are plain loops over raw pointers, because at
// one position of a batch of 1 to 64 the per-op overhead of ATen calls, not arithmetic, dominates.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "../sample_common.h"
#include "small_gemm.h"

namespace pegasus {
namespace {

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

// out[c] = tanh(a[c] + add[c]) * sigmoid(a[C + c] + add[C + c]) for c < C; add may be null.
template <typename T>
inline void gate(const T* a, const T* add, int64_t c, T* out) {
  for (int64_t i = 0; i < c; ++i) {
    const T f = add ? a[i] + add[i] : a[i];
    const T g = add ? a[c + i] + add[c + i] : a[c + i];
    out[i] = std::tanh(f) * sigmoid(g);
  }
}

// Below this many gated values (rows x C) the scalar loop wins: three ATen calls cost ~10 us, while
// std::tanh/std::exp cost ~20 ns a value. Above it, ATen's vectorised tanh and sigmoid win: at a
// 24x24 row of a batch of 16 (24,576 values a layer) the scalar gates took 8 of a row's 11 ms.
constexpr int64_t kVectorGateMin = 1024;

// out = tanh(a[..., :C]) * sigmoid(a[..., C:]) with ATen's vectorised kernels; out may be strided.
void gate_aten(const at::Tensor& a, const at::Tensor& out, int64_t c) {
  at::mul_out(const_cast<at::Tensor&>(out), at::tanh(a.narrow(-1, 0, c)), at::sigmoid(a.narrow(-1, c, c)));
}

// Up to 32 rows run inline: a parallel region costs more than it saves on these sizes, and blocks
// the loop whenever the two cores are shared. Batch 64 splits in two.
template <typename T>
void small_gemm(const T* x, int64_t ldx, const T* w, const T* bias, int64_t ldb, T* out, int64_t m, int64_t k,
                int64_t n) {
  if (m <= 32) {
    small_gemm_rows(x, ldx, w, bias, ldb, out, 0, m, k, n);
    return;
  }
  at::parallel_for(0, m, 32, [&](int64_t begin, int64_t end) {
    small_gemm_rows(x, ldx, w, bias, ldb, out, begin, end, k, n);
  });
}

void sample_row_cpu(const at::Tensor& v_state, const at::Tensor& v2h_row, at::TensorList weights,
                    const at::Tensor& cond, int64_t row) {
  const PackedPrior p = check_weights(weights);
  const auto [batch, width] = check_v_state(v_state, p, weights[0]);
  const int64_t c = p.channels, k = p.kernel, h = p.half, ring = h + 1, padded = width + 2 * h;
  check_state("v2h_row", v2h_row, weights[0], {p.layers, batch, width, 2 * c});
  check_state("cond", cond, weights[0], {p.layers, batch, 2 * c});
  TORCH_CHECK(row >= 0, "sample_row: row should be >= 0, got ", row);
  const int64_t here = row % ring;

  AT_DISPATCH_FLOATING_TYPES(v_state.scalar_type(), "sample_row", [&] {
    using T = scalar_t;
    T* vs = v_state.data_ptr<T>();
    const T* cd = cond.data_ptr<T>();
    auto layer_in = [&](int64_t l, int64_t b, int64_t slot) {  // v_state[l, b, slot] -> [W+2h, C]
      return vs + ((l * batch + b) * ring + slot) * padded * c;
    };
    for (int64_t l = 0; l < p.layers; ++l) {
      const at::Tensor& wv = weights[packed::layer_index(l, packed::kWv)];
      const int64_t rows = wv.size(0) / (k * c);
      // The vertical convolution of row `row` as kernel-row products with no im2col copy: for
      // sample b and kernel row r (ring slot of row row-h+r), the k*C inputs of output column j are
      // the padded row's values j*C .. (j+k)*C, a matrix of W overlapping rows with stride C. Rows of
      // the batch are split across threads; the first kernel row starts from the bias.
      at::Tensor v_pre = at::empty({batch * width, 2 * c}, v_state.options());
      T* vp_out = v_pre.data_ptr<T>();
      const T* wv_p = wv.data_ptr<T>();
      const T* bv_p = weights[packed::layer_index(l, packed::kBv)].data_ptr<T>();
      at::parallel_for(0, batch, 1, [&](int64_t b_begin, int64_t b_end) {
        for (int64_t b = b_begin; b < b_end; ++b) {
          T* out = vp_out + b * width * 2 * c;
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t slot = ((row - h + r) % ring + ring) % ring;
            small_gemm_rows(layer_in(l, b, slot), c, wv_p + r * k * c * 2 * c, r == 0 ? bv_p : out,
                            r == 0 ? 0 : 2 * c, out, 0, width, k * c, 2 * c);
          }
        }
      });
      at::Tensor v2h = v2h_row.select(0, l).view({batch * width, 2 * c});
      small_gemm<T>(vp_out, 2 * c, weights[packed::layer_index(l, packed::kWvh)].data_ptr<T>(),
                    weights[packed::layer_index(l, packed::kBhv)].data_ptr<T>(), 0,
                    v2h.data_ptr<T>(), batch * width, 2 * c, 2 * c);
      const T* vp = v_pre.data_ptr<T>();
      T* vh = v2h.data_ptr<T>();
      const bool vector_gate = batch * width * c >= kVectorGateMin;
      for (int64_t b = 0; b < batch; ++b) {
        const T* add = cd + (l * batch + b) * 2 * c;
        for (int64_t j = 0; j < width; ++j) {
          T* out = vh + (b * width + j) * 2 * c;
          for (int64_t o = 0; o < 2 * c; ++o) out[o] += add[o];
          if (l + 1 < p.layers && !vector_gate) {  // the last layer's vertical stack feeds nothing
            gate(vp + (b * width + j) * 2 * c, add, c, layer_in(l + 1, b, here) + (h + j) * c);
          }
        }
      }
      if (l + 1 < p.layers && vector_gate) {
        at::Tensor pre = v_pre.view({batch, width, 2 * c}) + cond.select(0, l).unsqueeze(1);
        gate_aten(pre, v_state.select(0, l + 1).select(1, here).narrow(1, h, width), c);
      }
    }
  });
}

// Index of the Gumbel-max code of one row: argmax over k of logits[k] / temperature + noise[k],
// restricted to logits >= the top_k-th largest when 0 < top_k < K. Ties go to the first index and a
// NaN score wins, as torch.argmax does in the reference.
template <typename T>
int64_t choose(const T* logits, const T* noise, int64_t noise_stride, int64_t codes, double temperature,
               int64_t top_k, std::vector<T>& scratch) {
  T kth = -std::numeric_limits<T>::infinity();
  const bool restrict = top_k > 0 && top_k < codes;
  if (restrict) {
    scratch.assign(logits, logits + codes);
    std::nth_element(scratch.begin(), scratch.begin() + (top_k - 1), scratch.end(), std::greater<T>());
    kth = scratch[top_k - 1];
  }
  const T t = static_cast<T>(temperature);
  int64_t best_k = 0;
  T best = -std::numeric_limits<T>::infinity();
  bool first = true;
  for (int64_t i = 0; i < codes; ++i) {
    const T s = (restrict && logits[i] < kth) ? -std::numeric_limits<T>::infinity()
                                               : logits[i] / t + noise[i * noise_stride];
    if (first || s > best || (std::isnan(s) && !std::isnan(best))) {
      best = s;
      best_k = i;
      first = false;
    }
  }
  return best_k;
}

std::tuple<at::Tensor, at::Tensor> sample_position_cpu(const at::Tensor& v_state, const at::Tensor& x_state,
                                                       const at::Tensor& v2h_row, at::TensorList weights,
                                                       const at::Tensor& noise, double temperature, int64_t top_k,
                                                       int64_t row, int64_t col) {
  const PackedPrior p = check_weights(weights);
  const auto [batch, width] = check_v_state(v_state, p, weights[0]);
  const int64_t c = p.channels, h = p.half, ring = h + 1, padded_x = width + h;
  check_state("x_state", x_state, weights[0], {p.layers, batch, padded_x, c});
  check_state("v2h_row", v2h_row, weights[0], {p.layers, batch, width, 2 * c});
  TORCH_CHECK(noise.sizes() == at::IntArrayRef({batch, p.codes}), "sample_position: noise should be [B=", batch,
              ", K=", p.codes, "], got ", noise.sizes());
  TORCH_CHECK(noise.scalar_type() == weights[0].scalar_type() && noise.device() == weights[0].device(),
              "sample_position: noise should be ", weights[0].scalar_type(), " on ", weights[0].device(), ", got ",
              noise.scalar_type(), " on ", noise.device());
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0, "sample_position: temperature should be > 0, got ",
              temperature);
  TORCH_CHECK(row >= 0, "sample_position: row should be >= 0, got ", row);
  TORCH_CHECK(col >= 0 && col < width, "sample_position: col should be in [0, ", width, "), got ", col);

  at::Tensor codes = at::empty({batch}, v_state.options().dtype(at::kLong));
  at::Tensor logits;
  AT_DISPATCH_FLOATING_TYPES(v_state.scalar_type(), "sample_position", [&] {
    using T = scalar_t;
    T* xs = x_state.data_ptr<T>();
    auto x_at = [&](int64_t l, int64_t b, int64_t j) { return xs + ((l * batch + b) * padded_x + j) * c; };
    at::Tensor u = at::empty({batch, c}, x_state.options());
    at::Tensor h_pre = at::empty({batch, 2 * c}, x_state.options());
    std::vector<T> skip(batch * c, T(0)), out_skip(batch * 2 * c), hidden(batch * c);
    T* up = u.data_ptr<T>();
    T* hp = h_pre.data_ptr<T>();
    const T* vh = v2h_row.data_ptr<T>();
    auto w_at = [&](int64_t i) { return weights[i].data_ptr<T>(); };
    auto layer_w = [&](int64_t l, packed::Layer t) { return w_at(packed::layer_index(l, t)); };
    auto head_w = [&](packed::Head t) { return w_at(packed::head_index(p.layers, t)); };
    for (int64_t l = 0; l < p.layers; ++l) {
      const int64_t cols = weights[packed::layer_index(l, packed::kWh)].size(0) / c;
      // h_pre = v2h_row[l, :, col] + (columns col-h .. col-h+cols-1 of layer l's input) @ wh.
      small_gemm<T>(x_at(l, 0, col), padded_x * c, layer_w(l, packed::kWh), vh + (l * batch * width + col) * 2 * c,
                    width * 2 * c, hp, batch, cols * c, 2 * c);
      if (batch * c >= kVectorGateMin) {
        gate_aten(h_pre, u, c);
      } else {
        for (int64_t b = 0; b < batch; ++b) gate(hp + b * 2 * c, static_cast<const T*>(nullptr), c, up + b * c);
      }
      small_gemm<T>(up, c, layer_w(l, packed::kWos), layer_w(l, packed::kBos), 0, out_skip.data(), batch, c, 2 * c);
      for (int64_t b = 0; b < batch; ++b) {
        const T* os = out_skip.data() + b * 2 * c;
        if (l + 1 < p.layers) {
          T* next = x_at(l + 1, b, col + h);
          const T* res = x_at(l, b, col + h);  // the first layer has no residual (it would leak the code)
          for (int64_t i = 0; i < c; ++i) next[i] = l > 0 ? os[i] + res[i] : os[i];
        }
        for (int64_t i = 0; i < c; ++i) skip[b * c + i] += os[c + i];
      }
    }
    for (T& v : skip) v = v < T(0) ? T(0) : v;  // relu that keeps NaN, as torch.relu does
    small_gemm<T>(skip.data(), c, head_w(packed::kW1), head_w(packed::kB1), 0, hidden.data(), batch, c, c);
    for (T& v : hidden) v = v < T(0) ? T(0) : v;
    logits = at::empty({batch, p.codes}, x_state.options());
    small_gemm<T>(hidden.data(), c, head_w(packed::kW2), head_w(packed::kB2), 0, logits.data_ptr<T>(), batch, c, p.codes);
    const T* lp = logits.data_ptr<T>();
    const T* np = noise.data_ptr<T>();
    int64_t* cp = codes.data_ptr<int64_t>();
    const T* emb = weights[packed::kEmbedding].data_ptr<T>();
    T* vs = v_state.data_ptr<T>();
    std::vector<T> scratch;
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t code = choose(lp + b * p.codes, np + b * noise.stride(0), noise.stride(1), p.codes, temperature,
                                  top_k, scratch);
      cp[b] = code;
      const T* e = emb + code * c;
      std::memcpy(x_at(0, b, col + h), e, sizeof(T) * c);
      std::memcpy(vs + (((b) * ring + row % ring) * (width + 2 * h) + h + col) * c, e, sizeof(T) * c);
    }
  });
  return {codes, logits};
}

}  // namespace

TORCH_LIBRARY_IMPL(pegasus, CPU, m) {
  m.impl("sample_row", &sample_row_cpu);
  m.impl("sample_position", &sample_position_cpu);
}

}  // namespace pegasus
