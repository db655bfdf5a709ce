/* 2-D pooling on the CPU (max, average, global average) over NCHW planes, one plane per
 * OpenMP iteration. */
#include <math.h>
#include <stdlib.h>

#include "kernels/cpu/cpu.h"
#include "kernels/cpu/dispatch.h"

/* Window geometry along one axis: output o covers inputs o * s - p + t * dil for taps
 * t in [0, k); only taps inside [0, n) are used. */
struct axis {
    int n, out, k, s, dil, p;
};

/* First and one-past-last tap of output o that fall inside the input. */
static inline void axis_taps(const struct axis *a, int o, int *t0, int *t1)
{
    const int start = o * a->s - a->p;
    int lo = 0, hi = a->k;
    if (start < 0) lo = (-start + a->dil - 1) / a->dil;
    if (start + (hi - 1) * a->dil >= a->n) hi = (a->n - 1 - start) / a->dil + 1;
    if (start > a->n - 1) hi = 0;
    if (hi < lo) hi = lo;
    *t0 = lo;
    *t1 = hi;
}

static void axes(struct axis *ah, struct axis *aw, const struct qt_conv2d_desc *d)
{
    *ah = (struct axis){d->h, d->oh, d->kh, d->sh, d->dh, d->pt};
    *aw = (struct axis){d->w, d->ow, d->kw, d->sw, d->dw, d->pl};
}

/* Rows up to this long (input width plus padding) use the two-pass path below; it keeps one
 * padded row on the stack. */
#define POOL_ROW_MAX 4096

/* Helpers of a cloned function (dispatch.h) are inlined into it, so each copy has its own. */
#define POOL_INLINE __attribute__((always_inline)) static inline

/* The larger of the running maximum m and v, NaN winning (as the backward and PyTorch have it). */
POOL_INLINE float max_nan(float m, float v)
{
    return (v > m || v != v) ? v : m;
}

/* Length of the padded row: index u holds input column u - pl; the last window ends at
 * (ow - 1) * sw + (kw - 1) * dw. */
static inline int padded_row_len(const struct qt_conv2d_desc *d)
{
    const int need = (d->ow - 1) * d->sw + (d->kw - 1) * d->dw + 1;
    return need > d->pl + d->w ? need : d->pl + d->w;
}

/* yr[ow] = max (is_max) or sum of t[ow * sw + j * dw] over taps j, one tap at a time over the
 * whole row; called with a constant sw so that the strided loads vectorize. */
POOL_INLINE void pool_row_taps(float *restrict yr, const float *restrict t, int OW, int sw, int dw,
                               int kw, int is_max)
{
    for (int ow = 0; ow < OW; ow++)
        yr[ow] = t[ow * sw];
    for (int j = 1; j < kw; j++) {
        const float *tj = t + j * dw;
        if (is_max) {
#pragma omp simd
            for (int ow = 0; ow < OW; ow++)
                yr[ow] = max_nan(yr[ow], tj[ow * sw]);
        } else {
#pragma omp simd
            for (int ow = 0; ow < OW; ow++)
                yr[ow] += tj[ow * sw];
        }
    }
}

/* One output row from the padded row t (neutral values outside the input): yr[ow] is the
 * max (is_max) or sum of t[ow * sw + j * dw] over taps j. t has 16 readable slack floats. */
POOL_INLINE void pool_row_horizontal(float *yr, const float *t, const struct qt_conv2d_desc *d,
                                     int is_max)
{
    const int OW = d->ow, sw = d->sw, dw = d->dw, kw = d->kw;
    if (sw == 1) {
        pool_row_taps(yr, t, OW, 1, dw, kw, is_max);
        return;
    }
    if (sw == 2) {
        pool_row_taps(yr, t, OW, 2, dw, kw, is_max);
        return;
    }
    for (int ow = 0; ow < OW; ow++) {
        float acc = t[ow * sw];
        for (int j = 1; j < kw; j++) {
            const float v = t[ow * sw + j * dw];
            acc = is_max ? max_nan(acc, v) : acc + v;
        }
        yr[ow] = acc;
    }
}

