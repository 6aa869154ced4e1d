// vec_kernels_impl.h compiled for AVX-512: 6x4 blocks of 16-float vectors (24 of the 32 zmm
// registers hold sums, 4 the weights, 1 the broadcast input). vec_kernels.cpp calls it only on
// CPUs (and kernels) that have AVX-512F and AVX-512VL.
#if defined(__GNUC__) && defined(__x86_64__)
#pragma GCC target("avx512f,avx512vl,avx2,fma")
#define PEGASUS_VEC_NS pegasus_vec_avx512
#define PEGASUS_VEC_BYTES 64
#define PEGASUS_GEMM_RM 6
#define PEGASUS_GEMM_NV 4
#include "vec_kernels_impl.h"
#endif
