/* One precision of mlcore's convolutions as implicit GEMM, on the product of _gemm_impl.h
   (included after it by _gemm.h, with the same GT, GVL, GNAME): the column matrix is never
   built; the kernel reads it in place from a padded copy of each image, or packs its blocks
   from the image as the product needs them. */

#define GNR (2 * GVL)

/* ---- convolution as implicit GEMM ----------------------------------------------------- */

typedef struct {
    const GT* x; /* one image, (C, H, W) C-contiguous */
    Py_ssize_t C, H, W, HH, WW, stride, pad, Ho, Wo, K; /* K = C * HH * WW */
} GNAME(conv);

static void GNAME(emit)(GT* dst, Py_ssize_t pstride, Py_ssize_t estride, Py_ssize_t o,
                        Py_ssize_t cnt, const GT* src, Py_ssize_t s) {
    /* element o + i (i < cnt) of a generated row = src[i * s] (src NULL: zero) goes to
       dst[((o + i) / GNR) * pstride + ((o + i) % GNR) * estride] */
    while (cnt > 0) {
        Py_ssize_t r = o % GNR, m = GNR - r < cnt ? GNR - r : cnt;
        GT* d = dst + (o / GNR) * pstride + r * estride;
        if (src == NULL)
            for (Py_ssize_t i = 0; i < m; i++) d[i * estride] = 0;
        else if (s == 1 && estride == 1 && m == GNR)
            memcpy(d, src, GNR * sizeof(GT)); /* a whole panel row: a few vector moves */
        else if (s == 1 && estride == 1)
            for (Py_ssize_t i = 0; i < m; i++) d[i] = src[i];
        else {
            for (Py_ssize_t i = 0; i < m; i++) d[i * estride] = src[i * s];
        }
        if (src != NULL) src += m * s;
        o += m;
        cnt -= m;
    }
}

static void GNAME(im2row)(const GNAME(conv)* g, Py_ssize_t k, Py_ssize_t q0, Py_ssize_t len,
                          GT* dst, Py_ssize_t pstride, Py_ssize_t estride) {
    /* row k of the image's column matrix at output positions q0..q0+len (position
       q = i * Wo + j), element q - q0 written where emit() puts it: straight into a packed
       block. Row K is the ones row that carries the bias */
    if (k == g->K) {
        for (Py_ssize_t o = 0; o < len; o++)
            dst[(o / GNR) * pstride + (o % GNR) * estride] = 1;
        return;
    }
    Py_ssize_t c = k / (g->HH * g->WW), kh = (k / g->WW) % g->HH, kw = k % g->WW;
    Py_ssize_t s = g->stride, off = kw - g->pad, Wo = g->Wo, W = g->W;
    /* output columns j whose input column j * s + off lies inside the image: [lo, hi) */
    Py_ssize_t lo = off >= 0 ? 0 : (-off + s - 1) / s;
    Py_ssize_t hi = W - 1 - off >= 0 ? (W - 1 - off) / s + 1 : 0;
    if (hi > Wo) hi = Wo;
    if (lo > hi) lo = hi;
    const GT* xc = g->x + c * g->H * W;
    Py_ssize_t q = q0, end = q0 + len;
    while (q < end) {
        Py_ssize_t i = q / Wo, j = q % Wo;
        Py_ssize_t run = Wo - j < end - q ? Wo - j : end - q;
        Py_ssize_t h = i * s - g->pad + kh, o = q - q0;
        if (h < 0 || h >= g->H) {
            GNAME(emit)(dst, pstride, estride, o, run, NULL, 0);
        } else {
            Py_ssize_t b = j + run;
            Py_ssize_t l = lo < j ? j : (lo < b ? lo : b);
            Py_ssize_t r = hi > b ? b : (hi > l ? hi : l);
            if (l > j) GNAME(emit)(dst, pstride, estride, o, l - j, NULL, 0);
            if (r > l)
                GNAME(emit)(dst, pstride, estride, o + (l - j), r - l,
                            xc + h * W + l * s + off, s);
            if (b > r) GNAME(emit)(dst, pstride, estride, o + (r - j), b - r, NULL, 0);
        }
        q += run;
    }
}

typedef struct {
    GNAME(conv) g;
} GNAME(convpack);

