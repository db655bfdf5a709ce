/* oneDNN plumbing shared by the CPU kernels that use it (internal to kernels/cpu): what a
 * struct qt_cpu_ctx holds, status checks that record a message, running one primitive on caller
 * buffers in their layouts while it works in its own, and the activation layouts' descriptors. */
#ifndef QT_KERNELS_CPU_ONEDNN_H
#define QT_KERNELS_CPU_ONEDNN_H

#include <stddef.h>

#include <oneapi/dnnl/dnnl.h>

#include "kernels/cpu/cpu.h"

struct qt_cpu_ctx {
    dnnl_engine_t engine;
    dnnl_stream_t stream; /* in order; every call waits for it before returning */
    /* Attributes every primitive is created with: scratchpad memory supplied by the caller,
     * so that one buffer (scratch) serves all primitives of this context. */
    dnnl_primitive_attr_t attr;
    void *scratch; /* operands in the primitives' layouts and scratchpads of the running call */
    size_t scratch_cap;
    char err[512]; /* message of the last failure */
};

/* Writes "oneDNN <function> failed (status)" into ctx->err, the function's name being the
 * start of call up to a parenthesis; returns -1. */
int qt_dnnl_fail(struct qt_cpu_ctx *ctx, const char *call, dnnl_status_t s);

/* Prefixes ctx->err with the printf-style text and ": " (what failed, formatted only on
 * failure); returns -1. */
int qt_cpu_ctx_prefix(struct qt_cpu_ctx *ctx, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Evaluates a oneDNN call; on failure records it and jumps to the label `fail`. */
#define QT_DNNL_TRY(ctx, call)                                                                     \
    do {                                                                                           \
        const dnnl_status_t st_ = (call);                                                          \
        if (st_ != dnnl_success) {                                                                 \
            qt_dnnl_fail((ctx), #call, st_);                                                       \
            goto fail;                                                                             \
        }                                                                                          \
    } while (0)

/* One execution argument as the caller holds it. */
struct qt_dnnl_arg {
    int arg;                      /* DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, ... */
    const dnnl_memory_desc_t *md; /* the caller's layout */
    void *data;                   /* only written when out is set */
    int out;                      /* 0: read; 1: written (assigned); 2: read, then written (a
                                     destination that a sum post-op adds to) */
};

#define QT_DNNL_MAX_ARGS 8

/* Runs the primitive of pd (created with ctx->attr or a copy of it) once on args and waits for
 * it. An argument whose layout differs from the one pd chose is reordered into ctx's scratch
 * before the primitive (read arguments) and from it afterwards (written arguments). Primitives come
 * from oneDNN's primitive cache, so repeated shapes are not compiled again. Returns 0, or -1
 * with a message in ctx->err. */
int qt_dnnl_execute(struct qt_cpu_ctx *ctx, const_dnnl_primitive_desc_t pd,
                    const struct qt_dnnl_arg *args, int nargs);

/* The memory descriptor of a 4-D float activation [n, c, h, w] held in `layout` (enum
 * qt_cpu_layout). Returns 0, or -1 with ctx->err set when the layout does not apply to these
 * dimensions (a channel block that does not divide c). */
int qt_cpu_layout_md(struct qt_cpu_ctx *ctx, dnnl_memory_desc_t *md, int layout,
                     const dnnl_dims_t dims);
/* The enum qt_cpu_layout that md (4-D float) is, or -1 when it is none of them. */
int qt_cpu_layout_of(const dnnl_memory_desc_t *md);

#endif
