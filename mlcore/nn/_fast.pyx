# cython: language_level=3
"""Cython kernels behind :mod:`mlcore.nn.fast_layers`.

Fused float32/float64 kernels (C code in the headers ``_gemm.h`` includes), all
running without the GIL on mlcore's own thread pool (``_threads.h``: workers that
sleep as soon as a loop ends; ``OMP_NUM_THREADS`` threads when set, else the
usable CPUs, unless :func:`set_num_threads` overrides it). Every parallel loop of
a training step is here, in one threading runtime: numpy's BLAS is not called in
the middle of it, and no result depends on the thread count.

* ``gemm``: the matrix product (C code in ``_gemm_impl.h``): every output element
  summed in an order fixed by the shapes alone, one fused multiply-add per term,
  an AVX2 kernel where the CPU has it (the same bits as the portable one).
* ``conv_forward`` / ``conv_backward_w`` / ``conv_backward_x`` (``_conv_impl.h``): convolution as
  an implicit GEMM: the product packs its blocks of the column matrix straight
  from the image (zero padding included), so no column matrix is ever built;
  image by image (threads over images), the weight gradient summed in fixed
  groups of images and then the groups in order.
* ``maxpool_forward`` / ``maxpool_backward`` (``_layers_impl.h``): direct pooling for any window and
  stride (tiling or overlapping, trailing rows/columns that fit no window are
  ignored), forward records the flat ``h * W + w`` index (int32) of the first
  maximum in row-major window order (NaN wins, like ``np.argmax``), backward
  scatter-adds through those indices.

All array arguments are C-contiguous; outputs are preallocated by the caller and
fully overwritten.  Shapes are checked here (ValueError) before any memory is
touched, so a mismatched call cannot read or write outside the arrays.
"""

cimport numpy as cnp

cnp.import_array()

ctypedef fused floating_t:
    float
    double

cdef extern from "_gemm.h":
    int mlcore_default_threads() nogil
    int mlcore_have_avx2_fma() nogil
    int mlcore_avx2_fma

KERNELS_AVAILABLE = True

cdef int _num_threads = 0  # 0: the default (OMP_NUM_THREADS if set, else the usable CPUs)


def set_num_threads(int n=0):
    """Use ``n`` threads in the kernels; ``n <= 0`` restores the default (``OMP_NUM_THREADS``
    when set, else the CPUs this process may run on)."""
    global _num_threads
    _num_threads = n if n > 0 else 0


def get_num_threads():
    """The number of threads the kernels will use."""
    return _threads()


def use_portable_kernel(bint flag=True):
    """Run the products on the portable C kernel (C99 fma) even where the CPU has AVX2 and
    FMA (``flag``), or go back to picking by the CPU; returns whether the AVX2 kernel was in
    use. For tests: both kernels give the same bits."""
    cdef int before = mlcore_have_avx2_fma()
    global mlcore_avx2_fma
    mlcore_avx2_fma = 0 if flag else -1
    return bool(before)


cdef inline int _threads() noexcept nogil:
    if _num_threads > 0:
        return _num_threads
    return mlcore_default_threads()


cdef inline bint _same4(Py_ssize_t* a, Py_ssize_t* b) noexcept:
    return a[0] == b[0] and a[1] == b[1] and a[2] == b[2] and a[3] == b[3]


def _check_geometry(Py_ssize_t HH, Py_ssize_t WW, Py_ssize_t stride, Py_ssize_t pad,
                    Py_ssize_t H, Py_ssize_t W, Py_ssize_t Ho, Py_ssize_t Wo):
    if HH < 1 or WW < 1 or stride < 1 or pad < 0:
        raise ValueError("filter sizes and stride must be >= 1 and pad >= 0")
    if Ho < 0 or Wo < 0 or (Ho > 0 and (Ho - 1) * stride + HH > H + 2 * pad) or \
            (Wo > 0 and (Wo - 1) * stride + WW > W + 2 * pad):
        raise ValueError("output size does not fit the padded input")


