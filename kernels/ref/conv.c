/* Reference 2-D convolution, forward and backward: direct sums in double over the taps, one
 * output (or one gradient element) at a time. */
#include "kernels/ref/ref.h"

/* Whether the group count splits both channel counts. */
static int groups_ok(const struct qt_conv2d_desc *d)
{
    return d->group > 0 && d->c % d->group == 0 && d->k % d->group == 0;
}

/* Offsets of x[n,c,h,w], w[k,ci,r,q] and y[n,k,oh,ow] (dy alike). */
static int64_t xi(const struct qt_conv2d_desc *d, int n, int c, int h, int w)
{
    return (((int64_t)n * d->c + c) * d->h + h) * d->w + w;
}

static int64_t wi(const struct qt_conv2d_desc *d, int k, int ci, int r, int q)
{
    return (((int64_t)k * (d->c / d->group) + ci) * d->kh + r) * d->kw + q;
}

static int64_t yi(const struct qt_conv2d_desc *d, int n, int k, int oh, int ow)
{
    return (((int64_t)n * d->k + k) * d->oh + oh) * d->ow + ow;
}

int conv2d_forward_ref(float *y, const float *x, const float *w, const float *b,
                       const struct qt_conv2d_desc *d)
{
    if (!groups_ok(d)) return -1;
    const int cg = d->c / d->group, kg = d->k / d->group;
    for (int n = 0; n < d->n; n++)
        for (int k = 0; k < d->k; k++) {
            const int c0 = (k / kg) * cg; /* first input channel of k's group */
            for (int oh = 0; oh < d->oh; oh++)
                for (int ow = 0; ow < d->ow; ow++) {
                    double s = b ? (double)b[k] : 0.0;
                    for (int ci = 0; ci < cg; ci++)
                        for (int r = 0; r < d->kh; r++) {
                            const int ih = oh * d->sh - d->pt + r * d->dh;
                            if (ih < 0 || ih >= d->h) continue;
                            for (int q = 0; q < d->kw; q++) {
                                const int iw = ow * d->sw - d->pl + q * d->dw;
                                if (iw < 0 || iw >= d->w) continue;
                                s += (double)x[xi(d, n, c0 + ci, ih, iw)] * w[wi(d, k, ci, r, q)];
                            }
                        }
                    y[yi(d, n, k, oh, ow)] = (float)s;
                }
        }
    return 0;
}

/* The output index o along one axis whose tap t reads input position i: i = o*s - p + t*dil,
 * so o = (i + p - t*dil) / s when that divides exactly and 0 <= o < out; -1 otherwise. */
static int tap_source(int i, int t, int s, int p, int dil, int out)
{
    const int num = i + p - t * dil;
    if (num < 0 || num % s) return -1;
    const int o = num / s;
    return o < out ? o : -1;
}

int conv2d_backward_ref(float *dx, float *dw, float *db, const float *dy, const float *x,
                        const float *w, const struct qt_conv2d_desc *d, int acc_x, int acc_w,
                        int acc_b)
{
    if (!groups_ok(d)) return -1;
    const int cg = d->c / d->group, kg = d->k / d->group;
    /* dx[n,c,ih,iw] = sum over the output channels k of c's group and the taps (r, q) of the
     * outputs (oh, ow) that read (ih, iw) through them, of dy[n,k,oh,ow] * w[k, c - c0, r, q]. */
    if (dx)
        for (int n = 0; n < d->n; n++)
            for (int c = 0; c < d->c; c++) {
                const int g = c / cg, ci = c - g * cg;
                for (int ih = 0; ih < d->h; ih++)
                    for (int iw = 0; iw < d->w; iw++) {
                        double s = 0.0;
                        for (int k = g * kg; k < (g + 1) * kg; k++)
                            for (int r = 0; r < d->kh; r++) {
                                const int oh = tap_source(ih, r, d->sh, d->pt, d->dh, d->oh);
                                if (oh < 0) continue;
                                for (int q = 0; q < d->kw; q++) {
                                    const int ow = tap_source(iw, q, d->sw, d->pl, d->dw, d->ow);
                                    if (ow < 0) continue;
                                    s += (double)dy[yi(d, n, k, oh, ow)] * w[wi(d, k, ci, r, q)];
                                }
                            }
                        float *o = &dx[xi(d, n, c, ih, iw)];
                        *o = acc_x ? *o + (float)s : (float)s;
                    }
            }
    /* dw[k,ci,r,q] = sum over n and the output positions of dy[n,k,oh,ow] * x[n,c0+ci,ih,iw]. */
    if (dw)
        for (int k = 0; k < d->k; k++) {
            const int c0 = (k / kg) * cg;
            for (int ci = 0; ci < cg; ci++)
                for (int r = 0; r < d->kh; r++)
                    for (int q = 0; q < d->kw; q++) {
                        double s = 0.0;
                        for (int n = 0; n < d->n; n++)
                            for (int oh = 0; oh < d->oh; oh++) {
                                const int ih = oh * d->sh - d->pt + r * d->dh;
                                if (ih < 0 || ih >= d->h) continue;
                                for (int ow = 0; ow < d->ow; ow++) {
                                    const int iw = ow * d->sw - d->pl + q * d->dw;
                                    if (iw < 0 || iw >= d->w) continue;
                                    s += (double)dy[yi(d, n, k, oh, ow)] *
                                         x[xi(d, n, c0 + ci, ih, iw)];
                                }
                            }
                        float *o = &dw[wi(d, k, ci, r, q)];
                        *o = acc_w ? *o + (float)s : (float)s;
                    }
        }
    /* db[k] = sum of dy[n, k, :, :] over n. */
    if (db)
        for (int k = 0; k < d->k; k++) {
            double s = 0.0;
            for (int n = 0; n < d->n; n++)
                for (int oh = 0; oh < d->oh; oh++)
                    for (int ow = 0; ow < d->ow; ow++)
                        s += dy[yi(d, n, k, oh, ow)];
            db[k] = acc_b ? db[k] + (float)s : (float)s;
        }
    return 0;
}
