// CPU kernel of pegasus::nearest_code: the N x K distance matrix never exists, not even a tile of it.
//
// Rows of z are split into tiles of kTileRows, spread over threads with at::parallel_for. Each tile
// is centred into a per-thread buffer and handed to pegasus::nearest_rows (csrc/cpu/vec_kernels*),
// which keeps a block of rows x codes of -2 z.e in registers through the whole D loop and folds it
// into a running argmin of ||e||^2 - 2 z.e per row at once. ||z||^2 is added to the winner only (it
// does not change the argmin).
//
// Before (issue 23): one BLAS product per tile of 256 rows x 512 codes into an L2 buffer, then a
// vectorised argmin pass over it. At K=512, D=64 on one Zen 4 core (AVX-512) that ran 6.6 / 54 /
// 309 ms at N = 4096 / 36864 / 262144, 0.81-0.88x FAISS's IndexFlatL2 (5.4 / 44 / 272 ms): the
// products wrote and re-read 128 floats per 128 flops of a product of depth 64.
//
// Exactness: the expanded form ||z||^2 - 2z.e + ||e||^2 cancels catastrophically when vectors share
// a large offset (float32 inputs shifted by 1e3 pick wrong codes). Both inputs are centred on the
// codebook mean first; squared distances do not change, and z - mean is exact for close values.
//
// Memory: per thread kTileRows*D, plus the centred codebook (K*D, in panels) and its norms; nothing
// scales with N*K.
#include "vec_kernels.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

