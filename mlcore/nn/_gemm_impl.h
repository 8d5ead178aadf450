/* One precision of mlcore's matrix product, included twice by _gemm.h with
   GT (element type), GVL (lanes of a 32-byte vector of GT), GFMA (C99 fma for GT),
   GNAME(x) (a name) and, on x86-64, GVEC and the AVX2 intrinsics GZERO, GLOADU, GSET1,
   GFMAV, GSTORE.

   The order of every sum: C = A @ B (M x K times K x N) gives each element of C the sum over
   k in ascending order, in blocks of MLG_KC: C = s_0, C += s_1, ... with s_b the block's own
   running sum from zero, each term one fused multiply-add (one rounding: the AVX2 FMA
   instruction, or C99 fma where the CPU has none, slower but the same bits). That order
   depends on nothing but K: not on the thread count, the tile sizes, the schedule or the
   machine. Threads split the output, never a sum.

   Operands reach the kernel through packers (or, for the convolutions of _conv_impl.h, are
   read in place), so a convolution's column matrix is never built. */

#define GNR (2 * GVL)

/* A packer fills one block of an operand in the kernel's layout.
   Left operand (rows r0..r0+m, depth k0..k0+kc): panels of MLG_MR rows,
     dst[(r / MLG_MR) * MLG_MR * kc + kk * MLG_MR + r % MLG_MR], zero rows past m.
   Right operand (depth k0..k0+kc, columns r0..r0+m): panels of GNR columns,
     dst[(c / GNR) * GNR * kc + kk * GNR + c % GNR], zero columns past m. */
typedef void (*GNAME(packer))(const void* ctx, Py_ssize_t r0, Py_ssize_t m, Py_ssize_t k0,
                              Py_ssize_t kc, GT* dst);

typedef struct {
    const GT* p;
    Py_ssize_t rs, cs; /* element (row, col) at p[row * rs + col * cs] */
} GNAME(strided);

static void GNAME(pack_a_strided)(const void* ctx, Py_ssize_t r0, Py_ssize_t m, Py_ssize_t k0,
                                  Py_ssize_t kc, GT* Ap) {
    const GNAME(strided)* s = (const GNAME(strided)*)ctx;
    Py_ssize_t rs = s->rs, cs = s->cs;
    const GT* A = s->p + r0 * rs + k0 * cs;
    for (Py_ssize_t p = 0; p < m; p += MLG_MR) {
        Py_ssize_t mr = m - p < MLG_MR ? m - p : MLG_MR;
        const GT* a = A + p * rs;
        if (cs == 1) {
            for (Py_ssize_t r = 0; r < mr; r++)
                for (Py_ssize_t kk = 0; kk < kc; kk++) Ap[kk * MLG_MR + r] = a[r * rs + kk];
        } else {
            for (Py_ssize_t kk = 0; kk < kc; kk++)
                for (Py_ssize_t r = 0; r < mr; r++) Ap[kk * MLG_MR + r] = a[r * rs + kk * cs];
        }
        for (Py_ssize_t r = mr; r < MLG_MR; r++)
            for (Py_ssize_t kk = 0; kk < kc; kk++) Ap[kk * MLG_MR + r] = 0;
        Ap += MLG_MR * kc;
    }
}

static void GNAME(pack_b_strided)(const void* ctx, Py_ssize_t c0, Py_ssize_t n, Py_ssize_t k0,
                                  Py_ssize_t kc, GT* Bp) {
    const GNAME(strided)* s = (const GNAME(strided)*)ctx;
    Py_ssize_t rs = s->rs, cs = s->cs;
    const GT* B = s->p + k0 * rs + c0 * cs;
    Py_ssize_t nf = n / GNR;
    if (cs == 1) {
        /* row by row, each row read from start to end (one stream the prefetcher follows) */
        for (Py_ssize_t kk = 0; kk < kc; kk++) {
            const GT* src = B + kk * rs;
            for (Py_ssize_t p = 0; p < nf; p++) {
                GT* d = Bp + p * GNR * kc + kk * GNR;
                for (Py_ssize_t c = 0; c < GNR; c++) d[c] = src[p * GNR + c];
            }
            if (n > nf * GNR) {
                GT* d = Bp + nf * GNR * kc + kk * GNR;
                Py_ssize_t c = 0;
                for (; c < n - nf * GNR; c++) d[c] = src[nf * GNR + c];
                for (; c < GNR; c++) d[c] = 0;
            }
        }
        return;
    }
    for (Py_ssize_t p = 0; p < n; p += GNR) {
        Py_ssize_t nr = n - p < GNR ? n - p : GNR;
        const GT* b = B + p * cs;
        for (Py_ssize_t c = 0; c < nr; c++)
            for (Py_ssize_t kk = 0; kk < kc; kk++) Bp[kk * GNR + c] = b[c * cs + kk * rs];
        for (Py_ssize_t c = nr; c < GNR; c++)
            for (Py_ssize_t kk = 0; kk < kc; kk++) Bp[kk * GNR + c] = 0;
        Bp += GNR * kc;
    }
}

