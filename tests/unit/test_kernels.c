/* CPU forward kernels (kernels/cpu) against naive double-precision loops written here from
 * the definitions, on random inputs over many shapes, and at several OpenMP team sizes.
 * Convolution runs through oneDNN (one kernel context per test). */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "kernels/cpu/cpu.h"

/* ---- helpers ---- */

struct rng {
    uint64_t s;
};

static uint32_t rng_u32(struct rng *r)
{
    r->s = r->s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(r->s >> 33);
}

/* Uniform integer in [lo, hi]. */
static int rng_int(struct rng *r, int lo, int hi)
{
    return lo + (int)(rng_u32(r) % (uint32_t)(hi - lo + 1));
}

static float rng_float(struct rng *r)
{
    return (float)((rng_u32(r) & 0xffffff) / 16777216.0 * 2.0 - 1.0);
}

static float *rand_array(struct rng *r, int64_t n)
{
    float *p = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    for (int64_t i = 0; i < n; i++) p[i] = rng_float(r);
    return p;
}

/* Buffers carry this many sentinel floats past their end to catch overruns. */
#define GUARD 16
#define SENTINEL 12345.678f

static float *guarded(int64_t n)
{
    float *p = malloc(sizeof(float) * (size_t)(n + GUARD));
    for (int64_t i = 0; i < n + GUARD; i++) p[i] = SENTINEL;
    return p;
}

static int guard_intact(const float *p, int64_t n)
{
    for (int i = 0; i < GUARD; i++)
        if (p[n + i] != SENTINEL) return 0;
    return 1;
}

/* Output size along one axis for a floor-mode window. */
static int out_size(int n, int k, int s, int dil, int p0, int p1)
{
    const int ek = (k - 1) * dil + 1;
    return n + p0 + p1 < ek ? 0 : (n + p0 + p1 - ek) / s + 1;
}

static const int team_sizes[] = {1, 2, 3};
#define NTEAMS ((int)(sizeof team_sizes / sizeof team_sizes[0]))

/* ---- convolution ---- */

/* Returns 0 when conv2d_forward_cpu matches the direct double-precision sum. */
static int check_conv(struct qt_cpu_ctx *ctx, const struct qt_conv2d_desc *d, int with_bias,
                      struct rng *r, const char *what)
{
    const int cg = d->c / d->group, kg = d->k / d->group;
    const int64_t nx = (int64_t)d->n * d->c * d->h * d->w;
    const int64_t nw = (int64_t)d->k * cg * d->kh * d->kw;
    const int64_t ny = (int64_t)d->n * d->k * d->oh * d->ow;
    float *x = rand_array(r, nx), *w = rand_array(r, nw), *b = rand_array(r, d->k);
    double *ref = malloc(sizeof(double) * (size_t)(ny > 0 ? ny : 1));
    double *mag = malloc(sizeof(double) * (size_t)(ny > 0 ? ny : 1));
    for (int n = 0; n < d->n; n++)
        for (int k = 0; k < d->k; k++)
            for (int oh = 0; oh < d->oh; oh++)
                for (int ow = 0; ow < d->ow; ow++) {
                    const int g = k / kg;
                    double s = with_bias ? b[k] : 0.0, m = with_bias ? fabs(b[k]) : 0.0;
                    for (int c = 0; c < cg; c++)
                        for (int i = 0; i < d->kh; i++)
                            for (int j = 0; j < d->kw; j++) {
                                const int ih = oh * d->sh - d->pt + i * d->dh;
                                const int iw = ow * d->sw - d->pl + j * d->dw;
                                if (ih < 0 || ih >= d->h || iw < 0 || iw >= d->w) continue;
                                const double xv =
                                    x[(((int64_t)n * d->c + g * cg + c) * d->h + ih) * d->w + iw];
                                const double wv =
                                    w[(((int64_t)k * cg + c) * d->kh + i) * d->kw + j];
                                s += xv * wv;
                                m += fabs(xv * wv);
                            }
                    const int64_t at = (((int64_t)n * d->k + k) * d->oh + oh) * d->ow + ow;
                    ref[at] = s;
                    mag[at] = m;
                }
    int bad = 0;
    const int saved = omp_get_max_threads();
    for (int t = 0; t < NTEAMS && !bad; t++) {
        omp_set_num_threads(team_sizes[t]);
        float *y = guarded(ny);
        if (conv2d_forward_cpu(ctx, y, x, w, with_bias ? b : NULL, d)) {
            qt_test_fail("%s: threads %d: %s", what, team_sizes[t], qt_cpu_ctx_error(ctx));
            bad = 1;
        } else if (!guard_intact(y, ny)) {
            qt_test_fail("%s: threads %d: write past the end of y", what, team_sizes[t]);
            bad = 1;
        }
        for (int64_t i = 0; i < ny && !bad; i++) {
            const double tol = 1e-5 * mag[i] + 1e-6;
            if (!(fabs(y[i] - ref[i]) <= tol)) {
                qt_test_fail("%s: threads %d: y[%lld] = %.7g, expected %.7g", what, team_sizes[t],
                             (long long)i, y[i], ref[i]);
                bad = 1;
            }
        }
        free(y);
    }
    omp_set_num_threads(saved);
    free(x), free(w), free(b), free(ref), free(mag);
    return bad;
}

static struct qt_conv2d_desc conv_desc(int n, int c, int h, int w, int k, int kh, int kw, int sh,
                                       int sw, int dh, int dw, int pt, int pl, int pb, int pr,
                                       int group)
{
    struct qt_conv2d_desc d = {n, c, h, w, k, 0, 0, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, group};
    d.oh = out_size(h, kh, sh, dh, pt, pb);
    d.ow = out_size(w, kw, sw, dw, pl, pr);
    return d;
}

