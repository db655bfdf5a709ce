/* 2-D convolution on the CPU: the input is unfolded (im2col) into a per-thread workspace
 * and multiplied with the weights by cblas_sgemm. Threads split the batch; a batch smaller
 * than the team runs image by image with OpenBLAS's own threads. */
#include <cblas.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif
#include <omp.h>
#include <string.h>

#include "kernels/cpu/cpu.h"

/* Three ways to build the GEMM's right operand:
 * - CONV_POINTWISE: 1x1, stride 1, no padding: the input itself.
 * - CONV_ROWS (vertical stride 1): unfold only the kw horizontal taps of each channel over the
 *   padded height, (c, j) rows of (oh + (kh - 1) * dh) * ow columns. Kernel row i then reads
 *   the same rows shifted by i * dh * ow columns, so kh GEMMs (each over c * kw rows)
 *   accumulate the output while the unfolded data is kh times smaller than im2col's.
 * - CONV_IM2COL: full (c, i, j) rows of oh * ow columns, with several images side by side
 *   when one output plane is small. */
enum conv_mode { CONV_POINTWISE, CONV_ROWS, CONV_IM2COL };

/* CONV_IM2COL stacks images until a GEMM has this many columns. */
#ifndef CONV_MIN_COLS
#define CONV_MIN_COLS 256
#endif
/* CONV_ROWS needs at least this many rows per GEMM (c / group * kw) to keep GEMMs efficient. */
#ifndef CONV_ROWS_MIN_K
#define CONV_ROWS_MIN_K 16
#endif

/* How a convolution is carried out; a pure function of the descriptor and the thread count,
 * so that conv2d_workspace_cpu and conv2d_forward_cpu agree. The workspace holds the
 * rearranged weights (CONV_ROWS), then one slice of `col + stage` floats per thread. */
struct conv_plan {
    enum conv_mode mode;
    int threads;     /* team size */
    int batch_split; /* 1: threads take whole images; 0: one image at a time, threaded inside */
    int nb;          /* images per GEMM */
    int64_t span;    /* columns of one unfolded row */
    int64_t wre;     /* floats of rearranged weights */
    int64_t col;     /* floats of unfolded input per thread */
    int64_t stage;   /* floats of staged GEMM output per thread (nb > 1) */
};

static void conv_plan_make(struct conv_plan *p, const struct qt_conv2d_desc *d, int threads)
{
    const int64_t ohw = (int64_t)d->oh * d->ow;
    const int cg = d->group > 0 ? d->c / d->group : 0;
    memset(p, 0, sizeof *p);
    p->threads = threads;
    p->batch_split = d->n >= threads;
    p->nb = 1;
    if (d->kh == 1 && d->kw == 1 && d->sh == 1 && d->sw == 1 && d->pt == 0 && d->pl == 0 &&
        d->oh == d->h && d->ow == d->w) {
        p->mode = CONV_POINTWISE;
        return;
    }
    if (d->sh == 1 && d->kh > 1 && cg * d->kw >= CONV_ROWS_MIN_K) {
        p->mode = CONV_ROWS;
        p->span = ((int64_t)d->oh + (int64_t)(d->kh - 1) * d->dh) * d->ow;
        p->wre = (int64_t)d->k * cg * d->kh * d->kw;
        p->col = (int64_t)d->c * d->kw * p->span;
        return;
    }
    p->mode = CONV_IM2COL;
    if (p->batch_split && ohw > 0 && ohw < CONV_MIN_COLS) {
        int64_t want = (CONV_MIN_COLS + ohw - 1) / ohw;
        int64_t fair = (d->n + threads - 1) / threads; /* keep every thread busy */
        p->nb = (int)(want < fair ? want : fair);
        if (p->nb < 1) p->nb = 1;
    }
    p->span = ohw;
    p->col = (int64_t)d->c * d->kh * d->kw * p->nb * ohw;
    p->stage = p->nb > 1 ? (int64_t)d->k * p->nb * ohw : 0;
}

/* The size depends on qt_cpu_threads(): a caller that changes the OpenMP thread count must
 * ask again before the next conv2d_forward_cpu. */
int64_t conv2d_workspace_cpu(const struct qt_conv2d_desc *d)
{
    struct conv_plan p;
    conv_plan_make(&p, d, qt_cpu_threads());
    return p.wre + (p.batch_split ? (int64_t)p.threads * (p.col + p.stage) : p.col);
}

