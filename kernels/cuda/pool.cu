/* CUDA pooling (global average, max, average), forward and backward, with kernels/ref's
 * rules: max takes the largest tap inside the input (NaN above all, the first among equals),
 * -inf where no tap is inside; averages divide by the taps counted (count_include_pad). */
#include "common.cuh"

__device__ static inline int tap_pos(int o, int t, int s, int p, int dil)
{
    return o * s - p + t * dil;
}

__device__ static inline int axis_count(int o, int k, int s, int p0, int dil, int n, int p1,
                                        int count_include_pad)
{
    const int lo = count_include_pad ? -p0 : 0, hi = count_include_pad ? n + p1 : n;
    int cnt = 0;
    for (int t = 0; t < k; t++) {
        const int i = tap_pos(o, t, s, p0, dil);
        if (i >= lo && i < hi) cnt++;
    }
    return cnt;
}

__device__ static inline int window_count(const struct qt_conv2d_desc &d, int oh, int ow, int cip)
{
    return axis_count(oh, d.kh, d.sh, d.pt, d.dh, d.h, d.pb, cip) *
           axis_count(ow, d.kw, d.sw, d.pl, d.dw, d.w, d.pr, cip);
}

__device__ static inline int64_t max_tap(const float *xp, const struct qt_conv2d_desc &d, int oh,
                                         int ow)
{
    int64_t best = -1;
    float bv = -INFINITY;
    for (int r = 0; r < d.kh; r++) {
        const int ih = tap_pos(oh, r, d.sh, d.pt, d.dh);
        if (ih < 0 || ih >= d.h) continue;
        for (int q = 0; q < d.kw; q++) {
            const int iw = tap_pos(ow, q, d.sw, d.pl, d.dw);
            if (iw < 0 || iw >= d.w) continue;
            const int64_t at = (int64_t)ih * d.w + iw;
            const float v = xp[at];
            if (best < 0 || v > bv || (isnan(v) && !isnan(bv))) {
                best = at;
                bv = v;
            }
        }
    }
    return best;
}

__global__ void k_gap_fwd(float *y, const float *x, int64_t nc, int64_t hw)
{
    /* one block per plane */
    for (int64_t p = blockIdx.x; p < nc; p += gridDim.x) {
        double s = 0.0;
        for (int64_t i = threadIdx.x; i < hw; i += blockDim.x)
            s += x[p * hw + i];
        s = qt_block_sum(s);
        if (threadIdx.x == 0) y[p] = hw > 0 ? (float)(s / hw) : 0.0f;
    }
}

__global__ void k_gap_bwd(float *dx, const float *dy, int64_t nc, int64_t hw, int acc)
{
    QT_GRID_LOOP(i, nc * hw) qt_put(&dx[i], (float)((double)dy[i / hw] / hw), acc);
}

__global__ void k_maxpool_fwd(float *y, const float *x, struct qt_conv2d_desc d, int64_t total)
{
    const int64_t hw = (int64_t)d.h * d.w;
    QT_GRID_LOOP(o, total)
    {
        const int ow = o % d.ow, oh = o / d.ow % d.oh;
        const int64_t p = o / ((int64_t)d.ow * d.oh);
        const int64_t t = max_tap(x + p * hw, d, oh, ow);
        y[o] = t < 0 ? -INFINITY : x[p * hw + t];
    }
}

/* One thread per input element: the outputs whose window picks it, in output order. */
__global__ void k_maxpool_bwd(float *dx, const float *dy, const float *x, struct qt_conv2d_desc d,
                              int64_t total, int acc)
{
    const int64_t hw = (int64_t)d.h * d.w;
    QT_GRID_LOOP(i, total)
    {
        const int64_t at = i % hw, p = i / hw;
        const int ih = (int)(at / d.w), iw = (int)(at % d.w);
        float s = 0.0f;
        for (int oh = 0; oh < d.oh; oh++) {
            int hit = 0;
            for (int r = 0; r < d.kh; r++) hit |= tap_pos(oh, r, d.sh, d.pt, d.dh) == ih;
            if (!hit) continue;
            for (int ow = 0; ow < d.ow; ow++) {
                int hitw = 0;
                for (int q = 0; q < d.kw; q++) hitw |= tap_pos(ow, q, d.sw, d.pl, d.dw) == iw;
                if (hitw && max_tap(x + p * hw, d, oh, ow) == at)
                    s += dy[(p * d.oh + oh) * d.ow + ow];
            }
        }
        qt_put(&dx[i], s, acc);
    }
}

