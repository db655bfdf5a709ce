/* 2-D convolution on the CPU through oneDNN: forward (plain NCHW, or for inference any enum
 * qt_cpu_layout with a sum and ReLU fused as post-ops) and backward, reordering operands between
 * the caller's layouts and the primitive's (kernels/cpu/onednn.c); geometry in struct conv_geom. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/onednn.h"
#include "kernels/cpu/dispatch.h"

/* A convolution as oneDNN describes it. */
struct conv_geom {
    dnnl_memory_desc_t src, wei, bias, dst;       /* the caller's layouts: nchw, (g)oihw, x, nchw */
    dnnl_memory_desc_t src_any, wei_any, dst_any; /* the same shapes, layout left to oneDNN */
    dnnl_dims_t strides, dilates, pad_l, pad_r;
};

/* Puts the convolution (direction dir) in front of the message in ctx->err; returns -1. */
static int conv_fail(struct qt_cpu_ctx *ctx, const struct qt_conv2d_desc *d, const char *dir)
{
    return qt_cpu_ctx_prefix(ctx,
                             "convolution %s (n %d, c %d, %dx%d -> k %d, %dx%d; kernel %dx%d, "
                             "stride %dx%d, dilation %dx%d, pads %d,%d,%d,%d, group %d)",
                             dir, d->n, d->c, d->h, d->w, d->k, d->oh, d->ow, d->kh, d->kw, d->sh,
                             d->sw, d->dh, d->dw, d->pt, d->pl, d->pb, d->pr, d->group);
}

/* Fills g from d; returns 0, or -1 with ctx->err set. */
static int conv_geom_init(struct qt_cpu_ctx *ctx, struct conv_geom *g,
                          const struct qt_conv2d_desc *d)
{
    if (d->group <= 0 || d->c % d->group || d->k % d->group) {
        snprintf(ctx->err, sizeof ctx->err, "channels not divisible by the group count");
        return -1;
    }
    const int grouped = d->group > 1;
    const dnnl_dims_t sd = {d->n, d->c, d->h, d->w}, dd = {d->n, d->k, d->oh, d->ow}, bd = {d->k};
    dnnl_dims_t wd = {d->k, d->c, d->kh, d->kw};
    if (grouped) {
        wd[0] = d->group;
        wd[1] = d->k / d->group;
        wd[2] = d->c / d->group;
        wd[3] = d->kh;
        wd[4] = d->kw;
    }
    const int wn = grouped ? 5 : 4;
    QT_DNNL_TRY(ctx, dnnl_memory_desc_init_by_tag(&g->src, 4, sd, dnnl_f32, dnnl_nchw));
    QT_DNNL_TRY(ctx, dnnl_memory_desc_init_by_tag(&g->dst, 4, dd, dnnl_f32, dnnl_nchw));
    QT_DNNL_TRY(ctx, dnnl_memory_desc_init_by_tag(&g->wei, wn, wd, dnnl_f32,
                                                  grouped ? dnnl_goihw : dnnl_oihw));
    QT_DNNL_TRY(ctx, dnnl_memory_desc_init_by_tag(&g->bias, 1, bd, dnnl_f32, dnnl_x));
    QT_DNNL_TRY(ctx,
                dnnl_memory_desc_init_by_tag(&g->src_any, 4, sd, dnnl_f32, dnnl_format_tag_any));
    QT_DNNL_TRY(ctx,
                dnnl_memory_desc_init_by_tag(&g->dst_any, 4, dd, dnnl_f32, dnnl_format_tag_any));
    QT_DNNL_TRY(ctx,
                dnnl_memory_desc_init_by_tag(&g->wei_any, wn, wd, dnnl_f32, dnnl_format_tag_any));
    g->strides[0] = d->sh;
    g->strides[1] = d->sw;
    /* oneDNN counts dilation from 0 (dense kernel); ONNX and qtune from 1. */
    g->dilates[0] = d->dh - 1;
    g->dilates[1] = d->dw - 1;
    g->pad_l[0] = d->pt;
    g->pad_l[1] = d->pl;
    g->pad_r[0] = d->pb;
    g->pad_r[1] = d->pr;
    return 0;
fail:
    return -1;
}

/* The attributes of a forward convolution: ctx's, plus post-ops for post's steps. Returns 0,
 * or -1 with ctx->err set. */
