/* A training step is a fixed sequence of backend calls with one host read: the loss and the
 * counts. Checked on the ref backend, which counts every download of its memory, through the
 * training loop itself (qt_train's per-step callback sees the count between two steps), with
 * plain SGD and with PSGD (whose grid ranges stay in backend memory). */
#include <stdlib.h>
#include <string.h>

#include "../../graph/builder.h"
#include "../../graph/schema.h"
#include "../../passes/passes.h"
#include "../../runtime/train.h"
#include "harness.h"

struct step_reads {
    struct qt_backend *b;
    int64_t last[16];
    int n;
};

static void on_step(void *ctx, int epoch, int64_t done, int64_t total, double loss, double top1,
                    double seconds)
{
    struct step_reads *s = ctx;
    if (s->n < 16) s->last[s->n++] = qt_backend_ref_downloads(s->b);
}

QT_TEST(train_step_reads_once_from_the_backend)
{
    struct qt_error e;
    struct qt_graph *g = NULL;
    if (qt_build_resnet(&g, "resnet20", 1, 8, 8, 4, 3, &e)) return qt_test_fail("%s", e.msg);
    /* 24 random 8x8 images in 4 classes. */
    struct qt_dataset ds;
    memset(&ds, 0, sizeof ds);
    ds.n = 24;
    ds.c = 1;
    ds.h = ds.w = 8;
    ds.nclasses = 4;
    uint8_t pix[24 * 64];
    int32_t lab[24];
    unsigned seed = 5;
    for (int i = 0; i < 24 * 64; i++)
        pix[i] = (uint8_t)(rand_r(&seed) & 255);
    for (int i = 0; i < 24; i++)
        lab[i] = i % 4;
    ds.pixels = pix;
    ds.labels = lab;
    const float mean[1] = {0.5f}, std[1] = {0.25f};
    struct qt_train_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.epochs = 1;
    cfg.batch = 4;
    cfg.sgd.momentum = 0.9f;
    for (int k = 0; k < QT_ROLE_COUNT; k++)
        cfg.sgd.group[k].lr_scale = 1.0f;
    cfg.sched.kind = QT_SCHED_CONST;
    cfg.sched.base_lr = 0.01f;
    cfg.crop_pad = 1;
    cfg.flip = 1;
    cfg.mean = mean;
    cfg.std = std;
    int *bits = calloc(g->nvalues + 1, sizeof *bits);
    struct qt_quant_config qc = {.wbits = 4, .scheme = QT_QS_UNIFORM, .first_last = QT_FL_SAME};
    int fail = !bits || qt_quant_weight_bits(g, &qc, bits, &e) ? qt_test_fail("psgd grid bits") : 0;
    for (int psgd = 0; psgd < 2 && !fail; psgd++) {
        cfg.psgd_bits = psgd ? bits : NULL;
        cfg.psgd_lambda = 150.0f;
        struct qt_backend *b = qt_backend_new("ref", 0, &e);
        if (!b) {
            fail = qt_test_fail("%s", e.msg);
            break;
        }
        struct step_reads s = {b, {0}, 0};
        struct qt_train_callbacks cb = {.ctx = &s, .batch = on_step};
        struct qt_train_result res;
        int rc = qt_train(g, b, &ds, &ds, &cfg, &cb, &res, &e);
        b->destroy(b);
        if (rc) {
            fail = qt_test_fail("%s", e.msg);
            break;
        }
        if (!(s.n == 6 && res.steps == 6)) fail = qt_test_fail("%d steps, 6 expected", s.n);
        for (int i = 1; i < s.n && !fail; i++)
            if (s.last[i] - s.last[i - 1] != 1)
                fail = qt_test_fail("%s step %d read the backend's memory %lld times (expected once)",
                                    psgd ? "PSGD" : "SGD", i + 1,
                                    (long long)(s.last[i] - s.last[i - 1]));
    }
    free(bits);
    qt_graph_free(g);
    return fail;
}