/* Smallest q with q * b >= a, for b > 0 and any sign of a. */
static inline int ceil_div(int a, int b)
{
    return a >= 0 ? (a + b - 1) / b : -((-a) / b);
}

/* o[0:len] = s[0:len] for short, mutually misaligned rows (where a library memcpy may pick a
 * string instruction that is slow for such operands). */
static inline void copy_floats(float *restrict o, const float *restrict s, int64_t len)
{
    int64_t q = 0;
#ifdef __AVX2__
    for (; q + 32 <= len; q += 32) {
        const __m256 a = _mm256_loadu_ps(s + q), b = _mm256_loadu_ps(s + q + 8);
        const __m256 c = _mm256_loadu_ps(s + q + 16), d = _mm256_loadu_ps(s + q + 24);
        _mm256_storeu_ps(o + q, a);
        _mm256_storeu_ps(o + q + 8, b);
        _mm256_storeu_ps(o + q + 16, c);
        _mm256_storeu_ps(o + q + 24, d);
    }
    for (; q + 8 <= len; q += 8) _mm256_storeu_ps(o + q, _mm256_loadu_ps(s + q));
#endif
    for (; q < len; q++) o[q] = s[q];
}

#ifdef __AVX2__
/* Even elements of s[0 .. 15]. */
static inline __m256 even16(const float *s)
{
    __m256 a = _mm256_loadu_ps(s), b = _mm256_loadu_ps(s + 8);
    __m256 e = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)); /* a0 a2 b0 b2 a4 a6 b4 b6 */
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), _MM_SHUFFLE(3, 1, 2, 0)));
}
#endif

/* o[q] = s[2 * q] for q in [0, len); reads stay below end (end >= s + 2 * len - 1). */
static inline void copy_stride2(float *o, const float *s, int len, const float *end)
{
    int q = 0;
#ifdef __AVX2__
    for (; q + 8 <= len && s + 2 * q + 16 <= end; q += 8)
        _mm256_storeu_ps(o + q, even16(s + 2 * q));
    if (q < len && s + 2 * q + 16 <= end) {
        const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(len - q),
                                             _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        _mm256_maskstore_ps(o + q, m, even16(s + 2 * q));
        return;
    }
#endif
    for (; q < len; q++) o[q] = s[2 * q];
}

/* Rows of channels [c0, c1) of one image's column matrix (leading dimension ld): row
 * (c, i, j) holds, at column oh * ow + ow, the input under kernel tap (i, j) of channel c,
 * or 0 in the padding. */
static void im2col_channels(float *col, int64_t ld, const float *x, const struct qt_conv2d_desc *d,
                            int c0, int c1)
{
    const int OW = d->ow, OH = d->oh, W = d->w, H = d->h, sw = d->sw, sh = d->sh;
    const int64_t hw = (int64_t)H * W;
    const int same_width = sw == 1 && sh == 1 && OW == W;
    for (int c = c0; c < c1; c++) {
        const float *xc = x + c * hw;
        for (int i = 0; i < d->kh; i++) {
            /* Input row of output row oh is oh * sh + voff; inside for oh in [oh0, oh1). */
            const int voff = i * d->dh - d->pt;
            int oh0 = voff >= 0 ? 0 : ceil_div(-voff, sh);
            int oh1 = H - 1 - voff < 0 ? 0 : (H - 1 - voff) / sh + 1;
            if (oh0 > OH) oh0 = OH;
            if (oh1 > OH) oh1 = OH;
            if (oh1 < oh0) oh1 = oh0;
            for (int j = 0; j < d->kw; j++) {
                float *dst = col + (((int64_t)c * d->kh + i) * d->kw + j) * ld;
                /* Input column of output column q is q * sw + off; inside for q in [lo, hi). */
                const int off = j * d->dw - d->pl;
                int lo = off >= 0 ? 0 : ceil_div(-off, sw);
                int hi = W - 1 - off < 0 ? 0 : (W - 1 - off) / sw + 1;
                if (lo > OW) lo = OW;
                if (hi > OW) hi = OW;
                if (hi < lo) hi = lo;
                memset(dst, 0, sizeof(float) * (size_t)oh0 * OW);
                memset(dst + (int64_t)oh1 * OW, 0, sizeof(float) * (size_t)(OH - oh1) * OW);
                if (same_width && lo < hi) {
                    /* The valid rows are one shifted copy of the plane: output position t
                     * reads input position t + shift. Where that crosses a row edge, the
                     * output column is in [0, lo) or [hi, OW) and is cleared afterwards. */
                    const int64_t shift = (int64_t)voff * W + off;
                    int64_t t0 = (int64_t)oh0 * OW, t1 = (int64_t)oh1 * OW;
                    if (t0 + shift < 0) t0 = -shift;
                    if (t1 + shift > hw) t1 = hw - shift;
                    if (t1 > t0) copy_floats(dst + t0, xc + t0 + shift, t1 - t0);
                    if (lo > 0 || hi < OW) {
                        for (int oh = oh0; oh < oh1; oh++) {
                            float *o = dst + (int64_t)oh * OW;
                            for (int q = 0; q < lo; q++) o[q] = 0.0f;
                            for (int q = hi; q < OW; q++) o[q] = 0.0f;
                        }
                    }
                    continue;
                }
                for (int oh = oh0; oh < oh1; oh++) {
                    const float *s = xc + (int64_t)(oh * sh + voff) * W;
                    float *o = dst + (int64_t)oh * OW;
                    for (int q = 0; q < lo; q++) o[q] = 0.0f;
                    if (sw == 1)
                        copy_floats(o + lo, s + lo + off, hi - lo);
                    else if (sw == 2)
                        copy_stride2(o + lo, s + 2 * lo + off, hi - lo, xc + hw);
                    else
                        for (int q = lo; q < hi; q++) o[q] = s[q * sw + off];
                    for (int q = hi; q < OW; q++) o[q] = 0.0f;
                }
            }
        }
    }
}

