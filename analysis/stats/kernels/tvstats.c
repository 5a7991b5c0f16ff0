/* Fused task-vector statistics: the three passes of analysis/tvstats.py in one read each.
 *
 * Semantics are identical to the torch implementation (tests compare both):
 *   pass 1: Gram matrix of [θ0, τ1..τN] and a histogram of |τ| float bits >> 16 per model, with
 *           the count of each bucket's members whose low 16 bits are 0 (its smallest value: bfloat16
 *           task vectors tie there heavily, and a threshold falling there needs no pass 2);
 *   pass 2: histogram of the low 16 bits of |τ| for the members of chosen high buckets;
 *   pass 3 (tv_bracket): histogram of base-6 (sign, kept) codes across models, and the energy of
 *           |τ| ≥ t_top. A threshold not yet known exactly lies in a bracket of float bits:
 *           coordinates with a value inside a bracket are set aside (their indices) and resolved
 *           afterwards from tv_gather's values, every other coordinate is final. With no bracket
 *           open this is plain pass 3.
 * Non-finite values are counted and read as 0 (base first, then each τ).
 * Inputs are float32 (dtype 0) or bfloat16 (dtype 1) arrays; τ is computed in float32.
 * Built at first use with the system C compiler (analysis/kernels/__init__.py); no Python API.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#define BLOCK 2048
#define MAXM 8
#define HI_BINS 32768

static inline float load(const void *p, int dt, int64_t i) {
    if (dt == 1) {
        uint32_t u = ((uint32_t)((const uint16_t *)p)[i]) << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    return ((const float *)p)[i];
}

static inline uint32_t fbits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline int finite_bits(uint32_t u) { return (u & 0x7F800000u) != 0x7F800000u; }

/* Fill b[0..len) and t[m][0..len) for the block starting at s; count non-finite values. */
static void fill_block(const void *base, int bdt, const void *const *models, const int *mdt, int N,
                       int64_t s, int len, float *b, float (*t)[BLOCK], int64_t *bad) {
    for (int j = 0; j < len; j++) {
        float v = load(base, bdt, s + j);
        if (!finite_bits(fbits(v))) { bad[0]++; v = 0.0f; }
        b[j] = v;
    }
    for (int m = 0; m < N; m++) {
        const void *p = models[m];
        int dt = mdt[m];
        float *tm = t[m];
        if (dt == 1) {
            const uint16_t *q = (const uint16_t *)p + s;
            for (int j = 0; j < len; j++) {
                uint32_t u = ((uint32_t)q[j]) << 16;
                float f;
                memcpy(&f, &u, 4);
                tm[j] = f - b[j];
            }
        } else {
            const float *q = (const float *)p + s;
            for (int j = 0; j < len; j++) tm[j] = q[j] - b[j];
        }
        int64_t nb = 0;
        for (int j = 0; j < len; j++) nb += !finite_bits(fbits(tm[j]));
        if (nb) {
            for (int j = 0; j < len; j++) if (!finite_bits(fbits(tm[j]))) tm[j] = 0.0f;
            bad[m + 1] += nb;
        }
    }
}

