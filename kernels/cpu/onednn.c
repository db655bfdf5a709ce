/* The CPU kernel context (a oneDNN engine, an in-order stream and one scratch buffer), the
 * execution of a primitive between caller buffers and the layouts the primitive chose (reorders
 * in between), and the activation layouts (enum qt_cpu_layout) as oneDNN memory descriptors. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <oneapi/dnnl/dnnl_debug.h>

#include "kernels/cpu/onednn.h"

static void set_msg(char *buf, size_t len, const char *fmt, ...)
{
    if (!buf || len == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
}

int qt_dnnl_fail(struct qt_cpu_ctx *ctx, const char *call, dnnl_status_t s)
{
    const int name_len = (int)strcspn(call, "( ");
    set_msg(ctx->err, sizeof ctx->err, "oneDNN %.*s failed (%s)", name_len, call,
            dnnl_status2str(s));
    return -1;
}

int qt_cpu_ctx_prefix(struct qt_cpu_ctx *ctx, const char *fmt, ...)
{
    char head[sizeof ctx->err], tail[sizeof ctx->err];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof head, fmt, ap);
    va_end(ap);
    memcpy(tail, ctx->err, sizeof tail);
    set_msg(ctx->err, sizeof ctx->err, "%s: %s", head, tail);
    return -1;
}

struct qt_cpu_ctx *qt_cpu_ctx_new(char *err, size_t errlen)
{
    struct qt_cpu_ctx *c = calloc(1, sizeof *c);
    if (!c) {
        set_msg(err, errlen, "CPU kernel context: out of memory");
        return NULL;
    }
    const char *call = NULL;
    dnnl_status_t s;
    if ((s = dnnl_engine_create(&c->engine, dnnl_cpu, 0)) != dnnl_success) {
        call = "engine creation";
        c->engine = NULL;
    } else if ((s = dnnl_stream_create(&c->stream, c->engine, dnnl_stream_in_order)) !=
               dnnl_success) {
        call = "stream creation";
        c->stream = NULL;
    } else if ((s = dnnl_primitive_attr_create(&c->attr)) != dnnl_success) {
        call = "attribute creation";
        c->attr = NULL;
    } else if ((s = dnnl_primitive_attr_set_scratchpad_mode(c->attr, dnnl_scratchpad_mode_user)) !=
               dnnl_success) {
        call = "setting the scratchpad mode";
    }
    if (call) {
        set_msg(err, errlen, "CPU kernel context: oneDNN %s failed (%s)", call, dnnl_status2str(s));
        qt_cpu_ctx_free(c);
        return NULL;
    }
    return c;
}

void qt_cpu_ctx_free(struct qt_cpu_ctx *c)
{
    if (!c) return;
    if (c->attr) dnnl_primitive_attr_destroy(c->attr);
    if (c->stream) dnnl_stream_destroy(c->stream);
    if (c->engine) dnnl_engine_destroy(c->engine);
    free(c->scratch);
    free(c);
}

const char *qt_cpu_ctx_error(const struct qt_cpu_ctx *c)
{
    return c ? c->err : "no CPU kernel context";
}

/* Makes ctx->scratch hold at least bytes; returns 0 or -1. */
static int scratch_reserve(struct qt_cpu_ctx *ctx, size_t bytes)
{
    if (bytes <= ctx->scratch_cap) return 0;
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes)) return -1;
    free(ctx->scratch);
    ctx->scratch = p;
    ctx->scratch_cap = bytes;
    return 0;
}

static size_t align64(size_t n)
{
    return (n + 63) & ~(size_t)63;
}

/* Bytes of the scratchpad pd asks for (0 for none). */
static size_t scratchpad_bytes(const_dnnl_primitive_desc_t pd)
{
    const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    return md ? dnnl_memory_desc_get_size(md) : 0;
}

/* Executes p on the na arguments in a plus, when pd asks for one, a scratchpad at `pad`
 * (added as a[na]). Returns 0, or -1 with ctx->err set. */
static int exec_with_pad(struct qt_cpu_ctx *ctx, dnnl_primitive_t p, const_dnnl_primitive_desc_t pd,
                         dnnl_exec_arg_t *a, int na, void *pad)
{
    dnnl_memory_t pm = NULL;
    int rc = -1;
    if (scratchpad_bytes(pd) > 0) {
        const dnnl_memory_desc_t *md =
            dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
        QT_DNNL_TRY(ctx, dnnl_memory_create(&pm, md, ctx->engine, pad));
        a[na].arg = DNNL_ARG_SCRATCHPAD;
        a[na].memory = pm;
        na++;
    }
    QT_DNNL_TRY(ctx, dnnl_primitive_execute(p, ctx->stream, na, a));
    rc = 0;
fail:
    if (pm) dnnl_memory_destroy(pm);
    return rc;
}