static void describe(char *buf, size_t len, const struct qt_conv2d_desc *d)
{
    snprintf(buf, len,
             "conv n%d c%d %dx%d k%d kernel %dx%d stride %dx%d dil %dx%d pads %d,%d,%d,%d g%d",
             d->n, d->c, d->h, d->w, d->k, d->kh, d->kw, d->sh, d->sw, d->dh, d->dw, d->pt, d->pl,
             d->pb, d->pr, d->group);
}

/* A kernel context for one test; NULL after reporting the failure. */
static struct qt_cpu_ctx *new_ctx(void)
{
    char err[256];
    struct qt_cpu_ctx *ctx = qt_cpu_ctx_new(err, sizeof err);
    if (!ctx) qt_test_fail("qt_cpu_ctx_new: %s", err);
    return ctx;
}

/* Checks every case of a list, with a bias on every other one. */
static int check_conv_list(const struct qt_conv2d_desc *cases, size_t count, struct rng *r)
{
    struct qt_cpu_ctx *ctx = new_ctx();
    if (!ctx) return 1;
    int bad = 0;
    for (size_t i = 0; i < count && !bad; i++) {
        char what[200];
        describe(what, sizeof what, &cases[i]);
        bad = check_conv(ctx, &cases[i], (int)(i % 2), r, what);
    }
    qt_cpu_ctx_free(ctx);
    return bad;
}

QT_TEST(kernels_conv2d_resnet_shapes)
{
    struct rng r = {1};
    /* ResNet-style layers at small batch: 3x3 same, stride 2, 1x1 shortcuts, 1x1 pointwise,
     * the 7x7 stem, batch 1 and batches that do not divide among the threads. */
    const struct qt_conv2d_desc cases[] = {
        conv_desc(3, 3, 32, 32, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1),
        conv_desc(5, 16, 16, 16, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1),
        conv_desc(1, 16, 16, 16, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1),
        conv_desc(4, 16, 16, 16, 32, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1),
        conv_desc(7, 32, 8, 8, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1),
        conv_desc(9, 8, 4, 4, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1),
        conv_desc(4, 16, 16, 16, 32, 1, 1, 2, 2, 1, 1, 0, 0, 0, 0, 1),
        conv_desc(3, 16, 9, 9, 24, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1),
        conv_desc(1, 16, 9, 9, 24, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1),
        conv_desc(2, 3, 37, 37, 8, 7, 7, 2, 2, 1, 1, 3, 3, 3, 3, 1),
        conv_desc(1, 3, 37, 37, 8, 7, 7, 2, 2, 1, 1, 3, 3, 3, 3, 1),
        /* large batches, one of them odd */
        conv_desc(130, 8, 6, 6, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1),
        conv_desc(64, 16, 8, 8, 16, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1),
        conv_desc(129, 16, 5, 5, 32, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1),
    };
    return check_conv_list(cases, sizeof cases / sizeof cases[0], &r);
}

QT_TEST(kernels_conv2d_groups_dilation_pads)
{
    struct rng r = {2};
    const struct qt_conv2d_desc cases[] = {
        /* grouped, depthwise, depthwise with channel multiplier */
        conv_desc(3, 8, 10, 11, 12, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 2),
        conv_desc(3, 32, 10, 11, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 4),
        conv_desc(2, 6, 9, 7, 6, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 6),
        conv_desc(2, 6, 9, 7, 12, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 6),
        conv_desc(4, 12, 6, 6, 12, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 3),
        conv_desc(1, 64, 14, 14, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 64),
        conv_desc(1, 64, 14, 14, 64, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 64),
        /* dilation, asymmetric and large pads, rectangular kernels and strides */
        conv_desc(2, 16, 13, 12, 5, 3, 3, 1, 1, 2, 2, 2, 2, 2, 2, 1),
        conv_desc(3, 16, 13, 12, 5, 3, 2, 1, 2, 3, 1, 0, 1, 2, 3, 1),
        conv_desc(2, 5, 11, 17, 4, 2, 5, 3, 1, 1, 2, 1, 0, 0, 4, 1),
        conv_desc(2, 20, 7, 9, 3, 5, 3, 1, 1, 1, 1, 4, 2, 5, 0, 1),
        conv_desc(2, 4, 5, 5, 3, 3, 3, 1, 1, 1, 1, 6, 6, 6, 6, 1),
        conv_desc(5, 16, 1, 1, 7, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1),
        conv_desc(2, 16, 8, 8, 4, 8, 8, 1, 1, 1, 1, 0, 0, 0, 0, 1),
        conv_desc(3, 7, 15, 14, 5, 1, 1, 3, 2, 1, 1, 1, 0, 2, 1, 1),
        /* 1-D convolutions as the backend passes them (height 1) */
        conv_desc(2, 6, 1, 30, 4, 1, 5, 1, 2, 1, 2, 0, 3, 0, 1, 1),
        conv_desc(1, 6, 1, 9, 6, 1, 3, 1, 1, 1, 1, 0, 1, 0, 1, 3),
    };
    return check_conv_list(cases, sizeof cases / sizeof cases[0], &r);
}

QT_TEST(kernels_conv2d_random)
{
    struct rng r = {3};
    struct qt_cpu_ctx *ctx = new_ctx();
    if (!ctx) return 1;
    int bad = 0;
    for (int it = 0; it < 300 && !bad; it++) {
        const int group = rng_int(&r, 0, 3) == 0 ? rng_int(&r, 2, 3) : 1;
        const int cg = rng_int(&r, 1, 12), kg = rng_int(&r, 1, 6);
        const int kh = rng_int(&r, 1, 5), kw = rng_int(&r, 1, 5);
        const int sh = rng_int(&r, 1, 3), sw = rng_int(&r, 1, 3);
        const int dh = rng_int(&r, 0, 3) ? 1 : rng_int(&r, 2, 3);
        const int dw = rng_int(&r, 0, 3) ? 1 : rng_int(&r, 2, 3);
        const int h = rng_int(&r, 1, 19), w = rng_int(&r, 1, 19);
        const int n = rng_int(&r, 1, 6);
        struct qt_conv2d_desc d =
            conv_desc(n, cg * group, h, w, kg * group, kh, kw, sh, sw, dh, dw, rng_int(&r, 0, kh),
                      rng_int(&r, 0, kw), rng_int(&r, 0, kh), rng_int(&r, 0, kw), group);
        if (d.oh <= 0 || d.ow <= 0) continue;
        char what[200];
        describe(what, sizeof what, &d);
        bad = check_conv(ctx, &d, it % 2, &r, what);
    }
    qt_cpu_ctx_free(ctx);
    return bad;
}

