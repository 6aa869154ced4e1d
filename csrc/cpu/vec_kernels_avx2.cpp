// vec_kernels_impl.h compiled for AVX2+FMA: 4x2 blocks of 8-float vectors (8 of the 16 ymm
// registers hold sums). vec_kernels.cpp calls it only on CPUs that have both.
#if defined(__GNUC__) && defined(__x86_64__)
#pragma GCC target("avx2,fma")
#define PEGASUS_VEC_NS pegasus_vec_avx2
#define PEGASUS_VEC_BYTES 32
#define PEGASUS_GEMM_RM 4
#define PEGASUS_GEMM_NV 2
// nearest_rows: 6x2 blocks (12 sums, 15 registers in all); 3x4 needs 17 and spilled: 13 ms against
// 3.1 ms at N=4096, K=512, D=64 on one Zen 4 core.
#define PEGASUS_NEAREST_RM 6
#define PEGASUS_NEAREST_NV 2
#include "vec_kernels_impl.h"
#endif
