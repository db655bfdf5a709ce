/* ONNX's own backend test cases (Debian's libonnx-testdata) as qtune tests: every case of
 * node/ and pytorch-converted/ whose ops qtune supports is loaded, run on the CPU backend and
 * compared with the expected outputs (rtol 1e-3, atol 1e-5 as ONNX's runner uses).
 * skip.txt lists the cases that are skipped, each with its reason. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <onnx/onnx.pb-c.h>

#include "../../graph/schema.h"
#include "../../onnx/onnx.h"
#include "../../passes/passes.h"
#include "../../runtime/exec.h"
#include "../unit/harness.h"

#ifndef QT_ONNX_TESTDATA
#define QT_ONNX_TESTDATA "/usr/share/libonnx-testdata/data"
#endif

struct ocase {
    char name[160];
    char dir[600];
};

static const char *skip_reason(const char *name)
{
    static char reason[512];
    FILE *f = fopen("tests/onnx_node/skip.txt", "r");
    if (!f) return NULL;
    char line[1024];
    const char *found = NULL;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#' || line[0] == '\n') continue;
        char *colon = strchr(line, ':');
        if (!colon) continue;
        *colon = 0;
        if (strcmp(line, name) == 0) {
            char *r = colon + 1;
            while (*r == ' ') r++;
            r[strcspn(r, "\n")] = 0;
            snprintf(reason, sizeof reason, "%s", r);
            found = reason;
            break;
        }
    }
    fclose(f);
    return found;
}

static int load_tensor_file(const char *path, struct qt_tensor **t)
{
    struct qt_error e;
    *t = qt_onnx_load_tensor(path, NULL, 0, &e);
    if (!*t) return qt_test_fail("%s", e.msg);
    return 0;
}

static int run_case(const void *arg)
{
    const struct ocase *c = arg;
    const char *why = skip_reason(c->name);
    if (why) return qt_test_skip("%s", why);
    char path[2048];
    struct qt_error e;
    snprintf(path, sizeof path, "%s/model.onnx", c->dir);
    struct qt_graph *g = qt_onnx_load(path, &e);
    if (!g) return qt_test_fail("load: %s", e.msg);
    int rc = 0;
    struct qt_backend *b = qt_backend_cpu_new(0);
    struct qt_exec *x = NULL;
    struct qt_tensor *ins[16] = {0};
    if (!b) {
        rc = qt_test_fail("cannot create the CPU backend (oneDNN engine or stream creation "
                          "failed, or out of memory)");
        goto out;
    }
    if (g->ninputs > 16 || g->noutputs > 16) {
        rc = qt_test_fail("too many inputs");
        goto out;
    }
    if (qt_pass_canonicalize(g, &e)) {
        rc = qt_test_fail("canonicalize: %s", e.msg);
        goto out;
    }
    x = qt_exec_new(g, b, &e);
    if (!x) {
        rc = qt_test_fail("%s", e.msg);
        goto out;
    }
    int sets = 0;
    for (int s = 0;; s++) {
        char sd[1024];
        struct stat st;
        snprintf(sd, sizeof sd, "%s/test_data_set_%d", c->dir, s);
        if (stat(sd, &st) != 0) break;
        sets++;
        for (int k = 0; k < g->ninputs; k++) {
            snprintf(path, sizeof path, "%s/input_%d.pb", sd, k);
            if (load_tensor_file(path, &ins[k])) {
                rc = 1;
                goto out;
            }
        }
        if (qt_exec_forward(x, (const struct qt_tensor **)ins, &e)) {
            rc = qt_test_fail("run: %s", e.msg);
            goto out;
        }
        for (int k = 0; k < g->noutputs; k++) {
            struct qt_tensor *want;
            snprintf(path, sizeof path, "%s/output_%d.pb", sd, k);
            if (load_tensor_file(path, &want)) {
                rc = 1;
                goto out;
            }
            const struct qt_tensor *got = qt_exec_output(x, k);
            char s1[128], s2[128];
            if (!qt_shape_eq(&got->shape, &want->shape) && qt_shape_numel(&got->shape) != qt_shape_numel(&want->shape)) {
                rc = qt_test_fail("output %d: shape %s, expected %s", k,
                                  qt_shape_str(g, &got->shape, s1, sizeof s1),
                                  qt_shape_str(g, &want->shape, s2, sizeof s2));
            } else if (got->shape.ndim != want->shape.ndim) {
                rc = qt_test_fail("output %d: rank %d, expected %d", k, got->shape.ndim, want->shape.ndim);
            } else {
                int64_t n = qt_shape_numel(&want->shape);
                for (int64_t i = 0; i < n; i++) {
                    double a = qt_tensor_get_f(got, i), w = qt_tensor_get_f(want, i);
                    if (isnan(w) && isnan(a)) continue;
                    if (isinf(w) && a == w) continue;
                    if (!(fabs(a - w) <= 1e-5 + 1e-3 * fabs(w))) {
                        rc = qt_test_fail("output %d element %lld: got %.8g, expected %.8g", k,
                                          (long long)i, a, w);
                        break;
                    }
                }
            }
            qt_tensor_free(want);
            if (rc) goto out;
        }
        for (int k = 0; k < g->ninputs; k++) {
            qt_tensor_free(ins[k]);
            ins[k] = NULL;
        }
    }
    if (!sets) rc = qt_test_fail("no test data sets in %s", c->dir);
out:
    for (int k = 0; k < 16; k++) qt_tensor_free(ins[k]);
    qt_exec_free(x);
    if (b) b->destroy(b);
    qt_graph_free(g);
    return rc;
}

/* Whether every node of the case's model is an op qtune's schema knows. */
static int case_uses_supported_ops(const char *dir)
{
    char path[2048];
    snprintf(path, sizeof path, "%s/model.onnx", dir);
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (len <= 0 || len > (64 << 20)) {
        fclose(f);
        return 0;
    }
    uint8_t *buf = malloc(len);
    size_t got = fread(buf, 1, len, f);
    fclose(f);
    Onnx__ModelProto *mp = got == (size_t)len ? onnx__model_proto__unpack(NULL, len, buf) : NULL;
    free(buf);
    if (!mp) return 0;
    int ok = mp->graph && mp->graph->n_node > 0;
    for (size_t i = 0; ok && i < mp->graph->n_node; i++) {
        const Onnx__NodeProto *n = mp->graph->node[i];
        ok = qt_schema_lookup(n->domain ? n->domain : "", n->op_type ? n->op_type : "") != QT_OP_INVALID;
    }
    onnx__model_proto__free_unpacked(mp, NULL);
    return ok;
}