static void GNAME(pack_b_conv)(const void* ctx, Py_ssize_t c0, Py_ssize_t n, Py_ssize_t k0,
                               Py_ssize_t kc, GT* Bp) {
    /* right operand = the column matrix (rows k, columns output positions) */
    const GNAME(convpack)* cp = (const GNAME(convpack)*)ctx;
    Py_ssize_t np_ = (n + GNR - 1) / GNR;
    for (Py_ssize_t kk = 0; kk < kc; kk++) {
        GT* d = Bp + kk * GNR;
        GNAME(im2row)(&cp->g, k0 + kk, c0, n, d, GNR * kc, 1);
        for (Py_ssize_t c = n; c < np_ * GNR; c++) d[(c / GNR) * GNR * kc + c % GNR] = 0;
    }
}

static void GNAME(pack_a_conv)(const void* ctx, Py_ssize_t r0, Py_ssize_t m, Py_ssize_t k0,
                               Py_ssize_t kc, GT* Ap) {
    /* left operand = the column matrix (rows k, depth output positions) */
    const GNAME(convpack)* cp = (const GNAME(convpack)*)ctx;
    for (Py_ssize_t p = 0; p < m; p += MLG_MR) {
        Py_ssize_t mr = m - p < MLG_MR ? m - p : MLG_MR;
        for (Py_ssize_t r = 0; r < mr; r++)
            GNAME(im2row)(&cp->g, r0 + p + r, k0, kc, Ap + r, GNR * MLG_MR, MLG_MR);
        for (Py_ssize_t r = mr; r < MLG_MR; r++)
            for (Py_ssize_t kk = 0; kk < kc; kk++) Ap[kk * MLG_MR + r] = 0;
        Ap += MLG_MR * kc;
    }
}

static void GNAME(col2im)(const GNAME(conv)* g, const GT* cols, GT* dx) {
    /* dx (C, H, W) of one image = the sum of its column gradient cols (K x Ho*Wo) over the
       receptive fields, in the fixed order (kh, kw, i, j) */
    Py_ssize_t P = g->Ho * g->Wo, s = g->stride, Wo = g->Wo, W = g->W, H = g->H;
    memset(dx, 0, sizeof(GT) * g->C * H * W);
    for (Py_ssize_t c = 0; c < g->C; c++) {
        GT* d = dx + c * H * W;
        for (Py_ssize_t kh = 0; kh < g->HH; kh++) {
            for (Py_ssize_t kw = 0; kw < g->WW; kw++) {
                const GT* src = cols + ((c * g->HH + kh) * g->WW + kw) * P;
                Py_ssize_t off = kw - g->pad;
                Py_ssize_t lo = off >= 0 ? 0 : (-off + s - 1) / s;
                Py_ssize_t hi = W - 1 - off >= 0 ? (W - 1 - off) / s + 1 : 0;
                if (hi > Wo) hi = Wo;
                if (lo > hi) lo = hi;
                for (Py_ssize_t i = 0; i < g->Ho; i++) {
                    Py_ssize_t h = i * s - g->pad + kh;
                    if (h < 0 || h >= H) continue;
                    GT* dr = d + h * W;
                    const GT* sr = src + i * Wo;
                    if (s == 1)
                        for (Py_ssize_t j = lo; j < hi; j++) dr[j + off] += sr[j];
                    else
                        for (Py_ssize_t j = lo; j < hi; j++) dr[j * s + off] += sr[j];
                }
            }
        }
    }
}

static GNAME(conv) GNAME(geometry)(const GT* x, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                                   Py_ssize_t HH, Py_ssize_t WW, Py_ssize_t stride,
                                   Py_ssize_t pad, Py_ssize_t Ho, Py_ssize_t Wo) {
    GNAME(conv) g = {x, C, H, W, HH, WW, stride, pad, Ho, Wo, C * HH * WW};
    return g;
}