/* ---- the kernel ----------------------------------------------------------------------- */

static void GNAME(store)(const GT* t, Py_ssize_t mr, Py_ssize_t nr, GT* c, Py_ssize_t ldc,
                         int add) {
    /* the valid mr x nr corner of a register tile t[MLG_MR][GNR] into C */
    for (Py_ssize_t r = 0; r < mr; r++) {
        GT* cr = c + r * ldc;
        const GT* tr = t + r * GNR;
        if (add)
            for (Py_ssize_t j = 0; j < nr; j++) cr[j] += tr[j];
        else
            for (Py_ssize_t j = 0; j < nr; j++) cr[j] = tr[j];
    }
}

/* Where the kernel reads B: panel p (GNR columns) of a packed block lies at
   B + p * GNR * kc, row kk of it GNR elements further each (off NULL); or, for a stride-1
   convolution read straight from a zero-padded image (no packing), row kk of the panel whose
   first output position is q lies at B + off[kk] + (q / Wo) * Wp + q % Wo (off[kk]: where
   row k0 + kk of the column matrix starts in the image's phase layout, Wp the step from one
   output row to the next there; Wo % GNR == 0 so that a panel never crosses an output row). */
typedef struct {
    const GT* B;
    const Py_ssize_t* off;
    Py_ssize_t q0, Wo, Wp;
} GNAME(bsrc);

static inline const GT* GNAME(bpanel)(const GNAME(bsrc)* b, Py_ssize_t jr, Py_ssize_t kc) {
    if (b->off == NULL) return b->B + (jr / GNR) * GNR * kc;
    Py_ssize_t q = b->q0 + jr;
    return b->B + (q / b->Wo) * b->Wp + q % b->Wo;
}

static void GNAME(tile_any)(Py_ssize_t m, Py_ssize_t n, Py_ssize_t kc, const GT* Ap,
                            const GNAME(bsrc)* bs, GT* C, Py_ssize_t ldc, int add) {
    /* C[m x n] (+)= packed A (m x kc) @ B (kc x n), portable C: each term one fused
       multiply-add (C99 fma: one rounding, the same bits as the AVX2 kernel below) */
    GT t[MLG_MR * GNR] __attribute__((aligned(64)));
    const Py_ssize_t* off = bs->off;
    for (Py_ssize_t jr = 0; jr < n; jr += GNR) {
        const GT* bp0 = GNAME(bpanel)(bs, jr, kc);
        Py_ssize_t nr = n - jr < GNR ? n - jr : GNR;
        for (Py_ssize_t ir = 0; ir < m; ir += MLG_MR) {
            const GT* ap = Ap + (ir / MLG_MR) * MLG_MR * kc;
            Py_ssize_t mr = m - ir < MLG_MR ? m - ir : MLG_MR;
            for (int q = 0; q < MLG_MR * GNR; q++) t[q] = 0;
            for (Py_ssize_t kk = 0; kk < kc; kk++) {
                const GT* bp = off ? bp0 + off[kk] : bp0 + kk * GNR;
                for (int r = 0; r < MLG_MR; r++) {
                    GT a = ap[r];
                    for (int j = 0; j < GNR; j++) t[r * GNR + j] = GFMA(a, bp[j], t[r * GNR + j]);
                }
                ap += MLG_MR;
            }
            GNAME(store)(t, mr, nr, C + ir * ldc + jr, ldc, add);
        }
    }
}

