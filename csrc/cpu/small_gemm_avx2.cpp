// small_gemm_impl.h compiled for AVX2+FMA; small_gemm.cpp calls it only on CPUs that have both.
#if defined(__GNUC__) && defined(__x86_64__)
#pragma GCC target("avx2,fma")
#define PEGASUS_GEMM_NS pegasus_gemm_avx2
#include "small_gemm_impl.h"

namespace pegasus {

void small_gemm_rows_avx2(const float* x, int64_t ldx, const float* w, const float* bias, int64_t ldb, float* out,
                          int64_t m_begin, int64_t m_end, int64_t k, int64_t n) {
  pegasus_gemm_avx2::gemm_rows<float>(x, ldx, w, bias, ldb, out, m_begin, m_end, k, n);
}

void small_gemm_rows_avx2(const double* x, int64_t ldx, const double* w, const double* bias, int64_t ldb,
                          double* out, int64_t m_begin, int64_t m_end, int64_t k, int64_t n) {
  pegasus_gemm_avx2::gemm_rows<double>(x, ldx, w, bias, ldb, out, m_begin, m_end, k, n);
}

}  // namespace pegasus
#endif
