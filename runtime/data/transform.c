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

/* The taps of outputs [o0, o1) of one axis: output o reads n[o - o0] inputs from
 * first[o - o0] with the integer weights k + (o - o0) * width. */
struct taps {
    int *first, *n;
    int32_t *k;
    int width, o0;
};

static void taps_free(struct taps *t)
{
    free(t->first);
    free(t->n);
    free(t->k);
}

/* Only the outputs a crop keeps are computed: a sliver of an image resized to a huge side
 * costs what the crop costs. */
static int taps_make(struct taps *t, int in_size, int out_size, int o0, int o1)
{
    const double scale = (double)in_size / out_size;
    const double fscale = scale > 1.0 ? scale : 1.0, support = fscale; /* triangle: 1 */
    const double ss = 1.0 / fscale;
    const size_t count = (size_t)(o1 - o0);
    t->width = (int)ceil(support) * 2 + 1;
    t->o0 = o0;
    t->first = malloc(sizeof(int) * count);
    t->n = malloc(sizeof(int) * count);
    t->k = malloc(sizeof(int32_t) * count * (size_t)t->width);
    double *w = malloc(sizeof(double) * (size_t)t->width);
    if (!t->first || !t->n || !t->k || !w) {
        free(w);
        taps_free(t);
        return -1;
    }
    for (int o = o0; o < o1; o++) {
        const double center = (o + 0.5) * scale;
        int lo = (int)(center - support + 0.5), hi = (int)(center + support + 0.5);
        if (lo < 0) lo = 0;
        if (hi > in_size) hi = in_size;
        int n = hi - lo;
        if (n > t->width) n = t->width;
        double sum = 0.0;
        for (int i = 0; i < n; i++) {
            const double x = fabs((i + lo - center + 0.5) * ss);
            w[i] = x < 1.0 ? 1.0 - x : 0.0;
            sum += w[i];
        }
        int32_t *k = t->k + (size_t)(o - o0) * t->width;
        for (int i = 0; i < n; i++) {
            const double v = sum != 0.0 ? w[i] / sum : 0.0;
            k[i] = (int32_t)(v < 0 ? v * (1 << FRAC_BITS) - 0.5 : v * (1 << FRAC_BITS) + 0.5);
        }
        t->first[o - o0] = lo;
        t->n[o - o0] = n;
    }
    free(w);
    return 0;
}

/* The weights sum to 1 << FRAC_BITS and are non-negative: a sum of 255 * weights plus the
 * rounding half fits in 32 bits, as in PIL. */
