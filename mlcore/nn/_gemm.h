/* mlcore's kernels, float32 and float64: the matrix product (_gemm_impl.h), the
   convolutions (_conv_impl.h), max pooling and Adam (_layers_impl.h), all on one thread pool
   (_threads.h). */
#ifndef MLCORE_GEMM_H
#define MLCORE_GEMM_H

#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_threads.h"

#define MLG_MR 6     /* rows of a register tile */
#define MLG_MC 96    /* rows of a C tile (a multiple of MLG_MR): its A block stays in L2 */
#define MLG_KC 256   /* depth of a block: fixes the order of every sum, whatever else */
#define MLG_NC 512   /* at most this many columns in a block: its packed B stays in L2 */
#define MLG_GROUP 4  /* images summed on their own in a weight gradient, then in order */

#include <math.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define MLG_X86 1
#include <immintrin.h>
static int mlcore_avx2_fma = -1;
static int mlcore_have_avx2_fma(void) {
    /* the CPU runs the AVX2 kernel (else the portable one: the same bits, slower) */
    if (mlcore_avx2_fma < 0) {
        __builtin_cpu_init();
        mlcore_avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return mlcore_avx2_fma;
}
#else
static int mlcore_avx2_fma = 0; /* no AVX2 kernel: the portable one */
static int mlcore_have_avx2_fma(void) { return 0; }
#endif

#define GT float
#define GVL 8
#define GFMA fmaf
#define GSQRT sqrtf
#define GNAME(x) mlcore_##x##_f
#define GVEC __m256
#define GZERO _mm256_setzero_ps
#define GLOADU _mm256_loadu_ps
#define GSET1 _mm256_set1_ps
#define GFMAV _mm256_fmadd_ps
#define GSTORE _mm256_store_ps
#include "_precision.h"

#define GT double
#define GVL 4
#define GFMA fma
#define GSQRT sqrt
#define GNAME(x) mlcore_##x##_d
#define GVEC __m256d
#define GZERO _mm256_setzero_pd
#define GLOADU _mm256_loadu_pd
#define GSET1 _mm256_set1_pd
#define GFMAV _mm256_fmadd_pd
#define GSTORE _mm256_store_pd
#include "_precision.h"

#endif