#ifdef MLG_X86
/* the 6 x 2 vector accumulators of the AVX2 kernels: declared zero, and stored to a register
   tile t[MLG_MR][GNR] */
#define MLG_ACC_ZERO                                                                         \
    GVEC c00 = GZERO(), c01 = GZERO(), c10 = GZERO(), c11 = GZERO();                         \
    GVEC c20 = GZERO(), c21 = GZERO(), c30 = GZERO(), c31 = GZERO();                         \
    GVEC c40 = GZERO(), c41 = GZERO(), c50 = GZERO(), c51 = GZERO();
#define MLG_ACC_STORE(T)                                                                     \
    GSTORE((T) + 0 * GNR, c00); GSTORE((T) + 0 * GNR + GVL, c01);                            \
    GSTORE((T) + 1 * GNR, c10); GSTORE((T) + 1 * GNR + GVL, c11);                            \
    GSTORE((T) + 2 * GNR, c20); GSTORE((T) + 2 * GNR + GVL, c21);                            \
    GSTORE((T) + 3 * GNR, c30); GSTORE((T) + 3 * GNR + GVL, c31);                            \
    GSTORE((T) + 4 * GNR, c40); GSTORE((T) + 4 * GNR + GVL, c41);                            \
    GSTORE((T) + 5 * GNR, c50); GSTORE((T) + 5 * GNR + GVL, c51);
#endif

#ifdef MLG_X86
__attribute__((target("avx2,fma")))
static void GNAME(tile_avx2)(Py_ssize_t m, Py_ssize_t n, Py_ssize_t kc, const GT* Ap,
                             const GNAME(bsrc)* bs, GT* C, Py_ssize_t ldc, int add) {
    /* the same as tile_any with AVX2 FMA instructions: 6 x 2 vector accumulators */
    GT t[MLG_MR * GNR] __attribute__((aligned(64)));
    const Py_ssize_t* off = bs->off;
    for (Py_ssize_t jr = 0; jr < n; jr += GNR) {
        const GT* bp0 = GNAME(bpanel)(bs, jr, kc);
        Py_ssize_t nr = n - jr < GNR ? n - jr : GNR;
        for (Py_ssize_t ir = 0; ir < m; ir += MLG_MR) {
            const GT* ap = Ap + (ir / MLG_MR) * MLG_MR * kc;
            Py_ssize_t mr = m - ir < MLG_MR ? m - ir : MLG_MR;
            MLG_ACC_ZERO
#define MLG_STEP(BP)                                                                         \
    {                                                                                        \
        GVEC b0 = GLOADU(BP), b1 = GLOADU((BP) + GVL), a;                                    \
        a = GSET1(ap[0]); c00 = GFMAV(a, b0, c00); c01 = GFMAV(a, b1, c01);                  \
        a = GSET1(ap[1]); c10 = GFMAV(a, b0, c10); c11 = GFMAV(a, b1, c11);                  \
        a = GSET1(ap[2]); c20 = GFMAV(a, b0, c20); c21 = GFMAV(a, b1, c21);                  \
        a = GSET1(ap[3]); c30 = GFMAV(a, b0, c30); c31 = GFMAV(a, b1, c31);                  \
        a = GSET1(ap[4]); c40 = GFMAV(a, b0, c40); c41 = GFMAV(a, b1, c41);                  \
        a = GSET1(ap[5]); c50 = GFMAV(a, b0, c50); c51 = GFMAV(a, b1, c51);                  \
        ap += MLG_MR;                                                                        \
    }
            if (off == NULL) {
                const GT* bp = bp0;
                for (Py_ssize_t kk = 0; kk < kc; kk++, bp += GNR) MLG_STEP(bp)
            } else {
                for (Py_ssize_t kk = 0; kk < kc; kk++) MLG_STEP(bp0 + off[kk])
            }
#undef MLG_STEP
            MLG_ACC_STORE(t)
            GNAME(store)(t, mr, nr, C + ir * ldc + jr, ldc, add);
        }
    }
}
#endif

/* The left operand read in place from a padded image (a stride-1 convolution's weight
   gradient): row r of the block at image + arow[r], its depth kk being output position
   q0 + kk, at (q / Wo) * Wp + q % Wo from there; depth runs split at the ends of output rows,
   so the sum over kk keeps its order. B packed, as usual. */