void tv_pass1(const void *base, int bdt, const void *const *models, const int *mdt, int N, int64_t n,
              double *gram, int64_t *hist_hi, int64_t *hist_lo0, int64_t *bad_out, int want_hist, int want_gram) {
    int R = N + 1;
    memset(gram, 0, sizeof(double) * R * R);
    memset(bad_out, 0, sizeof(int64_t) * R);
    if (want_hist) {
        memset(hist_hi, 0, sizeof(int64_t) * N * HI_BINS);
        memset(hist_lo0, 0, sizeof(int64_t) * N * HI_BINS);
    }
    int64_t nblocks = (n + BLOCK - 1) / BLOCK;
#pragma omp parallel
    {
        float b[BLOCK];
        float t[MAXM][BLOCK];
        double g[(MAXM + 1) * (MAXM + 1)];
        int64_t bad[MAXM + 1];
        /* per bucket: [count, count with low 16 bits 0] side by side (one cache line for both) */
        uint32_t *h = want_hist ? (uint32_t *)calloc((size_t)N * HI_BINS * 2, sizeof(uint32_t)) : NULL;
        memset(g, 0, sizeof(g));
        memset(bad, 0, sizeof(bad));
#pragma omp for schedule(dynamic, 16)
        for (int64_t blk = 0; blk < nblocks; blk++) {
            int64_t s = blk * BLOCK;
            int len = (int)((n - s) < BLOCK ? (n - s) : BLOCK);
            fill_block(base, bdt, models, mdt, N, s, len, b, t, bad);
            /* Gram: float within the block, double across blocks */
            for (int r = 0; r < (want_gram ? R : 0); r++) {
                const float *x = r == 0 ? b : t[r - 1];
                for (int c = r; c < R; c++) {
                    const float *y = c == 0 ? b : t[c - 1];
                    float acc0 = 0, acc1 = 0, acc2 = 0, acc3 = 0;
                    int j = 0;
                    for (; j + 4 <= len; j += 4) {
                        acc0 += x[j] * y[j]; acc1 += x[j + 1] * y[j + 1];
                        acc2 += x[j + 2] * y[j + 2]; acc3 += x[j + 3] * y[j + 3];
                    }
                    for (; j < len; j++) acc0 += x[j] * y[j];
                    g[r * R + c] += (double)acc0 + acc1 + acc2 + acc3;
                }
            }
            if (h) {
                for (int m = 0; m < N; m++) {
                    uint32_t *hm = h + (size_t)m * HI_BINS * 2;
                    const float *tm = t[m];
                    for (int j = 0; j < len; j++) {
                        uint32_t u = fbits(tm[j]) & 0x7FFFFFFFu;
                        uint32_t *cell = hm + (u >> 16) * 2;
                        cell[0]++;
                        cell[1] += (u & 0xFFFFu) == 0;
                    }
                }
                /* per-thread counters are 32-bit: flush before they could overflow */
                if ((blk & 1023) == 1023) {
#pragma omp critical
                    for (int64_t q = 0; q < (int64_t)N * HI_BINS; q++) {
                        hist_hi[q] += h[2 * q];
                        hist_lo0[q] += h[2 * q + 1];
                    }
                    memset(h, 0, sizeof(uint32_t) * (size_t)N * HI_BINS * 2);
                }
            }
        }
#pragma omp critical
        {
            for (int r = 0; r < R; r++)
                for (int c = r; c < R; c++) {
                    gram[r * R + c] += g[r * R + c];
                    if (c != r) gram[c * R + r] += g[r * R + c];
                }
            for (int r = 0; r < R; r++) bad_out[r] += bad[r];
            if (h)
                for (int64_t q = 0; q < (int64_t)N * HI_BINS; q++) {
                    hist_hi[q] += h[2 * q];
                    hist_lo0[q] += h[2 * q + 1];
                }
        }
        free(h);
    }
}

