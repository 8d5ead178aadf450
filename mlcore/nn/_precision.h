/* Every kernel in one precision: included by _gemm.h once per element type, after it defines
   GT, GVL, GFMA, GSQRT, GNAME and the AVX2 intrinsics GVEC, GZERO, GLOADU, GSET1, GFMAV,
   GSTORE; undefines them for the next. */
#include "_gemm_impl.h"
#include "_conv_impl.h"
#include "_layers_impl.h"
#undef GT
#undef GVL
#undef GFMA
#undef GSQRT
#undef GNAME
#undef GVEC
#undef GZERO
#undef GLOADU
#undef GSET1
#undef GFMAV
#undef GSTORE