/* Sizes that do not describe a convolution fail with a message naming it, and leave the
 * context usable. */
QT_TEST(kernels_conv2d_errors)
{
    struct rng r = {4};
    struct qt_cpu_ctx *ctx = new_ctx();
    if (!ctx) return 1;
    int bad = 0;
    struct qt_conv2d_desc d = conv_desc(2, 4, 8, 8, 6, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1);
    float *x = rand_array(&r, 2 * 4 * 8 * 8), *w = rand_array(&r, 6 * 4 * 9);
    float *y = guarded(2 * 6 * 9 * 9);
    d.oh = d.ow = 9; /* inconsistent with the pads and kernel */
    if (conv2d_forward_cpu(ctx, y, x, w, NULL, &d) == 0)
        bad = qt_test_fail("an output size of 9 instead of 8 was accepted");
    else if (!strstr(qt_cpu_ctx_error(ctx), "convolution forward"))
        bad = qt_test_fail("message does not name the convolution: %s", qt_cpu_ctx_error(ctx));
    d = conv_desc(2, 4, 8, 8, 6, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1);
    d.group = 3; /* 4 channels in 3 groups */
    if (!bad && conv2d_forward_cpu(ctx, y, x, w, NULL, &d) == 0)
        bad = qt_test_fail("4 channels in 3 groups were accepted");
    d.group = 1;
    if (!bad && check_conv(ctx, &d, 1, &r, "after errors")) bad = 1;
    free(x), free(w), free(y);
    qt_cpu_ctx_free(ctx);
    return bad;
}

/* Repeated calls on one shape give identical results (oneDNN's cached primitive), and a
 * context works after another shape ran in between. */
QT_TEST(kernels_conv2d_repeat)
{
    struct rng r = {5};
    struct qt_cpu_ctx *ctx = new_ctx();
    if (!ctx) return 1;
    const struct qt_conv2d_desc a = conv_desc(4, 16, 12, 12, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1);
    const struct qt_conv2d_desc b = conv_desc(3, 8, 7, 7, 8, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 2);
    const int64_t ny = (int64_t)a.n * a.k * a.oh * a.ow;
    float *x = rand_array(&r, (int64_t)a.n * a.c * a.h * a.w), *w = rand_array(&r, 32 * 16 * 9);
    float *bias = rand_array(&r, a.k), *y0 = guarded(ny), *y1 = guarded(ny);
    int bad = 0;
    if (conv2d_forward_cpu(ctx, y0, x, w, bias, &a)) bad = 1;
    for (int it = 0; it < 3 && !bad; it++) {
        if (check_conv(ctx, &b, it % 2, &r, "interleaved shape") ||
            conv2d_forward_cpu(ctx, y1, x, w, bias, &a)) {
            bad = 1;
            break;
        }
        if (memcmp(y0, y1, sizeof(float) * (size_t)ny))
            bad = qt_test_fail("repeat %d differs from the first call", it);
    }
    if (bad == 1 && qt_cpu_ctx_error(ctx)[0]) qt_test_fail("%s", qt_cpu_ctx_error(ctx));
    free(x), free(w), free(bias), free(y0), free(y1);
    qt_cpu_ctx_free(ctx);
    return bad;
}

/* ---- activation layouts and the inference convolution ---- */

/* Offset of element (n, c, h, w) of a [N, C, H, W] activation in `layout`, from the layouts'
 * definitions (cpu.h). */
static int64_t layout_offset(int layout, const int64_t *dm, int64_t n, int64_t c, int64_t h,
                             int64_t w)
{
    const int64_t C = dm[1], H = dm[2], W = dm[3];
    switch (layout) {
    case QT_CPU_NHWC: return ((n * H + h) * W + w) * C + c;
    case QT_CPU_NCHW8C: return (((n * (C / 8) + c / 8) * H + h) * W + w) * 8 + c % 8;
    case QT_CPU_NCHW16C: return (((n * (C / 16) + c / 16) * H + h) * W + w) * 16 + c % 16;
    default: return ((n * C + c) * H + h) * W + w;
    }
}

static const int all_layouts[] = {QT_CPU_NCHW, QT_CPU_NHWC, QT_CPU_NCHW8C, QT_CPU_NCHW16C};

