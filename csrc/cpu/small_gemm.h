// Small dense products of the cached sampler's position step (csrc/cpu/sample_step.cpp):
//   out[m, :n] = bias[m * ldb, :n] + x[m * ldx, :k] @ w[k, n]   for m_begin <= m < m_end,
// w row-major [k, n], out row-major [*, n]; ldb = 0 broadcasts one bias row. Picks an AVX2+FMA
// build (small_gemm_avx2.cpp) when the CPU has both, else a portable one (small_gemm.cpp).
#pragma once

#include <cstdint>

namespace pegasus {

void small_gemm_rows(const float* x, int64_t ldx, const float* w, const float* bias, int64_t ldb, float* out,
                     int64_t m_begin, int64_t m_end, int64_t k, int64_t n);
void small_gemm_rows(const double* x, int64_t ldx, const double* w, const double* bias, int64_t ldb, double* out,
                     int64_t m_begin, int64_t m_end, int64_t k, int64_t n);

}  // namespace pegasus