/* Max or sum (is_max = 0) pooling of one plane through a padded row: first the valid kernel
 * rows are reduced elementwise into the row, then the row is reduced across the window. */
POOL_INLINE void pool_plane_2pass(float *yp, const float *xp, const struct qt_conv2d_desc *d,
                                  const struct axis *ah, int is_max)
{
    float t[POOL_ROW_MAX + 16];
    const float neutral = is_max ? -INFINITY : 0.0f;
    const int W = d->w, pl = d->pl, len = padded_row_len(d);
    for (int u = 0; u < pl; u++)
        t[u] = neutral;
    for (int u = pl + W; u < len + 16; u++)
        t[u] = neutral;
    float *tm = t + pl;
    for (int oh = 0; oh < d->oh; oh++) {
        int i0, i1;
        axis_taps(ah, oh, &i0, &i1);
        const int ih0 = oh * d->sh - d->pt;
        if (i0 == i1) {
            for (int q = 0; q < W; q++)
                tm[q] = neutral;
        } else {
            const float *r0 = xp + (int64_t)(ih0 + i0 * d->dh) * W;
            for (int q = 0; q < W; q++)
                tm[q] = r0[q];
            for (int i = i0 + 1; i < i1; i++) {
                const float *r = xp + (int64_t)(ih0 + i * d->dh) * W;
                if (is_max) {
#pragma omp simd
                    for (int q = 0; q < W; q++)
                        tm[q] = max_nan(tm[q], r[q]);
                } else {
#pragma omp simd
                    for (int q = 0; q < W; q++)
                        tm[q] += r[q];
                }
            }
        }
        pool_row_horizontal(yp + (int64_t)oh * d->ow, t, d, is_max);
    }
}

/* Max or sum pooling of one plane, one window at a time (rows too long for the 2-pass path). */
POOL_INLINE void pool_plane_direct(float *yp, const float *xp, const struct qt_conv2d_desc *d,
                                   const struct axis *ah, const struct axis *aw, int is_max)
{
    for (int oh = 0; oh < d->oh; oh++) {
        int i0, i1;
        axis_taps(ah, oh, &i0, &i1);
        for (int ow = 0; ow < d->ow; ow++) {
            int j0, j1;
            axis_taps(aw, ow, &j0, &j1);
            float acc = is_max ? -INFINITY : 0.0f;
            for (int i = i0; i < i1; i++) {
                const float *r = xp + (int64_t)(oh * d->sh - d->pt + i * d->dh) * d->w;
                for (int j = j0; j < j1; j++) {
                    const float v = r[ow * d->sw - d->pl + j * d->dw];
                    acc = is_max ? max_nan(acc, v) : acc + v;
                }
            }
            yp[(int64_t)oh * d->ow + ow] = acc;
        }
    }
}

/* Max (is_max) or sum over every window of every plane. */
QT_CPU_CLONES static void pool_planes(float *y, const float *x, const struct qt_conv2d_desc *d,
                                      int is_max)
{
    struct axis ah, aw;
    axes(&ah, &aw, d);
    const int64_t planes = (int64_t)d->n * d->c, hw = (int64_t)d->h * d->w;
    const int64_t ohw = (int64_t)d->oh * d->ow;
    const int two_pass = padded_row_len(d) <= POOL_ROW_MAX;
#pragma omp parallel for schedule(static) if (planes * ohw > 4096)
    for (int64_t p = 0; p < planes; p++) {
        if (two_pass)
            pool_plane_2pass(y + p * ohw, x + p * hw, d, &ah, is_max);
        else
            pool_plane_direct(y + p * ohw, x + p * hw, d, &ah, &aw, is_max);
    }
}