typedef struct {
    const GT* img;
    const Py_ssize_t* arow; /* MLG_MR entries per panel: rows past m point at a zero plane */
    Py_ssize_t q0, Wo, Wp;
} GNAME(asrc);

static void GNAME(tile_ia_any)(Py_ssize_t m, Py_ssize_t n, Py_ssize_t kc, const GNAME(asrc)* as,
                               const GT* Bp, GT* C, Py_ssize_t ldc, int add) {
    GT t[MLG_MR * GNR] __attribute__((aligned(64)));
    for (Py_ssize_t jr = 0; jr < n; jr += GNR) {
        const GT* bp0 = Bp + (jr / GNR) * GNR * kc;
        Py_ssize_t nr = n - jr < GNR ? n - jr : GNR;
        for (Py_ssize_t ir = 0; ir < m; ir += MLG_MR) {
            Py_ssize_t mr = m - ir < MLG_MR ? m - ir : MLG_MR;
            const Py_ssize_t* ar = as->arow + ir;
            for (int q = 0; q < MLG_MR * GNR; q++) t[q] = 0;
            for (Py_ssize_t kk = 0; kk < kc;) {
                Py_ssize_t q = as->q0 + kk, j = q % as->Wo;
                Py_ssize_t len = as->Wo - j < kc - kk ? as->Wo - j : kc - kk;
                Py_ssize_t o = (q / as->Wo) * as->Wp + j;
                for (Py_ssize_t u = 0; u < len; u++) {
                    const GT* bp = bp0 + (kk + u) * GNR;
                    for (int r = 0; r < MLG_MR; r++) {
                        GT a = as->img[ar[r] + o + u];
                        for (int c = 0; c < GNR; c++) t[r * GNR + c] = GFMA(a, bp[c], t[r * GNR + c]);
                    }
                }
                kk += len;
            }
            GNAME(store)(t, mr, nr, C + ir * ldc + jr, ldc, add);
        }
    }
}

#ifdef MLG_X86
__attribute__((target("avx2,fma")))
static void GNAME(tile_ia_avx2)(Py_ssize_t m, Py_ssize_t n, Py_ssize_t kc,
                                const GNAME(asrc)* as, const GT* Bp, GT* C, Py_ssize_t ldc,
                                int add) {
    GT t[MLG_MR * GNR] __attribute__((aligned(64)));
    for (Py_ssize_t jr = 0; jr < n; jr += GNR) {
        const GT* bp0 = Bp + (jr / GNR) * GNR * kc;
        Py_ssize_t nr = n - jr < GNR ? n - jr : GNR;
        for (Py_ssize_t ir = 0; ir < m; ir += MLG_MR) {
            Py_ssize_t mr = m - ir < MLG_MR ? m - ir : MLG_MR;
            const Py_ssize_t* ar = as->arow + ir;
            MLG_ACC_ZERO
            for (Py_ssize_t kk = 0; kk < kc;) {
                Py_ssize_t q = as->q0 + kk, j = q % as->Wo;
                Py_ssize_t len = as->Wo - j < kc - kk ? as->Wo - j : kc - kk;
                Py_ssize_t o = (q / as->Wo) * as->Wp + j;
                const GT *p0 = as->img + ar[0] + o, *p1 = as->img + ar[1] + o;
                const GT *p2 = as->img + ar[2] + o, *p3 = as->img + ar[3] + o;
                const GT *p4 = as->img + ar[4] + o, *p5 = as->img + ar[5] + o;
                const GT* bp = bp0 + kk * GNR;
                for (Py_ssize_t u = 0; u < len; u++, bp += GNR) {
                    GVEC b0 = GLOADU(bp), b1 = GLOADU(bp + GVL), a;
                    a = GSET1(p0[u]); c00 = GFMAV(a, b0, c00); c01 = GFMAV(a, b1, c01);
                    a = GSET1(p1[u]); c10 = GFMAV(a, b0, c10); c11 = GFMAV(a, b1, c11);
                    a = GSET1(p2[u]); c20 = GFMAV(a, b0, c20); c21 = GFMAV(a, b1, c21);
                    a = GSET1(p3[u]); c30 = GFMAV(a, b0, c30); c31 = GFMAV(a, b1, c31);
                    a = GSET1(p4[u]); c40 = GFMAV(a, b0, c40); c41 = GFMAV(a, b1, c41);
                    a = GSET1(p5[u]); c50 = GFMAV(a, b0, c50); c51 = GFMAV(a, b1, c51);
                }
                kk += len;
            }
            MLG_ACC_STORE(t)
            GNAME(store)(t, mr, nr, C + ir * ldc + jr, ldc, add);
        }
    }
}
#endif

