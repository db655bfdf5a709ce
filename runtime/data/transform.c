/* The evaluation transform of torchvision on PIL images, on uint8 HWC images: Resize(R) (the
 * shorter side to R, the longer one to int(R * long / short)) with PIL's bilinear filter,
 * which widens with the reduction factor (antialiasing), then CenterCrop(S).
 *
 * The resampling follows PIL's separable scheme, so that the result is PIL's: per output
 * pixel, taps of the triangle filter 1 - |x| stretched by max(1, in / out) and centred on
 * (o + 0.5) * in / out, normalized to sum 1 and held as integers with 22 fraction bits;
 * rows are resampled first (only those the vertical pass reads), rounded and clipped to
 * uint8, then columns. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define FRAC_BITS 22

/* The taps of one axis: out_size windows, each `n` integer weights from `first`. */
struct taps {
    int *first, *n;
    int32_t *k; /* out_size x width */
    int width;
};

static void taps_free(struct taps *t)
{
    free(t->first);
    free(t->n);
    free(t->k);
}

static int taps_make(struct taps *t, int in_size, int out_size)
{
    const double scale = (double)in_size / out_size;
    const double fscale = scale > 1.0 ? scale : 1.0, support = fscale; /* triangle: 1 */
    t->width = (int)ceil(support) * 2 + 1;
    t->first = malloc(sizeof(int) * (size_t)out_size);
    t->n = malloc(sizeof(int) * (size_t)out_size);
    t->k = malloc(sizeof(int32_t) * (size_t)out_size * (size_t)t->width);
    double *w = malloc(sizeof(double) * (size_t)t->width);
    if (!t->first || !t->n || !t->k || !w) {
        free(w);
        taps_free(t);
        return -1;
    }
    for (int o = 0; o < out_size; o++) {
        const double center = (o + 0.5) * scale;
        int lo = (int)(center - support + 0.5), hi = (int)(center + support + 0.5);
        if (lo < 0) lo = 0;
        if (hi > in_size) hi = in_size;
        int n = hi - lo;
        if (n > t->width) n = t->width;
        double sum = 0.0;
        for (int i = 0; i < n; i++) {
            const double x = fabs((i + lo - center + 0.5) / fscale);
            w[i] = x < 1.0 ? 1.0 - x : 0.0;
            sum += w[i];
        }
        int32_t *k = t->k + (size_t)o * t->width;
        for (int i = 0; i < n; i++) {
            const double v = sum != 0.0 ? w[i] / sum : 0.0;
            k[i] = (int32_t)(v < 0 ? v * (1 << FRAC_BITS) - 0.5 : v * (1 << FRAC_BITS) + 0.5);
        }
        t->first[o] = lo;
        t->n[o] = n;
    }
    free(w);
    return 0;
}

