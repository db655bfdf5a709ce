/* Mixed precision: which weight bit width each layer gets under a budget on the model's
 * weight memory. The sensitivity allocation measures, on training images that calibration
 * does not use, the loss of the float model with one layer's weights quantized at each
 * candidate bit width (the others float), and lowers the layers' bits greedily, always by the
 * step that costs the least loss per byte (or bit) saved, until the weights fit. */
#ifndef QT_MIXED_H
#define QT_MIXED_H

#include <stdint.h>

#include "../passes/passes.h"
#include "backend.h"
#include "calib.h"
#include "data/dataset.h"

#define QT_MIXED_MAX_CHOICES 8

struct qt_mixed_config {
    const struct qt_quant_config *quant; /* scheme, standardization, per-channel, first/last */
    int choices[QT_MIXED_MAX_CHOICES];  /* candidate weight bits, ascending */
    int nchoices;
    int64_t budget_bytes; /* weight memory in bytes as the export stores it (0: no limit) */
    double avg_bits;      /* average weight bits over every layer's weights (0: no limit) */
    int images;           /* images the sensitivities are measured on */
    struct qt_calib_config calib; /* normalization, seed and batch of those images */
};

/* One layer whose bits the allocation chooses (layers at --wbits), or that keeps its own
 * (8-bit first/last weights, float layers, --layer settings: fixed). */
struct qt_mixed_layer {
    int node;
    int64_t count;
    int fixed_bits;                     /* > 0: fixed at these bits (32: float) */
    double loss[QT_MIXED_MAX_CHOICES];  /* loss with this layer alone at choices[k] */
    int choice;                         /* the allocation: index into choices */
};

struct qt_mixed_report {
    struct qt_mixed_layer *layer;
    int n;
    double float_loss; /* of the float model on the same images */
    int64_t bytes, bit_count, count; /* of the allocation, over every layer's weights */
    double seconds;
};

/* Bytes of count weights at `bits` as the export stores them (qt_export_code_bytes; 8-bit
 * weights of scheme max/absmax take one byte each as well; 32: float). */
int64_t qt_mixed_bytes(int64_t count, int bits);

/* Measures the sensitivities of g (a float model, left unchanged) and allocates; r->layer[k]
 * lists every Conv/Gemm/MatMul with a weight. Fails, naming the smallest size reachable, when
 * even the lowest choice everywhere misses the budget. The caller frees r either way. */
int qt_mixed_sensitivity(struct qt_graph *g, struct qt_backend *b, const struct qt_dataset *train,
                         const struct qt_mixed_config *c, struct qt_mixed_report *r,
                         struct qt_error *e);

/* The greedy allocation alone over layers with measured losses (the caller fills node,
 * count, fixed_bits, loss); sets choice and the totals of r. */
int qt_mixed_allocate(struct qt_mixed_report *r, const struct qt_mixed_config *c,
                      struct qt_error *e);

void qt_mixed_report_free(struct qt_mixed_report *r);

#endif