namespace pegasus {
namespace {

// Rows per tile: a multiple of every build's row block (6 for AVX-512 and AVX2, 4 portable),
// small enough that N=4096 still gives each of a few threads several tiles.
constexpr int64_t kTileRows = 96;

template <typename scalar_t>
void nearest_code_impl(const scalar_t* z, int64_t z_row_stride, int64_t z_col_stride,
                       const scalar_t* codebook, int64_t n, int64_t k, int64_t d, int64_t* indices,
                       scalar_t* min_sq_dist) {
  using acc_t = at::opmath_type<scalar_t>;  // half/bfloat16 accumulate in float

  // The codebook mean (summed in double), the centred codebook and its squared norms.
  std::vector<double> mean_sum(d, 0.0);
  for (int64_t c = 0; c < k; ++c) {
    for (int64_t j = 0; j < d; ++j) mean_sum[j] += static_cast<double>(codebook[c * d + j]);
  }
  std::vector<acc_t> mean(d);
  for (int64_t j = 0; j < d; ++j) mean[j] = static_cast<acc_t>(mean_sum[j] / static_cast<double>(k));
  // -2 (e - mean) in panels of P codes ([K/P][D][P], vec_kernels.h), padded with zero codes whose
  // norm is +inf (never chosen); the norms ||e - mean||^2 are added at the argmin.
  const int64_t P = nearest_panel<acc_t>();
  const int64_t kp = (k + P - 1) / P * P;
  std::vector<acc_t> panels(kp * d, acc_t(0));
  std::vector<acc_t> norms(kp, std::numeric_limits<acc_t>::infinity());
  for (int64_t c = 0; c < k; ++c) {
    acc_t sq = 0;
    acc_t* panel = panels.data() + (c / P) * d * P + c % P;
    for (int64_t j = 0; j < d; ++j) {
      const acc_t v = static_cast<acc_t>(codebook[c * d + j]) - mean[j];
      panel[j * P] = -2 * v;
      sq += v * v;
    }
    norms[c] = sq;
  }

  const int64_t row_tiles = (n + kTileRows - 1) / kTileRows;
  at::parallel_for(0, row_tiles, 1, [&](int64_t tile_begin, int64_t tile_end) {
    std::vector<acc_t> zt(kTileRows * d);
    acc_t best[kTileRows];
    int64_t best_code[kTileRows];
    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
      const int64_t row0 = tile * kTileRows;
      const int64_t rows = std::min(kTileRows, n - row0);
      for (int64_t i = 0; i < rows; ++i) {
        // Strided reads: a non-contiguous z is centred straight into the tile, never copied whole.
        const scalar_t* zi = z + (row0 + i) * z_row_stride;
        if (z_col_stride == 1) {  // lets the compiler vectorise the common case
          for (int64_t j = 0; j < d; ++j) zt[i * d + j] = static_cast<acc_t>(zi[j]) - mean[j];
        } else {
          for (int64_t j = 0; j < d; ++j) {
            zt[i * d + j] = static_cast<acc_t>(zi[j * z_col_stride]) - mean[j];
          }
        }
      }
      nearest_rows(zt.data(), d, rows, panels.data(), norms.data(), d, kp, best, best_code);
      for (int64_t i = 0; i < rows; ++i) {
        acc_t sq = 0;
        for (int64_t j = 0; j < d; ++j) sq += zt[i * d + j] * zt[i * d + j];
        if (std::isnan(sq)) {
          // A NaN in the row (or in the codebook, through the mean) makes every distance NaN:
          // index 0 and distance NaN, torch.argmin's rule on the reference.
          indices[row0 + i] = 0;
          min_sq_dist[row0 + i] = static_cast<scalar_t>(std::numeric_limits<acc_t>::quiet_NaN());
        } else {
          // The expanded form can round a little below zero; a squared distance cannot be.
          indices[row0 + i] = best_code[i];
          min_sq_dist[row0 + i] = static_cast<scalar_t>(std::max<acc_t>(sq + best[i], 0));
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> nearest_code_cpu(const at::Tensor& z, const at::Tensor& codebook) {
  TORCH_CHECK(z.dim() == 2, "nearest_code: z should be a 2-D tensor [N, D], got ", z.dim(), "-D");
  TORCH_CHECK(codebook.dim() == 2, "nearest_code: codebook should be a 2-D tensor [K, D], got ",
              codebook.dim(), "-D");
  TORCH_CHECK(z.size(1) == codebook.size(1), "nearest_code: z has D=", z.size(1),
              " but codebook has D=", codebook.size(1));
  TORCH_CHECK(codebook.size(0) > 0, "nearest_code: codebook is empty (K=0)");
  TORCH_CHECK(codebook.size(0) < std::numeric_limits<int32_t>::max(), "nearest_code (cpu): K should be below 2^31 - 1, got ",
              codebook.size(0));
  TORCH_CHECK(z.scalar_type() == codebook.scalar_type(), "nearest_code: z is ", z.scalar_type(),
              " but codebook is ", codebook.scalar_type());
  TORCH_CHECK(at::isFloatingType(z.scalar_type()), "nearest_code: expected a floating dtype, got ",
              z.scalar_type());
  TORCH_CHECK(z.device().is_cpu() && codebook.device().is_cpu(),
              "nearest_code (cpu): expected CPU tensors, got z on ", z.device(), " and codebook on ",
              codebook.device());

  const at::Tensor ec = codebook.contiguous();  // K*D: small next to z
  const int64_t n = z.size(0), k = ec.size(0), d = z.size(1);
  at::Tensor indices = at::empty({n}, z.options().dtype(at::kLong));
  at::Tensor min_sq_dist = at::empty({n}, z.options());
  if (n == 0) return {indices, min_sq_dist};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "nearest_code_cpu", [&] {
    nearest_code_impl<scalar_t>(z.const_data_ptr<scalar_t>(), z.stride(0), z.stride(1),
                                ec.const_data_ptr<scalar_t>(), n, k, d,
                                indices.mutable_data_ptr<int64_t>(),
                                min_sq_dist.mutable_data_ptr<scalar_t>());
  });
  return {indices, min_sq_dist};
}

}  // namespace

TORCH_LIBRARY_IMPL(pegasus, CPU, m) { m.impl("nearest_code", &nearest_code_cpu); }

}  // namespace pegasus