static int post_attr(struct qt_cpu_ctx *ctx, dnnl_primitive_attr_t *attr,
                     const struct qt_conv2d_post *post)
{
    dnnl_post_ops_t ops = NULL;
    *attr = NULL;
    QT_DNNL_TRY(ctx, dnnl_primitive_attr_clone(attr, ctx->attr));
    QT_DNNL_TRY(ctx, dnnl_post_ops_create(&ops));
    if (post->sum) QT_DNNL_TRY(ctx, dnnl_post_ops_append_sum(ops, 1.0f));
    if (post->relu)
        QT_DNNL_TRY(ctx, dnnl_post_ops_append_eltwise(ops, 1.0f, dnnl_eltwise_relu, 0.0f, 0.0f));
    QT_DNNL_TRY(ctx, dnnl_primitive_attr_set_post_ops(*attr, ops));
    dnnl_post_ops_destroy(ops);
    return 0;
fail:
    if (ops) dnnl_post_ops_destroy(ops);
    if (*attr) dnnl_primitive_attr_destroy(*attr);
    *attr = NULL;
    return -1;
}

/* A convolution without input channels: y = b (+ sum), then relu, written plain. Returns 0,
 * or -1 with ctx->err set. */
static int conv_no_channels(struct qt_cpu_ctx *ctx, float *y, const float *b,
                            const struct qt_conv2d_desc *d, const struct qt_conv2d_post *post)
{
    const int64_t ohw = (int64_t)d->oh * d->ow, ny = (int64_t)d->n * d->k * ohw;
    const int64_t dims[4] = {d->n, d->k, d->oh, d->ow};
    const float *sum = post ? post->sum : NULL;
    float *tmp = NULL;
    if (sum && post->sum_layout != QT_CPU_NCHW) {
        /* The sum into plain order first (through a copy when it is y itself). */
        if (!(tmp = malloc(sizeof(float) * (size_t)ny))) {
            snprintf(ctx->err, sizeof ctx->err, "out of memory");
            return -1;
        }
        int rc = qt_cpu_reorder(ctx, tmp, QT_CPU_NCHW, sum, post->sum_layout, dims);
        sum = tmp;
        if (rc) {
            free(tmp);
            return -1;
        }
    }
    for (int64_t i = 0; i < ny; i++) {
        float v = (b ? b[(i / ohw) % d->k] : 0.0f) + (sum ? sum[i] : 0.0f);
        y[i] = post && post->relu && !(v > 0.0f) ? 0.0f : v;
    }
    free(tmp);
    return 0;
}

/* A request for the layout of a convolution's result: whichever the primitive prefers. */
#define LAYOUT_ANY (-1)

/* Forward convolution of x (layout x_layout) into y. *y_layout on entry: the layout y must be
 * written in, or LAYOUT_ANY for the primitive's choice when it is an enum qt_cpu_layout (plain
 * otherwise); on return, the layout written. post (may be NULL) adds fused steps. */
