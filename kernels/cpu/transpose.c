/* Transpose on the CPU, forward and backward. The permutation is first simplified: dims of
 * size 1 are dropped and output dims that walk the input contiguously are merged, so that
 * NCHW <-> NHWC becomes a 3-D transpose; then rows of the output (all dims but the last) are
 * spread over the threads, each row a strided walk through the input. */
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/dispatch.h"

/* Below this many elements a transpose stays on the calling thread. */
#define TR_PAR_MIN 32768

/* The output's dims (size[k]) with the input stride each walks (stride[k]), simplified;
 * returns their count (at least 1). */
static int simplify(const struct qt_transpose_desc *d, int64_t *size, int64_t *stride)
{
    int64_t istr[QT_DESC_MAX_DIMS], s = 1;
    for (int i = d->ndim - 1; i >= 0; i--) {
        istr[i] = s;
        s *= d->shape[i];
    }
    int r = 0;
    for (int k = 0; k < d->ndim; k++) {
        const int64_t sz = d->shape[d->perm[k]], st = istr[d->perm[k]];
        if (sz == 1) continue;
        if (r > 0 && stride[r - 1] == st * sz) { /* continues the previous dim's walk */
            size[r - 1] *= sz;
            stride[r - 1] = st;
            continue;
        }
        size[r] = sz;
        stride[r++] = st;
    }
    if (r == 0) {
        size[0] = 1;
        stride[0] = 1;
        r = 1;
    }
    return r;
}

/* Offset in the input of the first element of output row `row` (rows: dims 0..r-2). */
static int64_t row_offset(int64_t row, const int64_t *size, const int64_t *stride, int r)
{
    int64_t off = 0;
    for (int k = r - 2; k >= 0; k--) {
        off += (row % size[k]) * stride[k];
        row /= size[k];
    }
    return off;
}

/* The simplified walk of d: output rows of len elements, each a walk with input stride st. */
struct walk {
    int64_t size[QT_DESC_MAX_DIMS], stride[QT_DESC_MAX_DIMS];
    int r;
    int64_t len, st, rows;
};

static void walk_of(const struct qt_transpose_desc *d, struct walk *w)
{
    w->r = simplify(d, w->size, w->stride);
    w->len = w->size[w->r - 1];
    w->st = w->stride[w->r - 1];
    w->rows = 1;
    for (int k = 0; k < w->r - 1; k++)
        w->rows *= w->size[k];
}

QT_CPU_CLONES void transpose_forward_cpu(float *y, const float *x, const struct qt_transpose_desc *d)
{
    struct walk w;
    walk_of(d, &w);
#pragma omp parallel for schedule(static) if (w.rows * w.len > TR_PAR_MIN)
    for (int64_t row = 0; row < w.rows; row++) {
        const float *src = x + row_offset(row, w.size, w.stride, w.r);
        float *dst = y + row * w.len;
        for (int64_t j = 0; j < w.len; j++)
            dst[j] = src[j * w.st];
    }
}

QT_CPU_CLONES void transpose_backward_cpu(float *dx, const float *dy,
                                          const struct qt_transpose_desc *d, int acc)
{
    struct walk w;
    walk_of(d, &w);
    /* every input element is the image of exactly one output element: rows write disjoint
     * elements */
#pragma omp parallel for schedule(static) if (w.rows * w.len > TR_PAR_MIN)
    for (int64_t row = 0; row < w.rows; row++) {
        float *dst = dx + row_offset(row, w.size, w.stride, w.r);
        const float *src = dy + row * w.len;
        if (acc)
            for (int64_t j = 0; j < w.len; j++)
                dst[j * w.st] += src[j];
        else
            for (int64_t j = 0; j < w.len; j++)
                dst[j * w.st] = src[j];
    }
}
