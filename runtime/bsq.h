/* BSQ's bit-plane layers on the host (BSQ_PSGD.md section 1): the 8-bit start from float
 * weights, the weights the planes give, re-quantization of continuous planes to bits (with a
 * most significant plane added where a weight outgrew the layer), the precision adjustment
 * that drops empty planes, and the group-Lasso regularizer. kernels/common/bsq.h has the
 * per-element formulas the kernels share. */
#ifndef QT_BSQ_H
#define QT_BSQ_H

#include <stdint.h>

#include "../kernels/common/bsq.h"

struct qt_bsq_layer {
    int N;         /* planes, 1 .. QT_BSQ_MAX_BITS (0: every weight is zero) */
    int64_t count; /* weights */
    float s;       /* scale */
    float *p, *n;  /* [N][count], plane 0 the most significant; malloc'd */
};

/* N planes holding w: s = max |w|, q = round(|w| * k / s), the binary digits of q in p where
 * w > 0, else in n. Returns 0, or -1 when out of memory or N is out of range. */
int qt_bsq_encode(struct qt_bsq_layer *l, const float *w, int64_t count, int N);
/* w[j] = the weight the planes give (kernels/common/bsq.h's forward). */
void qt_bsq_weights(const struct qt_bsq_layer *l, float *w);
/* Requant: v = sum_b (p_b - n_b) 2^(N-1-b), Q+ = round(max(v, 0)), Q- = round(max(-v, 0));
 * a Q beyond k adds a plane (N + 1, s *= (2^(N+1) - 1) / (2^N - 1)) below 8 planes, else is
 * clamped to 255; the digits of Q+ and Q- go to p and n. Returns 0, or -1 out of memory. */
int qt_bsq_requant(struct qt_bsq_layer *l);
/* Adjust(thre), on re-quantized planes (bits 0 or 1), thre a percentage: most significant
 * planes with no weight set are dropped (and one with fewer than thre percent set is merged
 * into the planes below it, which saturate), then least significant planes with at most
 * thre percent set (s doubles for each), never below one plane; finally s *= (2^N' - 1) /
 * (2^N - 1). With thre = 0 every weight keeps its value. A layer of one plane whose bits are
 * all zero becomes N = 0 when zero_empty is set. */
void qt_bsq_adjust(struct qt_bsq_layer *l, double thre, int zero_empty);
/* The share (percent) of weights whose bit in plane b is set. */
double qt_bsq_plane_percent(const struct qt_bsq_layer *l, int b);
/* The layer's regularizer term: count * N * sum_b sqrt(1e-8 + sum_j (p_jb^2 + n_jb^2)). */
double qt_bsq_group_lasso(const struct qt_bsq_layer *l);
void qt_bsq_free(struct qt_bsq_layer *l);

#endif