/* CONV_ROWS weights: wre[i][k][cg * kw + j] = w[k][cg][i][j], for k in [k0, k1). */
static void rearrange_weights(float *wre, const float *w, const struct qt_conv2d_desc *d,
                              int64_t k0, int64_t k1)
{
    const int cg = d->c / d->group, kh = d->kh, kw = d->kw;
    const int64_t kr = (int64_t)cg * kw;
    for (int64_t k = k0; k < k1; k++)
        for (int c = 0; c < cg; c++)
            for (int i = 0; i < kh; i++)
                for (int j = 0; j < kw; j++)
                    wre[(i * (int64_t)d->k + k) * kr + c * kw + j] =
                        w[((k * cg + c) * kh + i) * kw + j];
}

/* Unfolds channels [c0, c1) of one image into col (row length ld) for the plan's mode. */
static void unfold(float *col, int64_t ld, const float *x, const struct qt_conv2d_desc *d,
                   const struct conv_plan *p, int c0, int c1)
{
    if (p->mode == CONV_ROWS) {
        /* The horizontal taps over all padded rows: im2col of a one-row kernel. */
        struct qt_conv2d_desc r = *d;
        r.kh = 1;
        r.sh = 1;
        r.dh = 1;
        r.oh = (int)(p->span / d->ow);
        im2col_channels(col, ld, x, &r, c0, c1);
    } else {
        im2col_channels(col, ld, x, d, c0, c1);
    }
}

/* out[k, 0:ncols] (leading dimension ldo) = convolution of the unfolded input `in` (leading
 * dimension ldi), without bias. w is the original weight for CONV_POINTWISE and CONV_IM2COL
 * and the rearranged one for CONV_ROWS. */
static void conv_gemms(float *out, int64_t ldo, const float *in, int64_t ldi, int64_t ncols,
                       const float *w, const struct qt_conv2d_desc *d, const struct conv_plan *p)
{
    const int64_t kg = d->k / d->group, cg = d->c / d->group;
    const int taps = p->mode == CONV_ROWS ? d->kh : 1;
    const int64_t kr = cg * d->kw * (p->mode == CONV_ROWS ? 1 : d->kh);
    for (int g = 0; g < d->group; g++) {
        float *o = out + g * kg * ldo;
        if (kr == 0) {
            for (int64_t r = 0; r < kg; r++) memset(o + r * ldo, 0, sizeof(float) * ncols);
            continue;
        }
        for (int i = 0; i < taps; i++) {
            const float *a = w + (i * (int64_t)d->k + g * kg) * kr;
            const float *b = in + g * kr * ldi + (int64_t)i * d->dh * d->ow;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)kg, (int)ncols, (int)kr,
                        1.0f, a, (int)kr, b, (int)ldi, i ? 1.0f : 0.0f, o, (int)ldo);
        }
    }
}