/* buckets[m*2 + c] = high bucket to refine (-1: none), slots[m*2 + c] = its histogram row. */
void tv_pass2(const void *base, int bdt, const void *const *models, const int *mdt, int N, int64_t n,
              const int32_t *buckets, const int32_t *slots, int nslots, int64_t *hist_lo) {
    memset(hist_lo, 0, sizeof(int64_t) * (size_t)nslots * 65536);
    int64_t nblocks = (n + BLOCK - 1) / BLOCK;
#pragma omp parallel
    {
        float b[BLOCK];
        float t[MAXM][BLOCK];
        int64_t bad[MAXM + 1];
        uint32_t *h = (uint32_t *)calloc((size_t)nslots * 65536, sizeof(uint32_t));
#pragma omp for schedule(dynamic, 16)
        for (int64_t blk = 0; blk < nblocks; blk++) {
            int64_t s = blk * BLOCK;
            int len = (int)((n - s) < BLOCK ? (n - s) : BLOCK);
            fill_block(base, bdt, models, mdt, N, s, len, b, t, bad);
            for (int m = 0; m < N; m++) {
                int32_t b0 = buckets[m * 2], b1 = buckets[m * 2 + 1];
                uint32_t *h0 = b0 >= 0 ? h + (size_t)slots[m * 2] * 65536 : NULL;
                uint32_t *h1 = b1 >= 0 ? h + (size_t)slots[m * 2 + 1] * 65536 : NULL;
                const float *tm = t[m];
                for (int j = 0; j < len; j++) {
                    uint32_t u = fbits(tm[j]) & 0x7FFFFFFFu;
                    int32_t hi = (int32_t)(u >> 16);
                    if (hi == b0) h0[u & 0xFFFFu]++;
                    else if (hi == b1) h1[u & 0xFFFFu]++;
                }
            }
            if ((blk & 1023) == 1023) {
#pragma omp critical
                for (int64_t q = 0; q < (int64_t)nslots * 65536; q++) hist_lo[q] += h[q];
                memset(h, 0, sizeof(uint32_t) * (size_t)nslots * 65536);
            }
        }
#pragma omp critical
        for (int64_t q = 0; q < (int64_t)nslots * 65536; q++) hist_lo[q] += h[q];
        free(h);
    }
}

/* One model's share of a block: codes, Σ|τ|² and count of |τ| ≥ top, count of kept; `track`
 * (a constant at each call, so both variants are compiled without the other's work) flags the
 * coordinates inside this model's brackets. */
static inline void code_sweep(const float *tm, int len, int32_t pw, uint32_t tl, uint32_t th, uint32_t pl,
                              uint32_t ph, int32_t *code, int32_t *ambf, const int track,
                              double *e, int64_t *ct, int64_t *ck) {
    uint32_t aw = th - tl, pwid = ph - pl;
    float acc = 0;
    int32_t nt = 0, nk = 0;
    for (int j = 0; j < len; j++) {
        float v = tm[j];
        float a = fabsf(v);
        uint32_t u = fbits(a);
        int32_t kept = u >= th;
        code[j] += (1 + (int32_t)(v > 0) - (int32_t)(v < 0) + 3 * kept) * pw;
        if (track) ambf[j] |= (int32_t)((u - tl) < aw) | (int32_t)((u - pl) < pwid);
        int32_t is_top = u >= ph;
        float w = is_top ? a : 0.0f;
        acc += w * w;
        nt += is_top;
        nk += kept;
    }
    *e += acc;
    *ct += nt;
    *ck += nk;
}

/* One pass for all coordinates whose (kept, top) states are already certain. Per model m the trim
 * threshold lies in bits [tl[m], th[m]) and the top-k threshold in [pl[m], ph[m]) (empty brackets
 * lo == hi: the threshold is known, kept = bits >= hi). A coordinate with any model inside a bracket
 * is ambiguous: its index goes to amb (up to cap; the return value is how many there were) and it
 * adds nothing here. The others add their base-6 code to hist, Σ|τ|² and counts of bits >= ph to
 * e_top / c_top, and counts of bits >= th to c_trim. */