static uint8_t clip8(int64_t acc)
{
    const int64_t v = acc >> FRAC_BITS;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* One axis of src (h x w x c), taps t along `axis` (0: rows, i.e. x; 1: columns, i.e. y),
 * into dst; only dst rows [y0, y1) are computed when resampling x. */
static void resample_x(uint8_t *dst, int dw, const uint8_t *src, int sw, int c, int y0, int y1,
                       const struct taps *t)
{
    for (int y = y0; y < y1; y++) {
        const uint8_t *row = src + (size_t)y * sw * c;
        uint8_t *out = dst + (size_t)(y - y0) * dw * c;
        for (int o = 0; o < dw; o++) {
            const int32_t *k = t->k + (size_t)o * t->width;
            for (int ch = 0; ch < c; ch++) {
                int64_t acc = (int64_t)1 << (FRAC_BITS - 1);
                for (int i = 0; i < t->n[o]; i++)
                    acc += (int64_t)row[(size_t)(t->first[o] + i) * c + ch] * k[i];
                out[(size_t)o * c + ch] = clip8(acc);
            }
        }
    }
}

static void resample_y(uint8_t *dst, int dh, const uint8_t *src, int w, int c, int row0,
                       const struct taps *t)
{
    const size_t stride = (size_t)w * c;
    for (int o = 0; o < dh; o++) {
        const int32_t *k = t->k + (size_t)o * t->width;
        for (size_t x = 0; x < stride; x++) {
            int64_t acc = (int64_t)1 << (FRAC_BITS - 1);
            for (int i = 0; i < t->n[o]; i++)
                acc += (int64_t)src[(size_t)(t->first[o] + i - row0) * stride + x] * k[i];
            dst[(size_t)o * stride + x] = clip8(acc);
        }
    }
}

int qt_image_resize(const struct qt_image *src, int ow, int oh, struct qt_image *dst)
{
    memset(dst, 0, sizeof *dst);
    struct taps tx = {0}, ty = {0};
    uint8_t *mid = NULL;
    const int c = src->c;
    int rc = -1;
    if (ow < 1 || oh < 1 || taps_make(&tx, src->w, ow) || taps_make(&ty, src->h, oh)) goto out;
    /* rows the vertical pass reads */
    const int y0 = ty.first[0], y1 = ty.first[oh - 1] + ty.n[oh - 1];
    mid = malloc((size_t)(y1 - y0) * ow * c);
    dst->px = malloc((size_t)oh * ow * c);
    if (!mid || !dst->px) goto out;
    if (ow == src->w) /* PIL skips a pass that keeps the size */
        memcpy(mid, src->px + (size_t)y0 * src->w * c, (size_t)(y1 - y0) * ow * c);
    else
        resample_x(mid, ow, src->px, src->w, c, y0, y1, &tx);
    if (oh == src->h)
        memcpy(dst->px, mid, (size_t)oh * ow * c);
    else
        resample_y(dst->px, oh, mid, ow, c, y0, &ty);
    dst->w = ow;
    dst->h = oh;
    dst->c = c;
    rc = 0;
out:
    if (rc) {
        free(dst->px);
        dst->px = NULL;
    }
    free(mid);
    taps_free(&tx);
    taps_free(&ty);
    return rc;
}

/* Where a crop of `crop` starts along a side of `size`: Python's round((size - crop) / 2),
 * halves going to the even neighbour; a crop larger than the side (torchvision pads the
 * image first, (crop - size) // 2 before it) starts before the image. */
static int crop_start(int size, int crop)
{
    if (size < crop) return -((crop - size) / 2);
    const int k = size - crop, q = k / 2;
    return k % 2 == 0 || q % 2 == 0 ? q : q + 1;
}

int qt_image_eval_transform(struct qt_image *im, int resize, int crop)
{
    struct qt_image r;
    const int shorter = im->w < im->h ? im->w : im->h, longer = im->w < im->h ? im->h : im->w;
    const int side = (int)((double)((int64_t)resize * longer) / shorter);
    const int rw = im->w <= im->h ? resize : side, rh = im->w <= im->h ? side : resize;
    if (rw == im->w && rh == im->h) {
        r = *im;
        im->px = NULL;
    } else if (qt_image_resize(im, rw, rh, &r)) {
        return -1;
    }
    /* CenterCrop pads with zeros where the image is smaller than the crop */
    uint8_t *px = calloc((size_t)crop * crop * r.c, 1);
    if (!px) {
        free(r.px);
        return -1;
    }
    const int top = crop_start(r.h, crop), left = crop_start(r.w, crop);
    for (int y = 0; y < crop; y++) {
        const int sy = y + top;
        if (sy < 0 || sy >= r.h) continue;
        for (int x = 0; x < crop; x++) {
            const int sx = x + left;
            if (sx < 0 || sx >= r.w) continue;
            memcpy(px + ((size_t)y * crop + x) * r.c, r.px + ((size_t)sy * r.w + sx) * r.c,
                   (size_t)r.c);
        }
    }
    free(r.px);
    free(im->px);
    im->px = px;
    im->w = im->h = crop;
    im->c = r.c;
    return 0;
}