typedef struct {
    const GT* x;     /* input (N, C, H, W) */
    const GT* wb;    /* forward: (F, K + 1); backward_x: w2 (F, K) */
    const GT* dout;  /* (N, F, Ho, Wo) */
    GT* out;         /* forward: (N, F, Ho, Wo); backward_w: group sums; backward_x: dx */
    GT* dwbT;        /* backward_w: (K + 1, F), group 0's sum */
    Py_ssize_t N, C, H, W, F, HH, WW, stride, pad, Ho, Wo;
    int failed;
    GNAME(work)* ws;
    Py_ssize_t* off; /* where each row of the column matrix starts in a padded image (read
                        in place: forward with Wo % GNR == 0, weight gradient), else NULL */
    const GT* wpre;  /* forward, F <= MLG_MC: wb packed once for every image, else NULL */
} GNAME(conv_job);

static GNAME(conv) GNAME(image)(const GNAME(conv_job)* j, Py_ssize_t n) {
    return GNAME(geometry)(j->x ? j->x + n * j->C * j->H * j->W : NULL, j->C, j->H, j->W,
                           j->HH, j->WW, j->stride, j->pad, j->Ho, j->Wo);
}

/* The in-place paths read a padded copy of each image laid out by column phase: with stride
   s, channel c holds s planes (phase ph = padded column % s), each Hp rows of Wps = ceil(Wp /
   s) columns, so that the inputs of one filter tap at consecutive output columns are
   consecutive in memory for any stride. Then a plane of ones (the bias row) and a plane of
   zeros (rows past a block's end), each one channel in size. */
static Py_ssize_t GNAME(channel)(const GNAME(conv_job)* j) {
    Py_ssize_t s = j->stride, Wp = j->W + 2 * j->pad;
    return s * (j->H + 2 * j->pad) * ((Wp + s - 1) / s);
}

static Py_ssize_t* GNAME(offsets)(const GNAME(conv_job)* j, Py_ssize_t rows) {
    /* where each row k of the column matrix starts in the phase layout (row K: the ones,
       rows past it up to `rows`: the zeros); NULL when memory ran out */
    Py_ssize_t s = j->stride, Hp = j->H + 2 * j->pad, Wps = (j->W + 2 * j->pad + s - 1) / s;
    Py_ssize_t K = j->C * j->HH * j->WW, ch = GNAME(channel)(j);
    Py_ssize_t* off = (Py_ssize_t*)malloc(sizeof(Py_ssize_t) * (rows > K + 1 ? rows : K + 1));
    if (off == NULL) return NULL;
    for (Py_ssize_t k = 0; k < K; k++) {
        Py_ssize_t c = k / (j->HH * j->WW), kh = (k / j->WW) % j->HH, kw = k % j->WW;
        off[k] = c * ch + (kw % s) * Hp * Wps + kh * Wps + kw / s;
    }
    off[K] = j->C * ch;
    for (Py_ssize_t k = K + 1; k < rows; k++) off[k] = (j->C + 1) * ch;
    return off;
}

static int GNAME(padded)(const GNAME(conv_job)* j, GNAME(work)* w, Py_ssize_t n,
                         GNAME(conv)* g) {
    /* image n, zero-padded, in the phase layout in the thread's buffer; *g its geometry for
       the packing paths (pad 0: generated rows are straight copies; stride 1 only, where the
       phase layout is the plain padded image); 0 when memory ran out */
    Py_ssize_t Hp = j->H + 2 * j->pad, Wp = j->W + 2 * j->pad, C = j->C, s = j->stride;
    Py_ssize_t Wps = (Wp + s - 1) / s, ch = GNAME(channel)(j);
    if (w->extra == NULL) {
        w->extra = (GT*)calloc((C + 2) * ch > 0 ? (C + 2) * ch : 1, sizeof(GT));
        if (w->extra == NULL) return 0;
        for (Py_ssize_t e = C * ch; e < (C + 1) * ch; e++) w->extra[e] = 1;
    }
    const GT* x = j->x + n * C * j->H * j->W;
    for (Py_ssize_t c = 0; c < C; c++)
        for (Py_ssize_t h = 0; h < j->H; h++) {
            const GT* src = x + (c * j->H + h) * j->W;
            if (s == 1) {
                memcpy(w->extra + c * ch + (h + j->pad) * Wp + j->pad, src, sizeof(GT) * j->W);
            } else {
                for (Py_ssize_t ph = 0; ph < s; ph++) {
                    /* phase ph holds padded columns jj * s + ph, i.e. image columns
                       jj * s + ph - pad: those inside the image */
                    Py_ssize_t d = ph - j->pad;
                    Py_ssize_t lo = d >= 0 ? 0 : (-d + s - 1) / s;
                    Py_ssize_t hi = j->W - 1 - d >= 0 ? (j->W - 1 - d) / s + 1 : 0;
                    GT* dst = w->extra + c * ch + ph * Hp * Wps + (h + j->pad) * Wps;
                    for (Py_ssize_t jj = lo; jj < hi; jj++) dst[jj] = src[jj * s + d];
                }
            }
        } /* the borders stay zero (calloc) */
    *g = GNAME(geometry)(w->extra, C, Hp, Wp, j->HH, j->WW, j->stride, 0, j->Ho, j->Wo);
    return 1;
}

