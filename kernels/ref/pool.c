/* Reference pooling (max, average, global average), forward and backward, one window at a
 * time; sums in double. */
#include <math.h>

#include "kernels/ref/ref.h"

/* Input position of tap t of output o along one axis: o * stride - pad_begin + t * dilation. */
static int tap_pos(int o, int t, int s, int p, int dil)
{
    return o * s - p + t * dil;
}

/* Taps of output o along one axis that the average's divisor counts: those inside [0, n), or
 * with count_include_pad those inside the padded extent [-p0, n + p1). */
static int axis_count(int o, int k, int s, int p0, int dil, int n, int p1, int count_include_pad)
{
    const int lo = count_include_pad ? -p0 : 0, hi = count_include_pad ? n + p1 : n;
    int cnt = 0;
    for (int t = 0; t < k; t++) {
        const int i = tap_pos(o, t, s, p0, dil);
        if (i >= lo && i < hi) cnt++;
    }
    return cnt;
}

/* The divisor of output (oh, ow): the product of the counts along both axes. */
static int window_count(const struct qt_conv2d_desc *d, int oh, int ow, int count_include_pad)
{
    return axis_count(oh, d->kh, d->sh, d->pt, d->dh, d->h, d->pb, count_include_pad) *
           axis_count(ow, d->kw, d->sw, d->pl, d->dw, d->w, d->pr, count_include_pad);
}

/* Index within the plane of the tap max pooling picks for output (oh, ow): the largest value
 * inside the input, NaN above everything, the first in row-major tap order among equals;
 * -1 when no tap is inside the input. */
static int64_t max_tap(const float *xp, const struct qt_conv2d_desc *d, int oh, int ow)
{
    int64_t best = -1;
    float bv = -INFINITY;
    for (int r = 0; r < d->kh; r++) {
        const int ih = tap_pos(oh, r, d->sh, d->pt, d->dh);
        if (ih < 0 || ih >= d->h) continue;
        for (int q = 0; q < d->kw; q++) {
            const int iw = tap_pos(ow, q, d->sw, d->pl, d->dw);
            if (iw < 0 || iw >= d->w) continue;
            const int64_t at = (int64_t)ih * d->w + iw;
            const float v = xp[at];
            if (best < 0 || v > bv || (isnan(v) && !isnan(bv))) {
                best = at;
                bv = v;
            }
        }
    }
    return best;
}

void maxpool2d_forward_ref(float *y, const float *x, const struct qt_conv2d_desc *d)
{
    const int64_t planes = (int64_t)d->n * d->c, hw = (int64_t)d->h * d->w;
    for (int64_t p = 0; p < planes; p++)
        for (int oh = 0; oh < d->oh; oh++)
            for (int ow = 0; ow < d->ow; ow++) {
                const int64_t t = max_tap(x + p * hw, d, oh, ow);
                y[(p * d->oh + oh) * d->ow + ow] = t < 0 ? -INFINITY : x[p * hw + t];
            }
}

void maxpool2d_backward_ref(float *dx, const float *dy, const float *x,
                            const struct qt_conv2d_desc *d, int acc)
{
    const int64_t planes = (int64_t)d->n * d->c, hw = (int64_t)d->h * d->w;
    if (!acc)
        for (int64_t i = 0; i < planes * hw; i++)
            dx[i] = 0.0f;
    /* Overlapping windows may pick the same tap: their gradients add up, in output order. */
    for (int64_t p = 0; p < planes; p++)
        for (int oh = 0; oh < d->oh; oh++)
            for (int ow = 0; ow < d->ow; ow++) {
                const int64_t t = max_tap(x + p * hw, d, oh, ow);
                if (t >= 0) dx[p * hw + t] += dy[(p * d->oh + oh) * d->ow + ow];
            }
}

void avgpool2d_forward_ref(float *y, const float *x, const struct qt_conv2d_desc *d,
                           int count_include_pad)
{
    const int64_t planes = (int64_t)d->n * d->c, hw = (int64_t)d->h * d->w;
    for (int64_t p = 0; p < planes; p++)
        for (int oh = 0; oh < d->oh; oh++)
            for (int ow = 0; ow < d->ow; ow++) {
                double s = 0.0;
                for (int r = 0; r < d->kh; r++) {
                    const int ih = tap_pos(oh, r, d->sh, d->pt, d->dh);
                    if (ih < 0 || ih >= d->h) continue;
                    for (int q = 0; q < d->kw; q++) {
                        const int iw = tap_pos(ow, q, d->sw, d->pl, d->dw);
                        if (iw >= 0 && iw < d->w) s += x[p * hw + (int64_t)ih * d->w + iw];
                    }
                }
                const int cnt = window_count(d, oh, ow, count_include_pad);
                y[(p * d->oh + oh) * d->ow + ow] = cnt > 0 ? (float)(s / cnt) : 0.0f;
            }
}

/* dx[ih, iw] = sum over the outputs (oh, ow) with a tap at (ih, iw) of dy[oh, ow] / count. */
void avgpool2d_backward_ref(float *dx, const float *dy, const struct qt_conv2d_desc *d,
                            int count_include_pad, int acc)
{
    const int64_t planes = (int64_t)d->n * d->c, hw = (int64_t)d->h * d->w;
    for (int64_t p = 0; p < planes; p++)
        for (int ih = 0; ih < d->h; ih++)
            for (int iw = 0; iw < d->w; iw++) {
                double s = 0.0;
                for (int oh = 0; oh < d->oh; oh++)
                    for (int r = 0; r < d->kh; r++) {
                        if (tap_pos(oh, r, d->sh, d->pt, d->dh) != ih) continue;
                        for (int ow = 0; ow < d->ow; ow++)
                            for (int q = 0; q < d->kw; q++) {
                                if (tap_pos(ow, q, d->sw, d->pl, d->dw) != iw) continue;
                                const int cnt = window_count(d, oh, ow, count_include_pad);
                                if (cnt > 0) s += (double)dy[(p * d->oh + oh) * d->ow + ow] / cnt;
                            }
                    }
                float *o = &dx[p * hw + (int64_t)ih * d->w + iw];
                *o = acc ? *o + (float)s : (float)s;
            }
}

void global_avgpool_forward_ref(float *y, const float *x, int64_t nc, int64_t hw)
{
    for (int64_t p = 0; p < nc; p++) {
        double s = 0.0;
        for (int64_t i = 0; i < hw; i++)
            s += x[p * hw + i];
        y[p] = hw > 0 ? (float)(s / hw) : 0.0f;
    }
}

void global_avgpool_backward_ref(float *dx, const float *dy, int64_t nc, int64_t hw, int acc)
{
    for (int64_t p = 0; p < nc; p++) {
        const float g = (float)((double)dy[p] / hw);
        for (int64_t i = 0; i < hw; i++)
            dx[p * hw + i] = acc ? dx[p * hw + i] + g : g;
    }
}
