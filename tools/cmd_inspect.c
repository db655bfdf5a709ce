/* qtune inspect: the model's layers with output shapes, parameter counts and MACs, its
 * quantizers (scheme, bits, signedness, alpha; for weights the share on each level) and its
 * weight memory (each layer's bits and bytes). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../graph/schema.h"
#include "../runtime/loops.h"
#include "../runtime/quantizer.h"
#include "cli.h"

/* Prints the quantizer list (text or a JSON array). Returns the count, or -1 on error. */
static int print_quantizers(const struct qt_graph *g, int json, struct qt_error *e)
{
    int count = 0;
    for (int i = 0; i < g->nnodes; i++) {
        const struct qt_node *n = &g->nodes[i];
        if (n->op != QT_OP_WEIGHTQUANT && n->op != QT_OP_ACTQUANT) continue;
        struct qt_quant_info qi;
        if (qt_quantizer_info(g, n, &qi, e)) return -1;
        int reader = qt_graph_first_consumer(g, n->out[0]);
        const char *layer = reader >= 0 ? g->nodes[reader].name : "-";
        const char *kind = n->op == QT_OP_WEIGHTQUANT ? "weight" : "activation";
        if (json) {
            printf("%s{\"name\": \"%s\", \"layer\": \"%s\", \"kind\": \"%s\", \"scheme\": \"%s\", "
                   "\"bits\": %d, \"signed\": %s, \"alpha\": %.6g, \"alphas\": %d",
                   count ? ", " : "", n->name, layer, kind, qt_quant_scheme_name(qi.a.scheme),
                   qi.a.bits, qi.a.is_signed ? "true" : "false", qi.alpha0, qi.nalpha);
            if (n->op == QT_OP_WEIGHTQUANT)
                printf(", \"standardize\": %s, \"levels_used\": %d", qi.a.standardize ? "true" : "false",
                       qi.used);
            if (qi.nlv) {
                printf(", \"levels\": [");
                for (int k = 0; k < qi.nlv; k++) printf("%s%.6g", k ? ", " : "", qi.lv[k]);
                printf("], \"share\": [");
                for (int k = 0; k < qi.nlv; k++) printf("%s%.6f", k ? ", " : "", qi.share[k]);
                printf("]");
            }
            printf("}");
        } else {
            if (!count)
                printf("\nquantizers\n%-28s %-10s %-8s %4s %-8s %10s  levels (share of weights, %%)\n",
                       "layer", "kind", "scheme", "bits", "signed", "alpha");
            char alpha[32];
            if (qi.nalpha > 1) snprintf(alpha, sizeof alpha, "%d ch", qi.nalpha);
            else snprintf(alpha, sizeof alpha, "%.4g", qi.alpha0);
            printf("%-28.28s %-10s %-8s %4d %-8s %10s", layer, kind, qt_quant_scheme_name(qi.a.scheme),
                   qi.a.bits, qi.a.is_signed ? "signed" : "unsigned", alpha);
            if (qi.nlv) {
                printf("  ");
                for (int k = 0; k < qi.nlv; k++) printf("%s%.3g:%.1f", k ? " " : "", qi.lv[k], 100 * qi.share[k]);
            } else if (n->op == QT_OP_WEIGHTQUANT) {
                printf("  %d of 255 steps in use (scale: %s)", qi.used,
                       qi.a.scheme == QT_QS_ABSMAX ? "max |W|" : "max W");
            }
            printf("\n");
        }
        count++;
    }
    return count;
}

/* The weight memory: per layer (text table or JSON object) and in total. */
static int print_weight_memory(const struct qt_graph *g, int json, struct qt_error *e)
{
    struct qt_weight_memory m;
    if (qt_weight_memory(g, &m, e)) return -1;
    const double avg = m.count ? (double)m.bit_count / (double)m.count : 0.0;
    const double ratio = m.bytes ? (double)m.fp32_bytes / (double)m.bytes : 0.0;
    if (json) {
        printf("\"weight_memory\": {\"layers\": [");
        for (int i = 0; i < m.n; i++)
            printf("%s{\"layer\": \"%s\", \"weights\": %lld, \"bits\": %d, \"bytes\": %lld}",
                   i ? ", " : "", g->nodes[m.layer[i].node].name, (long long)m.layer[i].count,
                   m.layer[i].bits, (long long)m.layer[i].bytes);
        printf("], \"weights\": %lld, \"average_bits\": %.4f, \"bytes\": %lld, "
               "\"fp32_bytes\": %lld, \"compression\": %.4f}",
               (long long)m.count, avg, (long long)m.bytes, (long long)m.fp32_bytes, ratio);
    } else if (m.n) {
        printf("\nweight memory (bytes as qtune export --format onnx stores the weights)\n"
               "%-28s %10s %5s %10s\n", "layer", "weights", "bits", "bytes");
        for (int i = 0; i < m.n; i++)
            printf("%-28.28s %10lld %5d %10lld\n", g->nodes[m.layer[i].node].name,
                   (long long)m.layer[i].count, m.layer[i].bits, (long long)m.layer[i].bytes);
        printf("%d layers, %lld weights, %.2f bits on average: %lld bytes (float32: %lld, "
               "%.2fx smaller)\n",
               m.n, (long long)m.count, avg, (long long)m.bytes, (long long)m.fp32_bytes, ratio);
    }
    qt_weight_memory_free(&m);
    return 0;
}