static uint8_t clip8(int32_t acc)
{
    const int32_t v = acc >> FRAC_BITS;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* Rows [y0, y1) of src (sw pixels of c channels) resampled along x: output pixels [x0, x1)
 * into the rows of dst (x1 - x0 pixels each). */
static void resample_x(uint8_t *dst, int x0, int x1, const uint8_t *src, int sw, int c, int y0,
                       int y1, const struct taps *t)
{
    const int dw = x1 - x0;
    for (int y = y0; y < y1; y++) {
        const uint8_t *row = src + (size_t)y * sw * c;
        uint8_t *out = dst + (size_t)(y - y0) * dw * c - (size_t)x0 * c;
        for (int o = x0; o < x1; o++) {
            const int32_t *k = t->k + (size_t)(o - t->o0) * t->width;
            const uint8_t *p = row + (size_t)t->first[o - t->o0] * c;
            const int n = t->n[o - t->o0];
            if (c == 3) {
                int32_t a0 = 1 << (FRAC_BITS - 1), a1 = a0, a2 = a0;
                for (int i = 0; i < n; i++, p += 3) {
                    a0 += p[0] * k[i];
                    a1 += p[1] * k[i];
                    a2 += p[2] * k[i];
                }
                out[3 * o] = clip8(a0);
                out[3 * o + 1] = clip8(a1);
                out[3 * o + 2] = clip8(a2);
                continue;
            }
            for (int ch = 0; ch < c; ch++) {
                int32_t acc = 1 << (FRAC_BITS - 1);
                for (int i = 0; i < n; i++)
                    acc += p[(size_t)i * c + ch] * k[i];
                out[(size_t)o * c + ch] = clip8(acc);
            }
        }
    }
}

/* Rows of src (from row0 on, w pixels of c channels) resampled along y: output rows [y0, y1)
 * into dst; acc holds one row of sums. */
static void resample_y(uint8_t *dst, int y0, int y1, const uint8_t *src, int w, int c, int row0,
                       const struct taps *t, int32_t *acc)
{
    const size_t stride = (size_t)w * c;
    for (int o = y0; o < y1; o++) {
        const int32_t *k = t->k + (size_t)(o - t->o0) * t->width;
        for (size_t x = 0; x < stride; x++) acc[x] = 1 << (FRAC_BITS - 1);
        for (int i = 0; i < t->n[o - t->o0]; i++) {
            const uint8_t *row = src + (size_t)(t->first[o - t->o0] + i - row0) * stride;
            const int32_t ki = k[i];
            for (size_t x = 0; x < stride; x++) acc[x] += row[x] * ki;
        }
        uint8_t *out = dst + (size_t)(o - y0) * stride;
        for (size_t x = 0; x < stride; x++) out[x] = clip8(acc[x]);
    }
}

/* The part [rx, rx + rw) x [ry, ry + rh) of src resized to ow x oh (each output pixel
 * depends on its own taps only, so the part is computed alone). */
static int resize_part(const struct qt_image *src, int ow, int oh, int rx, int ry, int rw,
                       int rh, struct qt_image *dst)
{
    memset(dst, 0, sizeof *dst);
    struct taps tx = {0}, ty = {0};
    uint8_t *mid = NULL;
    int32_t *acc = NULL;
    const int c = src->c;
    int rc = -1;
    if (rw < 1 || rh < 1 || taps_make(&tx, src->w, ow, rx, rx + rw) ||
        taps_make(&ty, src->h, oh, ry, ry + rh))
        goto out;
    /* rows the vertical pass reads */
    const int y0 = ty.first[0], y1 = ty.first[rh - 1] + ty.n[rh - 1];
    mid = malloc((size_t)(y1 - y0) * rw * c);
    dst->px = malloc((size_t)rh * rw * c);
    acc = malloc(sizeof(int32_t) * (size_t)rw * c);
    if (!mid || !dst->px || !acc) goto out;
    if (ow == src->w) /* PIL skips a pass that keeps the size */
        for (int y = y0; y < y1; y++)
            memcpy(mid + (size_t)(y - y0) * rw * c, src->px + ((size_t)y * src->w + rx) * c,
                   (size_t)rw * c);
    else
        resample_x(mid, rx, rx + rw, src->px, src->w, c, y0, y1, &tx);
    if (oh == src->h)
        memcpy(dst->px, mid, (size_t)rh * rw * c);
    else
        resample_y(dst->px, ry, ry + rh, mid, rw, c, y0, &ty, acc);
    dst->w = rw;
    dst->h = rh;
    dst->c = c;
    rc = 0;
out:
    if (rc) {
        free(dst->px);
        dst->px = NULL;
    }
    free(mid);
    free(acc);
    taps_free(&tx);
    taps_free(&ty);
    return rc;
}

int qt_image_resize(const struct qt_image *src, int ow, int oh, struct qt_image *dst)
{
    return resize_part(src, ow, oh, 0, 0, ow, oh, dst);
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
    const int shorter = im->w < im->h ? im->w : im->h, longer = im->w < im->h ? im->h : im->w;
    const int side = (int)((double)((int64_t)resize * longer) / shorter);
    const int rw = im->w <= im->h ? resize : side, rh = im->w <= im->h ? side : resize;
    /* the crop's window on the resized image; CenterCrop pads with zeros around an image
     * smaller than the crop */
    const int top = crop_start(rh, crop), left = crop_start(rw, crop);
    const int x0 = left > 0 ? left : 0, y0 = top > 0 ? top : 0;
    const int x1 = left + crop < rw ? left + crop : rw, y1 = top + crop < rh ? top + crop : rh;
    struct qt_image part;
    if (rw == im->w && rh == im->h) { /* PIL keeps an image of the target size as it is */
        part.w = x1 - x0;
        part.h = y1 - y0;
        part.c = im->c;
        if (!(part.px = malloc((size_t)part.w * part.h * im->c))) return -1;
        for (int y = 0; y < part.h; y++)
            memcpy(part.px + (size_t)y * part.w * im->c,
                   im->px + ((size_t)(y0 + y) * im->w + x0) * im->c, (size_t)part.w * im->c);
    } else if (resize_part(im, rw, rh, x0, y0, x1 - x0, y1 - y0, &part)) {
        return -1;
    }
    uint8_t *px = part.w == crop && part.h == crop ? part.px : calloc((size_t)crop * crop * im->c, 1);
    if (!px) {
        free(part.px);
        return -1;
    }
    if (px != part.px) {
        for (int y = 0; y < part.h; y++)
            memcpy(px + ((size_t)(y0 - top + y) * crop + (x0 - left)) * im->c,
                   part.px + (size_t)y * part.w * im->c, (size_t)part.w * im->c);
        free(part.px);
    }
    free(im->px);
    im->px = px;
    im->w = im->h = crop;
    return 0;
}