int64_t tv_bracket(const void *base, int bdt, const void *const *models, const int *mdt, int N, int64_t n,
                   const uint32_t *tl, const uint32_t *th, const uint32_t *pl, const uint32_t *ph,
                   int64_t *hist, double *e_top, int64_t *c_top, int64_t *c_trim, uint32_t *amb, int64_t cap) {
    int64_t bins = 1;
    for (int m = 0; m < N; m++) bins *= 6;
    memset(hist, 0, sizeof(int64_t) * bins);
    memset(e_top, 0, sizeof(double) * N);
    memset(c_top, 0, sizeof(int64_t) * N);
    memset(c_trim, 0, sizeof(int64_t) * N);
    int64_t nblocks = (n + BLOCK - 1) / BLOCK;
    int64_t total = 0;
    int any_open = 0;
    for (int m = 0; m < N; m++) any_open |= th[m] != tl[m] || ph[m] != pl[m];
#pragma omp parallel
    {
        float b[BLOCK];
        float t[MAXM][BLOCK];
        int32_t code[BLOCK];
        int32_t ambf[BLOCK];
        uint32_t local[BLOCK];
        int64_t bad[MAXM + 1];
        double e[MAXM];
        int64_t ct[MAXM], ck[MAXM];
        memset(e, 0, sizeof(e));
        memset(ct, 0, sizeof(ct));
        memset(ck, 0, sizeof(ck));
        uint32_t *h = (uint32_t *)calloc((size_t)bins, sizeof(uint32_t));
#pragma omp for schedule(dynamic, 16)
        for (int64_t blk = 0; blk < nblocks; blk++) {
            int64_t s = blk * BLOCK;
            int len = (int)((n - s) < BLOCK ? (n - s) : BLOCK);
            fill_block(base, bdt, models, mdt, N, s, len, b, t, bad);
            for (int j = 0; j < len; j++) code[j] = 0;
            if (any_open) for (int j = 0; j < len; j++) ambf[j] = 0;
            int32_t pw = 1;
            /* everything counted for every coordinate first (one sweep, vectorised), then the few
             * set-aside coordinates' shares taken back out */
            for (int m = 0; m < N; m++) {
                if (th[m] != tl[m] || ph[m] != pl[m])
                    code_sweep(t[m], len, pw, tl[m], th[m], pl[m], ph[m], code, ambf, 1, &e[m], &ct[m], &ck[m]);
                else
                    code_sweep(t[m], len, pw, tl[m], th[m], pl[m], ph[m], code, ambf, 0, &e[m], &ct[m], &ck[m]);
                pw *= 6;
            }
            int nl = 0;
            if (any_open) {
                for (int j = 0; j < len; j++) {
                    h[code[j]] += (uint32_t)!ambf[j];
                    local[nl] = (uint32_t)j;
                    nl += ambf[j];
                }
            } else {
                for (int j = 0; j < len; j++) h[code[j]]++;
            }
            for (int q = 0; q < nl; q++) {
                int j = (int)local[q];
                for (int m = 0; m < N; m++) {
                    float a = fabsf(t[m][j]);
                    uint32_t u = fbits(a);
                    if (u >= ph[m]) { e[m] -= (double)a * a; ct[m]--; }
                    if (u >= th[m]) ck[m]--;
                }
                local[q] = (uint32_t)(s + j);
            }
            if (nl) {
                int64_t at;
#pragma omp atomic capture
                { at = total; total += nl; }
                if (at < cap) memcpy(amb + at, local, sizeof(uint32_t) * (size_t)((cap - at) < nl ? (cap - at) : nl));
            }
            if ((blk & 1023) == 1023) {
#pragma omp critical
                for (int64_t q = 0; q < bins; q++) hist[q] += h[q];
                memset(h, 0, sizeof(uint32_t) * (size_t)bins);
            }
        }
#pragma omp critical
        {
            for (int64_t q = 0; q < bins; q++) hist[q] += h[q];
            for (int m = 0; m < N; m++) { e_top[m] += e[m]; c_top[m] += ct[m]; c_trim[m] += ck[m]; }
        }
        free(h);
    }
    return total;
}

/* out[m * cnt + q] = τ_m at coordinate idx[q], cleaned exactly like fill_block. */
void tv_gather(const void *base, int bdt, const void *const *models, const int *mdt, int N,
               const uint32_t *idx, int64_t cnt, float *out) {
#pragma omp parallel for schedule(static)
    for (int64_t q = 0; q < cnt; q++) {
        int64_t i = idx[q];
        float b = load(base, bdt, i);
        if (!finite_bits(fbits(b))) b = 0.0f;
        for (int m = 0; m < N; m++) {
            float v = load(models[m], mdt[m], i) - b;
            out[(int64_t)m * cnt + q] = finite_bits(fbits(v)) ? v : 0.0f;
        }
    }
}