/* Multiply-accumulates per sample of one node (0 for ops that do not multiply). */
static int64_t node_macs(const struct qt_graph *g, const struct qt_node *n)
{
    const struct qt_shape *y = &g->values[n->out[0]].shape;
    int64_t per = 1;
    for (int i = 1; i < y->ndim; i++) per *= y->d[i] > 0 ? y->d[i] : 1;
    if (n->op == QT_OP_CONV) {
        const struct qt_shape *w = &g->values[n->in[1]].shape;
        int64_t k = 1;
        for (int i = 1; i < w->ndim; i++) k *= w->d[i];
        return per * k;
    }
    if (n->op == QT_OP_GEMM || n->op == QT_OP_MATMUL) {
        const struct qt_shape *a = &g->values[n->in[0]].shape;
        int64_t k = a->d[a->ndim - 1];
        if (n->op == QT_OP_GEMM && qt_node_int(n, "transA", 0)) k = a->d[0];
        return per * (k > 0 ? k : 0);
    }
    return 0;
}

/* Parameters of a node: float initializers it reads, except BatchNorm running statistics. */
static int64_t node_params(const struct qt_graph *g, const struct qt_node *n, int64_t *state)
{
    int64_t p = 0;
    for (int k = 0; k < n->nin; k++) {
        if (n->in[k] < 0) continue;
        const struct qt_value *v = &g->values[n->in[k]];
        if (!v->init || v->init->dtype != QT_F32) continue;
        int64_t c = qt_shape_numel(&v->init->shape);
        if (n->op == QT_OP_BATCHNORM && k >= 3) *state += c;
        else p += c;
    }
    return p;
}

int cmd_inspect(int argc, char **argv)
{
    const char *path = NULL;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) json = 1;
        else if (strcmp(argv[i], "--help") == 0) {
            printf("usage: qtune inspect MODEL.onnx [--json]\n");
            return 0;
        } else if (argv[i][0] == '-') return cli_fail("inspect: unknown option '%s'", argv[i]);
        else if (!path) path = argv[i];
        else return cli_fail("inspect: more than one model given");
    }
    if (!path) return cli_fail("inspect: no model given (usage: qtune inspect MODEL.onnx)");
    struct qt_graph *g = cli_load_model(path, 0);
    if (!g) return 1;
    int64_t params = 0, state = 0, macs = 0;
    char sbuf[128];
    /* rank-4 inputs are images: NCHW, or NHWC read through a Transpose (qt_image_layout) */
    const char *layout = g->ninputs == 1 && g->values[g->inputs[0]].shape.ndim == 4
                             ? (qt_image_layout(g) == QT_IMAGE_NHWC ? "NHWC" : "NCHW")
                             : NULL;
    if (json) {
        printf("{\"model\": \"%s\", \"opset\": %lld, ", path, (long long)g->opset);
        if (layout) printf("\"input_layout\": \"%s\", ", layout);
        printf("\"layers\": [");
    } else {
        printf("model %s (opset %lld, producer %s)\n", path, (long long)g->opset,
               g->producer ? g->producer : "?");
        for (int k = 0; k < g->ninputs; k++) {
            const struct qt_value *v = &g->values[g->inputs[k]];
            printf("input  %-24s %s %s%s%s\n", v->name, qt_dtype_name(v->dtype),
                   qt_shape_str(g, &v->shape, sbuf, sizeof sbuf), layout ? " images " : "",
                   layout ? layout : "");
        }
        printf("\n%4s  %-18s %-28s %-18s %10s %14s\n", "#", "op", "name", "output", "params", "MACs");
    }
    for (int i = 0; i < g->nnodes; i++) {
        const struct qt_node *n = &g->nodes[i];
        int64_t p = node_params(g, n, &state), m = node_macs(g, n);
        params += p;
        macs += m;
        qt_shape_str(g, &g->values[n->out[0]].shape, sbuf, sizeof sbuf);
        if (json)
            printf("%s{\"op\": \"%s\", \"name\": \"%s\", \"output\": \"%s\", \"params\": %lld, "
                   "\"macs\": %lld}", i ? ", " : "", qt_op_name(n->op), n->name, sbuf,
                   (long long)p, (long long)m);
        else
            printf("%4d  %-18s %-28.28s %-18s %10lld %14lld\n", i, qt_op_name(n->op), n->name, sbuf,
                   (long long)p, (long long)m);
    }
    struct qt_error e;
    int nq;
    if (json) {
        printf("], \"quantizers\": [");
        if ((nq = print_quantizers(g, 1, &e)) < 0) {
            printf("]}\n");
            qt_graph_free(g);
            return cli_fail("'%s': %s", path, e.msg);
        }
        printf("], ");
        if (print_weight_memory(g, 1, &e)) {
            printf("}\n");
            qt_graph_free(g);
            return cli_fail("'%s': %s", path, e.msg);
        }
        printf(", \"nodes\": %d, \"params\": %lld, \"state\": %lld, \"macs\": %lld}\n", g->nnodes,
               (long long)params, (long long)state, (long long)macs);
    } else {
        if ((nq = print_quantizers(g, 0, &e)) < 0) {
            qt_graph_free(g);
            return cli_fail("'%s': %s", path, e.msg);
        }
        if (print_weight_memory(g, 0, &e)) {
            qt_graph_free(g);
            return cli_fail("'%s': %s", path, e.msg);
        }
        for (int k = 0; k < g->noutputs; k++) {
            const struct qt_value *v = &g->values[g->outputs[k]];
            printf("\noutput %-24s %s %s", v->name, qt_dtype_name(v->dtype),
                   qt_shape_str(g, &v->shape, sbuf, sizeof sbuf));
        }
        printf("\n\n%d nodes, %lld parameters (%.2f MB as float32), %lld BatchNorm statistics, "
               "%.2f M MACs per sample, %d quantizers\n", g->nnodes, (long long)params, params * 4 / 1e6,
               (long long)state, macs / 1e6, nq);
    }
    qt_graph_free(g);
    return 0;
}