def maxpool_forward(const floating_t[:, :, :, ::1] x, floating_t[:, :, :, ::1] out,
                    cnp.int32_t[:, :, :, ::1] idx, Py_ssize_t ph, Py_ssize_t pw,
                    Py_ssize_t stride):
    """``out[n, c, i, j]`` = max of the window, ``idx`` = flat h * W + w of its first argmax."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t Ho = out.shape[2], Wo = out.shape[3]
    if ph < 1 or pw < 1 or stride < 1:
        raise ValueError("pool sizes and stride must be >= 1")
    if out.shape[0] != N or out.shape[1] != C or not _same4(idx.shape, out.shape):
        raise ValueError("out / idx shapes do not match x")
    _check_geometry(ph, pw, stride, 0, H, W, Ho, Wo)
    if H * W > 2147483647:
        raise ValueError("pooling plane too large for int32 indices")
    if N == 0 or C == 0 or Ho == 0 or Wo == 0:
        return
    cdef int nt = _threads()
    with nogil:
        if floating_t is float:
            mlcore_maxpool_forward_f(&x[0, 0, 0, 0], &out[0, 0, 0, 0], &idx[0, 0, 0, 0], N * C,
                                     H, W, Ho, Wo, ph, pw, stride, nt)
        else:
            mlcore_maxpool_forward_d(&x[0, 0, 0, 0], &out[0, 0, 0, 0], &idx[0, 0, 0, 0], N * C,
                                     H, W, Ho, Wo, ph, pw, stride, nt)


def maxpool_backward(const floating_t[:, :, :, ::1] dout, const cnp.int32_t[:, :, :, ::1] idx,
                     floating_t[:, :, ::1] dx):
    """Overwrite ``dx`` (N, C, H*W) with ``dout`` scatter-added through ``idx``."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], HW = dx.shape[2]
    cdef Py_ssize_t Ho = dout.shape[2], Wo = dout.shape[3]
    if dout.shape[0] != N or dout.shape[1] != C or not _same4(idx.shape, dout.shape):
        raise ValueError("dout / idx / dx shapes do not match")
    if N == 0 or C == 0 or HW == 0:
        return
    if Ho == 0 or Wo == 0:
        dx[...] = 0
        return
    cdef Py_ssize_t bad
    cdef int nt = _threads()
    with nogil:
        if floating_t is float:
            bad = mlcore_maxpool_backward_f(&dout[0, 0, 0, 0], &idx[0, 0, 0, 0], &dx[0, 0, 0],
                                            N * C, HW, Ho, Wo, nt)
        else:
            bad = mlcore_maxpool_backward_d(&dout[0, 0, 0, 0], &idx[0, 0, 0, 0], &dx[0, 0, 0],
                                            N * C, HW, Ho, Wo, nt)
    if bad:
        raise ValueError("pooling indices out of range (cache does not match dout)")


def adam_update(const floating_t[::1] w, const floating_t[::1] dw, const floating_t[::1] m,
                const floating_t[::1] v, floating_t[::1] next_w, floating_t[::1] next_m,
                floating_t[::1] next_v, double beta1, double beta2, double lr, double eps,
                long t):
    """One Adam step in one pass, element by element in the arrays' own precision and in the
    order of the course's numpy expression (every Python scalar rounded to the array dtype
    first, as numpy does), so the result equals that expression bit for bit:
    m' = b1*m + (1-b1)*dw, v' = b2*v + (1-b2)*(dw*dw),
    w' = w - (lr * (m' / (1-b1**t))) / (sqrt(v' / (1-b2**t)) + eps).
    The outputs may be the inputs (in place) or fresh arrays. Split over threads in fixed
    chunks: every element's arithmetic is the same whatever the thread count."""
    cdef Py_ssize_t n = w.shape[0]
    if dw.shape[0] != n or m.shape[0] != n or v.shape[0] != n or next_w.shape[0] != n or \
            next_m.shape[0] != n or next_v.shape[0] != n:
        raise ValueError("adam_update: arrays of different sizes")
    if n == 0:
        return
    cdef double k1 = 1.0 - beta1 ** t, k2 = 1.0 - beta2 ** t
    cdef int nt = _threads()
    with nogil:
        if floating_t is float:
            mlcore_adam_f(&w[0], &dw[0], &m[0], &v[0], &next_w[0], &next_m[0], &next_v[0], n,
                          <float>beta1, <float>(1.0 - beta1), <float>beta2,
                          <float>(1.0 - beta2), <float>k1, <float>k2, <float>lr, <float>eps, nt)
        else:
            mlcore_adam_d(&w[0], &dw[0], &m[0], &v[0], &next_w[0], &next_m[0], &next_v[0], n,
                          beta1, 1.0 - beta1, beta2, 1.0 - beta2, k1, k2, lr, eps, nt)


