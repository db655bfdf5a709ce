/* Finite-difference checks of every CPU backward kernel: with L = sum(r * y) accumulated in
 * double for a fixed random r, central differences of L in each input element are compared
 * with the kernel's gradient for dy = r. Inputs near a kink (ReLU at 0, Clip bounds, max-pool
 * ties) are kept away from it. Also checks the accumulate (+=) mode of each kernel. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/cpu/cpu.h"
#include "harness.h"

struct fd_case {
    int nin;
    float *in[4];
    int64_t size[4];
    int64_t ny;
    /* Forward: y from the inputs. */
    void (*fwd)(const struct fd_case *c, float *y);
    /* Backward: grads of each input (d[k] may be NULL) for dy, assigned or accumulated. */
    void (*bwd)(const struct fd_case *c, float **d, const float *dy, int acc);
    const void *ctx;
};

static unsigned seed_state = 1234;

static float urand(float lo, float hi)
{
    return lo + (hi - lo) * ((float)rand_r(&seed_state) / (float)RAND_MAX);
}

static void fill(float *p, int64_t n, float lo, float hi)
{
    for (int64_t i = 0; i < n; i++) p[i] = urand(lo, hi);
}

static double loss_of(const struct fd_case *c, const float *r, float *y)
{
    c->fwd(c, y);
    double l = 0;
    for (int64_t i = 0; i < c->ny; i++) l += (double)r[i] * y[i];
    return l;
}

/* Compares analytic and numerical gradients of every input element; then checks that the
 * accumulate mode adds to what is there. */
static int fd_check(const char *what, struct fd_case *c, double h, double tol)
{
    float *r = malloc(sizeof(float) * c->ny), *y = malloc(sizeof(float) * c->ny);
    fill(r, c->ny, -1, 1);
    float *d[4] = {0}, *d2[4] = {0};
    for (int k = 0; k < c->nin; k++) {
        d[k] = malloc(sizeof(float) * c->size[k]);
        d2[k] = malloc(sizeof(float) * c->size[k]);
        for (int64_t i = 0; i < c->size[k]; i++) d2[k][i] = 0.5f;
    }
    c->fwd(c, y);
    c->bwd(c, d, r, 0);
    c->bwd(c, d2, r, 1);
    int rc = 0;
    for (int k = 0; k < c->nin && !rc; k++) {
        for (int64_t i = 0; i < c->size[k] && !rc; i++) {
            float keep = c->in[k][i];
            c->in[k][i] = keep + (float)h;
            double lp = loss_of(c, r, y);
            c->in[k][i] = keep - (float)h;
            double lm = loss_of(c, r, y);
            c->in[k][i] = keep;
            double num = (lp - lm) / (2 * h), ana = d[k][i];
            if (!(fabs(num - ana) <= tol * (1 + fabs(num))))
                rc = qt_test_fail("%s: input %d element %lld: analytic %.6g, numerical %.6g", what, k,
                                  (long long)i, ana, num);
            if (!rc && !(fabs(d2[k][i] - 0.5 - ana) <= 1e-5 * (1 + fabs(ana))))
                rc = qt_test_fail("%s: input %d element %lld: accumulate mode gave %.6g, expected %.6g",
                                  what, k, (long long)i, d2[k][i], 0.5 + ana);
        }
    }
    for (int k = 0; k < c->nin; k++) {
        free(d[k]);
        free(d2[k]);
    }
    free(r);
    free(y);
    return rc;
}

/* Keeps values at least `gap` away from each point in pts. */
static void avoid(float *p, int64_t n, const float *pts, int npts, float gap)
{
    for (int64_t i = 0; i < n; i++)
        for (int j = 0; j < npts; j++)
            if (fabsf(p[i] - pts[j]) < gap) p[i] = pts[j] + (p[i] < pts[j] ? -gap : gap);
}

/* ---- ReLU, Clip ---- */

static void relu_f(const struct fd_case *c, float *y) { relu_forward_cpu(y, c->in[0], c->size[0]); }
static void relu_b(const struct fd_case *c, float **d, const float *dy, int acc)
{
    float *y = malloc(sizeof(float) * c->ny);
    relu_forward_cpu(y, c->in[0], c->ny);
    relu_backward_cpu(d[0], dy, y, c->ny, acc);
    free(y);
}

