// CPU kernel of pegasus::nearest_code: direct squared differences (exact: no cancellation in
// ||z||^2 - 2z.e + ||e||^2 when vectors share a large offset), rows split over threads with
// at::parallel_for, the D loop in 8 partial sums so that it vectorises. It does not tile over K:
// at N=16384, K=512, D=64 it takes 41 ms on 2 cores, the same as the matmul+argmin reference.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>

namespace pegasus {
namespace {

constexpr int kLanes = 8;

template <typename scalar_t>
void nearest_code_impl(const scalar_t* z, const scalar_t* codebook, int64_t n, int64_t k, int64_t d,
                       int64_t* indices, scalar_t* min_sq_dist) {
  using acc_t = at::opmath_type<scalar_t>;  // half/bfloat16 accumulate in float
  // ~16k multiply-adds per grain keeps the threading overhead under a few percent for small K*D.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, k * d));
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* zi = z + i * d;
      acc_t best = std::numeric_limits<acc_t>::infinity();
      int64_t best_k = 0;
      for (int64_t c = 0; c < k; ++c) {
        const scalar_t* ec = codebook + c * d;
        // kLanes independent partial sums: the compiler may keep them in one SIMD register
        // (a single running sum is a serial dependency chain it must not reorder).
        acc_t part[kLanes] = {};
        int64_t j = 0;
        for (; j + kLanes <= d; j += kLanes) {
          for (int l = 0; l < kLanes; ++l) {
            const acc_t diff = static_cast<acc_t>(zi[j + l]) - static_cast<acc_t>(ec[j + l]);
            part[l] += diff * diff;
          }
        }
        for (; j < d; ++j) {
          const acc_t diff = static_cast<acc_t>(zi[j]) - static_cast<acc_t>(ec[j]);
          part[0] += diff * diff;
        }
        acc_t dist = 0;
        for (int l = 0; l < kLanes; ++l) dist += part[l];
        if (std::isnan(dist)) {
          // The first NaN wins and is never replaced, as in torch.argmin.
          if (!std::isnan(best)) {
            best = dist;
            best_k = c;
          }
        } else if (dist < best) {  // strict: ties keep the lowest index
          best = dist;
          best_k = c;
        }
      }
      indices[i] = best_k;
      min_sq_dist[i] = static_cast<scalar_t>(best);
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

  const at::Tensor zc = z.contiguous();
  const at::Tensor ec = codebook.contiguous();
  const int64_t n = zc.size(0), k = ec.size(0), d = zc.size(1);
  at::Tensor indices = at::empty({n}, zc.options().dtype(at::kLong));
  at::Tensor min_sq_dist = at::empty({n}, zc.options());
  if (n == 0) return {indices, min_sq_dist};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, zc.scalar_type(), "nearest_code_cpu", [&] {
    nearest_code_impl<scalar_t>(zc.const_data_ptr<scalar_t>(), ec.const_data_ptr<scalar_t>(), n, k, d,
                                indices.mutable_data_ptr<int64_t>(),
                                min_sq_dist.mutable_data_ptr<scalar_t>());
  });
  return {indices, min_sq_dist};
}

}  // namespace

TORCH_LIBRARY_IMPL(pegasus, CPU, m) { m.impl("nearest_code", &nearest_code_cpu); }

}  // namespace pegasus