static void GNAME(tile_ia)(Py_ssize_t m, Py_ssize_t n, Py_ssize_t kc, const GNAME(asrc)* as,
                           const GT* Bp, GT* C, Py_ssize_t ldc, int add) {
#ifdef MLG_X86
    if (mlcore_have_avx2_fma()) {
        GNAME(tile_ia_avx2)(m, n, kc, as, Bp, C, ldc, add);
        return;
    }
#endif
    GNAME(tile_ia_any)(m, n, kc, as, Bp, C, ldc, add);
}

static void GNAME(tile)(Py_ssize_t m, Py_ssize_t n, Py_ssize_t kc, const GT* Ap,
                        const GNAME(bsrc)* bs, GT* C, Py_ssize_t ldc, int add) {
#ifdef MLG_X86
    if (mlcore_have_avx2_fma()) {
        GNAME(tile_avx2)(m, n, kc, Ap, bs, C, ldc, add);
        return;
    }
#endif
    GNAME(tile_any)(m, n, kc, Ap, bs, C, ldc, add);
}

/* ---- one thread's product ------------------------------------------------------------- */

typedef struct {
    GT* Ap; /* MLG_MC * MLG_KC */
    GT* Bp; /* MLG_NC * MLG_KC */
    GT* extra; /* a kernel's own per-thread buffer */
} GNAME(work);

static int GNAME(work_ready)(GNAME(work)* w) {
    /* allocate a thread's buffers on its first item; 0 when memory ran out */
    if (w->Ap == NULL) w->Ap = (GT*)aligned_alloc(64, sizeof(GT) * MLG_MC * MLG_KC);
    if (w->Bp == NULL) w->Bp = (GT*)aligned_alloc(64, sizeof(GT) * MLG_NC * MLG_KC);
    return w->Ap != NULL && w->Bp != NULL;
}

static void GNAME(works_free)(GNAME(work)* ws, int n) {
    if (ws == NULL) return;
    for (int t = 0; t < n; t++) {
        free(ws[t].Ap);
        free(ws[t].Bp);
        free(ws[t].extra);
    }
    free(ws);
}

static void GNAME(gemm_serial)(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, GNAME(packer) pa,
                               const void* ca, GNAME(packer) pb, const void* cb, GT* C,
                               Py_ssize_t ldc, int accumulate, GNAME(work)* w) {
    /* C (M x N, row stride ldc) (+)= A @ B on the calling thread, operands through packers;
       pa NULL: ca is A already packed (M <= MLG_MC), its block of depth p0 at
       ceil(M / MLG_MR) * MLG_MR * p0 */
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        if (!accumulate)
            for (Py_ssize_t i = 0; i < M; i++) memset(C + i * ldc, 0, N * sizeof(GT));
        return;
    }
    for (Py_ssize_t j0 = 0; j0 < N; j0 += MLG_NC) {
        Py_ssize_t n = N - j0 < MLG_NC ? N - j0 : MLG_NC;
        for (Py_ssize_t p0 = 0; p0 < K; p0 += MLG_KC) {
            Py_ssize_t kc = K - p0 < MLG_KC ? K - p0 : MLG_KC;
            pb(cb, j0, n, p0, kc, w->Bp);
            for (Py_ssize_t i0 = 0; i0 < M; i0 += MLG_MC) {
                Py_ssize_t m = M - i0 < MLG_MC ? M - i0 : MLG_MC;
                const GT* Ap = w->Ap;
                if (pa != NULL)
                    pa(ca, i0, m, p0, kc, w->Ap);
                else
                    Ap = (const GT*)ca + (M + MLG_MR - 1) / MLG_MR * MLG_MR * p0;
                GNAME(bsrc) bs = {w->Bp, NULL, 0, 0, 0};
                GNAME(tile)(m, n, kc, Ap, &bs, C + i0 * ldc + j0, ldc, accumulate || p0 > 0);
            }
        }
    }
}