QT_TEST(grad_relu)
{
    float x[200];
    fill(x, 200, -2, 2);
    float zero = 0;
    avoid(x, 200, &zero, 1, 0.05f);
    struct fd_case c = {1, {x}, {200}, 200, relu_f, relu_b, NULL};
    return fd_check("relu", &c, 1e-3, 1e-3);
}

static void clip_f(const struct fd_case *c, float *y) { clip_forward_cpu(y, c->in[0], -0.5f, 0.7f, c->ny); }
static void clip_b(const struct fd_case *c, float **d, const float *dy, int acc)
{
    clip_backward_cpu(d[0], dy, c->in[0], -0.5f, 0.7f, c->ny, acc);
}

QT_TEST(grad_clip)
{
    float x[200];
    fill(x, 200, -2, 2);
    const float pts[2] = {-0.5f, 0.7f};
    avoid(x, 200, pts, 2, 0.05f);
    struct fd_case c = {1, {x}, {200}, 200, clip_f, clip_b, NULL};
    return fd_check("clip", &c, 1e-3, 1e-3);
}

/* ---- Binary ops with broadcasting: a [2,3,4] op b [3,1] ---- */

struct bin_ctx {
    enum qt_binop op;
    int64_t shape[3], sa[3], sb[3];
};

static void bin_f(const struct fd_case *c, float *y)
{
    const struct bin_ctx *b = c->ctx;
    binary_forward_cpu(y, c->in[0], c->in[1], b->op, b->shape, b->sa, b->sb, 3);
}
static void bin_b(const struct fd_case *c, float **d, const float *dy, int acc)
{
    const struct bin_ctx *b = c->ctx;
    binary_backward_cpu(d[0], d[1], dy, c->in[0], c->in[1], b->op, b->shape, b->sa, b->sb, 3, acc, acc);
}

QT_TEST(grad_binary_broadcast)
{
    const char *names[] = {"add", "sub", "mul", "div"};
    for (int op = 0; op < 4; op++) {
        float a[24], b[3];
        fill(a, 24, -1, 1);
        fill(b, 3, 0.5f, 1.5f);
        struct bin_ctx bc = {(enum qt_binop)op, {2, 3, 4}, {12, 4, 1}, {0, 1, 0}};
        struct fd_case c = {2, {a, b}, {24, 3}, 24, bin_f, bin_b, &bc};
        if (fd_check(names[op], &c, 1e-3, 2e-3)) return 1;
        /* Same shapes (the residual Add of a ResNet). */
        float a2[24], b2[24];
        fill(a2, 24, -1, 1);
        fill(b2, 24, 0.5f, 1.5f);
        struct bin_ctx same = {(enum qt_binop)op, {2, 3, 4}, {12, 4, 1}, {12, 4, 1}};
        struct fd_case c2 = {2, {a2, b2}, {24, 24}, 24, bin_f, bin_b, &same};
        if (fd_check(names[op], &c2, 1e-3, 2e-3)) return 1;
    }
    return 0;
}

/* ---- BatchNorm training: x [3,4,5], scale [4], bias [4] ---- */

static void bn_f(const struct fd_case *c, float *y)
{
    float mean[4], invstd[4], rm[4] = {0}, rv[4] = {1, 1, 1, 1};
    batchnorm_train_forward_cpu(y, mean, invstd, rm, rv, c->in[0], c->in[1], c->in[2], 1e-5f, 0.1f, 3, 4, 5);
}
static void bn_b(const struct fd_case *c, float **d, const float *dy, int acc)
{
    float mean[4], invstd[4], rm[4] = {0}, rv[4] = {1, 1, 1, 1}, y[60];
    batchnorm_train_forward_cpu(y, mean, invstd, rm, rv, c->in[0], c->in[1], c->in[2], 1e-5f, 0.1f, 3, 4, 5);
    batchnorm_backward_cpu(d[0], d[1], d[2], dy, c->in[0], c->in[1], mean, invstd, 3, 4, 5, acc, acc, acc);
}