void maxpool2d_forward_cpu(float *y, const float *x, const struct qt_conv2d_desc *d)
{
    if (d->oh <= 0 || d->ow <= 0) return;
    pool_planes(y, x, d, 1);
}

/* Taps of the window at output o along one axis that the divisor counts: those inside the
 * input, or (count_include_pad) those inside the padded extent [-p0, n + p1). */
static int window_count(const struct axis *a, int o, int p1, int count_include_pad)
{
    if (!count_include_pad) {
        int t0, t1;
        axis_taps(a, o, &t0, &t1);
        return t1 - t0;
    }
    const int start = o * a->s - a->p;
    int end = start + (a->k - 1) * a->dil + 1;
    if (end > a->n + p1) end = a->n + p1;
    return end <= start ? 0 : (end - start - 1) / a->dil + 1;
}

/* Sums every window, then divides by the counted taps (window_count). With padding counted,
 * a window of a ceil-mode output that overhangs the end padding counts only the taps up to
 * it, as in ONNX Runtime and PyTorch. */
QT_CPU_CLONES void avgpool2d_forward_cpu(float *y, const float *x, const struct qt_conv2d_desc *d,
                                         int count_include_pad)
{
    if (d->oh <= 0 || d->ow <= 0) return;
    pool_planes(y, x, d, 0);
    struct axis ah, aw;
    axes(&ah, &aw, d);
    const int64_t planes = (int64_t)d->n * d->c, ohw = (int64_t)d->oh * d->ow;
    /* The reciprocal divisor of each output position, shared by all planes. */
    float *inv = malloc(sizeof(float) * (size_t)ohw);
    if (inv) {
        for (int oh = 0; oh < d->oh; oh++) {
            const int rows = window_count(&ah, oh, d->pb, count_include_pad);
            for (int ow = 0; ow < d->ow; ow++) {
                const int cnt = rows * window_count(&aw, ow, d->pr, count_include_pad);
                inv[(int64_t)oh * d->ow + ow] = cnt > 0 ? 1.0f / (float)cnt : 0.0f;
            }
        }
    }
#pragma omp parallel for schedule(static) if (planes * ohw > 32768)
    for (int64_t p = 0; p < planes; p++) {
        float *yp = y + p * ohw;
        if (inv) {
#pragma omp simd
            for (int64_t q = 0; q < ohw; q++)
                yp[q] *= inv[q];
            continue;
        }
        for (int oh = 0; oh < d->oh; oh++) {
            const int rows = window_count(&ah, oh, d->pb, count_include_pad);
            for (int ow = 0; ow < d->ow; ow++) {
                const int cnt = rows * window_count(&aw, ow, d->pr, count_include_pad);
                yp[(int64_t)oh * d->ow + ow] = cnt > 0 ? yp[(int64_t)oh * d->ow + ow] / cnt : 0.0f;
            }
        }
    }
    free(inv);
}

QT_CPU_CLONES void global_avgpool_forward_cpu(float *y, const float *x, int64_t nc, int64_t hw)
{
    const float inv = hw > 0 ? 1.0f / (float)hw : 0.0f;
#pragma omp parallel for schedule(static) if (nc * hw > 32768)
    for (int64_t p = 0; p < nc; p++) {
        const float *xp = x + p * hw;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t q = 0; q < hw; q++)
            s += xp[q];
        y[p] = s * inv;
    }
}

/* Max pool backward: each output's gradient goes to the first maximum of its window in
 * row-major tap order (the tap the forward picks; NaN wins, as in PyTorch).
 * dx: assigned (=) when acc is 0, accumulated (+=) when 1. */