static int conv_forward(struct qt_cpu_ctx *ctx, float *y, int *y_layout, const float *x,
                        int x_layout, const float *w, const float *b,
                        const struct qt_conv2d_desc *d, const struct qt_conv2d_post *post)
{
    struct conv_geom g;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_attr_t attr = NULL;
    const int fused = post && (post->sum || post->relu);
    ctx->err[0] = '\0';
    if (conv_geom_init(ctx, &g, d)) return conv_fail(ctx, d, "forward");
    const int64_t ny = (int64_t)d->n * d->k * d->oh * d->ow;
    const dnnl_dims_t sd = {d->n, d->c, d->h, d->w}, dd = {d->n, d->k, d->oh, d->ow};
    const int64_t ydims[4] = {d->n, d->k, d->oh, d->ow};
    if (ny <= 0) {
        *y_layout = QT_CPU_NCHW;
        return 0;
    }
    if (d->c == 0) {
        /* No input channels: every output is the bias. */
        *y_layout = QT_CPU_NCHW;
        return conv_no_channels(ctx, y, b, d, post) ? conv_fail(ctx, d, "forward") : 0;
    }
    if (x_layout != QT_CPU_NCHW && qt_cpu_layout_md(ctx, &g.src, x_layout, sd)) goto fail;
    if (fused && post_attr(ctx, &attr, post)) goto fail;
    dnnl_convolution_desc_t cd;
    QT_DNNL_TRY(ctx,
                dnnl_dilated_convolution_forward_desc_init(
                    &cd, dnnl_forward_inference, dnnl_convolution_direct, &g.src_any, &g.wei_any,
                    b ? &g.bias : NULL, &g.dst_any, g.strides, g.dilates, g.pad_l, g.pad_r));
    QT_DNNL_TRY(ctx,
                dnnl_primitive_desc_create(&pd, &cd, attr ? attr : ctx->attr, ctx->engine, NULL));
    /* The layout of y: the sum's when the sum is y, else the one asked for or, for any, the
     * primitive's own when qtune has a name for it. */
    int yl = *y_layout;
    if (post && post->sum && post->sum == y) {
        yl = post->sum_layout;
    } else if (yl == LAYOUT_ANY) {
        yl = qt_cpu_layout_of(dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0));
        if (yl < 0) yl = QT_CPU_NCHW;
    }
    if (yl != QT_CPU_NCHW && qt_cpu_layout_md(ctx, &g.dst, yl, dd)) goto fail;
    /* The sum post-op adds to what y holds: the sum, in y's layout. */
    if (post && post->sum && post->sum != y &&
        qt_cpu_reorder(ctx, y, yl, post->sum, post->sum_layout, ydims))
        goto fail;
    /* oneDNN reads but never writes the inputs, which its memory objects hold as void *. */
    const struct qt_dnnl_arg args[] = {
        {DNNL_ARG_SRC, &g.src, (void *)x, 0},
        {DNNL_ARG_WEIGHTS, &g.wei, (void *)w, 0},
        {DNNL_ARG_DST, &g.dst, y, post && post->sum ? 2 : 1},
        {DNNL_ARG_BIAS, &g.bias, (void *)b, 0},
    };
    if (qt_dnnl_execute(ctx, pd, args, b ? 4 : 3)) goto fail;
    dnnl_primitive_desc_destroy(pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    *y_layout = yl;
    return 0;
fail:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    return conv_fail(ctx, d, "forward");
}

int conv2d_forward_cpu(struct qt_cpu_ctx *ctx, float *y, const float *x, const float *w,
                       const float *b, const struct qt_conv2d_desc *d)
{
    int yl = QT_CPU_NCHW;
    return conv_forward(ctx, y, &yl, x, QT_CPU_NCHW, w, b, d, NULL);
}

int conv2d_infer_cpu(struct qt_cpu_ctx *ctx, float *y, int *y_layout, const float *x, int x_layout,
                     const float *w, const float *b, const struct qt_conv2d_desc *d,
                     const struct qt_conv2d_post *post)
{
    *y_layout = LAYOUT_ANY;
    return conv_forward(ctx, y, y_layout, x, x_layout, w, b, d, post);
}

/* out (+)= tmp over n floats: assigned when acc is 0, accumulated when 1. */
QT_CPU_CLONES static void store(float *out, const float *tmp, int64_t n, int acc)
{
    if (!acc) return; /* already written in place */
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++)
        out[i] += tmp[i];
}

/* Backward of the convolution: dx from dy and w (oneDNN backward-data), dw and db from x and
 * dy (backward-weights). Any of dx, dw, db may be NULL. Each is assigned (=) when its acc
 * flag is 0 and accumulated (+=) when 1 (through a temporary). Returns 0 or -1 with a message
 * in the context. */
