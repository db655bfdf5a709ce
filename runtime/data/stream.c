/* Streamed image folders: images of any size, kept encoded (an archive's entries in memory,
 * a folder's files on disk, read when needed) and decoded per batch by all threads, each
 * through torchvision's evaluation transform (Resize + CenterCrop) or, for training, its
 * RandomResizedCrop and horizontal flip. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../util/rng.h"
#include "internal.h"

struct qt_stream_store {
    int refs;
    int n, cap;
    struct qt_stream_item *items;
};

struct qt_image_stream {
    struct qt_stream_store *store;
    int *index; /* sample i is store item index[i] */
    int n, resize, crop;
};

int qt_stream_store_add(struct qt_stream_store **sp, char *name, uint8_t *data, size_t len,
                        struct qt_error *e)
{
    struct qt_stream_store *s = *sp;
    if (!s && !(s = *sp = calloc(1, sizeof *s))) goto oom;
    s->refs = 1;
    if (s->n == s->cap) {
        const int ncap = s->cap ? 2 * s->cap : 1024;
        struct qt_stream_item *ni = realloc(s->items, sizeof *ni * (size_t)ncap);
        if (!ni || ncap < 0) goto oom;
        s->items = ni;
        s->cap = ncap;
    }
    s->items[s->n++] = (struct qt_stream_item){name, data, len};
    return 0;
oom:
    free(name);
    free(data);
    return qt_err(e, "out of memory listing images");
}

static void store_release(struct qt_stream_store *s)
{
    if (!s || --s->refs > 0) return;
    for (int i = 0; i < s->n; i++) {
        free(s->items[i].name);
        free(s->items[i].data);
    }
    free(s->items);
    free(s);
}

void qt_stream_store_free(struct qt_stream_store *s)
{
    store_release(s);
}

const struct qt_stream_item *qt_stream_store_items(const struct qt_stream_store *s, int *n)
{
    *n = s ? s->n : 0;
    return s ? s->items : NULL;
}

struct qt_image_stream *qt_stream_new(struct qt_stream_store *s, const int *index, int n,
                                      int resize, int crop)
{
    struct qt_image_stream *st = calloc(1, sizeof *st);
    if (!st || !(st->index = malloc(sizeof(int) * (size_t)(n > 0 ? n : 1)))) {
        free(st);
        return NULL;
    }
    for (int i = 0; i < n; i++) st->index[i] = index ? index[i] : i;
    st->store = s;
    s->refs++;
    st->n = n;
    st->resize = resize;
    st->crop = crop;
    return st;
}

struct qt_image_stream *qt_stream_subset(const struct qt_image_stream *st, const int *idx, int n)
{
    int *map = malloc(sizeof(int) * (size_t)(n > 0 ? n : 1));
    if (!map) return NULL;
    for (int i = 0; i < n; i++) map[i] = st->index[idx[i]];
    struct qt_image_stream *sub = qt_stream_new(st->store, map, n, st->resize, st->crop);
    free(map);
    return sub;
}

void qt_stream_free(struct qt_image_stream *st)
{
    if (!st) return;
    store_release(st->store);
    free(st->index);
    free(st);
}

/* ---- RandomResizedCrop(scale 0.08-1, ratio 3/4-4/3), as torchvision samples it ---- */

static int round_half_even(double v)
{
    return (int)nearbyint(v); /* the default rounding mode: halves to even, as Python */
}

void qt_random_resized_crop_box(int w, int h, uint64_t seed, int box[4])
{
    struct qt_rng r;
    qt_rng_seed(&r, seed);
    const double area = (double)w * h, lr0 = log(3.0 / 4.0), lr1 = log(4.0 / 3.0);
    for (int attempt = 0; attempt < 10; attempt++) {
        const double target = area * (0.08 + 0.92 * qt_rng_uniform(&r));
        const double ratio = exp(lr0 + (lr1 - lr0) * qt_rng_uniform(&r));
        const int cw = round_half_even(sqrt(target * ratio));
        const int ch = round_half_even(sqrt(target / ratio));
        if (cw > 0 && cw <= w && ch > 0 && ch <= h) {
            box[1] = (int)qt_rng_below(&r, (uint32_t)(h - ch + 1)); /* top */
            box[0] = (int)qt_rng_below(&r, (uint32_t)(w - cw + 1)); /* left */
            box[2] = cw;
            box[3] = ch;
            return;
        }
    }
    /* the central crop of the ratio range's nearest end */
    const double in_ratio = (double)w / h;
    int cw = w, ch = h;
    if (in_ratio < 3.0 / 4.0)
        ch = round_half_even(w / (3.0 / 4.0));
    else if (in_ratio > 4.0 / 3.0)
        cw = round_half_even(h * (4.0 / 3.0));
    box[0] = (w - cw) / 2;
    box[1] = (h - ch) / 2;
    box[2] = cw;
    box[3] = ch;
}