int qt_dnnl_execute(struct qt_cpu_ctx *ctx, const_dnnl_primitive_desc_t pd,
                    const struct qt_dnnl_arg *args, int nargs)
{
    /* Per argument: the primitive's layout, the caller's and the primitive's memory objects
     * (the same one when the layouts agree), the reorders between them (into the primitive's
     * layout for a read argument, out of it for a written one) and its place in scratch. */
    const dnnl_memory_desc_t *pmd[QT_DNNL_MAX_ARGS];
    dnnl_memory_t umem[QT_DNNL_MAX_ARGS] = {0}, pmem[QT_DNNL_MAX_ARGS] = {0};
    dnnl_primitive_desc_t rin_pd[QT_DNNL_MAX_ARGS] = {0}, rout_pd[QT_DNNL_MAX_ARGS] = {0};
    dnnl_primitive_t rin[QT_DNNL_MAX_ARGS] = {0}, rout[QT_DNNL_MAX_ARGS] = {0};
    int moved[QT_DNNL_MAX_ARGS] = {0};
    size_t off[QT_DNNL_MAX_ARGS] = {0};
    dnnl_primitive_t prim = NULL;
    dnnl_exec_arg_t ea[QT_DNNL_MAX_ARGS + 1];
    size_t used = 0, pad = scratchpad_bytes(pd);
    char *base, *padp;
    int rc = -1;

    if (nargs > QT_DNNL_MAX_ARGS) {
        set_msg(ctx->err, sizeof ctx->err, "%d primitive arguments, at most %d", nargs,
                QT_DNNL_MAX_ARGS);
        return -1;
    }
    for (int i = 0; i < nargs; i++) {
        pmd[i] = dnnl_primitive_desc_query_md(pd, dnnl_query_exec_arg_md, args[i].arg);
        if (!pmd[i] || pmd[i]->ndims == 0) {
            set_msg(ctx->err, sizeof ctx->err, "the oneDNN primitive takes no argument %d",
                    args[i].arg);
            goto fail;
        }
        if (dnnl_memory_desc_equal(pmd[i], args[i].md)) continue;
        moved[i] = 1;
        if (args[i].out != 1)
            QT_DNNL_TRY(ctx, dnnl_reorder_primitive_desc_create(&rin_pd[i], args[i].md, ctx->engine,
                                                                pmd[i], ctx->engine, ctx->attr));
        if (args[i].out)
            QT_DNNL_TRY(ctx, dnnl_reorder_primitive_desc_create(&rout_pd[i], pmd[i], ctx->engine,
                                                                args[i].md, ctx->engine, ctx->attr));
        off[i] = used;
        used += align64(dnnl_memory_desc_get_size(pmd[i]));
        const size_t pin = rin_pd[i] ? scratchpad_bytes(rin_pd[i]) : 0;
        const size_t pout = rout_pd[i] ? scratchpad_bytes(rout_pd[i]) : 0;
        if (pin > pad) pad = pin;
        if (pout > pad) pad = pout;
    }
    if (scratch_reserve(ctx, used + pad)) {
        set_msg(ctx->err, sizeof ctx->err, "out of memory for %zu bytes of scratch", used + pad);
        goto fail;
    }
    base = ctx->scratch;
    padp = base ? base + used : NULL;

    for (int i = 0; i < nargs; i++) {
        QT_DNNL_TRY(ctx, dnnl_memory_create(&umem[i], args[i].md, ctx->engine, args[i].data));
        if (moved[i])
            QT_DNNL_TRY(ctx, dnnl_memory_create(&pmem[i], pmd[i], ctx->engine, base + off[i]));
        if (rin_pd[i]) QT_DNNL_TRY(ctx, dnnl_primitive_create(&rin[i], rin_pd[i]));
        if (rout_pd[i]) QT_DNNL_TRY(ctx, dnnl_primitive_create(&rout[i], rout_pd[i]));
    }
    QT_DNNL_TRY(ctx, dnnl_primitive_create(&prim, pd));

    for (int i = 0; i < nargs; i++) {
        if (!rin[i]) continue;
        ea[0] = (dnnl_exec_arg_t){DNNL_ARG_FROM, umem[i]};
        ea[1] = (dnnl_exec_arg_t){DNNL_ARG_TO, pmem[i]};
        if (exec_with_pad(ctx, rin[i], rin_pd[i], ea, 2, padp)) goto fail;
    }
    for (int i = 0; i < nargs; i++)
        ea[i] = (dnnl_exec_arg_t){args[i].arg, moved[i] ? pmem[i] : umem[i]};
    if (exec_with_pad(ctx, prim, pd, ea, nargs, padp)) goto fail;
    for (int i = 0; i < nargs; i++) {
        if (!rout[i]) continue;
        ea[0] = (dnnl_exec_arg_t){DNNL_ARG_FROM, pmem[i]};
        ea[1] = (dnnl_exec_arg_t){DNNL_ARG_TO, umem[i]};
        if (exec_with_pad(ctx, rout[i], rout_pd[i], ea, 2, padp)) goto fail;
    }
    QT_DNNL_TRY(ctx, dnnl_stream_wait(ctx->stream));
    rc = 0;
fail:
    if (prim) dnnl_primitive_destroy(prim);
    for (int i = 0; i < nargs; i++) {
        if (rin[i]) dnnl_primitive_destroy(rin[i]);
        if (rout[i]) dnnl_primitive_destroy(rout[i]);
        if (rin_pd[i]) dnnl_primitive_desc_destroy(rin_pd[i]);
        if (rout_pd[i]) dnnl_primitive_desc_destroy(rout_pd[i]);
        if (pmem[i]) dnnl_memory_destroy(pmem[i]);
        if (umem[i]) dnnl_memory_destroy(umem[i]);
    }
    return rc;
}

