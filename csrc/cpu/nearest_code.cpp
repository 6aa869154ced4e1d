// CPU kernel of pegasus::nearest_code: the N x K distance matrix never exists.
//
// Rows of z are split into tiles of kTileRows, spread over threads with at::parallel_for. For each
// row tile and each tile of kTileCodes codes, one BLAS product (at::mm_out, MKL in the torch
// wheels; at::parallel_for keeps it single-threaded inside) writes -2 z.e into a per-thread buffer
// that stays in L2, and the tile is reduced to a running argmin of ||e||^2 - 2 z.e per row while it
// is still in cache. ||z||^2 is added to the winner only (it does not change the argmin).
//
// Exactness: the expanded form ||z||^2 - 2z.e + ||e||^2 cancels catastrophically when vectors share
// a large offset (float32 inputs shifted by 1e3 pick wrong codes). Both inputs are centred on the
// codebook mean first; squared distances do not change, and z - mean is exact for close values.
//
// Memory: per thread kTileRows*D + kTileRows*kTileCodes accumulators, plus the centred codebook
// (K*D) and its norms; nothing scales with N*K.
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

// Tile sizes, measured at N=36864, K=512, D=64 (float32, 2-core AVX-512 EPYC, idle): 64, 128, 256
// and 512 rows x 512 codes all take 40-42 ms on one thread and 21-22 ms on two; with addmm (beta=1
// broadcasting the norms into the output first) 256 x 512 took 51 ms on one thread. Long code tiles
// amortise the BLAS call and the argmin's setup; 256 x 512 floats = 512 KiB per thread stays in L2.
constexpr int64_t kTileRows = 256;
constexpr int64_t kTileCodes = 512;

// Running argmin over one tile of codes in two passes that the compiler vectorises: the tile's
// minimum in kLanes independent lanes (std::min per lane needs no reassociation; a single running
// (min, index) pair with a data-dependent branch did not vectorise and cost 35 of 80 ms at
// N=36864, K=512, D=64 on one thread), then, only when that beats the running best, the first
// index holding it, tested kLanes codes at a time. The first index keeps ties at the lowest code;
// the strict `<` against the running best keeps them in the earlier tile. NaN distances are never
// chosen here (std::min keeps the lane value); NaN rows are handled by the caller.
template <typename acc_t>
inline void argmin_row(const acc_t* dist, const acc_t* norms, int64_t count, int64_t first_code,
                       acc_t& best, int64_t& best_code) {
  constexpr int kLanes = 64 / sizeof(acc_t);  // one cache line, up to one 512-bit register
  acc_t lane_min[kLanes];
  for (int l = 0; l < kLanes; ++l) lane_min[l] = std::numeric_limits<acc_t>::infinity();
  int64_t c = 0;
  for (; c + kLanes <= count; c += kLanes) {
    for (int l = 0; l < kLanes; ++l) lane_min[l] = std::min(lane_min[l], dist[c + l] + norms[c + l]);
  }
  acc_t tile_min = lane_min[0];
  for (int l = 1; l < kLanes; ++l) tile_min = std::min(tile_min, lane_min[l]);
  for (int64_t t = c; t < count; ++t) tile_min = std::min(tile_min, dist[t] + norms[t]);
  if (!(tile_min < best)) return;
  int64_t chunk = 0;
  for (; chunk + kLanes <= count; chunk += kLanes) {
    int hit = 0;
    for (int l = 0; l < kLanes; ++l) hit |= dist[chunk + l] + norms[chunk + l] == tile_min;
    if (hit) break;
  }
  while (dist[chunk] + norms[chunk] != tile_min) ++chunk;  // tile_min is in the tile: this stops
  best = tile_min;
  best_code = first_code + chunk;
}

// GCC compiles an AVX2 copy next to the baseline (SSE2) one and picks at load time (the wheel's
// portable flags give SSE2 only): 52-54 ms instead of 55-58 ms at N=36864, K=512, D=64 on one
// thread, a small gain on a noisy host.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define PEGASUS_TARGET_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define PEGASUS_TARGET_CLONES
#endif

// argmin_row over the `rows` rows of one tile: dist is [rows, count] row-major.
template <typename acc_t>
inline void argmin_rows_impl(const acc_t* dist, const acc_t* norms, int64_t rows, int64_t count,
                             int64_t first_code, acc_t* best, int64_t* best_code) {
  for (int64_t i = 0; i < rows; ++i) {
    argmin_row<acc_t>(dist + i * count, norms, count, first_code, best[i], best_code[i]);
  }
}

PEGASUS_TARGET_CLONES void argmin_rows(const float* dist, const float* norms, int64_t rows,
                                       int64_t count, int64_t first_code, float* best,
                                       int64_t* best_code) {
  argmin_rows_impl<float>(dist, norms, rows, count, first_code, best, best_code);
}

PEGASUS_TARGET_CLONES void argmin_rows(const double* dist, const double* norms, int64_t rows,
                                       int64_t count, int64_t first_code, double* best,
                                       int64_t* best_code) {
  argmin_rows_impl<double>(dist, norms, rows, count, first_code, best, best_code);
}

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
  // -2 (e - mean), stored [D, K]: the tile product is then a plain z_tile @ codes_t (no beta
  // pass that first broadcasts the norms into the output), and ||e||^2 is added in the argmin.
  std::vector<acc_t> codes_t(d * k);
  std::vector<acc_t> norms(k);
  for (int64_t c = 0; c < k; ++c) {
    acc_t sq = 0;
    for (int64_t j = 0; j < d; ++j) {
      const acc_t v = static_cast<acc_t>(codebook[c * d + j]) - mean[j];
      codes_t[j * k + c] = -2 * v;
      sq += v * v;
    }
    norms[c] = sq;
  }

  const int64_t tile_codes = std::min(k, kTileCodes);
  const int64_t row_tiles = (n + kTileRows - 1) / kTileRows;
  const auto acc_options = at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value);
  const at::Tensor codes_tt = at::from_blob(codes_t.data(), {d, k}, acc_options);
  at::parallel_for(0, row_tiles, 1, [&](int64_t tile_begin, int64_t tile_end) {
    at::Tensor zt_t = at::empty({kTileRows, d}, acc_options);
    at::Tensor dist_t = at::empty({kTileRows * tile_codes}, acc_options);
    acc_t* zt = zt_t.mutable_data_ptr<acc_t>();
    const acc_t* dist = dist_t.const_data_ptr<acc_t>();
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
        best[i] = std::numeric_limits<acc_t>::infinity();
        best_code[i] = 0;
      }
      const at::Tensor zt_rows = zt_t.narrow(0, 0, rows);
      for (int64_t c0 = 0; c0 < k; c0 += tile_codes) {
        const int64_t count = std::min(tile_codes, k - c0);
        // dist[i, c] = -2 z_i . e_c0+c, one BLAS call per tile.
        at::Tensor out = dist_t.narrow(0, 0, rows * count).view({rows, count});
        at::mm_out(out, zt_rows, codes_tt.narrow(1, c0, count));
        argmin_rows(dist, norms.data() + c0, rows, count, c0, best, best_code);
      }
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
