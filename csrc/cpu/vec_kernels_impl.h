// The kernels of vec_kernels.h, compiled three times, each inside its own namespace PEGASUS_VEC_NS
// with its own vector width PEGASUS_VEC_BYTES and register block PEGASUS_GEMM_RM rows x
// PEGASUS_GEMM_NV vectors: portably (vec_kernels.cpp), for AVX2+FMA (vec_kernels_avx2.cpp) and
// for AVX-512 (vec_kernels_avx512.cpp), the last two under `#pragma GCC target`. Use nothing here
// that a library header defines inline (std::tanh, a member of Rows): an inline function compiled
// under the AVX-512 pragma could be picked by the linker for every caller. Builtins only.
//
// The GEMM keeps a block of RM rows x NV vectors of sums in registers through the whole k loop.
// A whole 8x8 sample of the default prior (64 channels, 8 layers, float32) on 2 Xeon (Sapphire
// Rapids) cores, batch 16 / batch 1: AVX-512 6x4 blocks of 16 floats 32 / 8.4 ms, AVX2 4x2 blocks
// of 8 floats 48 / 11.9 ms, portable 4x2 of 4 floats 108 / 15.8 ms. Before these kernels (AVX2
// GEMM only, ATen's tanh and sigmoid for the gates, threads over samples for one product only):
// 69 / 13.6 ms.
// GCC's target_clones did not help here: its vector types lost their registers across the
// always-inline boundary (1.2 GMAC/s on an EPYC core, against 51 for AVX2 4x2).
#include <cstdint>
#include <cstring>

#include "vec_kernels.h"

#ifndef PEGASUS_NEAREST_RM
#define PEGASUS_NEAREST_RM PEGASUS_GEMM_RM
#define PEGASUS_NEAREST_NV PEGASUS_GEMM_NV
#endif

namespace PEGASUS_VEC_NS {

template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(PEGASUS_VEC_BYTES)));
  typedef int32_t itype __attribute__((vector_size(PEGASUS_VEC_BYTES)));
  typedef int32_t ilane;
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(PEGASUS_VEC_BYTES)));
  typedef int64_t itype __attribute__((vector_size(PEGASUS_VEC_BYTES)));
  typedef int64_t ilane;
};

template <typename T, int RM, int NV>
inline __attribute__((always_inline)) void block(const T* const* xr, const T* const* br, T* const* outr,
                                                 const T* w, int64_t j0, int64_t k, int64_t n) {
  using V = typename Vec<T>::type;
  constexpr int L = sizeof(V) / sizeof(T);
  V acc[RM][NV];
  for (int r = 0; r < RM; ++r)
    for (int v = 0; v < NV; ++v) std::memcpy(&acc[r][v], br[r] + j0 + v * L, sizeof(V));
  for (int64_t i = 0; i < k; ++i) {
    V wv[NV];
    for (int v = 0; v < NV; ++v) std::memcpy(&wv[v], w + i * n + j0 + v * L, sizeof(V));
    for (int r = 0; r < RM; ++r) {
      const T xs = xr[r][i];
      for (int v = 0; v < NV; ++v) acc[r][v] += xs * wv[v];
    }
  }
  for (int r = 0; r < RM; ++r)
    for (int v = 0; v < NV; ++v) std::memcpy(outr[r] + j0 + v * L, &acc[r][v], sizeof(V));
}

// The last rem (< R) rows of a column block.
template <typename T, int NV, int R>
inline __attribute__((always_inline)) void tail_rows(int rem, const T* const* xr, const T* const* br,
                                                     T* const* outr, const T* w, int64_t j0, int64_t k, int64_t n) {
  if constexpr (R > 1) {
    if (rem == R - 1) return block<T, R - 1, NV>(xr, br, outr, w, j0, k, n);
    tail_rows<T, NV, R - 1>(rem, xr, br, outr, w, j0, k, n);
  }
}

// Columns j0 .. j0 + NV * L of rows m_begin .. m_end.
template <typename T, int NV>
void column_block(const pegasus::Rows<T>& x, const T* w, const T* bias, int64_t ldb, T* out, int64_t m_begin,
                  int64_t m_end, int64_t j0, int64_t k, int64_t n) {
  constexpr int RM = PEGASUS_GEMM_RM;
  const T* xr[RM];
  const T* br[RM];
  T* outr[RM];
  auto rows_at = [&](int64_t m, int count) {
    for (int r = 0; r < count; ++r) {
      const int64_t row = m + r;
      xr[r] = x.x + (row / x.group) * x.ldg + (row % x.group) * x.ldx;
      br[r] = bias + row * ldb;
      outr[r] = out + row * n;
    }
  };
  int64_t m = m_begin;
  for (; m + RM <= m_end; m += RM) {
    rows_at(m, RM);
    block<T, RM, NV>(xr, br, outr, w, j0, k, n);
  }
  const int rem = static_cast<int>(m_end - m);
  if (rem > 0) {
    rows_at(m, rem);
    tail_rows<T, NV, RM>(rem, xr, br, outr, w, j0, k, n);
  }
}

