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
 * a Q beyond k adds a plane (N + 1, s *= (2^(N+1) - 1) / (2^N - 1)) below max_planes planes,
 * else is clamped to 2^max_planes - 1; the digits of Q+ and Q- go to p and n. BSQ's authors
 * allow 8 planes (a sign and 8 magnitude bits: 9-bit weights); qtune trains at most 7, so that
 * every layer stays an 8-bit signed grid (QT_BSQ_PLANES). Returns 0, or -1 out of memory. */
int qt_bsq_requant(struct qt_bsq_layer *l, int max_planes);
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

/* ---- Models with bit-plane layers (BitQuant nodes) ---- */

struct qt_graph;
struct qt_error;

/* Every Conv/Gemm/MatMul whose weight initializer v has select[v] set gets its weight from a
 * BitQuant node of N planes (qt_bsq_encode); *count (may be NULL) gets how many. */
int qt_bsq_convert(struct qt_graph *g, const int *select, int N, int *count, struct qt_error *e);

/* The bit-plane layers of a model, copied from its initializers (node: the BitQuant). */
struct qt_bsq_model {
    int n;
    struct qt_bsq_layer *l;
    int *node;
};
int qt_bsq_model_read(const struct qt_graph *g, struct qt_bsq_model *m, struct qt_error *e);
/* Writes the layers back (planes of a changed N get tensors of the new shape); every N >= 1. */
int qt_bsq_model_write(struct qt_graph *g, const struct qt_bsq_model *m, struct qt_error *e);
void qt_bsq_model_free(struct qt_bsq_model *m);
/* sum_l count_l * N_l, and the compression 32 * (weights) / that (BSQ's Comp). */
int64_t qt_bsq_model_bits(const struct qt_bsq_model *m);
/* Each BitQuant is re-quantized and adjusted (thre 0, empty layers to N = 0), then becomes an
 * ordinary uniform WeightQuant of N + 1 signed bits (N magnitude bits) with alpha s over the
 * float weight s * v / k, which it reproduces exactly; a layer of no planes (every weight
 * zero) keeps zero weights on a 2-bit grid. */
int qt_bsq_to_quantizers(struct qt_graph *g, struct qt_error *e);

/* ---- Training the bit planes (BSQ_PSGD.md 1.5) ---- */

#include "backend.h"
#include "train.h"

struct qt_bsq_config {
    struct qt_train_config train; /* the recipe; train.epochs: the bit-plane epochs in all */
    int interval;        /* epochs between re-quantizations (the first at epoch 0) */
    double decay;        /* the regularizer's alpha */
    double threshold;    /* Adjust's threshold (percent of a plane's weights) */
    int64_t budget_bytes; /* weight memory (as exported) that stops the regularizer once met */
    double avg_bits;      /* the same as average bits (0: none) */
    int first_epoch;      /* epochs already done (continuing a saved bit-plane model) */
};

/* The model after a re-quantization or an epoch. */
struct qt_bsq_state {
    int epoch;                 /* epochs done */
    int n;                     /* bit-plane layers */
    const struct qt_bsq_layer *l;
    int64_t weights, plane_bits; /* sum count; sum count * N */
    int64_t bytes;             /* weight memory as exported (N + 1 signed bits per layer) */
    double avg_bits;           /* sum count * (N + 1) / weights */
    double compression;        /* 32 * weights / plane_bits (BSQ's Comp) */
    double regularizer;        /* decay * R / TP at this point */
    int regularized;           /* the regularizer is on for the next epochs */
};

/* Reads the state of g's bit-plane layers (s->l points into m). */
int qt_bsq_state_of(const struct qt_graph *g, struct qt_bsq_model *m, struct qt_bsq_state *s,
                    double decay, struct qt_error *e);

/* Trains g's bit planes (a model with BitQuant nodes) on backend b: at epoch 0 and every
 * `interval` epochs Requant and Adjust(threshold) on every layer, then the epochs up to the
 * next with the regularizer (until the budget holds: then without), the learning rate
 * following one schedule over all epochs; requant (may be NULL) reports each re-quantization.
 * cb follows qt_train's epochs (numbered over the whole run). Returns 0 (*interrupted set when
 * cfg->train.stop ended it: g holds the last epoch's state), or -1. */
int qt_bsq_train(struct qt_graph *g, struct qt_backend *b, const struct qt_dataset *train,
                 const struct qt_dataset *test, const struct qt_bsq_config *c,
                 const struct qt_train_callbacks *cb,
                 int (*requant)(void *ctx, const struct qt_bsq_state *s), void *ctx,
                 int *interrupted, struct qt_error *e);

#endif