/* ---- Activation layouts ---- */

static int layout_block(int layout)
{
    return layout == QT_CPU_NCHW8C ? 8 : layout == QT_CPU_NCHW16C ? 16 : 1;
}

int qt_cpu_layout_fits(int layout, int64_t c)
{
    if (layout < QT_CPU_NCHW || layout > QT_CPU_NCHW16C) return 0;
    return c % layout_block(layout) == 0;
}

int qt_cpu_layout_md(struct qt_cpu_ctx *ctx, dnnl_memory_desc_t *md, int layout,
                     const dnnl_dims_t dims)
{
    static const dnnl_format_tag_t tags[] = {dnnl_nchw, dnnl_nhwc, dnnl_nChw8c, dnnl_nChw16c};
    if (!qt_cpu_layout_fits(layout, dims[1])) {
        set_msg(ctx->err, sizeof ctx->err, "activation layout %d does not fit %lld channels",
                layout, (long long)dims[1]);
        return -1;
    }
    QT_DNNL_TRY(ctx, dnnl_memory_desc_init_by_tag(md, 4, dims, dnnl_f32, tags[layout]));
    return 0;
fail:
    return -1;
}

int qt_cpu_layout_of(const dnnl_memory_desc_t *md)
{
    if (md->ndims != 4 || md->data_type != dnnl_f32) return -1;
    static const dnnl_format_tag_t tags[] = {dnnl_nchw, dnnl_nhwc, dnnl_nChw8c, dnnl_nChw16c};
    for (int l = QT_CPU_NCHW; l <= QT_CPU_NCHW16C; l++) {
        dnnl_memory_desc_t m;
        if (!qt_cpu_layout_fits(l, md->dims[1])) continue;
        if (dnnl_memory_desc_init_by_tag(&m, 4, md->dims, dnnl_f32, tags[l]) != dnnl_success)
            continue;
        if (dnnl_memory_desc_equal(&m, md)) return l;
    }
    return -1;
}

int qt_cpu_reorder(struct qt_cpu_ctx *ctx, float *y, int to, const float *x, int from,
                   const int64_t dims[4])
{
    const dnnl_dims_t d = {dims[0], dims[1], dims[2], dims[3]};
    dnnl_memory_desc_t src, dst;
    dnnl_primitive_desc_t pd = NULL;
    ctx->err[0] = '\0';
    if (qt_cpu_layout_md(ctx, &src, from, d) || qt_cpu_layout_md(ctx, &dst, to, d)) goto fail;
    if (dims[0] * dims[1] * dims[2] * dims[3] <= 0) return 0;
    if (from == to) {
        memcpy(y, x, sizeof(float) * (size_t)(dims[0] * dims[1] * dims[2] * dims[3]));
        return 0;
    }
    QT_DNNL_TRY(ctx, dnnl_reorder_primitive_desc_create(&pd, &src, ctx->engine, &dst, ctx->engine,
                                                        ctx->attr));
    /* A reorder is a primitive whose source and destination are exec arguments. */
    const struct qt_dnnl_arg args[] = {
        {DNNL_ARG_FROM, &src, (void *)x, 0},
        {DNNL_ARG_TO, &dst, y, 1},
    };
    if (qt_dnnl_execute(ctx, pd, args, 2)) goto fail;
    dnnl_primitive_desc_destroy(pd);
    return 0;
fail:
    if (pd) dnnl_primitive_desc_destroy(pd);
    return qt_cpu_ctx_prefix(ctx, "activation reorder from layout %d to %d", from, to);
}
