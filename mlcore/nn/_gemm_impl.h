/* One precision of mlcore's matrix product and convolutions, included twice by _gemm.h with
   GT (element type), GVL (lanes of a 32-byte vector of GT), GFMA (C99 fma for GT),
   GNAME(x) (a name) and, on x86-64, GVEC and the AVX2 intrinsics GZERO, GLOADU, GSET1,
   GFMAV, GSTORE.

   The order of every sum: C = A @ B (M x K times K x N) gives each element of C the sum over
   k in ascending order, in blocks of MLG_KC: C = s_0, C += s_1, ... with s_b the block's own
   running sum from zero, each term one fused multiply-add (one rounding: the AVX2 FMA
   instruction, or C99 fma where the CPU has none, slower but the same bits). That order
   depends on nothing but K: not on the thread count, the tile sizes, the schedule or the
   machine. Threads split the output, never a sum.

   Operands reach the kernel through packers, so a convolution's column matrix is never
   built: its blocks are made from the image as the product needs them (implicit GEMM). */

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
            GVEC c00 = GZERO(), c01 = GZERO(), c10 = GZERO(), c11 = GZERO();
            GVEC c20 = GZERO(), c21 = GZERO(), c30 = GZERO(), c31 = GZERO();
            GVEC c40 = GZERO(), c41 = GZERO(), c50 = GZERO(), c51 = GZERO();
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
            GSTORE(t + 0 * GNR, c00); GSTORE(t + 0 * GNR + GVL, c01);
            GSTORE(t + 1 * GNR, c10); GSTORE(t + 1 * GNR + GVL, c11);
            GSTORE(t + 2 * GNR, c20); GSTORE(t + 2 * GNR + GVL, c21);
            GSTORE(t + 3 * GNR, c30); GSTORE(t + 3 * GNR + GVL, c31);
            GSTORE(t + 4 * GNR, c40); GSTORE(t + 4 * GNR + GVL, c41);
            GSTORE(t + 5 * GNR, c50); GSTORE(t + 5 * GNR + GVL, c51);
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
            GVEC c00 = GZERO(), c01 = GZERO(), c10 = GZERO(), c11 = GZERO();
            GVEC c20 = GZERO(), c21 = GZERO(), c30 = GZERO(), c31 = GZERO();
            GVEC c40 = GZERO(), c41 = GZERO(), c50 = GZERO(), c51 = GZERO();
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
            GSTORE(t + 0 * GNR, c00); GSTORE(t + 0 * GNR + GVL, c01);
            GSTORE(t + 1 * GNR, c10); GSTORE(t + 1 * GNR + GVL, c11);
            GSTORE(t + 2 * GNR, c20); GSTORE(t + 2 * GNR + GVL, c21);
            GSTORE(t + 3 * GNR, c30); GSTORE(t + 3 * GNR + GVL, c31);
            GSTORE(t + 4 * GNR, c40); GSTORE(t + 4 * GNR + GVL, c41);
            GSTORE(t + 5 * GNR, c50); GSTORE(t + 5 * GNR + GVL, c51);
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