static void GNAME(conv_forward_item)(void* arg, Py_ssize_t n, int tid) {
    /* out[n] (F x Ho*Wo) = wb @ columns of x[n] */
    GNAME(conv_job)* j = (GNAME(conv_job)*)arg;
    GNAME(work)* w = &j->ws[tid];
    if (!GNAME(work_ready)(w)) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    Py_ssize_t K = j->C * j->HH * j->WW, P = j->Ho * j->Wo;
    GNAME(strided) a = {j->wb, K + 1, 1};
    GNAME(convpack) b;
    if (j->off == NULL && j->stride > 1) {
        b.g = GNAME(image)(j, n); /* packed from the image itself, padding and stride */
    } else if (!GNAME(padded)(j, w, n, &b.g)) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    if (j->off != NULL) {
        /* the kernel reads the column matrix straight from the padded image: no packing */
        GT* out = j->out + n * j->F * P;
        Py_ssize_t s = j->stride, Wp = s * ((j->W + 2 * j->pad + s - 1) / s); /* a row step */
        for (Py_ssize_t j0 = 0; j0 < P; j0 += MLG_NC) {
            Py_ssize_t nb = P - j0 < MLG_NC ? P - j0 : MLG_NC;
            for (Py_ssize_t p0 = 0; p0 < K + 1; p0 += MLG_KC) {
                Py_ssize_t kc = K + 1 - p0 < MLG_KC ? K + 1 - p0 : MLG_KC;
                GNAME(bsrc) bs = {b.g.x, j->off + p0, j0, j->Wo, Wp};
                for (Py_ssize_t i0 = 0; i0 < j->F; i0 += MLG_MC) {
                    Py_ssize_t m = j->F - i0 < MLG_MC ? j->F - i0 : MLG_MC;
                    const GT* Ap = w->Ap;
                    if (j->wpre != NULL)
                        Ap = j->wpre + (j->F + MLG_MR - 1) / MLG_MR * MLG_MR * p0;
                    else
                        GNAME(pack_a_strided)(&a, i0, m, p0, kc, w->Ap);
                    GNAME(tile)(m, nb, kc, Ap, &bs, out + i0 * P + j0, P, p0 > 0);
                }
            }
        }
        return;
    }
    if (j->wpre != NULL)
        GNAME(gemm_serial)(j->F, P, K + 1, NULL, j->wpre, GNAME(pack_b_conv), &b,
                           j->out + n * j->F * P, P, 0, w);
    else
        GNAME(gemm_serial)(j->F, P, K + 1, GNAME(pack_a_strided), &a, GNAME(pack_b_conv), &b,
                           j->out + n * j->F * P, P, 0, w);
}

