// CPU kernels of the cached sampler's two steps, pegasus::sample_row and pegasus::sample_position
// (schemas in csrc/ops.cpp; the pure-PyTorch reference is pegasus/reference.py, which documents the
// state tensors). Everything is plain loops over raw pointers and the vector kernels of
// csrc/cpu/vec_kernels.h (a register-blocked GEMM and the gate, built for AVX-512, AVX2 and
// portably): at one position of a batch of 1 to 64 the per-op overhead of ATen calls, not
// arithmetic, dominated (an ATen tanh + sigmoid + mul gate took ~20 us of a 70 us position step).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

#include "../sample_common.h"
#include "vec_kernels.h"

namespace pegasus {
namespace {

// Work (multiply-adds) below which a step runs on the calling thread: a parallel region costs
// ~5 us when both cores are free, and much more when another process holds one. The default
// prior's position step is ~300K multiply-adds a sample, its row step ~1.1M a sample.
constexpr int64_t kParallelMacs = 1 << 19;

// Runs fn(begin, end) over [0, n) in one chunk per thread when `macs` of work make that worth it,
// else on this thread.
template <typename F>
void maybe_parallel(int64_t n, int64_t macs, const F& fn) {
  if (n >= 2 && macs >= kParallelMacs && at::get_num_threads() > 1 && !at::in_parallel_region()) {
    at::parallel_for(0, n, 1, fn);
  } else {
    fn(0, n);
  }
}

// out[m, :n] = bias + x.row(m) @ w for m < rows, the columns split across threads (in blocks of 64,
// the AVX-512 kernel's width) when the product is big enough: a batch of 1 has too few rows to split.
template <typename T>
void gemm_split_columns(const Rows<T>& x, const T* w, const T* bias, int64_t ldb, T* out, int64_t rows, int64_t k,
                        int64_t n) {
  constexpr int64_t kCols = 64;
  const int64_t blocks = (n + kCols - 1) / kCols;
  maybe_parallel(blocks, rows * k * n, [&](int64_t begin, int64_t end) {
    small_gemm(x, w, bias, ldb, out, 0, rows, begin * kCols, std::min(n, end * kCols), k, n);
  });
}

void sample_row_cpu(const at::Tensor& v_state, const at::Tensor& v2h_row, at::TensorList weights,
                    const at::Tensor& cond, int64_t row, const std::optional<at::Tensor>& cond_map) {
  const bool checked = in_checked_loop();
  const PackedPrior p = checked ? packed_sizes(weights) : check_weights(weights);
  const auto [batch, width] =
      checked ? std::pair{v_state.size(1), v_state.size(3) - 2 * p.half} : check_v_state(v_state, p, weights[0]);
  const int64_t c = p.channels, k = p.kernel, h = p.half, ring = h + 1, padded = width + 2 * h;
  if (!checked) {
    check_state("v2h_row", v2h_row, weights[0], {p.layers, batch, width, 2 * c});
    check_state("cond", cond, weights[0], {p.layers, batch, 2 * c});
    TORCH_CHECK(row >= 0, "sample_row: row should be >= 0, got ", row);
    if (cond_map) check_cond_map(*cond_map, p, weights[0], batch, width, row);
  }
  const int64_t height = cond_map ? cond_map->size(2) : 0;
  const int64_t here = row % ring;

  AT_DISPATCH_FLOATING_TYPES(v_state.scalar_type(), "sample_row", [&] {
    using T = scalar_t;
    T* vs = v_state.data_ptr<T>();
    const T* cd = cond.data_ptr<T>();
    const T* map = cond_map ? cond_map->data_ptr<T>() : nullptr;
    T* v2h = v2h_row.data_ptr<T>();
    const int64_t per_sample = ring * padded * c;  // one sample's ring of padded rows, one layer
    auto layer_in = [&](int64_t l, int64_t b, int64_t slot) {  // v_state[l, b, slot] -> [W+2h, C]
      return vs + ((l * batch + b) * ring + slot) * padded * c;
    };
    std::vector<T> v_pre_all(batch * width * 2 * c);
    // Layer l of samples b0 .. b1: with `split`, each product's columns are shared out among the
    // threads; without, this thread computes every column of its samples.
    auto layer = [&](int64_t l, int64_t b0, int64_t b1, bool split) {
      const at::Tensor& wv = weights[packed::layer_index(l, packed::kWv)];
      const int64_t rows = wv.size(0) / (k * c), m = (b1 - b0) * width;
      const T* wv_p = wv.data_ptr<T>();
      const T* bv_p = weights[packed::layer_index(l, packed::kBv)].data_ptr<T>();
      T* v_pre = v_pre_all.data() + b0 * width * 2 * c;
      T* vh = v2h + (l * batch + b0) * width * 2 * c;
      auto product = [&](const Rows<T>& x, const T* w, const T* bias, int64_t ldb, T* out, int64_t kk) {
        if (split) {
          gemm_split_columns(x, w, bias, ldb, out, m, kk, 2 * c);
        } else {
          small_gemm(x, w, bias, ldb, out, 0, m, 0, 2 * c, kk, 2 * c);
        }
      };
      // The vertical convolution of row `row` as kernel-row products with no im2col copy: for
      // kernel row r (ring slot of row row-h+r), the k*C inputs of output column j of sample b are
      // the padded row's values j*C .. (j+k)*C: rows of stride C within a sample (group = W) and
      // of stride `per_sample` between samples. The first kernel row starts from the bias.
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t slot = ((row - h + r) % ring + ring) % ring;
        product({layer_in(l, b0, slot), c, width, per_sample}, wv_p + r * k * c * 2 * c, r == 0 ? bv_p : v_pre,
                r == 0 ? 0 : 2 * c, v_pre, k * c);
      }
      product(dense_rows<T>(v_pre, 2 * c), weights[packed::layer_index(l, packed::kWvh)].data_ptr<T>(),
              weights[packed::layer_index(l, packed::kBhv)].data_ptr<T>(), 0, vh, 2 * c);
      // With a cond_map, each position's offsets are alpha's plus its own, summed into `both`.
      std::vector<T> both(map ? 2 * c : 0);
      for (int64_t b = b0; b < b1; ++b) {
        const T* alpha_add = cd + (l * batch + b) * 2 * c;
        for (int64_t j = 0; j < width; ++j) {
          const T* add = alpha_add;
          if (map) {
            const T* here_map = map + (((l * batch + b) * height + row) * width + j) * 2 * c;
            for (int64_t o = 0; o < 2 * c; ++o) both[o] = alpha_add[o] + here_map[o];
            add = both.data();
          }
          T* out = vh + ((b - b0) * width + j) * 2 * c;
          for (int64_t o = 0; o < 2 * c; ++o) out[o] += add[o];
          if (l + 1 < p.layers) {  // the last layer's vertical stack feeds nothing
            gate(v_pre + ((b - b0) * width + j) * 2 * c, add, c, layer_in(l + 1, b, here) + (h + j) * c);
          }
        }
      }
    };
    // Samples are independent: with two or more, each thread takes its share of the batch through
    // every layer (one parallel region a row); a batch of 1 splits each product's columns instead.
    const int64_t macs = batch * width * (k * c * (h + 1) * 2 * c + 4 * c * c) * p.layers;
    if (batch >= 2) {
      maybe_parallel(batch, macs, [&](int64_t b0, int64_t b1) {
        for (int64_t l = 0; l < p.layers; ++l) layer(l, b0, b1, false);
      });
    } else {
      for (int64_t l = 0; l < p.layers; ++l) layer(l, 0, batch, true);
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
  const bool checked = in_checked_loop();
  const PackedPrior p = checked ? packed_sizes(weights) : check_weights(weights);
  const auto [batch, width] =
      checked ? std::pair{v_state.size(1), v_state.size(3) - 2 * p.half} : check_v_state(v_state, p, weights[0]);
  const int64_t c = p.channels, h = p.half, ring = h + 1, padded_x = width + h;
  if (!checked) {
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
  }

  at::Tensor codes = at::empty({batch}, v_state.options().dtype(at::kLong));
  at::Tensor logits = at::empty({batch, p.codes}, x_state.options());
  AT_DISPATCH_FLOATING_TYPES(v_state.scalar_type(), "sample_position", [&] {
    using T = scalar_t;
    T* xs = x_state.data_ptr<T>();
    auto x_at = [&](int64_t l, int64_t b, int64_t j) { return xs + ((l * batch + b) * padded_x + j) * c; };
    const T* vh = v2h_row.data_ptr<T>();
    auto w_at = [&](int64_t i) { return weights[i].data_ptr<T>(); };
    auto layer_w = [&](int64_t l, packed::Layer t) { return w_at(packed::layer_index(l, t)); };
    auto head_w = [&](packed::Head t) { return w_at(packed::head_index(p.layers, t)); };
    T* lp = logits.data_ptr<T>();
    const T* np = noise.data_ptr<T>();
    int64_t* cp = codes.data_ptr<int64_t>();
    const T* emb = weights[packed::kEmbedding].data_ptr<T>();
    T* vs = v_state.data_ptr<T>();
    int64_t macs = c * 2 * c + c * c + c * p.codes;
    for (int64_t l = 0; l < p.layers; ++l) macs += weights[packed::layer_index(l, packed::kWh)].size(0) * 2 * c;
    // Samples b0 .. b1, through every layer and the head to their codes; the batch is split across
    // threads when big enough (one parallel region a position).
    maybe_parallel(batch, batch * macs, [&](int64_t b0, int64_t b1) {
      const int64_t m = b1 - b0;
      std::vector<T> h_pre(m * 2 * c), u(m * c), skip(m * c, T(0)), out_skip(m * 2 * c), hidden(m * c), scratch;
      for (int64_t l = 0; l < p.layers; ++l) {
        const int64_t cols = weights[packed::layer_index(l, packed::kWh)].size(0) / c;
        // h_pre = v2h_row[l, :, col] + (columns col-h .. col-h+cols-1 of layer l's input) @ wh.
        small_gemm(dense_rows<T>(x_at(l, b0, col), padded_x * c), layer_w(l, packed::kWh),
                   vh + ((l * batch + b0) * width + col) * 2 * c, width * 2 * c, h_pre.data(), 0, m, 0, 2 * c,
                   cols * c, 2 * c);
        for (int64_t b = 0; b < m; ++b) gate(h_pre.data() + b * 2 * c, static_cast<const T*>(nullptr), c, u.data() + b * c);
        small_gemm(dense_rows<T>(u.data(), c), layer_w(l, packed::kWos), layer_w(l, packed::kBos), 0, out_skip.data(),
                   0, m, 0, 2 * c, c, 2 * c);
        for (int64_t b = 0; b < m; ++b) {
          const T* os = out_skip.data() + b * 2 * c;
          if (l + 1 < p.layers) {
            T* next = x_at(l + 1, b0 + b, col + h);
            const T* res = x_at(l, b0 + b, col + h);  // the first layer has no residual (it would leak the code)
            for (int64_t i = 0; i < c; ++i) next[i] = l > 0 ? os[i] + res[i] : os[i];
          }
          for (int64_t i = 0; i < c; ++i) skip[b * c + i] += os[c + i];
        }
      }
      for (T& v : skip) v = v < T(0) ? T(0) : v;  // relu that keeps NaN, as torch.relu does
      small_gemm(dense_rows<T>(skip.data(), c), head_w(packed::kW1), head_w(packed::kB1), 0, hidden.data(), 0, m, 0,
                 c, c, c);
      for (T& v : hidden) v = v < T(0) ? T(0) : v;
      small_gemm(dense_rows<T>(hidden.data(), c), head_w(packed::kW2), head_w(packed::kB2), 0, lp + b0 * p.codes, 0,
                 m, 0, p.codes, c, p.codes);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t code = choose(lp + b * p.codes, np + b * noise.stride(0), noise.stride(1), p.codes, temperature,
                                    top_k, scratch);
        cp[b] = code;
        const T* e = emb + code * c;
        std::memcpy(x_at(0, b, col + h), e, sizeof(T) * c);
        std::memcpy(vs + ((b * ring + row % ring) * (width + 2 * h) + h + col) * c, e, sizeof(T) * c);
      }
    });
  });
  return {codes, logits};
}

}  // namespace

TORCH_LIBRARY_IMPL(pegasus, CPU, m) {
  m.impl("sample_row", &sample_row_cpu);
  m.impl("sample_position", &sample_position_cpu);
}

}  // namespace pegasus
