// The kernel of small_gemm.h, compiled twice: once portably (small_gemm.cpp) and once for
// AVX2+FMA (small_gemm_avx2.cpp, `#pragma GCC target`), each inside its own namespace
// PEGASUS_GEMM_NS. Include only standard headers here: an inline function of a library header
// compiled under the AVX2 pragma could be picked by the linker for every caller.
//
// Blocks of 4 rows x 2 vectors of 32 bytes keep their 8 sums in registers through the whole k
// loop: 51 GMAC/s on one AMD EPYC core at 16x192x128 float32 (25 for float64), where a plain
// vectorised loop reached 18 and at::addmm 11 (37 us, mostly MKL's threading and dispatch).
// GCC's target_clones did not help here: its vector types lost their registers across the
// always-inline boundary (1.2 GMAC/s).
#include <cstdint>
#include <cstring>

namespace PEGASUS_GEMM_NS {

template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(32)));
};

template <typename T, int RM, int NV>
inline __attribute__((always_inline)) void block(const T* x, int64_t ldx, const T* w, const T* bias, int64_t ldb,
                                                 T* out, int64_t m0, int64_t j0, int64_t k, int64_t n) {
  using V = typename Vec<T>::type;
  constexpr int L = sizeof(V) / sizeof(T);
  V acc[RM][NV];
  for (int r = 0; r < RM; ++r)
    for (int v = 0; v < NV; ++v) std::memcpy(&acc[r][v], bias + (m0 + r) * ldb + j0 + v * L, sizeof(V));
  for (int64_t i = 0; i < k; ++i) {
    V wv[NV];
    for (int v = 0; v < NV; ++v) std::memcpy(&wv[v], w + i * n + j0 + v * L, sizeof(V));
    for (int r = 0; r < RM; ++r) {
      const T xs = x[(m0 + r) * ldx + i];
      for (int v = 0; v < NV; ++v) acc[r][v] += xs * wv[v];
    }
  }
  for (int r = 0; r < RM; ++r)
    for (int v = 0; v < NV; ++v) std::memcpy(out + (m0 + r) * n + j0 + v * L, &acc[r][v], sizeof(V));
}

template <typename T>
void gemm_rows(const T* x, int64_t ldx, const T* w, const T* bias, int64_t ldb, T* out, int64_t m_begin,
               int64_t m_end, int64_t k, int64_t n) {
  constexpr int RM = 4, NV = 2, RN = NV * static_cast<int>(32 / sizeof(T));
  const int64_t n_full = n - n % RN;
  int64_t m = m_begin;
  for (; m + RM <= m_end; m += RM)
    for (int64_t j = 0; j < n_full; j += RN) block<T, RM, NV>(x, ldx, w, bias, ldb, out, m, j, k, n);
  for (; m < m_end; ++m)
    for (int64_t j = 0; j < n_full; j += RN) block<T, 1, NV>(x, ldx, w, bias, ldb, out, m, j, k, n);
  for (m = m_begin; m < m_end; ++m) {  // the last n % RN columns
    for (int64_t j = n_full; j < n; ++j) {
      T acc = bias[m * ldb + j];
      for (int64_t i = 0; i < k; ++i) acc += x[m * ldx + i] * w[i * n + j];
      out[m * n + j] = acc;
    }
  }
}

}  // namespace PEGASUS_GEMM_NS