static void GNAME(conv_backward_w_item)(void* arg, Py_ssize_t gi, int tid) {
    /* group gi's sum over its images of columns @ dout^T, (K + 1) x F */
    GNAME(conv_job)* j = (GNAME(conv_job)*)arg;
    GNAME(work)* w = &j->ws[tid];
    if (!GNAME(work_ready)(w)) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    Py_ssize_t K1 = j->C * j->HH * j->WW + 1, P = j->Ho * j->Wo, F = j->F;
    GT* acc = gi == 0 ? j->dwbT : j->out + (gi - 1) * K1 * F;
    Py_ssize_t n0 = gi * MLG_GROUP, n1 = n0 + MLG_GROUP < j->N ? n0 + MLG_GROUP : j->N;
    for (Py_ssize_t n = n0; n < n1; n++) {
        GNAME(convpack) a;
        if (!GNAME(padded)(j, w, n, &a.g)) {
            __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
            return;
        }
        if (j->off != NULL) {
            /* the kernel reads the column matrix in place (rows k from j->off) */
            Py_ssize_t s = j->stride, Wp = s * ((j->W + 2 * j->pad + s - 1) / s); /* row step */
            GNAME(strided) b = {j->dout + n * F * P, 1, P}; /* (position, f) */
            for (Py_ssize_t j0 = 0; j0 < F; j0 += MLG_NC) {
                Py_ssize_t nb = F - j0 < MLG_NC ? F - j0 : MLG_NC;
                for (Py_ssize_t p0 = 0; p0 < P; p0 += MLG_KC) {
                    Py_ssize_t kc = P - p0 < MLG_KC ? P - p0 : MLG_KC;
                    GNAME(pack_b_strided)(&b, j0, nb, p0, kc, w->Bp);
                    GNAME(asrc) as = {a.g.x, j->off, p0, j->Wo, Wp};
                    for (Py_ssize_t i0 = 0; i0 < K1; i0 += MLG_MC) {
                        Py_ssize_t m = K1 - i0 < MLG_MC ? K1 - i0 : MLG_MC;
                        as.arow = j->off + i0;
                        GNAME(tile_ia)(m, nb, kc, &as, w->Bp, acc + i0 * F + j0, F,
                                       n > n0 || p0 > 0);
                    }
                }
            }
            continue;
        }
        GNAME(strided) b = {j->dout + n * F * P, 1, P}; /* (position, f) */
        GNAME(gemm_serial)(K1, F, P, GNAME(pack_a_conv), &a, GNAME(pack_b_strided), &b, acc,
                           F, n > n0, w);
    }
}

static void GNAME(conv_backward_x_item)(void* arg, Py_ssize_t n, int tid) {
    /* dx[n] = col2im(w2^T @ dout[n]), the column gradient in a per-thread buffer */
    GNAME(conv_job)* j = (GNAME(conv_job)*)arg;
    GNAME(work)* w = &j->ws[tid];
    Py_ssize_t K = j->C * j->HH * j->WW, P = j->Ho * j->Wo;
    if (w->extra == NULL) w->extra = (GT*)malloc(sizeof(GT) * (K * P > 0 ? K * P : 1));
    if (!GNAME(work_ready)(w) || w->extra == NULL) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    GNAME(conv) g = GNAME(image)(j, n);
    GNAME(strided) a = {j->wb, 1, K}; /* (k, f) = w2[f, k] */
    GNAME(strided) b = {j->dout + n * j->F * P, P, 1};
    GNAME(gemm_serial)(K, P, j->F, GNAME(pack_a_strided), &a, GNAME(pack_b_strided), &b,
                       w->extra, P, 0, w);
    GNAME(col2im)(&g, w->extra, j->out + n * j->C * j->H * j->W);
}

static int GNAME(conv_forward)(const GT* x, const GT* wb, GT* out, Py_ssize_t N, Py_ssize_t C,
                               Py_ssize_t H, Py_ssize_t W, Py_ssize_t F, Py_ssize_t HH,
                               Py_ssize_t WW, Py_ssize_t stride, Py_ssize_t pad,
                               Py_ssize_t Ho, Py_ssize_t Wo, int nthreads) {
    /* out (N, F, Ho, Wo) = wb (F x K+1: weights, then the bias) @ columns, image by image */
    if (N <= 0 || F <= 0 || Ho * Wo <= 0) return 0;
    if (nthreads > N) nthreads = (int)N;
    if (nthreads < 1) nthreads = 1;
    GNAME(conv_job) j = {x, wb, NULL, out, NULL, N, C, H, W, F, HH, WW, stride, pad, Ho, Wo, 0,
                         (GNAME(work)*)calloc(nthreads, sizeof(GNAME(work))), NULL, NULL};
    if (j.ws == NULL) return -1;
    if (Wo % GNR == 0) j.off = GNAME(offsets)(&j, 0); /* panels within output rows */
    GT* pre = NULL;
    Py_ssize_t K1 = C * HH * WW + 1;
    if (F <= MLG_MC) { /* the filters, packed once for every image */
        Py_ssize_t padF = (F + MLG_MR - 1) / MLG_MR * MLG_MR;
        pre = (GT*)aligned_alloc(64, ((size_t)padF * K1 * sizeof(GT) + 63) / 64 * 64);
        if (pre != NULL) {
            GNAME(strided) a = {wb, K1, 1};
            for (Py_ssize_t p0 = 0; p0 < K1; p0 += MLG_KC)
                GNAME(pack_a_strided)(&a, 0, F, p0, K1 - p0 < MLG_KC ? K1 - p0 : MLG_KC,
                                      pre + padF * p0);
            j.wpre = pre;
        }
    }
    mlcore_parallel(GNAME(conv_forward_item), &j, N, nthreads);
    GNAME(works_free)(j.ws, nthreads);
    free(j.off);
    free(pre);
    return j.failed ? -1 : 0;
}

