/* Parameter discovery and learning-rate schedules. */
#include "params.h"

#include <math.h>
#include <stdlib.h>

const char *qt_role_name(enum qt_param_role r)
{
    static const char *names[] = {"weight", "bias", "batchnorm", "alpha_w", "alpha_a", "bits",
                                  "bit_scale"};
    return (unsigned)r < QT_ROLE_COUNT ? names[r] : "?";
}

static int add_param(struct qt_graph *g, struct qt_params *ps, int v, enum qt_param_role role,
                     const char *node, struct qt_error *e)
{
    struct qt_value *val = &g->values[v];
    if (!val->init) return 0; /* computed input, not a parameter */
    if (val->init->dtype != QT_F32)
        return qt_err(e, "parameter '%s' of node '%s' is %s; training needs float32", val->name, node,
                      qt_dtype_name(val->init->dtype));
    for (int i = 0; i < ps->n; i++)
        if (ps->p[i].value == v) return 0; /* shared by several nodes: one parameter */
    /* NaN is refused when the model is read; an infinite weight would only make the loss
     * infinite or NaN at the first step, far from its cause. */
    const float *w = val->init->data;
    for (int64_t i = 0, n = qt_shape_numel(&val->init->shape); i < n; i++)
        if (!isfinite(w[i]))
            return qt_err(e,
                          "parameter '%s' of node '%s' holds %g (element %lld); training needs "
                          "finite parameters",
                          val->name, node, w[i], (long long)i);
    val->flags |= QT_V_PARAM;
    ps->p = realloc(ps->p, sizeof *ps->p * (ps->n + 1));
    ps->p[ps->n].value = v;
    ps->p[ps->n].role = role;
    ps->p[ps->n].numel = qt_shape_numel(&val->init->shape);
    ps->total += ps->p[ps->n].numel;
    ps->n++;
    return 0;
}

int qt_params_find(struct qt_graph *g, struct qt_params *ps, struct qt_error *e)
{
    ps->p = NULL;
    ps->n = 0;
    ps->total = 0;
    for (int i = 0; i < g->nnodes; i++) {
        struct qt_node *n = &g->nodes[i];
        int rc = 0;
        switch (n->op) {
        case QT_OP_CONV: case QT_OP_GEMM:
            rc = add_param(g, ps, n->in[1], QT_ROLE_WEIGHT, n->name, e);
            if (!rc && n->nin > 2 && n->in[2] >= 0) rc = add_param(g, ps, n->in[2], QT_ROLE_BIAS, n->name, e);
            break;
        case QT_OP_MATMUL:
            rc = add_param(g, ps, n->in[1], QT_ROLE_WEIGHT, n->name, e);
            break;
        case QT_OP_ADD: {
            /* MatMul + Add is how exporters write a linear layer on batched inputs. */
            for (int k = 0; k < 2 && !rc; k++) {
                int other = n->in[1 - k], p = other >= 0 ? g->values[other].producer : -1;
                if (p >= 0 && g->nodes[p].op == QT_OP_MATMUL && g->values[n->in[k]].init)
                    rc = add_param(g, ps, n->in[k], QT_ROLE_BIAS, n->name, e);
            }
            break;
        }
        case QT_OP_WEIGHTQUANT:
            rc = add_param(g, ps, n->in[0], QT_ROLE_WEIGHT, n->name, e);
            if (!rc && n->nin > 1 && n->in[1] >= 0)
                rc = add_param(g, ps, n->in[1], QT_ROLE_ALPHA_W, n->name, e);
            break;
        case QT_OP_ACTQUANT:
            rc = add_param(g, ps, n->in[1], QT_ROLE_ALPHA_A, n->name, e);
            break;
        case QT_OP_BITQUANT:
            rc = add_param(g, ps, n->in[0], QT_ROLE_BITS, n->name, e);
            if (!rc) rc = add_param(g, ps, n->in[1], QT_ROLE_BITS, n->name, e);
            if (!rc) rc = add_param(g, ps, n->in[2], QT_ROLE_BIT_SCALE, n->name, e);
            break;
        case QT_OP_BATCHNORM:
            rc = add_param(g, ps, n->in[1], QT_ROLE_BN, n->name, e);
            if (!rc) rc = add_param(g, ps, n->in[2], QT_ROLE_BN, n->name, e);
            for (int k = 3; k < 5; k++)
                if (g->values[n->in[k]].init) g->values[n->in[k]].flags |= QT_V_STATE;
            break;
        default:
            break;
        }
        if (rc) {
            qt_params_free(ps);
            return -1;
        }
    }
    if (!ps->n) return qt_err(e, "the model has no trainable parameters (no Conv, Gemm or BatchNormalization initializers)");
    return 0;
}

void qt_params_free(struct qt_params *ps)
{
    free(ps->p);
    ps->p = NULL;
    ps->n = 0;
}

float qt_schedule_lr(const struct qt_schedule *s, int64_t step)
{
    if (s->warmup_steps > 0 && step < s->warmup_steps)
        return s->base_lr * (float)(step + 1) / (float)s->warmup_steps;
    switch (s->kind) {
    case QT_SCHED_MULTISTEP: {
        float lr = s->base_lr;
        for (int i = 0; i < s->nmilestones; i++)
            if (step >= s->milestones[i]) lr *= s->gamma;
        return lr;
    }
    case QT_SCHED_COSINE: {
        int64_t span = s->total_steps - s->warmup_steps;
        double t = span > 0 ? (double)(step - s->warmup_steps) / span : 1.0;
        if (t > 1) t = 1;
        return (float)(s->min_lr + (s->base_lr - s->min_lr) * 0.5 * (1.0 + cos(M_PI * t)));
    }
    default:
        return s->base_lr;
    }
}