QT_TEST(grad_batchnorm_train)
{
    float x[60], s[4], b[4];
    fill(x, 60, -2, 3);
    fill(s, 4, 0.5f, 2);
    fill(b, 4, -1, 1);
    struct fd_case c = {3, {x, s, b}, {60, 4, 4}, 60, bn_f, bn_b, NULL};
    if (fd_check("batchnorm", &c, 1e-3, 3e-3)) return 1;
    /* Running statistics: PyTorch's rule with the unbiased variance. */
    float y[60], mean[4], invstd[4], rm[4] = {0.5f, 0, 0, 0}, rv[4] = {2, 1, 1, 1};
    batchnorm_train_forward_cpu(y, mean, invstd, rm, rv, x, s, b, 1e-5f, 0.1f, 3, 4, 5);
    double m0 = 0, v0 = 0;
    for (int i = 0; i < 3; i++)
        for (int q = 0; q < 5; q++) m0 += x[i * 20 + q];
    m0 /= 15;
    for (int i = 0; i < 3; i++)
        for (int q = 0; q < 5; q++) v0 += (x[i * 20 + q] - m0) * (x[i * 20 + q] - m0);
    QT_CHECK_NEAR(rm[0], 0.9 * 0.5 + 0.1 * m0, 1e-5);
    QT_CHECK_NEAR(rv[0], 0.9 * 2 + 0.1 * v0 / 14, 1e-5);
    QT_CHECK_NEAR(invstd[0], 1 / sqrt(v0 / 15 + 1e-5), 1e-4);
    return 0;
}

/* ---- Pools: x [2,2,7,6] ---- */

static void maxpool_f(const struct fd_case *c, float *y) { maxpool2d_forward_cpu(y, c->in[0], c->ctx); }
static void maxpool_b(const struct fd_case *c, float **d, const float *dy, int acc)
{
    maxpool2d_backward_cpu(d[0], dy, c->in[0], c->ctx, acc);
}
static void avgpool_f(const struct fd_case *c, float *y) { avgpool2d_forward_cpu(y, c->in[0], c->ctx, 1); }
static void avgpool_b(const struct fd_case *c, float **d, const float *dy, int acc)
{
    avgpool2d_backward_cpu(d[0], dy, c->ctx, 1, acc);
}
static void avgpool0_f(const struct fd_case *c, float *y) { avgpool2d_forward_cpu(y, c->in[0], c->ctx, 0); }
static void avgpool0_b(const struct fd_case *c, float **d, const float *dy, int acc)
{
    avgpool2d_backward_cpu(d[0], dy, c->ctx, 0, acc);
}
static void gap_f(const struct fd_case *c, float *y) { global_avgpool_forward_cpu(y, c->in[0], 4, 42); }
static void gap_b(const struct fd_case *c, float **d, const float *dy, int acc)
{
    global_avgpool_backward_cpu(d[0], dy, 4, 42, acc);
}

QT_TEST(grad_pools)
{
    /* Distinct values 0.01 apart (shuffled) keep max-pool windows free of ties. */
    float x[168];
    for (int i = 0; i < 168; i++) x[i] = 0.01f * i - 0.8f;
    for (int i = 167; i > 0; i--) {
        int j = rand_r(&seed_state) % (i + 1);
        float t = x[i];
        x[i] = x[j];
        x[j] = t;
    }
    /* 3x3 window, stride 2, pads 1/1/2/1, ceil-like extent, dilation 1; and a dilated one. */
    struct qt_conv2d_desc d1 = {2, 2, 7, 6, 2, 4, 3, 3, 3, 2, 2, 1, 1, 1, 1, 2, 1, 1};
    struct qt_conv2d_desc d2 = {2, 2, 7, 6, 2, 3, 4, 2, 2, 2, 1, 2, 2, 0, 0, 0, 0, 1};
    const struct qt_conv2d_desc *ds[2] = {&d1, &d2};
    for (int k = 0; k < 2; k++) {
        int64_t ny = 2 * 2 * ds[k]->oh * ds[k]->ow;
        struct fd_case m = {1, {x}, {168}, ny, maxpool_f, maxpool_b, ds[k]};
        if (fd_check("maxpool", &m, 1e-3, 1e-3)) return 1;
        struct fd_case a = {1, {x}, {168}, ny, avgpool_f, avgpool_b, ds[k]};
        if (fd_check("avgpool count_include_pad", &a, 1e-3, 1e-3)) return 1;
        struct fd_case a0 = {1, {x}, {168}, ny, avgpool0_f, avgpool0_b, ds[k]};
        if (fd_check("avgpool", &a0, 1e-3, 1e-3)) return 1;
    }
    struct fd_case g = {1, {x}, {168}, 4, gap_f, gap_b, NULL};
    return fd_check("global avgpool", &g, 1e-3, 1e-3);
}