QT_TEST(kernels_layout_reorder)
{
    struct rng r = {17};
    struct qt_cpu_ctx *ctx = new_ctx();
    if (!ctx) return 1;
    const int64_t shapes[][4] = {{2, 16, 3, 5}, {1, 32, 4, 4}, {3, 8, 1, 7}, {2, 24, 2, 3}};
    int bad = 0;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0] && !bad; si++) {
        const int64_t *dm = shapes[si], cnt = dm[0] * dm[1] * dm[2] * dm[3];
        float *x = rand_array(&r, cnt), *y = guarded(cnt), *back = guarded(cnt);
        for (int li = 0; li < 4 && !bad; li++) {
            const int l = all_layouts[li];
            const int fits = dm[1] % (l == QT_CPU_NCHW8C ? 8 : l == QT_CPU_NCHW16C ? 16 : 1) == 0;
            if (qt_cpu_layout_fits(l, dm[1]) != fits) {
                bad = qt_test_fail("layout %d, %lld channels: fits is wrong", l, (long long)dm[1]);
                break;
            }
            if (!fits) {
                if (qt_cpu_reorder(ctx, y, l, x, QT_CPU_NCHW, dm) == 0)
                    bad = qt_test_fail("layout %d accepted %lld channels", l, (long long)dm[1]);
                continue;
            }
            if (qt_cpu_reorder(ctx, y, l, x, QT_CPU_NCHW, dm) ||
                qt_cpu_reorder(ctx, back, QT_CPU_NCHW, y, l, dm)) {
                bad = qt_test_fail("layout %d: %s", l, qt_cpu_ctx_error(ctx));
                break;
            }
            for (int64_t n = 0; n < dm[0] && !bad; n++)
                for (int64_t c = 0; c < dm[1] && !bad; c++)
                    for (int64_t h = 0; h < dm[2] && !bad; h++)
                        for (int64_t w = 0; w < dm[3] && !bad; w++) {
                            const int64_t i = layout_offset(QT_CPU_NCHW, dm, n, c, h, w);
                            if (y[layout_offset(l, dm, n, c, h, w)] != x[i] || back[i] != x[i])
                                bad = qt_test_fail("layout %d, shape %lldx%lldx%lldx%lld: element "
                                                   "(%lld,%lld,%lld,%lld) misplaced", l,
                                                   (long long)dm[0], (long long)dm[1],
                                                   (long long)dm[2], (long long)dm[3],
                                                   (long long)n, (long long)c, (long long)h,
                                                   (long long)w);
                        }
            if (!bad && (!guard_intact(y, cnt) || !guard_intact(back, cnt)))
                bad = qt_test_fail("layout %d: write past the end", l);
        }
        free(x), free(y), free(back);
    }
    qt_cpu_ctx_free(ctx);
    return bad;
}

/* One case of conv2d_infer_cpu: x in layout xl, the fused steps of `post` (its sum given in
 * plain order in s, passed in layout sum_layout, as y itself when alias), against the plain
 * convolution ref (conv2d_forward_cpu) followed by the steps computed here. */
static int check_conv_infer(struct qt_cpu_ctx *ctx, const struct qt_conv2d_desc *d,
                            const float *x, const float *w, const float *b, const float *ref,
                            const float *s, int xl, int use_sum, int sum_layout, int alias,
                            int relu, const char *what)
{
    const int64_t xd[4] = {d->n, d->c, d->h, d->w}, yd[4] = {d->n, d->k, d->oh, d->ow};
    const int64_t nx = xd[0] * xd[1] * xd[2] * xd[3], ny = yd[0] * yd[1] * yd[2] * yd[3];
    float *xl_buf = guarded(nx), *y = guarded(ny), *sl = guarded(ny), *plain = guarded(ny);
    int bad = 0, yl = -2;
    if (qt_cpu_reorder(ctx, xl_buf, xl, x, QT_CPU_NCHW, xd) ||
        (use_sum && qt_cpu_reorder(ctx, alias ? y : sl, sum_layout, s, QT_CPU_NCHW, yd))) {
        bad = qt_test_fail("%s: reorder: %s", what, qt_cpu_ctx_error(ctx));
        goto out;
    }
    struct qt_conv2d_post post = {use_sum ? (alias ? y : sl) : NULL, sum_layout, relu};
    if (conv2d_infer_cpu(ctx, y, &yl, xl_buf, xl, w, b, d, &post)) {
        bad = qt_test_fail("%s: %s", what, qt_cpu_ctx_error(ctx));
        goto out;
    }
    if (!qt_cpu_layout_fits(yl, d->k) ||
        (use_sum && alias && ny > 0 && d->c > 0 && yl != sum_layout)) {
        bad = qt_test_fail("%s: result in layout %d", what, yl);
        goto out;
    }
    if (qt_cpu_reorder(ctx, plain, QT_CPU_NCHW, y, yl, yd)) {
        bad = qt_test_fail("%s: reorder back: %s", what, qt_cpu_ctx_error(ctx));
        goto out;
    }
    if (!guard_intact(y, ny)) {
        bad = qt_test_fail("%s: write past the end of y", what);
        goto out;
    }
    for (int64_t i = 0; i < ny && !bad; i++) {
        double want = (double)ref[i] + (use_sum ? s[i] : 0.0);
        if (relu && !(want > 0)) want = 0;
        if (!(fabs(plain[i] - want) <= 1e-5 * (fabs(ref[i]) + fabs(s[i]) + 1.0)))
            bad = qt_test_fail("%s: y[%lld] = %.7g, expected %.7g", what, (long long)i, plain[i],
                               want);
    }
out:
    free(xl_buf), free(y), free(sl), free(plain);
    return bad;
}

/* conv2d_infer_cpu in every input layout, with no fused step, Relu, a sum (in every layout,
 * given apart from y or as y itself) and a sum then Relu; a grouped convolution, 3 input
 * channels, a strided 1x1 and one without input channels. */
QT_TEST(kernels_conv2d_infer_layouts)
{
    struct rng r = {23};
    struct qt_cpu_ctx *ctx = new_ctx();
    if (!ctx) return 1;
    const struct qt_conv2d_desc cases[] = {
        conv_desc(2, 16, 6, 6, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1),
        conv_desc(2, 3, 7, 7, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1),
        conv_desc(2, 32, 8, 8, 64, 1, 1, 2, 2, 1, 1, 0, 0, 0, 0, 1),
        conv_desc(1, 16, 5, 5, 24, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 4),
        conv_desc(2, 0, 4, 4, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1),
    };
    int bad = 0;
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0] && !bad; ci++) {
        const struct qt_conv2d_desc *d = &cases[ci];
        const int64_t nx = (int64_t)d->n * d->c * d->h * d->w;
        const int64_t ny = (int64_t)d->n * d->k * d->oh * d->ow;
        float *x = rand_array(&r, nx), *b = rand_array(&r, d->k), *s = rand_array(&r, ny);
        float *w = rand_array(&r, (int64_t)d->k * (d->c / d->group) * d->kh * d->kw);
        float *ref = guarded(ny);
        char desc[200];
        describe(desc, sizeof desc, d);
        if (conv2d_forward_cpu(ctx, ref, x, w, b, d))
            bad = qt_test_fail("%s: %s", desc, qt_cpu_ctx_error(ctx));
        for (int xi = 0; xi < 4 && !bad; xi++) {
            const int xl = all_layouts[xi];
            if (!qt_cpu_layout_fits(xl, d->c)) continue;
            for (int step = 0; step < 4 && !bad; step++) {
                const int use_sum = step >= 2, relu = step % 2;
                for (int si = 0; si < (use_sum ? 4 : 1) && !bad; si++) {
                    const int sl = all_layouts[si];
                    if (!qt_cpu_layout_fits(sl, d->k)) continue;
                    for (int alias = 0; alias < 1 + use_sum && !bad; alias++) {
                        char what[300];
                        snprintf(what, sizeof what,
                                 "%s, x layout %d, sum %d (layout %d%s), relu %d", desc, xl,
                                 use_sum, sl, alias ? ", as y" : "", relu);
                        bad = check_conv_infer(ctx, d, x, w, b, ref, s, xl, use_sum, sl, alias,
                                               relu, what);
                    }
                }
            }
        }
        free(x), free(b), free(s), free(w), free(ref);
    }
    qt_cpu_ctx_free(ctx);
    return bad;
}