cdef extern from "_gemm.h":
    int mlcore_gemm_f(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* A, Py_ssize_t rsa,
                      Py_ssize_t csa, const float* B, Py_ssize_t rsb, Py_ssize_t csb,
                      float* C, Py_ssize_t ldc, int accumulate, int nthreads) noexcept nogil
    int mlcore_gemm_d(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const double* A,
                      Py_ssize_t rsa, Py_ssize_t csa, const double* B, Py_ssize_t rsb,
                      Py_ssize_t csb, double* C, Py_ssize_t ldc, int accumulate,
                      int nthreads) noexcept nogil
    int mlcore_conv_forward_f(const float* x, const float* wb, float* out, Py_ssize_t N,
                              Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t F,
                              Py_ssize_t HH, Py_ssize_t WW, Py_ssize_t stride, Py_ssize_t pad,
                              Py_ssize_t Ho, Py_ssize_t Wo, int nthreads) noexcept nogil
    int mlcore_conv_forward_d(const double* x, const double* wb, double* out, Py_ssize_t N,
                              Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t F,
                              Py_ssize_t HH, Py_ssize_t WW, Py_ssize_t stride, Py_ssize_t pad,
                              Py_ssize_t Ho, Py_ssize_t Wo, int nthreads) noexcept nogil
    int mlcore_conv_backward_w_f(const float* x, const float* dout, float* dwbT, Py_ssize_t N,
                                 Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t F,
                                 Py_ssize_t HH, Py_ssize_t WW, Py_ssize_t stride,
                                 Py_ssize_t pad, Py_ssize_t Ho, Py_ssize_t Wo,
                                 int nthreads) noexcept nogil
    int mlcore_conv_backward_w_d(const double* x, const double* dout, double* dwbT,
                                 Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                                 Py_ssize_t F, Py_ssize_t HH, Py_ssize_t WW, Py_ssize_t stride,
                                 Py_ssize_t pad, Py_ssize_t Ho, Py_ssize_t Wo,
                                 int nthreads) noexcept nogil
    int mlcore_conv_backward_x_f(const float* w2, const float* dout, float* dx, Py_ssize_t N,
                                 Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t F,
                                 Py_ssize_t HH, Py_ssize_t WW, Py_ssize_t stride,
                                 Py_ssize_t pad, Py_ssize_t Ho, Py_ssize_t Wo,
                                 int nthreads) noexcept nogil
    int mlcore_conv_backward_x_d(const double* w2, const double* dout, double* dx,
                                 Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                                 Py_ssize_t F, Py_ssize_t HH, Py_ssize_t WW, Py_ssize_t stride,
                                 Py_ssize_t pad, Py_ssize_t Ho, Py_ssize_t Wo,
                                 int nthreads) noexcept nogil
    void mlcore_maxpool_forward_f(const float* x, float* out, cnp.int32_t* idx, Py_ssize_t NC,
                                  Py_ssize_t H, Py_ssize_t W, Py_ssize_t Ho, Py_ssize_t Wo,
                                  Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t stride,
                                  int nthreads) noexcept nogil
    void mlcore_maxpool_forward_d(const double* x, double* out, cnp.int32_t* idx, Py_ssize_t NC,
                                  Py_ssize_t H, Py_ssize_t W, Py_ssize_t Ho, Py_ssize_t Wo,
                                  Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t stride,
                                  int nthreads) noexcept nogil
    Py_ssize_t mlcore_maxpool_backward_f(const float* dout, const cnp.int32_t* idx, float* dx,
                                         Py_ssize_t NC, Py_ssize_t HW, Py_ssize_t Ho,
                                         Py_ssize_t Wo, int nthreads) noexcept nogil
    Py_ssize_t mlcore_maxpool_backward_d(const double* dout, const cnp.int32_t* idx, double* dx,
                                         Py_ssize_t NC, Py_ssize_t HW, Py_ssize_t Ho,
                                         Py_ssize_t Wo, int nthreads) noexcept nogil
    void mlcore_adam_f(const float* w, const float* dw, const float* m, const float* v,
                       float* nw, float* nm, float* nv, Py_ssize_t n, float b1, float c1,
                       float b2, float c2, float k1, float k2, float lr, float eps,
                       int nthreads) noexcept nogil
    void mlcore_adam_d(const double* w, const double* dw, const double* m, const double* v,
                       double* nw, double* nm, double* nv, Py_ssize_t n, double b1, double c1,
                       double b2, double c2, double k1, double k2, double lr, double eps,
                       int nthreads) noexcept nogil


