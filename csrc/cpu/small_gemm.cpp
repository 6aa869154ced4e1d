// Dispatch of small_gemm.h: the AVX2+FMA build when the CPU has both, else the portable one.
#include "small_gemm.h"

#define PEGASUS_GEMM_NS pegasus_gemm_generic
#include "small_gemm_impl.h"

namespace pegasus {

#if defined(__GNUC__) && defined(__x86_64__)
void small_gemm_rows_avx2(const float* x, int64_t ldx, const float* w, const float* bias, int64_t ldb, float* out,
                          int64_t m_begin, int64_t m_end, int64_t k, int64_t n);
void small_gemm_rows_avx2(const double* x, int64_t ldx, const double* w, const double* bias, int64_t ldb,
                          double* out, int64_t m_begin, int64_t m_end, int64_t k, int64_t n);

static bool has_avx2_fma() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}
#define PEGASUS_DISPATCH(...)                                \
  if (has_avx2_fma()) return small_gemm_rows_avx2(__VA_ARGS__); \
  return pegasus_gemm_generic::gemm_rows(__VA_ARGS__)
#else
#define PEGASUS_DISPATCH(...) return pegasus_gemm_generic::gemm_rows(__VA_ARGS__)
#endif

void small_gemm_rows(const float* x, int64_t ldx, const float* w, const float* bias, int64_t ldb, float* out,
                     int64_t m_begin, int64_t m_end, int64_t k, int64_t n) {
  PEGASUS_DISPATCH(x, ldx, w, bias, ldb, out, m_begin, m_end, k, n);
}

void small_gemm_rows(const double* x, int64_t ldx, const double* w, const double* bias, int64_t ldb, double* out,
                     int64_t m_begin, int64_t m_end, int64_t k, int64_t n) {
  PEGASUS_DISPATCH(x, ldx, w, bias, ldb, out, m_begin, m_end, k, n);
}

}  // namespace pegasus