/* ---- pools ---- */

static double naive_pool(const float *plane, const struct qt_conv2d_desc *d, int oh, int ow,
                         int max, int count_include_pad)
{
    double m = -INFINITY, s = 0.0;
    int valid = 0, padded = 0;
    for (int i = 0; i < d->kh; i++)
        for (int j = 0; j < d->kw; j++) {
            const int ih = oh * d->sh - d->pt + i * d->dh, iw = ow * d->sw - d->pl + j * d->dw;
            if (ih < d->h + d->pb && iw < d->w + d->pr) padded++;
            if (ih < 0 || ih >= d->h || iw < 0 || iw >= d->w) continue;
            const double v = plane[ih * d->w + iw];
            m = v > m ? v : m;
            s += v;
            valid++;
        }
    if (max) return m;
    const int cnt = count_include_pad ? padded : valid;
    return cnt ? s / cnt : 0.0;
}

/* kind: 0 max, 1 average excluding padding, 2 average including padding. */
static int check_pool(const struct qt_conv2d_desc *d, int kind, struct rng *r, const char *what)
{
    const int64_t nx = (int64_t)d->n * d->c * d->h * d->w;
    const int64_t ny = (int64_t)d->n * d->c * d->oh * d->ow;
    float *x = rand_array(r, nx);
    int bad = 0;
    const int saved = omp_get_max_threads();
    for (int t = 0; t < NTEAMS && !bad; t++) {
        omp_set_num_threads(team_sizes[t]);
        float *y = guarded(ny);
        if (kind == 0)
            maxpool2d_forward_cpu(y, x, d);
        else
            avgpool2d_forward_cpu(y, x, d, kind == 2);
        if (!guard_intact(y, ny)) {
            qt_test_fail("%s: write past the end of y", what);
            bad = 1;
        }
        for (int64_t p = 0; p < (int64_t)d->n * d->c && !bad; p++)
            for (int oh = 0; oh < d->oh && !bad; oh++)
                for (int ow = 0; ow < d->ow && !bad; ow++) {
                    const double ref =
                        naive_pool(x + p * d->h * d->w, d, oh, ow, kind == 0, kind == 2);
                    const double got = y[(p * d->oh + oh) * d->ow + ow];
                    if (!(fabs(got - ref) <= 1e-6 * (1 + fabs(ref))) &&
                        !(isinf(ref) && got == ref)) {
                        qt_test_fail("%s kind %d: threads %d: y[%lld,%d,%d] = %.7g, expected %.7g",
                                     what, kind, team_sizes[t], (long long)p, oh, ow, got, ref);
                        bad = 1;
                    }
                }
        free(y);
    }
    omp_set_num_threads(saved);
    free(x);
    return bad;
}

/* A pool descriptor; ceil rounds the output size up (the last window may then run past the
 * bottom/right padding). */
static struct qt_conv2d_desc pool_desc(int n, int c, int h, int w, int kh, int kw, int sh, int sw,
                                       int dh, int dw, int pt, int pl, int pb, int pr, int ceil)
{
    struct qt_conv2d_desc d = {n, c, h, w, c, 0, 0, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, 1};
    d.oh = out_size(h, kh, sh, dh, pt, pb);
    d.ow = out_size(w, kw, sw, dw, pl, pr);
    if (ceil) {
        const int eh = (kh - 1) * dh + 1, ew = (kw - 1) * dw + 1;
        d.oh = (h + pt + pb - eh + sh - 1) / sh + 1;
        d.ow = (w + pl + pr - ew + sw - 1) / sw + 1;
        /* As in ONNX and PyTorch, the last window must start inside the input or the
         * leading padding. */
        if ((d.oh - 1) * sh >= h + pt) d.oh--;
        if ((d.ow - 1) * sw >= w + pl) d.ow--;
    }
    return d;
}