static inline void add_bias_plane(float *y, float bias, int64_t len)
{
#pragma omp simd
    for (int64_t q = 0; q < len; q++) y[q] += bias;
}

/* Images [img0, img0 + cnt) on the calling thread alone; col and stage are its workspace. */
static void conv_images(float *y, const float *x, const float *w, const float *b, float *col,
                        float *stage, const struct qt_conv2d_desc *d, const struct conv_plan *p,
                        int64_t img0, int cnt)
{
    const int64_t chw = (int64_t)d->c * d->h * d->w;
    const int64_t ohw = (int64_t)d->oh * d->ow, kohw = d->k * ohw;
    const float *in = x + img0 * chw;
    int64_t ld = ohw;
    if (p->mode != CONV_POINTWISE) {
        ld = cnt * p->span;
        for (int i = 0; i < cnt; i++)
            unfold(col + i * p->span, ld, x + (img0 + i) * chw, d, p, 0, d->c);
        in = col;
    }
    if (cnt == 1) {
        float *yi = y + img0 * kohw;
        conv_gemms(yi, ohw, in, ld, ohw, w, d, p);
        if (b)
            for (int64_t k = 0; k < d->k; k++) add_bias_plane(yi + k * ohw, b[k], ohw);
        return;
    }
    /* Several images side by side (CONV_IM2COL only, where span == ohw). */
    conv_gemms(stage, ld, in, ld, ld, w, d, p);
    for (int i = 0; i < cnt; i++) {
        float *yi = y + (img0 + i) * kohw;
        for (int64_t k = 0; k < d->k; k++) {
            const float *s = stage + k * ld + i * ohw;
            float *o = yi + k * ohw;
            const float bk = b ? b[k] : 0.0f;
#pragma omp simd
            for (int64_t q = 0; q < ohw; q++) o[q] = s[q] + bk;
        }
    }
}

void conv2d_forward_cpu(float *y, const float *x, const float *w, const float *b, float *ws,
                        const struct qt_conv2d_desc *d)
{
    struct conv_plan p;
    conv_plan_make(&p, d, qt_cpu_threads());
    const int64_t ohw = (int64_t)d->oh * d->ow;
    if (d->n <= 0 || d->k <= 0 || ohw <= 0) return;
    float *wre = ws;
    const float *wk = p.mode == CONV_ROWS ? wre : w;
    float *slices = ws + p.wre;

    if (p.batch_split) {
        const int64_t chunks = (d->n + p.nb - 1) / p.nb;
#pragma omp parallel num_threads(p.threads)
        {
            const int t = omp_get_thread_num();
            float *col = slices + t * (p.col + p.stage);
            float *stage = col + p.col;
            if (p.mode == CONV_ROWS) {
#pragma omp for schedule(static)
                for (int64_t k = 0; k < d->k; k++) rearrange_weights(wre, w, d, k, k + 1);
            }
#pragma omp for schedule(static)
            for (int64_t ch = 0; ch < chunks; ch++) {
                const int64_t img0 = ch * p.nb;
                const int cnt = (int)(d->n - img0 < p.nb ? d->n - img0 : p.nb);
                conv_images(y, x, wk, b, col, stage, d, &p, img0, cnt);
            }
        }
        return;
    }

    /* Fewer images than threads: each image's unfolding and bias are split across the team,
     * and OpenBLAS threads the GEMMs themselves. */
    const int64_t chw = (int64_t)d->c * d->h * d->w, kohw = d->k * ohw;
    if (p.mode == CONV_ROWS) {
#pragma omp parallel for schedule(static) num_threads(p.threads)
        for (int64_t k = 0; k < d->k; k++) rearrange_weights(wre, w, d, k, k + 1);
    }
    for (int64_t n = 0; n < d->n; n++) {
        const float *xi = x + n * chw;
        float *yi = y + n * kohw;
        const float *in = xi;
        int64_t ld = ohw;
        if (p.mode != CONV_POINTWISE) {
            ld = p.span;
#pragma omp parallel for schedule(static) num_threads(p.threads)
            for (int c = 0; c < d->c; c++) unfold(slices, ld, xi, d, &p, c, c + 1);
            in = slices;
        }
        conv_gemms(yi, ohw, in, ld, ohw, wk, d, &p);
        if (b) {
#pragma omp parallel for schedule(static) num_threads(p.threads)
            for (int64_t k = 0; k < d->k; k++) add_bias_plane(yi + k * ohw, b[k], ohw);
        }
    }
}