def gemm(const floating_t[:, :] a, const floating_t[:, :] b, floating_t[:, ::1] out,
         bint accumulate=False):
    """``out = a @ b`` (or ``out += a @ b``): a (M, K) and b (K, N) with any strides (a
    transposed view costs no copy), out (M, N) C-contiguous and not overlapping a or b.

    Each element is summed over k in ascending order in fixed blocks, one fused multiply-add
    per term (see _gemm_impl.h): the same bits on any number of threads and on any machine;
    threads split the output into tiles."""
    cdef Py_ssize_t M = a.shape[0], K = a.shape[1], N = b.shape[1]
    if b.shape[0] != K or out.shape[0] != M or out.shape[1] != N:
        raise ValueError(
            f"gemm: shapes a {tuple(a.shape)[:2]}, b {tuple(b.shape)[:2]}, "
            f"out {tuple(out.shape)[:2]} do not chain as (M, K) @ (K, N) -> (M, N)")
    if M == 0 or N == 0:
        return
    cdef Py_ssize_t it = sizeof(floating_t)
    cdef Py_ssize_t rsa = a.strides[0] // it, csa = a.strides[1] // it
    cdef Py_ssize_t rsb = b.strides[0] // it, csb = b.strides[1] // it
    cdef const floating_t* pa = &a[0, 0] if K > 0 else NULL
    cdef const floating_t* pb = &b[0, 0] if K > 0 else NULL
    cdef int nt = _threads()
    cdef int rc
    with nogil:
        if floating_t is float:
            rc = mlcore_gemm_f(M, N, K, pa, rsa, csa, pb, rsb, csb, &out[0, 0], N,
                               accumulate, nt)
        else:
            rc = mlcore_gemm_d(M, N, K, pa, rsa, csa, pb, rsb, csb, &out[0, 0], N,
                               accumulate, nt)
    if rc != 0:
        raise MemoryError("gemm: could not allocate its work buffers")