int conv2d_backward_cpu(struct qt_cpu_ctx *ctx, float *dx, float *dw, float *db, const float *dy,
                        const float *x, const float *w, const struct qt_conv2d_desc *d, int acc_x,
                        int acc_w, int acc_b)
{
    struct conv_geom g;
    dnnl_primitive_desc_t fpd = NULL, pd = NULL;
    float *tmp = NULL;
    ctx->err[0] = '\0';
    if (conv_geom_init(ctx, &g, d)) return conv_fail(ctx, d, "backward");
    const int64_t nx = (int64_t)d->n * d->c * d->h * d->w;
    const int64_t nw = (int64_t)d->k * (d->group ? d->c / d->group : 0) * d->kh * d->kw;
    const int64_t ny = (int64_t)d->n * d->k * d->oh * d->ow;
    if (ny <= 0 || d->c == 0) {
        if (dx && !acc_x) memset(dx, 0, sizeof(float) * (size_t)(nx > 0 ? nx : 0));
        if (dw && !acc_w) memset(dw, 0, sizeof(float) * (size_t)(nw > 0 ? nw : 0));
        if (db && !acc_b) memset(db, 0, sizeof(float) * (size_t)d->k);
        return 0;
    }
    /* The forward primitive descriptor is the hint both backward primitives need. */
    dnnl_convolution_desc_t cd;
    QT_DNNL_TRY(ctx,
                dnnl_dilated_convolution_forward_desc_init(
                    &cd, dnnl_forward_training, dnnl_convolution_direct, &g.src_any, &g.wei_any,
                    db ? &g.bias : NULL, &g.dst_any, g.strides, g.dilates, g.pad_l, g.pad_r));
    QT_DNNL_TRY(ctx, dnnl_primitive_desc_create(&fpd, &cd, ctx->attr, ctx->engine, NULL));
    if (dx) {
        dnnl_convolution_desc_t bd;
        QT_DNNL_TRY(ctx, dnnl_dilated_convolution_backward_data_desc_init(
                             &bd, dnnl_convolution_direct, &g.src_any, &g.wei_any, &g.dst_any,
                             g.strides, g.dilates, g.pad_l, g.pad_r));
        QT_DNNL_TRY(ctx, dnnl_primitive_desc_create(&pd, &bd, ctx->attr, ctx->engine, fpd));
        float *out = dx;
        if (acc_x && !(out = tmp = malloc(sizeof(float) * (size_t)nx))) {
            snprintf(ctx->err, sizeof ctx->err, "out of memory");
            goto fail;
        }
        const struct qt_dnnl_arg args[] = {
            {DNNL_ARG_DIFF_DST, &g.dst, (void *)dy, 0},
            {DNNL_ARG_WEIGHTS, &g.wei, (void *)w, 0},
            {DNNL_ARG_DIFF_SRC, &g.src, out, 1},
        };
        if (qt_dnnl_execute(ctx, pd, args, 3)) goto fail;
        store(dx, out, nx, acc_x);
        dnnl_primitive_desc_destroy(pd);
        pd = NULL;
        free(tmp);
        tmp = NULL;
    }
    if (dw || db) {
        dnnl_convolution_desc_t wd;
        QT_DNNL_TRY(ctx,
                    dnnl_dilated_convolution_backward_weights_desc_init(
                        &wd, dnnl_convolution_direct, &g.src_any, &g.wei_any, db ? &g.bias : NULL,
                        &g.dst_any, g.strides, g.dilates, g.pad_l, g.pad_r));
        QT_DNNL_TRY(ctx, dnnl_primitive_desc_create(&pd, &wd, ctx->attr, ctx->engine, fpd));
        /* oneDNN computes both; a gradient nobody wants, or one to accumulate, lands in
         * the temporary. */
        const int wtmp = !dw || acc_w, btmp = db && acc_b;
        const int64_t ntmp = (wtmp ? nw : 0) + (btmp ? d->k : 0);
        if (ntmp && !(tmp = malloc(sizeof(float) * (size_t)ntmp))) {
            snprintf(ctx->err, sizeof ctx->err, "out of memory");
            goto fail;
        }
        float *ow = wtmp ? tmp : dw;
        float *ob = btmp ? tmp + (wtmp ? nw : 0) : db;
        const struct qt_dnnl_arg args[] = {
            {DNNL_ARG_SRC, &g.src, (void *)x, 0},
            {DNNL_ARG_DIFF_DST, &g.dst, (void *)dy, 0},
            {DNNL_ARG_DIFF_WEIGHTS, &g.wei, ow, 1},
            {DNNL_ARG_DIFF_BIAS, &g.bias, ob, 1},
        };
        if (qt_dnnl_execute(ctx, pd, args, db ? 4 : 3)) goto fail;
        if (dw && acc_w) store(dw, ow, nw, 1);
        if (db && acc_b) store(db, ob, d->k, 1);
    }
    free(tmp);
    if (pd) dnnl_primitive_desc_destroy(pd);
    dnnl_primitive_desc_destroy(fpd);
    return 0;
fail:
    free(tmp);
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (fpd) dnnl_primitive_desc_destroy(fpd);
    return conv_fail(ctx, d, "backward");
}
