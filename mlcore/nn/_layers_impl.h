/* One precision of the pooling and Adam kernels, included twice by _gemm.h (GT, GNAME as for
   _gemm_impl.h). Every loop runs on mlcore's thread pool (_threads.h), an item being one
   (image, channel) plane or one fixed chunk of parameters: no result depends on the thread
   count. */

typedef struct {
    const GT* x;      /* (N*C, H, W) */
    const GT* dout;   /* backward: (N*C, Ho, Wo) */
    GT* out;          /* forward: (N*C, Ho, Wo); backward: dx (N*C, H*W) */
    int32_t* idx;     /* (N*C, Ho, Wo): flat h * W + w of each window's first maximum */
    const int32_t* cidx;
    Py_ssize_t H, W, Ho, Wo, ph, pw, stride;
    Py_ssize_t bad;   /* backward: indices out of the plane */
} GNAME(pool_job);

static void GNAME(maxpool_forward_item)(void* arg, Py_ssize_t nc, int tid) {
    /* tap-major over each row of windows, out / idx rows as the running max: branch-free
       selects the compiler can vectorise; strictly greater keeps the first maximum, and the
       first NaN wins and stays (like np.argmax) */
    (void)tid;
    GNAME(pool_job)* j = (GNAME(pool_job)*)arg;
    Py_ssize_t W = j->W, Ho = j->Ho, Wo = j->Wo, s = j->stride;
    const GT* x = j->x + nc * j->H * W;
    GT* out = j->out + nc * Ho * Wo;
    int32_t* idx = j->idx + nc * Ho * Wo;
    for (Py_ssize_t i = 0; i < Ho; i++) {
        Py_ssize_t h0 = i * s;
        GT* o = out + i * Wo;
        int32_t* d = idx + i * Wo;
        for (Py_ssize_t jj = 0; jj < Wo; jj++) {
            o[jj] = x[h0 * W + jj * s];
            d[jj] = (int32_t)(h0 * W + jj * s);
        }
        for (Py_ssize_t kh = 0; kh < j->ph; kh++) {
            Py_ssize_t h = h0 + kh;
            for (Py_ssize_t kw = 0; kw < j->pw; kw++) {
                if (kh == 0 && kw == 0) continue;
                Py_ssize_t base = h * W + kw;
                const GT* xr = x + base;
                for (Py_ssize_t jj = 0; jj < Wo; jj++) {
                    GT v = xr[jj * s], b = o[jj];
                    int take = (v > b) | ((v != v) & (b == b));
                    o[jj] = take ? v : b;
                    d[jj] = take ? (int32_t)(base + jj * s) : d[jj];
                }
            }
        }
    }
}

static void GNAME(maxpool_backward_item)(void* arg, Py_ssize_t nc, int tid) {
    (void)tid;
    GNAME(pool_job)* j = (GNAME(pool_job)*)arg;
    Py_ssize_t HW = j->H * j->W, P = j->Ho * j->Wo, bad = 0;
    GT* dx = j->out + nc * HW;
    const GT* d = j->dout + nc * P;
    const int32_t* idx = j->cidx + nc * P;
    memset(dx, 0, sizeof(GT) * HW);
    for (Py_ssize_t q = 0; q < P; q++) {
        int32_t k = idx[q];
        if (k < 0 || k >= HW)
            bad++;
        else
            dx[k] += d[q];
    }
    if (bad) __atomic_add_fetch(&j->bad, bad, __ATOMIC_RELAXED);
}

static void GNAME(maxpool_forward)(const GT* x, GT* out, int32_t* idx, Py_ssize_t NC,
                                   Py_ssize_t H, Py_ssize_t W, Py_ssize_t Ho, Py_ssize_t Wo,
                                   Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t stride,
                                   int nthreads) {
    GNAME(pool_job) j = {x, NULL, out, idx, NULL, H, W, Ho, Wo, ph, pw, stride, 0};
    mlcore_parallel(GNAME(maxpool_forward_item), &j, NC, nthreads);
}

static Py_ssize_t GNAME(maxpool_backward)(const GT* dout, const int32_t* idx, GT* dx,
                                          Py_ssize_t NC, Py_ssize_t HW, Py_ssize_t Ho,
                                          Py_ssize_t Wo, int nthreads) {
    /* the number of indices outside the plane (0 when the cache matches) */
    GNAME(pool_job) j = {NULL, dout, dx, NULL, idx, HW, 1, Ho, Wo, 0, 0, 0, 0};
    mlcore_parallel(GNAME(maxpool_backward_item), &j, NC, nthreads);
    return j.bad;
}

/* One Adam step, element by element in the arrays' own precision and in the order of the
   course's numpy expression (the extension is built with -ffp-contract=off: every operation
   rounds like numpy's); the outputs may be the inputs. */
typedef struct {
    const GT *w, *dw, *m, *v;
    GT *nw, *nm, *nv;
    Py_ssize_t n;
    GT b1, c1, b2, c2, k1, k2, lr, eps;
} GNAME(adam_job);

#define MLA_CHUNK 32768

static void GNAME(adam_item)(void* arg, Py_ssize_t k, int tid) {
    (void)tid;
    GNAME(adam_job)* j = (GNAME(adam_job)*)arg;
    Py_ssize_t lo = k * MLA_CHUNK, hi = lo + MLA_CHUNK < j->n ? lo + MLA_CHUNK : j->n;
    const GT *w = j->w, *dw = j->dw, *m = j->m, *v = j->v;
    GT *nw = j->nw, *nm = j->nm, *nv = j->nv;
    GT b1 = j->b1, c1 = j->c1, b2 = j->b2, c2 = j->c2, k1 = j->k1, k2 = j->k2, lr = j->lr,
       eps = j->eps;
    _Pragma("GCC ivdep")
    for (Py_ssize_t i = lo; i < hi; i++) {
        GT g = dw[i];
        GT mi = b1 * m[i] + c1 * g;
        GT vi = b2 * v[i] + c2 * (g * g);
        nw[i] = w[i] - (lr * (mi / k1)) / (GSQRT(vi / k2) + eps);
        nm[i] = mi;
        nv[i] = vi;
    }
}

static void GNAME(adam)(const GT* w, const GT* dw, const GT* m, const GT* v, GT* nw, GT* nm,
                        GT* nv, Py_ssize_t n, GT b1, GT c1, GT b2, GT c2, GT k1, GT k2, GT lr,
                        GT eps, int nthreads) {
    GNAME(adam_job) j = {w, dw, m, v, nw, nm, nv, n, b1, c1, b2, c2, k1, k2, lr, eps};
    mlcore_parallel(GNAME(adam_item), &j, (n + MLA_CHUNK - 1) / MLA_CHUNK, nthreads);
}

#undef MLA_CHUNK