template <typename T>
void gemm(const pegasus::Rows<T>& x, const T* w, const T* bias, int64_t ldb, T* out, int64_t m_begin, int64_t m_end,
          int64_t n_begin, int64_t n_end, int64_t k, int64_t n) {
  constexpr int L = sizeof(typename Vec<T>::type) / sizeof(T), NV = PEGASUS_GEMM_NV;
  int64_t j = n_begin;
  for (; j + NV * L <= n_end; j += NV * L) column_block<T, NV>(x, w, bias, ldb, out, m_begin, m_end, j, k, n);
  for (; j + L <= n_end; j += L) column_block<T, 1>(x, w, bias, ldb, out, m_begin, m_end, j, k, n);
  if (j < n_end) {  // the last columns, fewer than a vector: through zero-padded vectors, so that
    // each sum is the same sequence of (fused) vector operations as in the other builds
    using V = typename Vec<T>::type;
    const int64_t rest = n_end - j;
    for (int64_t m = m_begin; m < m_end; ++m) {
      const T* xm = x.x + (m / x.group) * x.ldg + (m % x.group) * x.ldx;
      V acc = {};
      std::memcpy(&acc, bias + m * ldb + j, rest * sizeof(T));
      for (int64_t i = 0; i < k; ++i) {
        V wv = {};
        std::memcpy(&wv, w + i * n + j, rest * sizeof(T));
        acc += xm[i] * wv;
      }
      std::memcpy(out + m * n + j, &acc, rest * sizeof(T));
    }
  }
}

// Nearest codes of RM rows (pegasus::nearest_rows): the sums of RM rows x NV vectors of codes stay
// in registers through the whole d loop, as in `block`, and each finished block is folded into a
// running (minimum, index) per row and lane at once: the N x K products never reach memory. A lane
// takes a later code only if it is strictly smaller, so each lane keeps its first minimum; the
// lanes are merged at the end, lowest index first among equal values: ties go to the lowest code.
// Each block of codes is one contiguous panel (P = NV * L codes, [D][P]) that the d loop reads in
// order. At N=4096, K=512, D=64 on one Zen 4 core: AVX-512 6x4 3.0-3.3 ms, AVX2 6x2 3.1-3.3 ms
// (4.4 ms when the panels were 64 codes wide, so that an AVX2 block read a 64-byte line every 256
// bytes; 4.8 ms with 4x2 blocks), portable 4x2 (no FMA) 11.6 ms; the BLAS product + argmin pass
// before it 6.6 ms, FAISS's IndexFlatL2 3.4-4.6 ms.
template <typename T, int RM, int NV>
inline __attribute__((always_inline)) void nearest_block(const T* const* zr, const T* panels, const T* norms,
                                                         int64_t d, int64_t kp, int rows, T* best, int64_t* best_code) {
  using V = typename Vec<T>::type;
  using VI = typename Vec<T>::itype;
  using I = typename Vec<T>::ilane;
  constexpr int L = sizeof(V) / sizeof(T);
  constexpr int P = NV * L;  // one block of codes is one panel: the d loop reads it in order
  V bv[RM];
  VI bi[RM];
  VI lane;
  for (int l = 0; l < L; ++l) lane[l] = l;
  for (int r = 0; r < RM; ++r) {
    bv[r] = V{} + static_cast<T>(__builtin_inf());
    bi[r] = VI{};
  }
  for (int64_t j0 = 0; j0 < kp; j0 += NV * L) {
    const T* panel = panels + j0 * d;
    V acc[RM][NV] = {};
    for (int64_t i = 0; i < d; ++i) {
      V wv[NV];
      for (int v = 0; v < NV; ++v) std::memcpy(&wv[v], panel + i * P + v * L, sizeof(V));
      for (int r = 0; r < RM; ++r) {
        const T zs = zr[r][i];
        for (int v = 0; v < NV; ++v) acc[r][v] += zs * wv[v];
      }
    }
    for (int v = 0; v < NV; ++v) {
      V nv;
      std::memcpy(&nv, norms + j0 + v * L, sizeof(V));
      const VI idx = lane + static_cast<I>(j0 + v * L);
      for (int r = 0; r < RM; ++r) {
        const V dist = acc[r][v] + nv;
        const VI take = dist < bv[r];
        bv[r] = take ? dist : bv[r];
        bi[r] = take ? idx : bi[r];
      }
    }
  }
  for (int r = 0; r < rows; ++r) {
    T value = bv[r][0];
    int64_t code = bi[r][0];
    for (int l = 1; l < L; ++l) {
      if (bv[r][l] < value || (bv[r][l] == value && bi[r][l] < code)) {
        value = bv[r][l];
        code = bi[r][l];
      }
    }
    best[r] = value;
    best_code[r] = code;
  }
}