/* ---- Gemm: Y[3,4] = alpha op(A) op(B) + beta C, K = 5 ---- */

struct gemm_ctx {
    int ta, tb;
    int64_t c_rs, c_cs, c_rows, c_cols;
};

static void gemm_f(const struct fd_case *c, float *y)
{
    const struct gemm_ctx *g = c->ctx;
    gemm_forward_cpu(y, c->in[0], c->in[1], c->in[2], 3, 4, 5, g->ta, g->tb, 0.7f, 1.3f, g->c_rs, g->c_cs);
}
static void gemm_b(const struct fd_case *c, float **d, const float *dy, int acc)
{
    const struct gemm_ctx *g = c->ctx;
    gemm_backward_cpu(d[0], d[1], d[2], dy, c->in[0], c->in[1], 3, 4, 5, g->ta, g->tb, 0.7f, 1.3f,
                      g->c_rs, g->c_cs, g->c_rows, g->c_cols, acc, acc, acc);
}

QT_TEST(grad_gemm)
{
    /* C as [4] (row broadcast), [3,1] (column broadcast) and [3,4]. */
    const struct gemm_ctx cs[3] = {{0, 0, 0, 1, 1, 4}, {0, 0, 1, 0, 3, 1}, {0, 0, 4, 1, 3, 4}};
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int k = 0; k < 3; k++) {
                struct gemm_ctx g = cs[k];
                g.ta = ta;
                g.tb = tb;
                float a[15], b[20], cc[12];
                fill(a, 15, -1, 1);
                fill(b, 20, -1, 1);
                fill(cc, 12, -1, 1);
                struct fd_case c = {3, {a, b, cc}, {15, 20, g.c_rows * g.c_cols}, 12, gemm_f, gemm_b, &g};
                if (fd_check("gemm", &c, 1e-3, 2e-3)) return 1;
            }
    return 0;
}

/* ---- Softmax cross-entropy with label smoothing ---- */

static const int32_t xent_labels[4] = {2, 0, 4, 4};

static void xent_f(const struct fd_case *c, float *y)
{
    double st[QT_XENT_STATS];
    softmax_xent_cpu(NULL, st, c->in[0], xent_labels, 4, 5, 0.1f, 0.25f);
    y[0] = (float)st[QT_XENT_LOSS] * 0.25f;
}
static void xent_b(const struct fd_case *c, float **d, const float *dy, int acc)
{
    float g[20];
    double st[QT_XENT_STATS];
    softmax_xent_cpu(g, st, c->in[0], xent_labels, 4, 5, 0.1f, 0.25f * dy[0]);
    for (int i = 0; i < 20; i++) d[0][i] = acc ? d[0][i] + g[i] : g[i];
}

QT_TEST(grad_softmax_xent)
{
    float z[20];
    fill(z, 20, -3, 3);
    struct fd_case c = {1, {z}, {20}, 1, xent_f, xent_b, NULL};
    if (fd_check("softmax cross-entropy", &c, 1e-3, 2e-3)) return 1;
    /* Without smoothing the loss is -log softmax[label]; the counts follow the label's rank
     * (ties to the lower index); a row with a non-finite logit counts only as such. */
    double want = 0;
    int top1 = 0, top5 = 0;
    for (int i = 0; i < 4; i++) {
        double se = 0;
        int higher = 0;
        const float zy = z[i * 5 + xent_labels[i]];
        for (int j = 0; j < 5; j++) {
            se += exp(z[i * 5 + j]);
            higher += z[i * 5 + j] > zy || (z[i * 5 + j] == zy && j < xent_labels[i]);
        }
        want += log(se) - zy;
        top1 += higher == 0;
        top5 += higher < 5;
    }
    double st[QT_XENT_STATS];
    softmax_xent_cpu(NULL, st, z, xent_labels, 4, 5, 0.f, 1.f);
    QT_CHECK_NEAR(st[QT_XENT_LOSS], want, 1e-5 * (1 + want));
    QT_CHECK(st[QT_XENT_TOP1] == top1 && st[QT_XENT_TOP5] == top5 && st[QT_XENT_NONFINITE] == 0);
    const float keep = z[7];
    z[7] = NAN;
    softmax_xent_cpu(NULL, st, z, xent_labels, 4, 5, 0.f, 1.f);
    z[7] = keep;
    QT_CHECK(st[QT_XENT_NONFINITE] == 1 && isfinite(st[QT_XENT_LOSS]));
    return 0;
}

