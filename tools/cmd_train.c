/* qtune train: FP32 training or fine-tuning of a model on a dataset, with a per-epoch log,
 * checkpoints, resume, Ctrl-C handling and the best model kept beside the final one; with
 * --psgd, gradients scaled towards a low-bit grid (PSGD) so that the model can be rounded to
 * it afterwards (qtune finetune --epochs 0). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../graph/schema.h"
#include "../passes/passes.h"
#include "cli.h"
#include "recipe.h"

#define MAX_OVERRIDES 64

static void usage(void)
{
    printf("usage: qtune train MODEL.onnx --data DATA --epochs E -o OUT.onnx [options]\n"
           "  --psgd               scale each weight's gradient by its distance to the uniform\n"
           "                       grid of --wbits (position-based scaled gradients), so that\n"
           "                       the trained model rounds to that grid with little loss\n"
           "  --wbits W            PSGD: weight bits (default 4)\n"
           "  --lambda-s X         PSGD: strength of the scaling (default 150)\n"
           "  --first-last M       PSGD: first conv and last layer scaled towards 8 bits, the\n"
           "                       same bits as the others, or float (not scaled); default:\n"
           "                       same from 4 bits up, else 8\n"
           "  --layer PAT=SPEC     PSGD: weight bits of the layers matching PAT (see finetune)\n");
    recipe_usage(0);
}

/* Which parameters PSGD scales towards which grid (per graph value) and the report lines. */
static int psgd_plan(struct qt_graph *g, long wbits, const char *first_last,
                     struct qt_quant_override *ov, int nov, int **bits_out,
                     struct recipe_extra *extra)
{
    for (int i = 0; i < g->nnodes; i++)
        if (!g->nodes[i].dead &&
            (g->nodes[i].op == QT_OP_WEIGHTQUANT || g->nodes[i].op == QT_OP_ACTQUANT))
            return cli_fail("train: --psgd trains a float model, and '%s' has quantizers (train "
                            "the float model, then quantize it with qtune finetune)",
                            g->nodes[i].name);
    struct qt_quant_config qc;
    memset(&qc, 0, sizeof qc);
    qc.scheme = QT_QS_UNIFORM;
    qc.wbits = (int)wbits;
    qc.first_last = !first_last ? (wbits >= 4 ? QT_FL_SAME : QT_FL_8BIT)
                    : !strcmp(first_last, "8")    ? QT_FL_8BIT
                    : !strcmp(first_last, "same") ? QT_FL_SAME
                    : !strcmp(first_last, "float") ? QT_FL_FLOAT
                                                   : (enum qt_first_last)-1;
    if ((int)qc.first_last < 0)
        return cli_fail("train: --first-last must be 8, same or float, not '%s'", first_last);
    qc.int8_absmax = 1;
    qc.overrides = ov;
    qc.noverrides = nov;
    int *bits = calloc(g->nvalues + 1, sizeof *bits);
    struct qt_error e;
    if (!bits) return cli_fail("train: out of memory");
    if (qt_quant_weight_bits(g, &qc, bits, &e)) {
        free(bits);
        return cli_fail("train: --psgd: %s", e.msg);
    }
    int n = 0, lo = 99, hi = 0;
    for (int v = 0; v < g->nvalues; v++) {
        if (!bits[v]) continue;
        if (bits[v] < 2) {
            const int b = bits[v];
            free(bits);
            return cli_fail("train: --psgd needs at least 2 bits ('%s' has %d)", g->values[v].name,
                            b);
        }
        n++;
        lo = bits[v] < lo ? bits[v] : lo;
        hi = bits[v] > hi ? bits[v] : hi;
    }
    if (!n) {
        free(bits);
        return cli_fail("train: --psgd: the model has no Conv, Gemm or MatMul weight to scale");
    }
    *bits_out = bits;
    snprintf(extra->json, sizeof extra->json,
             "\"psgd\": {\"wbits\": %ld, \"tensors\": %d, \"min_bits\": %d, \"max_bits\": %d}",
             wbits, n, lo, hi);
    if (lo == hi)
        snprintf(extra->text, sizeof extra->text,
                 "PSGD: %d weight tensors trained towards %d-bit grids\n", n, lo);
    else
        snprintf(extra->text, sizeof extra->text,
                 "PSGD: %d weight tensors trained towards %d- to %d-bit grids\n", n, lo, hi);
    return 0;
}

int cmd_train(int argc, char **argv)
{
    struct recipe r;
    recipe_defaults(&r, "train", 0);
    const char *path = NULL, *first_last = NULL;
    int psgd = 0, nov = 0, wbits_given = 0;
    long wbits = 4;
    double lambda = 150;
    struct qt_quant_override ov[MAX_OVERRIDES];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const int has = i + 1 < argc;
        char *end;
        if (strcmp(a, "--help") == 0) {
            usage();
            return 0;
        }
        if (strcmp(a, "--psgd") == 0) {
            psgd = 1;
            continue;
        }
        if (strcmp(a, "--wbits") == 0 && has) {
            wbits = strtol(argv[++i], &end, 10);
            if (*end || !*argv[i] || wbits < 2 || wbits > 8)
                return cli_fail("train: --wbits needs a bit width from 2 to 8");
            wbits_given = 1;
            continue;
        }
        if (strcmp(a, "--lambda-s") == 0 && has) {
            lambda = strtod(argv[++i], &end);
            if (*end || !*argv[i] || !(lambda >= 0) || lambda > 1e6)
                return cli_fail("train: --lambda-s needs a number from 0 to 1e6");
            wbits_given |= 2;
            continue;
        }
        if (strcmp(a, "--first-last") == 0 && has) {
            first_last = argv[++i];
            wbits_given |= 4;
            continue;
        }
        if (strcmp(a, "--layer") == 0 && has) {
            struct qt_error e;
            if (nov == MAX_OVERRIDES)
                return cli_fail("train: at most %d --layer options", MAX_OVERRIDES);
            if (qt_quant_spec_parse(&ov[nov++], argv[++i], &e)) return cli_fail("train: %s", e.msg);
            wbits_given |= 8;
            continue;
        }
        int got = recipe_option(&r, argc, argv, &i);
        if (got < 0) return 1;
        if (got) continue;
        if (a[0] == '-') return cli_fail("train: unknown or incomplete option '%s'", a);
        if (path) return cli_fail("train: more than one model given");
        path = a;
    }
    if (!path || !r.data || !r.out || r.epochs < 0)
        return cli_fail("train: usage: qtune train MODEL.onnx --data DATA --epochs E -o OUT.onnx");
    if (wbits_given && !psgd)
        return cli_fail("train: --wbits, --lambda-s, --first-last and --layer belong to --psgd");
    int rc = recipe_check(&r);
    if (rc) return rc;
    struct qt_graph *g = cli_load_model(path, 0);
    if (!g) return 1;
    struct recipe_data d;
    struct recipe_extra extra;
    memset(&extra, 0, sizeof extra);
    memset(&d, 0, sizeof d);
    struct qt_backend *b = NULL;
    int *bits = NULL;
    if (psgd && (rc = psgd_plan(g, wbits, first_last, ov, nov, &bits, &extra))) goto out;
    r.psgd_bits = bits;
    r.psgd_lambda = (float)lambda;
    if (!(rc = recipe_load_data(&r, g, path, &d))) {
        if (!(b = cli_backend_new("train", r.device, r.threads))) rc = 1;
        else rc = recipe_run(&r, g, path, &d, b, psgd ? &extra : NULL);
    }
    recipe_data_free(&d);
out:
    if (b) b->destroy(b);
    free(bits);
    qt_graph_free(g);
    return rc;
}