static int GNAME(conv_backward_w)(const GT* x, const GT* dout, GT* dwbT, Py_ssize_t N,
                                  Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t F,
                                  Py_ssize_t HH, Py_ssize_t WW, Py_ssize_t stride,
                                  Py_ssize_t pad, Py_ssize_t Ho, Py_ssize_t Wo, int nthreads) {
    /* dwbT (K+1 x F) = columns @ dout^T summed over the images: [dw | db] transposed. Fixed
       groups of MLG_GROUP images are summed on their own (threads over groups), then the
       groups in order: the same sums whatever the thread count */
    Py_ssize_t K1 = C * HH * WW + 1, P = Ho * Wo;
    if (F <= 0) return 0;
    if (N <= 0 || P <= 0) {
        memset(dwbT, 0, sizeof(GT) * K1 * F);
        return 0;
    }
    Py_ssize_t ng = (N + MLG_GROUP - 1) / MLG_GROUP;
    GT* part = ng > 1 ? (GT*)malloc(sizeof(GT) * (ng - 1) * K1 * F) : NULL;
    if (ng > 1 && part == NULL) return -1;
    if (nthreads > ng) nthreads = (int)ng;
    if (nthreads < 1) nthreads = 1;
    GNAME(conv_job) j = {x, NULL, dout, part, dwbT, N, C, H, W, F, HH, WW, stride, pad, Ho, Wo,
                         0, (GNAME(work)*)calloc(nthreads, sizeof(GNAME(work))), NULL, NULL};
    if (j.ws == NULL) {
        free(part);
        return -1;
    }
    j.off = GNAME(offsets)(&j, (K1 + MLG_MC) / MLG_MR * MLG_MR + MLG_MR); /* room past K1 */
    mlcore_parallel(GNAME(conv_backward_w_item), &j, ng, nthreads);
    free(j.off);
    GNAME(works_free)(j.ws, nthreads);
    if (!j.failed)
        for (Py_ssize_t gi = 1; gi < ng; gi++) {
            const GT* src = part + (gi - 1) * K1 * F;
            for (Py_ssize_t e = 0; e < K1 * F; e++) dwbT[e] += src[e];
        }
    free(part);
    return j.failed ? -1 : 0;
}

static int GNAME(conv_backward_x)(const GT* w2, const GT* dout, GT* dx, Py_ssize_t N,
                                  Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t F,
                                  Py_ssize_t HH, Py_ssize_t WW, Py_ssize_t stride,
                                  Py_ssize_t pad, Py_ssize_t Ho, Py_ssize_t Wo, int nthreads) {
    /* dx (N, C, H, W) from w2 (F x K) and dout, image by image */
    if (N <= 0) return 0;
    if (nthreads > N) nthreads = (int)N;
    if (nthreads < 1) nthreads = 1;
    GNAME(conv_job) j = {NULL, w2, dout, dx, NULL, N, C, H, W, F, HH, WW, stride, pad, Ho, Wo, 0,
                         (GNAME(work)*)calloc(nthreads, sizeof(GNAME(work))), NULL, NULL};
    if (j.ws == NULL) return -1;
    mlcore_parallel(GNAME(conv_backward_x_item), &j, N, nthreads);
    GNAME(works_free)(j.ws, nthreads);
    return j.failed ? -1 : 0;
}

#undef GNR