QT_TEST(kernels_pools)
{
    struct rng r = {4};
    const struct qt_conv2d_desc cases[] = {
        pool_desc(2, 3, 8, 8, 2, 2, 2, 2, 1, 1, 0, 0, 0, 0, 0),
        pool_desc(2, 3, 112, 112, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 0), /* ResNet-18 stem */
        pool_desc(1, 5, 7, 9, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1),
        pool_desc(3, 2, 5, 5, 2, 2, 2, 2, 1, 1, 0, 0, 0, 0, 1),  /* ceil, no pads */
        pool_desc(3, 2, 6, 7, 3, 2, 2, 3, 1, 1, 1, 0, 0, 0, 1),  /* ceil, asymmetric */
        pool_desc(2, 2, 6, 7, 3, 2, 2, 2, 1, 1, 0, 1, 2, 1, 0),  /* ceil as extra end pad */
        pool_desc(2, 2, 9, 10, 3, 3, 1, 2, 2, 2, 2, 1, 2, 1, 0), /* dilation */
        pool_desc(2, 3, 4, 4, 4, 4, 1, 1, 1, 1, 0, 0, 0, 0, 0),  /* global-sized window */
        pool_desc(1, 1, 1, 1, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 0),
        pool_desc(1, 2, 3, 4500, 2, 3, 1, 2, 1, 1, 0, 1, 1, 1, 0), /* rows past the stack row */
        pool_desc(1, 2, 3, 4500, 2, 3, 1, 2, 1, 2, 0, 1, 1, 1, 1),
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct qt_conv2d_desc *d = &cases[i];
        char what[200];
        snprintf(what, sizeof what, "pool case %zu (%dx%d -> %dx%d)", i, d->h, d->w, d->oh, d->ow);
        for (int kind = 0; kind < 3; kind++)
            if (check_pool(d, kind, &r, what)) return 1;
    }
    for (int it = 0; it < 200; it++) {
        const int kh = rng_int(&r, 1, 4), kw = rng_int(&r, 1, 4);
        const int dh = rng_int(&r, 0, 4) ? 1 : 2, dw = rng_int(&r, 0, 4) ? 1 : 2;
        /* Pads stay below the window extent so that every window sees some input. */
        const int pt = rng_int(&r, 0, kh - 1), pl = rng_int(&r, 0, kw - 1);
        const int pb = rng_int(&r, 0, kh - 1), pr = rng_int(&r, 0, kw - 1);
        struct qt_conv2d_desc d = pool_desc(
            rng_int(&r, 1, 3), rng_int(&r, 1, 4), rng_int(&r, 1, 17), rng_int(&r, 1, 17), kh, kw,
            rng_int(&r, 1, 3), rng_int(&r, 1, 3), dh, dw, pt, pl, pb, pr, rng_int(&r, 0, 1));
        if (d.oh <= 0 || d.ow <= 0) continue;
        char what[200];
        snprintf(what, sizeof what, "random pool %d (%dx%d k%dx%d s%dx%d d%dx%d p%d,%d,%d,%d)", it,
                 d.h, d.w, kh, kw, d.sh, d.sw, dh, dw, pt, pl, pb, pr);
        for (int kind = 0; kind < 3; kind++)
            if (check_pool(&d, kind, &r, what)) return 1;
    }
    return 0;
}

