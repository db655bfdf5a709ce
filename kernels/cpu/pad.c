/* Constant Pad on the CPU, forward and backward, a row (the last dim) at a time: the rows of
 * the output (forward) or of the input (backward) are spread over the threads; each maps to
 * one row of the other tensor, or to none (padding, or cropped away). */
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/dispatch.h"

/* Below this many elements a pad stays on the calling thread. */
#define PAD_PAR_MIN 32768

/* Row r of a tensor of dims from[0..nd-1) (all but the last) to the row of the tensor whose
 * dims are to[], coordinates shifted by shift[k] (added); -1 when it falls outside. */
static int64_t map_row(int64_t r, const int64_t *from, const int64_t *to, const int64_t *shift,
                       int nd)
{
    int64_t off = 0, stride = 1;
    for (int k = nd - 2; k >= 0; k--) {
        const int64_t c = r % from[k] + shift[k];
        r /= from[k];
        if (c < 0 || c >= to[k]) return -1;
        off += c * stride;
        stride *= to[k];
    }
    return off;
}

static void dims(const struct qt_pad_desc *d, int64_t *ys, int64_t *neg, int64_t *rows_x,
                 int64_t *rows_y)
{
    *rows_x = *rows_y = 1;
    for (int k = 0; k < d->ndim; k++) {
        ys[k] = d->shape[k] + d->begin[k] + d->end[k];
        neg[k] = -d->begin[k];
        if (k < d->ndim - 1) {
            *rows_x *= d->shape[k];
            *rows_y *= ys[k];
        }
    }
}

void pad_forward_cpu(float *y, const float *x, const struct qt_pad_desc *d)
{
    int64_t ys[QT_DESC_MAX_DIMS], neg[QT_DESC_MAX_DIMS], rows_x, rows_y;
    dims(d, ys, neg, &rows_x, &rows_y);
    const int L = d->ndim - 1;
    const int64_t xl = d->shape[L], yl = ys[L], b = d->begin[L];
    const int par = rows_y * yl >= PAD_PAR_MIN;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t r = 0; r < rows_y; r++) {
        float *yr = y + r * yl;
        const int64_t xr = map_row(r, ys, d->shape, neg, d->ndim);
        for (int64_t j = 0; j < yl; j++) {
            const int64_t xj = j - b;
            yr[j] = xr >= 0 && xj >= 0 && xj < xl ? x[xr * xl + xj] : d->value;
        }
    }
}

void pad_backward_cpu(float *dx, const float *dy, const struct qt_pad_desc *d, int acc)
{
    int64_t ys[QT_DESC_MAX_DIMS], neg[QT_DESC_MAX_DIMS], rows_x, rows_y;
    dims(d, ys, neg, &rows_x, &rows_y);
    const int L = d->ndim - 1;
    const int64_t xl = d->shape[L], yl = ys[L], b = d->begin[L];
    const int par = rows_x * xl >= PAD_PAR_MIN;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t r = 0; r < rows_x; r++) {
        float *dr = dx + r * xl;
        const int64_t yr = map_row(r, d->shape, ys, d->begin, d->ndim);
        for (int64_t j = 0; j < xl; j++) {
            const int64_t yj = j + b;
            const float g = yr >= 0 && yj >= 0 && yj < yl ? dy[yr * yl + yj] : 0.0f;
            dr[j] = acc ? dr[j] + g : g;
        }
    }
}