__global__ void k_avgpool_fwd(float *y, const float *x, struct qt_conv2d_desc d, int cip,
                              int64_t total)
{
    const int64_t hw = (int64_t)d.h * d.w;
    QT_GRID_LOOP(o, total)
    {
        const int ow = o % d.ow, oh = o / d.ow % d.oh;
        const int64_t p = o / ((int64_t)d.ow * d.oh);
        double s = 0.0;
        for (int r = 0; r < d.kh; r++) {
            const int ih = tap_pos(oh, r, d.sh, d.pt, d.dh);
            if (ih < 0 || ih >= d.h) continue;
            for (int q = 0; q < d.kw; q++) {
                const int iw = tap_pos(ow, q, d.sw, d.pl, d.dw);
                if (iw >= 0 && iw < d.w) s += x[p * hw + (int64_t)ih * d.w + iw];
            }
        }
        const int cnt = window_count(d, oh, ow, cip);
        y[o] = cnt > 0 ? (float)(s / cnt) : 0.0f;
    }
}

__global__ void k_avgpool_bwd(float *dx, const float *dy, struct qt_conv2d_desc d, int cip,
                              int64_t total, int acc)
{
    const int64_t hw = (int64_t)d.h * d.w;
    QT_GRID_LOOP(i, total)
    {
        const int64_t at = i % hw, p = i / hw;
        const int ih = (int)(at / d.w), iw = (int)(at % d.w);
        double s = 0.0;
        for (int oh = 0; oh < d.oh; oh++)
            for (int r = 0; r < d.kh; r++) {
                if (tap_pos(oh, r, d.sh, d.pt, d.dh) != ih) continue;
                for (int ow = 0; ow < d.ow; ow++)
                    for (int q = 0; q < d.kw; q++) {
                        if (tap_pos(ow, q, d.sw, d.pl, d.dw) != iw) continue;
                        const int cnt = window_count(d, oh, ow, cip);
                        if (cnt > 0) s += (double)dy[(p * d.oh + oh) * d.ow + ow] / cnt;
                    }
            }
        qt_put(&dx[i], (float)s, acc);
    }
}

extern "C" {

void global_avgpool_forward_cuda(struct qt_cuda_ctx *c, float *y, const float *x, int64_t nc,
                                 int64_t hw)
{
    const int64_t blocks = nc < 65535 ? nc : 65535;
    k_gap_fwd<<<(unsigned)(blocks > 0 ? blocks : 1), 128, 0, c->stream>>>(y, x, nc, hw);
}

void global_avgpool_backward_cuda(struct qt_cuda_ctx *c, float *dx, const float *dy, int64_t nc,
                                  int64_t hw, int acc)
{
    k_gap_bwd<<<qt_cuda_blocks(c, nc * hw), QT_CUDA_THREADS, 0, c->stream>>>(dx, dy, nc, hw, acc);
}

void maxpool2d_forward_cuda(struct qt_cuda_ctx *c, float *y, const float *x,
                            const struct qt_conv2d_desc *d)
{
    const int64_t total = (int64_t)d->n * d->c * d->oh * d->ow;
    k_maxpool_fwd<<<qt_cuda_blocks(c, total), QT_CUDA_THREADS, 0, c->stream>>>(y, x, *d, total);
}

void maxpool2d_backward_cuda(struct qt_cuda_ctx *c, float *dx, const float *dy, const float *x,
                             const struct qt_conv2d_desc *d, int acc)
{
    const int64_t total = (int64_t)d->n * d->c * d->h * d->w;
    k_maxpool_bwd<<<qt_cuda_blocks(c, total), QT_CUDA_THREADS, 0, c->stream>>>(dx, dy, x, *d, total,
                                                                              acc);
}

void avgpool2d_forward_cuda(struct qt_cuda_ctx *c, float *y, const float *x,
                            const struct qt_conv2d_desc *d, int count_include_pad)
{
    const int64_t total = (int64_t)d->n * d->c * d->oh * d->ow;
    k_avgpool_fwd<<<qt_cuda_blocks(c, total), QT_CUDA_THREADS, 0, c->stream>>>(
        y, x, *d, count_include_pad, total);
}

void avgpool2d_backward_cuda(struct qt_cuda_ctx *c, float *dx, const float *dy,
                             const struct qt_conv2d_desc *d, int count_include_pad, int acc)
{
    const int64_t total = (int64_t)d->n * d->c * d->h * d->w;
    k_avgpool_bwd<<<qt_cuda_blocks(c, total), QT_CUDA_THREADS, 0, c->stream>>>(
        dx, dy, *d, count_include_pad, total, acc);
}

} /* extern "C" */