template <typename T>
void nearest_rows(const T* z, int64_t ldz, int64_t rows, const T* panels, const T* norms, int64_t d, int64_t kp,
                  T* best, int64_t* best_code) {
  constexpr int RM = PEGASUS_NEAREST_RM, NV = PEGASUS_NEAREST_NV;
  const T* zr[RM];
  for (int64_t m = 0; m < rows; m += RM) {
    const int count = rows - m < RM ? static_cast<int>(rows - m) : RM;
    // The missing rows of the last block repeat its first row; their results are not written.
    for (int r = 0; r < RM; ++r) zr[r] = z + (m + (r < count ? r : 0)) * ldz;
    nearest_block<T, RM, NV>(zr, panels, norms, d, kp, count, best + m, best_code + m);
  }
}

// exp(x) of every lane, float: Cephes' expf (range reduction by ln 2 in two parts, a degree-6
// polynomial), within 2 ulp; x is clamped to [-87.3, 88] (exp of -87.3 is the smallest normal
// float), so exp(-inf) is 1.2e-38, not 0. NaN stays NaN.
using VF = Vec<float>::type;
using VI = Vec<float>::itype;

inline __attribute__((always_inline)) VF exp_lanes(VF x) {
  const VF zero = {};
  x = x > zero + 88.0f ? zero + 88.0f : x;  // comparisons with NaN are false: NaN passes through
  x = x < zero - 87.3365f ? zero - 87.3365f : x;
  // n = round(x / ln 2) with the 1.5 * 2^23 trick (|x / ln 2| < 2^22 here).
  const VF n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  VF r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const VF p = (((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r +
                 1.6666665459e-1f) * r + 5.0000001201e-1f) * (r * r) + r + 1.0f;
  const VI bits = (__builtin_convertvector(n, VI) + 127) << 23;  // 2^n, -126 <= n <= 127
  VF scale;
  std::memcpy(&scale, &bits, sizeof(VF));
  return p * scale;
}

inline __attribute__((always_inline)) VF gate_lanes(VF f, VF g) {
  const VF zero = {};
  const VF e = exp_lanes(-2.0f * (f < zero ? -f : f));
  const VF t = (1.0f - e) / (1.0f + e);
  return (f < zero ? -t : t) / (1.0f + exp_lanes(-g));
}

inline void gate_float(const float* a, const float* add, int64_t c, float* out) {
  constexpr int L = sizeof(VF) / sizeof(float);
  int64_t i = 0;
  for (; i + L <= c; i += L) {
    VF f, g;
    std::memcpy(&f, a + i, sizeof(VF));
    std::memcpy(&g, a + c + i, sizeof(VF));
    if (add) {
      VF af, ag;
      std::memcpy(&af, add + i, sizeof(VF));
      std::memcpy(&ag, add + c + i, sizeof(VF));
      f += af;
      g += ag;
    }
    const VF o = gate_lanes(f, g);
    std::memcpy(out + i, &o, sizeof(VF));
  }
  if (i < c) {  // the last c % L values, through one zero-padded vector
    const int64_t rest = c - i;
    VF f = {}, g = {};
    std::memcpy(&f, a + i, rest * sizeof(float));
    std::memcpy(&g, a + c + i, rest * sizeof(float));
    if (add) {
      VF af = {}, ag = {};
      std::memcpy(&af, add + i, rest * sizeof(float));
      std::memcpy(&ag, add + c + i, rest * sizeof(float));
      f += af;
      g += ag;
    }
    const VF o = gate_lanes(f, g);
    std::memcpy(out + i, &o, rest * sizeof(float));
  }
}

// The entry points vec_kernels.cpp calls in each build's namespace (PEGASUS_VEC_DECLARE there).
void gemm_float(const pegasus::Rows<float>& x, const float* w, const float* bias, int64_t ldb, float* out,
                int64_t m_begin, int64_t m_end, int64_t n_begin, int64_t n_end, int64_t k, int64_t n) {
  gemm<float>(x, w, bias, ldb, out, m_begin, m_end, n_begin, n_end, k, n);
}

void gemm_double(const pegasus::Rows<double>& x, const double* w, const double* bias, int64_t ldb, double* out,
                 int64_t m_begin, int64_t m_end, int64_t n_begin, int64_t n_end, int64_t k, int64_t n) {
  gemm<double>(x, w, bias, ldb, out, m_begin, m_end, n_begin, n_end, k, n);
}

void gate(const float* a, const float* add, int64_t c, float* out) { gate_float(a, add, c, out); }

int64_t nearest_panel_float() { return PEGASUS_NEAREST_NV * sizeof(Vec<float>::type) / sizeof(float); }
int64_t nearest_panel_double() { return PEGASUS_NEAREST_NV * sizeof(Vec<double>::type) / sizeof(double); }

void nearest_float(const float* z, int64_t ldz, int64_t rows, const float* panels, const float* norms, int64_t d,
                   int64_t kp, float* best, int64_t* best_code) {
  nearest_rows<float>(z, ldz, rows, panels, norms, d, kp, best, best_code);
}

void nearest_double(const double* z, int64_t ldz, int64_t rows, const double* panels, const double* norms, int64_t d,
                    int64_t kp, double* best, int64_t* best_code) {
  nearest_rows<double>(z, ldz, rows, panels, norms, d, kp, best, best_code);
}

}  // namespace PEGASUS_VEC_NS
