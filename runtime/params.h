/* Trainable parameters found from the graph, grouped by role; SGD and LR schedules. */
#ifndef QT_PARAMS_H
#define QT_PARAMS_H

#include <stdint.h>

#include "../graph/graph.h"

enum qt_param_role {
    QT_ROLE_WEIGHT, /* Conv and Gemm/MatMul weights */
    QT_ROLE_BIAS,   /* Conv and Gemm biases */
    QT_ROLE_BN,     /* BatchNormalization scale and bias */
    QT_ROLE_ALPHA_W, /* clipping thresholds of weight quantizers */
    QT_ROLE_ALPHA_A, /* clipping thresholds of activation quantizers */
    QT_ROLE_BITS,    /* BSQ bit planes (BitQuant inputs 0 and 1) */
    QT_ROLE_BIT_SCALE, /* BSQ scales (BitQuant input 2) */
    QT_ROLE_COUNT
};

const char *qt_role_name(enum qt_param_role r);

struct qt_param {
    int value; /* graph value index (an initializer) */
    enum qt_param_role role;
    int64_t numel;
};

struct qt_params {
    struct qt_param *p;
    int n;
    int64_t total;
};

/* Finds the parameters (and flags BatchNorm running statistics as training state) in a
 * canonicalized graph. Marks values QT_V_PARAM / QT_V_STATE. */
int qt_params_find(struct qt_graph *g, struct qt_params *ps, struct qt_error *e);
void qt_params_free(struct qt_params *ps);

/* Per-role hyper-parameters of SGD. */
struct qt_group {
    float lr_scale; /* multiplies the scheduled learning rate */
    float wd;       /* weight decay, added to the gradient as PyTorch's SGD does */
};

struct qt_sgd {
    float momentum;
    int nesterov;
    struct qt_group group[QT_ROLE_COUNT];
};

enum qt_sched_kind { QT_SCHED_CONST, QT_SCHED_MULTISTEP, QT_SCHED_COSINE };

#define QT_SCHED_MAX_MILESTONES 8

/* Learning rate as a function of the global step (one step = one batch). */
struct qt_schedule {
    enum qt_sched_kind kind;
    float base_lr;
    int64_t total_steps;                           /* cosine: steps to reach min_lr */
    int64_t warmup_steps;                          /* linear warm-up from 0 */
    int64_t milestones[QT_SCHED_MAX_MILESTONES];   /* multistep: steps where lr *= gamma */
    int nmilestones;
    float gamma;
    float min_lr;
};

float qt_schedule_lr(const struct qt_schedule *s, int64_t step);

#endif