QT_TEST(grad_sgd_matches_pytorch_rule)
{
    /* Three steps of the documented rule, written out for one parameter. */
    for (int nesterov = 0; nesterov < 2; nesterov++) {
        float p[1] = {0.8f}, buf[1] = {0}, g[1];
        double rp = 0.8, rb = 0;
        const float grads[3] = {0.3f, -0.2f, 0.5f};
        for (int s = 0; s < 3; s++) {
            g[0] = grads[s];
            sgd_update_cpu(p, buf, g, 1, 0.1f, 0.9f, 5e-4f, nesterov, s == 0, NULL, NULL);
            double gg = grads[s] + 5e-4 * rp;
            rb = s == 0 ? gg : 0.9 * rb + gg;
            rp -= 0.1 * (nesterov ? gg + 0.9 * rb : rb);
        }
        QT_CHECK_NEAR(p[0], rp, 1e-6);
    }
    return 0;
}

/* ---- Convolution through oneDNN: x, w, b for several geometries ---- */

struct conv_fd {
    struct qt_cpu_ctx *ctx;
    struct qt_conv2d_desc d;
};

static void conv_f(const struct fd_case *c, float *y)
{
    const struct conv_fd *cf = c->ctx;
    if (conv2d_forward_cpu(cf->ctx, y, c->in[0], c->in[1], c->in[2], &cf->d))
        fprintf(stdout, "    %s\n", qt_cpu_ctx_error(cf->ctx));
}
static void conv_b(const struct fd_case *c, float **d, const float *dy, int acc)
{
    const struct conv_fd *cf = c->ctx;
    if (conv2d_backward_cpu(cf->ctx, d[0], d[1], d[2], dy, c->in[0], c->in[1], &cf->d, acc, acc, acc))
        fprintf(stdout, "    %s\n", qt_cpu_ctx_error(cf->ctx));
}

QT_TEST(grad_conv)
{
    char err[256];
    struct qt_cpu_ctx *ctx = qt_cpu_ctx_new(err, sizeof err);
    if (!ctx) return qt_test_fail("%s", err);
    /* n c h w k oh ow kh kw sh sw dh dw pt pl pb pr group */
    const struct qt_conv2d_desc ds[] = {
        {2, 3, 6, 5, 4, 6, 5, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},
        {2, 4, 7, 6, 6, 4, 3, 3, 3, 2, 2, 1, 1, 1, 1, 1, 0, 2},
        {1, 2, 7, 7, 3, 3, 6, 3, 2, 1, 1, 2, 2, 0, 1, 0, 0, 1},
        {2, 4, 5, 5, 8, 3, 3, 1, 1, 2, 2, 1, 1, 0, 0, 0, 0, 1},
    };
    int rc = 0;
    for (size_t k = 0; k < sizeof ds / sizeof ds[0] && !rc; k++) {
        struct conv_fd cf = {ctx, ds[k]};
        const struct qt_conv2d_desc *d = &ds[k];
        int64_t nx = (int64_t)d->n * d->c * d->h * d->w, nw = (int64_t)d->k * (d->c / d->group) * d->kh * d->kw;
        int64_t ny = (int64_t)d->n * d->k * d->oh * d->ow;
        float *x = malloc(sizeof(float) * nx), *w = malloc(sizeof(float) * nw), *b = malloc(sizeof(float) * d->k);
        fill(x, nx, -1, 1);
        fill(w, nw, -1, 1);
        fill(b, d->k, -1, 1);
        struct fd_case c = {3, {x, w, b}, {nx, nw, d->k}, ny, conv_f, conv_b, &cf};
        rc = fd_check("conv", &c, 1e-2, 2e-3);
        free(x);
        free(w);
        free(b);
    }
    qt_cpu_ctx_free(ctx);
    return rc;
}