/* Registered cases live for the whole run. */
static struct ocase cases[4096];
static int ncases;

static void scan(const char *sub)
{
    char root[256];
    snprintf(root, sizeof root, "%s/%s", QT_ONNX_TESTDATA, sub);
    DIR *d = opendir(root);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strncmp(de->d_name, "test_", 5) != 0) continue;
        if (ncases == (int)(sizeof cases / sizeof cases[0])) break;
        struct ocase *c = &cases[ncases];
        snprintf(c->dir, sizeof c->dir, "%s/%s", root, de->d_name);
        if (!case_uses_supported_ops(c->dir)) continue;
        ncases++;
        snprintf(c->name, sizeof c->name, "onnx_%s_%s", strcmp(sub, "node") == 0 ? "node" : "torch",
                 de->d_name + 5);
        qt_test_register_arg(c->name, run_case, c);
    }
    closedir(d);
}

static int testdata_present(void)
{
    struct stat st;
    if (stat(QT_ONNX_TESTDATA "/node", &st) == 0) return 0;
    return qt_test_skip("ONNX test data not found at %s (Debian package libonnx-testdata)",
                        QT_ONNX_TESTDATA);
}

__attribute__((constructor)) static void register_cases(void)
{
    scan("node");
    scan("pytorch-converted");
    qt_test_register("onnx_testdata_present", testdata_present);
}