QT_TEST(kernels_pools_known_values)
{
    /* One row 1..5, window 2, stride 2, ceil mode: windows {1,2}, {3,4}, {5}. The last
     * window overhangs the input with no padding there, so it averages one value either way. */
    const float x[5] = {1, 2, 3, 4, 5};
    struct qt_conv2d_desc d = {1, 1, 1, 5, 1, 1, 3, 1, 2, 1, 2, 1, 1, 0, 0, 0, 0, 1};
    float y[3];
    avgpool2d_forward_cpu(y, x, &d, 1);
    QT_CHECK_NEAR(y[0], 1.5, 1e-6);
    QT_CHECK_NEAR(y[2], 5.0, 1e-6);
    maxpool2d_forward_cpu(y, x, &d);
    QT_CHECK_NEAR(y[1], 4.0, 1e-6);
    QT_CHECK_NEAR(y[2], 5.0, 1e-6);
    /* The same with one column of end padding: it counts when padding is included. */
    d.pr = 1;
    avgpool2d_forward_cpu(y, x, &d, 1);
    QT_CHECK_NEAR(y[2], 2.5, 1e-6);
    avgpool2d_forward_cpu(y, x, &d, 0);
    QT_CHECK_NEAR(y[2], 5.0, 1e-6);
    /* Negative inputs with padding: padding never wins a max. */
    const float neg[4] = {-4, -3, -2, -1};
    struct qt_conv2d_desc e = {1, 1, 2, 2, 1, 2, 2, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    float z[4];
    maxpool2d_forward_cpu(z, neg, &e);
    QT_CHECK_NEAR(z[0], -1.0, 0);
    QT_CHECK_NEAR(z[3], -1.0, 0);
    avgpool2d_forward_cpu(z, neg, &e, 1);
    QT_CHECK_NEAR(z[0], -10.0 / 9.0, 1e-6);
    avgpool2d_forward_cpu(z, neg, &e, 0);
    QT_CHECK_NEAR(z[0], -2.5, 1e-6);
    return 0;
}

QT_TEST(kernels_global_avgpool)
{
    struct rng r = {5};
    const int64_t shapes[][2] = {{1, 1}, {3, 7}, {128 * 64, 64}, {5, 1000}, {40000, 1}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t nc = shapes[s][0], hw = shapes[s][1];
        float *x = rand_array(&r, nc * hw), *y = guarded(nc);
        global_avgpool_forward_cpu(y, x, nc, hw);
        QT_CHECK(guard_intact(y, nc));
        for (int64_t p = 0; p < nc; p++) {
            double ref = 0;
            for (int64_t q = 0; q < hw; q++) ref += x[p * hw + q];
            QT_CHECK_NEAR(y[p], ref / hw, 1e-6);
        }
        free(x), free(y);
    }
    return 0;
}

/* ---- batchnorm ---- */

QT_TEST(kernels_batchnorm_infer)
{
    struct rng r = {6};
    const int64_t shapes[][3] = {{1, 1, 1}, {2, 3, 5}, {128, 16, 1024}, {4, 64, 1}, {3, 10, 49}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t n = shapes[s][0], c = shapes[s][1], hw = shapes[s][2], len = n * c * hw;
        float *x = rand_array(&r, len), *y = guarded(len);
        float *scale = rand_array(&r, c), *bias = rand_array(&r, c), *mean = rand_array(&r, c);
        float *var = rand_array(&r, c);
        for (int64_t i = 0; i < c; i++) var[i] = fabsf(var[i]) + 0.01f;
        const float eps = 1e-5f;
        batchnorm_infer_forward_cpu(y, x, scale, bias, mean, var, eps, n, c, hw);
        QT_CHECK(guard_intact(y, len));
        for (int64_t i = 0; i < len; i++) {
            const int64_t ch = (i / hw) % c;
            const double ref =
                ((double)x[i] - mean[ch]) / sqrt((double)var[ch] + eps) * scale[ch] + bias[ch];
            QT_CHECK_NEAR(y[i], ref, 2e-5 * (1 + fabs(ref)));
        }
        /* In place. */
        batchnorm_infer_forward_cpu(x, x, scale, bias, mean, var, eps, n, c, hw);
        for (int64_t i = 0; i < len; i++) QT_CHECK(x[i] == y[i]);
        free(x), free(y), free(scale), free(bias), free(mean), free(var);
    }
    return 0;
}

/* ---- gemm ---- */

QT_TEST(kernels_gemm)
{
    struct rng r = {7};
    const int64_t dims[][3] = {{1, 1, 1},    {3, 5, 7},     {17, 1, 9},    {1, 13, 6},
                               {64, 10, 64}, {128, 10, 64}, {33, 65, 129}, {4, 3, 0}};
    /* C forms: none, scalar, row vector [N], column [M, 1], full [M, N]. */
    for (size_t s = 0; s < sizeof dims / sizeof dims[0]; s++) {
        const int64_t m = dims[s][0], n = dims[s][1], k = dims[s][2];
        float *a = rand_array(&r, m * k), *b = rand_array(&r, k * n);
        float *cfull = rand_array(&r, m * n);
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (int cf = 0; cf < 5; cf++) {
                    const float alpha = cf % 2 ? 0.75f : 1.0f, beta = cf == 3 ? 1.0f : -0.5f;
                    const int64_t rs[5] = {0, 0, 0, 1, n}, cs[5] = {0, 0, 1, 0, 1};
                    const float *c = cf ? cfull : NULL;
                    float *y = guarded(m * n);
                    gemm_forward_cpu(y, a, b, c, m, n, k, ta, tb, alpha, beta, rs[cf], cs[cf]);
                    QT_CHECK(guard_intact(y, m * n));
                    for (int64_t i = 0; i < m; i++)
                        for (int64_t j = 0; j < n; j++) {
                            double ref = 0, mag = 0;
                            for (int64_t p = 0; p < k; p++) {
                                const double av = ta ? a[p * m + i] : a[i * k + p];
                                const double bv = tb ? b[j * k + p] : b[p * n + j];
                                ref += av * bv;
                                mag += fabs(av * bv);
                            }
                            ref *= alpha;
                            if (c) ref += beta * (double)c[i * rs[cf] + j * cs[cf]];
                            if (!(fabs(y[i * n + j] - ref) <= 1e-5 * (mag + 1)))
                                return qt_test_fail(
                                    "gemm m%lld n%lld k%lld ta%d tb%d c%d: y[%lld,%lld] "
                                    "= %.7g, expected %.7g",
                                    (long long)m, (long long)n, (long long)k, ta, tb, cf,
                                    (long long)i, (long long)j, y[i * n + j], ref);
                        }
                    free(y);
                }
        free(a), free(b), free(cfull);
    }
    return 0;
}

/* ---- elementwise ---- */

QT_TEST(kernels_relu_clip)
{
    struct rng r = {8};
    const int64_t lens[] = {1, 7, 100003};
    for (size_t s = 0; s < sizeof lens / sizeof lens[0]; s++) {
        const int64_t n = lens[s];
        float *x = rand_array(&r, n), *y = guarded(n);
        relu_forward_cpu(y, x, n);
        QT_CHECK(guard_intact(y, n));
        for (int64_t i = 0; i < n; i++) QT_CHECK(y[i] == (x[i] > 0 ? x[i] : 0.0f));
        clip_forward_cpu(y, x, -0.25f, 0.5f, n);
        QT_CHECK(guard_intact(y, n));
        for (int64_t i = 0; i < n; i++)
            QT_CHECK(y[i] == (x[i] < -0.25f ? -0.25f : x[i] > 0.5f ? 0.5f : x[i]));
        free(x), free(y);
    }
    const float nanx[2] = {NAN, -1.0f};
    float nany[2];
    clip_forward_cpu(nany, nanx, 0.0f, 6.0f, 2);
    QT_CHECK(isnan(nany[0]));
    QT_CHECK(nany[1] == 0.0f);
    return 0;
}

/* Row-major strides of a tensor of shape `in` (rank nin) read through an output of rank
 * nd, right-aligned, with stride 0 on broadcast dimensions. */
static void broadcast_strides(int64_t *st, const int64_t *in, int nin, int nd)
{
    int64_t acc = 1;
    for (int i = nd - 1; i >= 0; i--) {
        const int k = i - (nd - nin);
        if (k < 0 || in[k] == 1) {
            st[i] = 0;
        } else {
            st[i] = acc;
        }
        if (k >= 0) acc *= in[k];
    }
}

QT_TEST(kernels_binary_broadcast)
{
    struct rng r = {9};
    struct {
        int nd, na, nb;
        int64_t out[5], a[5], b[5];
    } cases[] = {
        {1, 1, 1, {7}, {7}, {7}},
        {1, 1, 1, {7}, {7}, {1}},
        {0, 0, 0, {0}, {0}, {0}},
        {4, 4, 1, {2, 3, 4, 5}, {2, 3, 4, 5}, {5}},
        {4, 4, 3, {2, 3, 4, 5}, {2, 3, 4, 5}, {3, 1, 1}},                   /* per-channel bias */
        {4, 4, 4, {128, 16, 32, 32}, {128, 16, 32, 32}, {128, 16, 32, 32}}, /* residual add */
        {4, 2, 4, {2, 3, 4, 5}, {4, 1}, {2, 1, 1, 5}},
        {3, 3, 3, {3, 1, 4}, {3, 1, 1}, {1, 1, 4}},
        {5, 5, 2, {2, 1, 3, 1, 6}, {2, 1, 3, 1, 1}, {1, 6}},
        {2, 2, 2, {70000, 2}, {70000, 1}, {1, 2}},
        {1, 1, 1, {100000}, {1}, {100000}},
    };
    for (size_t s = 0; s < sizeof cases / sizeof cases[0]; s++) {
        const int nd = cases[s].nd;
        int64_t total = 1, na = 1, nb = 1, sa[5], sb[5];
        for (int i = 0; i < nd; i++) total *= cases[s].out[i];
        for (int i = 0; i < cases[s].na; i++) na *= cases[s].a[i];
        for (int i = 0; i < cases[s].nb; i++) nb *= cases[s].b[i];
        broadcast_strides(sa, cases[s].a, cases[s].na, nd);
        broadcast_strides(sb, cases[s].b, cases[s].nb, nd);
        float *a = rand_array(&r, na), *b = rand_array(&r, nb), *y = guarded(total);
        for (int64_t i = 0; i < nb; i++) b[i] = b[i] + (b[i] >= 0 ? 0.5f : -0.5f); /* for DIV */
        for (int op = QT_BIN_ADD; op <= QT_BIN_DIV; op++) {
            binary_forward_cpu(y, a, b, (enum qt_binop)op, cases[s].out, sa, sb, nd);
            QT_CHECK(guard_intact(y, total));
            for (int64_t e = 0; e < total; e++) {
                int64_t rem = e, ia = 0, ib = 0;
                for (int i = nd - 1; i >= 0; i--) {
                    const int64_t idx = rem % cases[s].out[i];
                    rem /= cases[s].out[i];
                    ia += idx * sa[i];
                    ib += idx * sb[i];
                }
                const double u = a[ia], v = b[ib];
                const double ref = op == QT_BIN_ADD   ? u + v
                                   : op == QT_BIN_SUB ? u - v
                                   : op == QT_BIN_MUL ? u * v
                                                      : u / v;
                if (!(fabs(y[e] - ref) <= 1e-6 * (1 + fabs(ref))))
                    return qt_test_fail("binary case %zu op %d: y[%lld] = %.7g, expected %.7g", s,
                                        op, (long long)e, y[e], ref);
            }
        }
        free(a), free(b), free(y);
    }
    return 0;
}

/* ---- softmax and reduce ---- */

QT_TEST(kernels_softmax)
{
    struct rng r = {10};
    const int64_t shapes[][3] = {{1, 1, 1}, {4, 10, 1},  {128, 10, 1},
                                 {3, 7, 5}, {2, 5, 300}, {1, 1000, 1}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t outer = shapes[s][0], axis = shapes[s][1], inner = shapes[s][2];
        const int64_t len = outer * axis * inner;
        float *x = rand_array(&r, len), *y = guarded(len);
        for (int64_t i = 0; i < len; i++) x[i] *= 30.0f; /* large logits: needs the max shift */
        softmax_forward_cpu(y, x, outer, axis, inner);
        QT_CHECK(guard_intact(y, len));
        for (int64_t o = 0; o < outer; o++)
            for (int64_t j = 0; j < inner; j++) {
                double m = -INFINITY, sum = 0;
                for (int64_t i = 0; i < axis; i++) {
                    const double v = x[(o * axis + i) * inner + j];
                    m = v > m ? v : m;
                }
                for (int64_t i = 0; i < axis; i++) sum += exp(x[(o * axis + i) * inner + j] - m);
                for (int64_t i = 0; i < axis; i++) {
                    const int64_t at = (o * axis + i) * inner + j;
                    const double ref = exp(x[at] - m) / sum;
                    QT_CHECK_NEAR(y[at], ref, 1e-6 + 1e-5 * ref);
                }
            }
        free(x), free(y);
    }
    return 0;
}

QT_TEST(kernels_reduce_mean)
{
    struct rng r = {11};
    const int64_t shapes[][3] = {{1, 1, 1},    {4, 10, 1},     {3, 7, 5},
                                 {2, 64, 300}, {1, 100000, 1}, {50000, 1, 1}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t outer = shapes[s][0], red = shapes[s][1], inner = shapes[s][2];
        float *x = rand_array(&r, outer * red * inner), *y = guarded(outer * inner);
        reduce_mean_forward_cpu(y, x, outer, red, inner);
        QT_CHECK(guard_intact(y, outer * inner));
        for (int64_t o = 0; o < outer; o++)
            for (int64_t j = 0; j < inner; j++) {
                double sum = 0;
                for (int64_t i = 0; i < red; i++) sum += x[(o * red + i) * inner + j];
                QT_CHECK_NEAR(y[o * inner + j], sum / red, 1e-6);
            }
        free(x), free(y);
    }
    return 0;
}

QT_TEST(kernels_threads)
{
    const int saved = omp_get_max_threads();
    omp_set_num_threads(3);
    QT_CHECK(qt_cpu_threads() == 3);
    omp_set_num_threads(saved);
    QT_CHECK(qt_cpu_threads() >= 1);
    return 0;
}

/* Max pooling lets NaN through whatever its place in the window (as its backward and PyTorch
 * do); both the row path and the per-window path are taken. */
QT_TEST(kernels_maxpool_nan_wins)
{
    for (int wide = 0; wide < 2; wide++) {
        const int w = wide ? 5000 : 4; /* rows longer than the padded-row buffer go direct */
        struct qt_conv2d_desc d = {1, 1, 2, w, 1, 1, w / 2, 2, 2, 2, 2, 1, 1, 0, 0, 0, 0, 1};
        float *x = calloc((size_t)2 * w, sizeof(float)), *y = calloc((size_t)w, sizeof(float));
        QT_CHECK(x && y);
        for (int i = 0; i < 2 * w; i++) x[i] = (float)(i % 7);
        x[1] = NAN;         /* second tap of window 0, first row */
        x[w + 2] = NAN;     /* first tap of window 1, second row */
        maxpool2d_forward_cpu(y, x, &d);
        const int ok = isnan(y[0]) && isnan(y[1]) && (w / 2 < 3 || !isnan(y[2]));
        free(x);
        free(y);
        QT_CHECK(ok);
    }
    return 0;
}