/* The training transform of one decoded image, in place: the box from seed, resized to
 * crop x crop, mirrored when the seed's flip bit says so. */
static int train_transform(struct qt_image *im, int crop, uint64_t seed)
{
    int box[4];
    qt_random_resized_crop_box(im->w, im->h, seed, box);
    struct qt_image sub = {box[2], box[3], im->c, malloc((size_t)box[2] * box[3] * im->c)};
    if (!sub.px) return -1;
    for (int y = 0; y < box[3]; y++)
        memcpy(sub.px + (size_t)y * box[2] * im->c,
               im->px + ((size_t)(box[1] + y) * im->w + box[0]) * im->c, (size_t)box[2] * im->c);
    struct qt_image out;
    if (qt_image_resize(&sub, crop, crop, &out)) {
        free(sub.px);
        return -1;
    }
    free(sub.px);
    if (seed >> 63) /* the flip: a bit the box sampler does not use */
        for (int y = 0; y < crop; y++)
            for (int x = 0; x < crop / 2; x++)
                for (int k = 0; k < out.c; k++) {
                    uint8_t *a = out.px + ((size_t)y * crop + x) * out.c + k;
                    uint8_t *b = out.px + ((size_t)y * crop + crop - 1 - x) * out.c + k;
                    const uint8_t t = *a;
                    *a = *b;
                    *b = t;
                }
    free(im->px);
    *im = out;
    return 0;
}

/* ---- batches ---- */

struct slot {
    int rc;
    char msg[QT_ERR_MSG];
};

int qt_stream_batch(const struct qt_image_stream *st, const int *idx, int count,
                    const uint64_t *seeds, const float *lut, int layout_nhwc, float *x,
                    struct qt_error *e)
{
    const int s = st->crop;
    const size_t hw = (size_t)s * s;
    struct slot *res = calloc((size_t)count, sizeof *res);
    if (!res) return qt_err(e, "out of memory decoding a batch of %d images", count);
#pragma omp parallel if (count > 1)
    {
        struct qt_image_decoder *d = qt_image_decoder_new();
#pragma omp for schedule(dynamic, 1)
        for (int i = 0; i < count; i++) {
            const struct qt_stream_item *it = &st->store->items[st->index[idx[i]]];
            struct slot *r = &res[i];
            uint8_t *data = it->data, *owned = NULL;
            size_t len = it->len;
            struct qt_error fe;
            if (!data) {
                if (qt_data_read_file(it->name, &owned, &len, &fe) < 0) {
                    r->rc = -1;
                    snprintf(r->msg, sizeof r->msg, "%s", fe.msg);
                    continue;
                }
                data = owned;
            }
            struct qt_image im = {0, 0, 0, NULL};
            if (!d || qt_image_decode(d, data, len, &im, r->msg, sizeof r->msg) < 0) {
                if (!d) snprintf(r->msg, sizeof r->msg, "out of memory");
                r->rc = -2;
                free(owned);
                continue;
            }
            free(owned);
            const int t = seeds ? train_transform(&im, s, seeds[i])
                                : qt_image_eval_transform(&im, st->resize, s);
            if (t < 0) {
                r->rc = -2;
                snprintf(r->msg, sizeof r->msg, "out of memory resizing the image");
                free(im.px);
                continue;
            }
            float *dst = x + (size_t)i * 3 * hw;
            for (size_t p = 0; p < hw; p++)
                for (int ch = 0; ch < 3; ch++) {
                    const uint8_t v = im.px[p * im.c + (im.c == 3 ? ch : 0)];
                    dst[layout_nhwc ? p * 3 + ch : ch * hw + p] = lut[ch * 256 + v];
                }
            free(im.px);
        }
        qt_image_decoder_free(d);
    }
    int rc = 0;
    for (int i = 0; i < count && !rc; i++)
        if (res[i].rc == -1)
            rc = qt_err(e, "%s", res[i].msg);
        else if (res[i].rc < 0)
            rc = qt_err(e, "%s: %s", st->store->items[st->index[idx[i]]].name, res[i].msg);
    free(res);
    return rc;
}
