// The vector kernels of the cached sampler's steps (csrc/cpu/sample_step.cpp): a register-blocked
// small GEMM and the gate tanh(a) * sigmoid(b); and of pegasus::nearest_code
// (csrc/cpu/nearest_code.cpp): the same GEMM blocks fused with a running argmin. Built three times
// from vec_kernels_impl.h: for AVX-512 (vec_kernels_avx512.cpp), for AVX2+FMA (vec_kernels_avx2.cpp) and portably
// (vec_kernels.cpp), which picks one once, at the first call (`cpu_capability()`).
#pragma once

#include <cstdint>

namespace pegasus {

// The rows of a GEMM's left operand: row m starts at x + (m / group) * ldg + (m % group) * ldx.
// Two strides let the row step take the sliding windows of every sample's padded row (group =
// width, ldx = C, ldg = one sample's state) as one matrix of batch * width rows, with no copy.
template <typename T>
struct Rows {
  const T* x;
  int64_t ldx;
  int64_t group;
  int64_t ldg;
  const T* row(int64_t m) const { return x + (m / group) * ldg + (m % group) * ldx; }
};

template <typename T>
inline Rows<T> dense_rows(const T* x, int64_t ldx) {
  return {x, ldx, INT64_MAX, 0};
}

// out[m * n + j] = bias[m * ldb + j] + sum_i x.row(m)[i] * w[i * n + j]
//   for m_begin <= m < m_end and n_begin <= j < n_end; w row-major [k, n]; ldb = 0 broadcasts
//   one bias row; bias may be out itself (ldb = n) to accumulate. Each sum runs over i in order,
//   from the bias, with fused multiply-adds on the AVX2 and AVX-512 builds: those two give the same
//   bits, the portable build (separate multiply and add on x86-64, fused on aarch64) may differ in
//   the last place.
void small_gemm(const Rows<float>& x, const float* w, const float* bias, int64_t ldb, float* out, int64_t m_begin,
                int64_t m_end, int64_t n_begin, int64_t n_end, int64_t k, int64_t n);
void small_gemm(const Rows<double>& x, const double* w, const double* bias, int64_t ldb, double* out,
                int64_t m_begin, int64_t m_end, int64_t n_begin, int64_t n_end, int64_t k, int64_t n);

// out[i] = tanh(a[i] + add[i]) * sigmoid(a[c + i] + add[c + i]) for i < c; add may be null.
// float: a vectorised exp (Cephes' polynomial, within 2 ulp of the true exp) gives both, tanh as
// (1 - e) / (1 + e) with e = exp(-2|x|); 1e-7 absolute. double: std::tanh and std::exp.
void gate(const float* a, const float* add, int64_t c, float* out);
void gate(const double* a, const double* add, int64_t c, double* out);

// The nearest code of each of `rows` rows (row m at z + m * ldz, d values): best[m] is the
// smallest norms[c] + sum_i z[m][i] * e[c][i] over the kp codes and best_code[m] the lowest c that
// has it, where the codes come in panels of P = nearest_panel<T>() codes, the register block of the
// build that runs: e[c][i] is panels[(c / P) * d * P + i * P + c % P]; kp is a multiple of P (pad
// with zero codes and norms of +inf: never chosen). The CPU kernel of pegasus::nearest_code passes -2 (e - mean) and ||e - mean||^2
// (csrc/cpu/nearest_code.cpp). Sums run over i in order as in small_gemm.
template <typename T>
int64_t nearest_panel();
void nearest_rows(const float* z, int64_t ldz, int64_t rows, const float* panels, const float* norms, int64_t d,
                  int64_t kp, float* best, int64_t* best_code);
void nearest_rows(const double* z, int64_t ldz, int64_t rows, const double* panels, const double* norms, int64_t d,
                  int64_t kp, double* best, int64_t* best_code);

// The build the kernels above run: "avx512", "avx2" or "default" (portable). The best this CPU
// has, lowered by ATEN_CPU_CAPABILITY as for ATen's own kernels ("avx2", "default").
const char* cpu_capability();

}  // namespace pegasus