void maxpool2d_backward_cpu(float *dx, const float *dy, const float *x,
                            const struct qt_conv2d_desc *d, int acc)
{
    struct axis ah, aw;
    axes(&ah, &aw, d);
    const int64_t planes = (int64_t)d->n * d->c, hw = (int64_t)d->h * d->w;
    const int64_t ohw = (int64_t)d->oh * d->ow;
#pragma omp parallel for schedule(static) if (planes * hw > 32768)
    for (int64_t p = 0; p < planes; p++) {
        float *dxp = dx + p * hw;
        const float *xp = x + p * hw, *dyp = dy + p * ohw;
        if (!acc)
            for (int64_t i = 0; i < hw; i++)
                dxp[i] = 0.0f;
        for (int oh = 0; oh < d->oh; oh++) {
            int r0, r1;
            axis_taps(&ah, oh, &r0, &r1);
            for (int ow = 0; ow < d->ow; ow++) {
                int c0, c1;
                axis_taps(&aw, ow, &c0, &c1);
                int64_t best = -1;
                float bv = -INFINITY;
                for (int r = r0; r < r1; r++) {
                    const int ih = oh * d->sh - d->pt + r * d->dh;
                    for (int c = c0; c < c1; c++) {
                        const int64_t at = (int64_t)ih * d->w + ow * d->sw - d->pl + c * d->dw;
                        const float v = xp[at];
                        if (best < 0 || v > bv || (isnan(v) && !isnan(bv))) {
                            best = at;
                            bv = v;
                        }
                    }
                }
                if (best >= 0) dxp[best] += dyp[(int64_t)oh * d->ow + ow];
            }
        }
    }
}

/* Average pool backward: each output's gradient, divided by the forward's divisor, spread
 * over the window's taps inside the input. dx: assigned (=) when acc is 0, else (+=). */
void avgpool2d_backward_cpu(float *dx, const float *dy, const struct qt_conv2d_desc *d,
                            int count_include_pad, int acc)
{
    struct axis ah, aw;
    axes(&ah, &aw, d);
    const int64_t planes = (int64_t)d->n * d->c, hw = (int64_t)d->h * d->w;
    const int64_t ohw = (int64_t)d->oh * d->ow;
#pragma omp parallel for schedule(static) if (planes * hw > 32768)
    for (int64_t p = 0; p < planes; p++) {
        float *dxp = dx + p * hw;
        const float *dyp = dy + p * ohw;
        if (!acc)
            for (int64_t i = 0; i < hw; i++)
                dxp[i] = 0.0f;
        for (int oh = 0; oh < d->oh; oh++) {
            int r0, r1;
            axis_taps(&ah, oh, &r0, &r1);
            const int rows = window_count(&ah, oh, d->pb, count_include_pad);
            for (int ow = 0; ow < d->ow; ow++) {
                int c0, c1;
                axis_taps(&aw, ow, &c0, &c1);
                const int cnt = rows * window_count(&aw, ow, d->pr, count_include_pad);
                if (cnt <= 0) continue;
                const float g = dyp[(int64_t)oh * d->ow + ow] / (float)cnt;
                for (int r = r0; r < r1; r++) {
                    const int ih = oh * d->sh - d->pt + r * d->dh;
                    for (int c = c0; c < c1; c++)
                        dxp[(int64_t)ih * d->w + ow * d->sw - d->pl + c * d->dw] += g;
                }
            }
        }
    }
}

/* dx[n,c,:] (= or += when acc) dy[n,c] / hw */
QT_CPU_CLONES void global_avgpool_backward_cpu(float *dx, const float *dy, int64_t nc, int64_t hw,
                                               int acc)
{
    const float inv = hw > 0 ? 1.0f / (float)hw : 0.0f;
#pragma omp parallel for schedule(static) if (nc * hw > 32768)
    for (int64_t p = 0; p < nc; p++) {
        const float g = dy[p] * inv;
        float *dxp = dx + p * hw;
        if (acc) {
#pragma omp simd
            for (int64_t i = 0; i < hw; i++)
                dxp[i] += g;
        } else {
#pragma omp simd
            for (int64_t i = 0; i < hw; i++)
                dxp[i] = g;
        }
    }
}
