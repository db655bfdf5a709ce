/* Explicit zero padding for convolutions whose padding differs on opposite sides (cuDNN pads
 * symmetrically): the input copied into a padded buffer, and the padded input's gradient
 * cropped back, for kernels/cuda/conv.c. */
#include "common.cuh"

/* y [planes, h + pt + pb, w + pl + pr] = x [planes, h, w] placed at (pt, pl), zeros around. */
__global__ void k_pad2d(float *y, const float *x, int64_t planes, int h, int w, int pt, int pl,
                        int ph, int pw)
{
    QT_GRID_LOOP(i, planes * ph * pw)
    {
        const int ow = (int)(i % pw), oh = (int)(i / pw % ph);
        const int64_t p = i / ((int64_t)pw * ph);
        const int ih = oh - pt, iw = ow - pl;
        y[i] = ih >= 0 && ih < h && iw >= 0 && iw < w ? x[(p * h + ih) * w + iw] : 0.0f;
    }
}

/* dx [planes, h, w] (+)= the window at (pt, pl) of dxp [planes, ph, pw]. */
__global__ void k_crop2d(float *dx, const float *dxp, int64_t planes, int h, int w, int pt, int pl,
                         int ph, int pw, int acc)
{
    QT_GRID_LOOP(i, planes * h * w)
    {
        const int iw = (int)(i % w), ih = (int)(i / w % h);
        const int64_t p = i / ((int64_t)w * h);
        qt_put(&dx[i], dxp[(p * ph + ih + pt) * pw + iw + pl], acc);
    }
}

extern "C" {

void pad2d_cuda(struct qt_cuda_ctx *c, float *y, const float *x, const struct qt_conv2d_desc *d)
{
    const int ph = d->h + d->pt + d->pb, pw = d->w + d->pl + d->pr;
    const int64_t planes = (int64_t)d->n * d->c, total = planes * ph * pw;
    k_pad2d<<<qt_cuda_blocks(c, total), QT_CUDA_THREADS, 0, c->stream>>>(y, x, planes, d->h, d->w,
                                                                        d->pt, d->pl, ph, pw);
}

void crop2d_cuda(struct qt_cuda_ctx *c, float *dx, const float *dxp, const struct qt_conv2d_desc *d,
                 int acc)
{
    const int ph = d->h + d->pt + d->pb, pw = d->w + d->pl + d->pr;
    const int64_t planes = (int64_t)d->n * d->c, total = planes * d->h * d->w;
    k_crop2d<<<qt_cuda_blocks(c, total), QT_CUDA_THREADS, 0, c->stream>>>(
        dx, dxp, planes, d->h, d->w, d->pt, d->pl, ph, pw, acc);
}

} /* extern "C" */