def conv_forward(const floating_t[:, :, :, ::1] x, const floating_t[:, ::1] wb,
                 floating_t[:, :, :, ::1] out, Py_ssize_t HH, Py_ssize_t WW, Py_ssize_t stride,
                 Py_ssize_t pad):
    """``out`` (N, F, Ho, Wo) = the convolution of ``x`` (N, C, H, W) with ``wb`` (F, C*HH*WW
    + 1): each filter's weights flattened, then its bias. No column matrix is built: the
    product packs its blocks straight from the image. Threads over images."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = wb.shape[0], Ho = out.shape[2], Wo = out.shape[3]
    _check_geometry(HH, WW, stride, pad, H, W, Ho, Wo)
    if wb.shape[1] != C * HH * WW + 1 or out.shape[0] != N or out.shape[1] != F:
        raise ValueError("conv_forward: wb / out shapes do not match x and the filter size")
    if N == 0 or F == 0 or Ho == 0 or Wo == 0:
        return
    cdef int nt = _threads(), rc
    with nogil:
        if floating_t is float:
            rc = mlcore_conv_forward_f(&x[0, 0, 0, 0], &wb[0, 0], &out[0, 0, 0, 0], N, C, H, W,
                                       F, HH, WW, stride, pad, Ho, Wo, nt)
        else:
            rc = mlcore_conv_forward_d(&x[0, 0, 0, 0], &wb[0, 0], &out[0, 0, 0, 0], N, C, H, W,
                                       F, HH, WW, stride, pad, Ho, Wo, nt)
    if rc != 0:
        raise MemoryError("conv_forward: could not allocate its work buffers")


def conv_backward_w(const floating_t[:, :, :, ::1] x, const floating_t[:, :, :, ::1] dout,
                    floating_t[:, ::1] dwbT, Py_ssize_t HH, Py_ssize_t WW, Py_ssize_t stride,
                    Py_ssize_t pad):
    """``dwbT`` (C*HH*WW + 1, F) = [dw | db] transposed, from the forward input ``x`` and
    ``dout`` (N, F, Ho, Wo); images summed in fixed groups, then the groups in order."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = dout.shape[1], Ho = dout.shape[2], Wo = dout.shape[3]
    _check_geometry(HH, WW, stride, pad, H, W, Ho, Wo)
    if dout.shape[0] != N or dwbT.shape[0] != C * HH * WW + 1 or dwbT.shape[1] != F:
        raise ValueError("conv_backward_w: dout / dwbT shapes do not match x")
    if F == 0:
        return
    cdef int nt = _threads(), rc
    with nogil:
        if floating_t is float:
            rc = mlcore_conv_backward_w_f(&x[0, 0, 0, 0] if N > 0 else NULL,
                                          &dout[0, 0, 0, 0] if N > 0 and Ho * Wo > 0 else NULL,
                                          &dwbT[0, 0], N, C, H, W, F, HH, WW, stride, pad,
                                          Ho, Wo, nt)
        else:
            rc = mlcore_conv_backward_w_d(&x[0, 0, 0, 0] if N > 0 else NULL,
                                          &dout[0, 0, 0, 0] if N > 0 and Ho * Wo > 0 else NULL,
                                          &dwbT[0, 0], N, C, H, W, F, HH, WW, stride, pad,
                                          Ho, Wo, nt)
    if rc != 0:
        raise MemoryError("conv_backward_w: could not allocate its work buffers")


def conv_backward_x(const floating_t[:, ::1] w2, const floating_t[:, :, :, ::1] dout,
                    floating_t[:, :, :, ::1] dx, Py_ssize_t HH, Py_ssize_t WW,
                    Py_ssize_t stride, Py_ssize_t pad):
    """``dx`` (N, C, H, W) = the input gradient from ``w2`` (F, C*HH*WW) and ``dout``
    (N, F, Ho, Wo), image by image (threads over images)."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t F = dout.shape[1], Ho = dout.shape[2], Wo = dout.shape[3]
    _check_geometry(HH, WW, stride, pad, H, W, Ho, Wo)
    if dout.shape[0] != N or w2.shape[0] != F or w2.shape[1] != C * HH * WW:
        raise ValueError("conv_backward_x: w2 / dout shapes do not match dx")
    if N == 0 or C * H * W == 0:
        return
    if F == 0 or Ho * Wo == 0:
        dx[...] = 0
        return
    cdef int nt = _threads(), rc
    with nogil:
        if floating_t is float:
            rc = mlcore_conv_backward_x_f(&w2[0, 0], &dout[0, 0, 0, 0], &dx[0, 0, 0, 0], N, C,
                                          H, W, F, HH, WW, stride, pad, Ho, Wo, nt)
        else:
            rc = mlcore_conv_backward_x_d(&w2[0, 0], &dout[0, 0, 0, 0], &dx[0, 0, 0, 0], N, C,
                                          H, W, F, HH, WW, stride, pad, Ho, Wo, nt)
    if rc != 0:
        raise MemoryError("conv_backward_x: could not allocate its work buffers")
