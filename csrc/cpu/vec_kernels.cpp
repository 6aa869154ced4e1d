// Dispatch of vec_kernels.h, and its portable build: vectors of 16 bytes (SSE2, NEON); no fused
// multiply-add on x86-64 (SSE2 has none), fused `fmla` on aarch64 (GCC contracts a*b+c there).
// 32-byte vectors, lowered to pairs of SSE2 registers, made a whole sample 9x slower.
#include "vec_kernels.h"

#include <cmath>
#include <cstdlib>
#include <cstring>

#define PEGASUS_VEC_NS pegasus_vec_default
#define PEGASUS_VEC_BYTES 16
#define PEGASUS_GEMM_RM 4
#define PEGASUS_GEMM_NV 2
#include "vec_kernels_impl.h"

// The entry points of the other builds (defined at the end of vec_kernels_impl.h).
#define PEGASUS_VEC_DECLARE(ns)                                                                                   \
  namespace ns {                                                                                                  \
  void gemm_float(const pegasus::Rows<float>&, const float*, const float*, int64_t, float*, int64_t, int64_t,    \
                  int64_t, int64_t, int64_t, int64_t);                                                            \
  void gemm_double(const pegasus::Rows<double>&, const double*, const double*, int64_t, double*, int64_t,        \
                   int64_t, int64_t, int64_t, int64_t, int64_t);                                                  \
  void gate(const float*, const float*, int64_t, float*);                                                         \
  int64_t nearest_panel_float();                                                                                  \
  int64_t nearest_panel_double();                                                                                 \
  void nearest_float(const float*, int64_t, int64_t, const float*, const float*, int64_t, int64_t, float*,        \
                     int64_t*);                                                                                   \
  void nearest_double(const double*, int64_t, int64_t, const double*, const double*, int64_t, int64_t, double*,   \
                      int64_t*);                                                                                  \
  }
#if defined(__GNUC__) && defined(__x86_64__)
PEGASUS_VEC_DECLARE(pegasus_vec_avx2)
PEGASUS_VEC_DECLARE(pegasus_vec_avx512)
#endif

namespace pegasus {

namespace {

enum class Capability { kDefault, kAvx2, kAvx512 };

// The best build this CPU runs (__builtin_cpu_supports also asks whether the kernel saves the
// registers), lowered by ATEN_CPU_CAPABILITY=avx2|default, which tests use to run every build.
Capability detect() {
  Capability best = Capability::kDefault;
#if defined(__GNUC__) && defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Capability::kAvx2;
  if (best == Capability::kAvx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl"))
    best = Capability::kAvx512;
#endif
  const char* env = std::getenv("ATEN_CPU_CAPABILITY");
  if (env && std::strcmp(env, "default") == 0) return Capability::kDefault;
  if (env && std::strcmp(env, "avx2") == 0 && best == Capability::kAvx512) return Capability::kAvx2;
  return best;
}

Capability capability() {
  static const Capability c = detect();
  return c;
}

}  // namespace

const char* cpu_capability() {
  switch (capability()) {
    case Capability::kAvx512: return "avx512";
    case Capability::kAvx2: return "avx2";
    default: return "default";
  }
}

#if defined(__GNUC__) && defined(__x86_64__)
#define PEGASUS_DISPATCH(fn, ...)                                 \
  switch (capability()) {                                         \
    case Capability::kAvx512: return pegasus_vec_avx512::fn(__VA_ARGS__); \
    case Capability::kAvx2: return pegasus_vec_avx2::fn(__VA_ARGS__);     \
    default: return pegasus_vec_default::fn(__VA_ARGS__);         \
  }
#else
#define PEGASUS_DISPATCH(fn, ...) return pegasus_vec_default::fn(__VA_ARGS__)
#endif

void small_gemm(const Rows<float>& x, const float* w, const float* bias, int64_t ldb, float* out, int64_t m_begin,
                int64_t m_end, int64_t n_begin, int64_t n_end, int64_t k, int64_t n) {
  PEGASUS_DISPATCH(gemm_float, x, w, bias, ldb, out, m_begin, m_end, n_begin, n_end, k, n);
}

void small_gemm(const Rows<double>& x, const double* w, const double* bias, int64_t ldb, double* out,
                int64_t m_begin, int64_t m_end, int64_t n_begin, int64_t n_end, int64_t k, int64_t n) {
  PEGASUS_DISPATCH(gemm_double, x, w, bias, ldb, out, m_begin, m_end, n_begin, n_end, k, n);
}

void gate(const float* a, const float* add, int64_t c, float* out) { PEGASUS_DISPATCH(gate, a, add, c, out); }

template <>
int64_t nearest_panel<float>() {
  PEGASUS_DISPATCH(nearest_panel_float);
}

template <>
int64_t nearest_panel<double>() {
  PEGASUS_DISPATCH(nearest_panel_double);
}

void nearest_rows(const float* z, int64_t ldz, int64_t rows, const float* panels, const float* norms, int64_t d,
                  int64_t kp, float* best, int64_t* best_code) {
  PEGASUS_DISPATCH(nearest_float, z, ldz, rows, panels, norms, d, kp, best, best_code);
}

void nearest_rows(const double* z, int64_t ldz, int64_t rows, const double* panels, const double* norms, int64_t d,
                  int64_t kp, double* best, int64_t* best_code) {
  PEGASUS_DISPATCH(nearest_double, z, ldz, rows, panels, norms, d, kp, best, best_code);
}

// float64 serves the exactness tests, not speed: the library's own tanh and exp, as before.
void gate(const double* a, const double* add, int64_t c, double* out) {
  for (int64_t i = 0; i < c; ++i) {
    const double f = add ? a[i] + add[i] : a[i];
    const double g = add ? a[c + i] + add[c + i] : a[c + i];
    out[i] = std::tanh(f) * (1.0 / (1.0 + std::exp(-g)));
  }
}

}  // namespace pegasus