typedef struct {
    Py_ssize_t M, N, K, ntm, nc;
    const GT* A;
    Py_ssize_t rsa, csa;
    const GT* B;
    Py_ssize_t rsb, csb;
    GT* C;
    Py_ssize_t ldc;
    int accumulate, failed;
    GNAME(work)* ws;
    const GT* Apre; /* A packed once for every tile (one row block), or NULL */
} GNAME(gemm_job);

static void GNAME(gemm_item)(void* arg, Py_ssize_t t, int tid) {
    /* one tile of C */
    GNAME(gemm_job)* j = (GNAME(gemm_job)*)arg;
    GNAME(work)* w = &j->ws[tid];
    if (!GNAME(work_ready)(w)) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    Py_ssize_t i0 = (t % j->ntm) * MLG_MC, j0 = (t / j->ntm) * j->nc;
    Py_ssize_t m = j->M - i0 < MLG_MC ? j->M - i0 : MLG_MC;
    Py_ssize_t n = j->N - j0 < j->nc ? j->N - j0 : j->nc;
    GNAME(strided) a = {j->A + i0 * j->rsa, j->rsa, j->csa}, b = {j->B + j0 * j->csb, j->rsb, j->csb};
    if (j->Apre != NULL)
        GNAME(gemm_serial)(m, n, j->K, NULL, j->Apre, GNAME(pack_b_strided), &b,
                           j->C + i0 * j->ldc + j0, j->ldc, j->accumulate, w);
    else
        GNAME(gemm_serial)(m, n, j->K, GNAME(pack_a_strided), &a, GNAME(pack_b_strided), &b,
                           j->C + i0 * j->ldc + j0, j->ldc, j->accumulate, w);
}

static int GNAME(gemm)(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const GT* A, Py_ssize_t rsa,
                       Py_ssize_t csa, const GT* B, Py_ssize_t rsb, Py_ssize_t csb, GT* C,
                       Py_ssize_t ldc, int accumulate, int nthreads) {
    /* C (+)= A @ B, threads over tiles of C. 0 on success, -1 when a work buffer could not
       be allocated (C then undefined) */
    if (M <= 0 || N <= 0) return 0;
    if (nthreads < 1) nthreads = 1;
    Py_ssize_t ntm = (M + MLG_MC - 1) / MLG_MC;
    /* tiles of C: about two per thread, whole panels, at most MLG_NC columns */
    Py_ssize_t want = (2 * nthreads + ntm - 1) / ntm;
    Py_ssize_t nc = (N + want - 1) / want;
    nc = (nc + GNR - 1) / GNR * GNR;
    if (nc > MLG_NC) nc = MLG_NC;
    Py_ssize_t ntiles = ntm * ((N + nc - 1) / nc);
    if (nthreads > ntiles) nthreads = (int)ntiles;
    GNAME(gemm_job) j = {M, N, K, ntm, nc, A, rsa, csa, B, rsb, csb, C, ldc, accumulate, 0,
                         (GNAME(work)*)calloc(nthreads, sizeof(GNAME(work))), NULL};
    if (j.ws == NULL) return -1;
    GT* pre = NULL;
    if (ntm == 1 && ntiles > 1 && K > 0) {
        /* one row block shared by every tile (an affine layer's batch): pack it once */
        Py_ssize_t padM = (M + MLG_MR - 1) / MLG_MR * MLG_MR;
        pre = (GT*)aligned_alloc(64, ((size_t)padM * K * sizeof(GT) + 63) / 64 * 64);
        if (pre != NULL) {
            GNAME(strided) a = {A, rsa, csa};
            for (Py_ssize_t p0 = 0; p0 < K; p0 += MLG_KC)
                GNAME(pack_a_strided)(&a, 0, M, p0, K - p0 < MLG_KC ? K - p0 : MLG_KC,
                                      pre + padM * p0);
            j.Apre = pre;
        }
    }
    mlcore_parallel(GNAME(gemm_item), &j, ntiles, nthreads);
    GNAME(works_free)(j.ws, nthreads);
    free(pre);
    return j.failed ? -1 : 0;
}

#undef GNR
#undef MLG_ACC_ZERO
#undef MLG_ACC_STORE
