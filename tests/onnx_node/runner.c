/* ONNX's own backend test cases (Debian's libonnx-testdata) as qtune tests: every case of
 * node/ and pytorch-converted/ whose ops qtune supports is loaded, run on the CPU backend and
 * compared with the expected outputs: the full shape, the dtype, then every value (rtol 1e-3,
 * atol 1e-5 as ONNX's runner uses; NaN only where NaN is expected). The data folder comes
 * from tests/paths.conf.
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

struct ocase {
    char name[160];
    char dir[1700];
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

/* Compares an output with the expected tensor: shape (every dimension), dtype, values.
 * Returns 0 when they agree, else 1 with the first difference described in why. */
static int compare_output(const struct qt_tensor *got, const struct qt_tensor *want, char *why,
                          size_t nwhy)
{
    char s1[128], s2[128];
    if (!qt_shape_eq(&got->shape, &want->shape)) {
        snprintf(why, nwhy, "shape %s, expected %s", qt_shape_str(NULL, &got->shape, s1, sizeof s1),
                 qt_shape_str(NULL, &want->shape, s2, sizeof s2));
        return 1;
    }
    if (got->dtype != want->dtype) {
        snprintf(why, nwhy, "dtype %s, expected %s", qt_dtype_name(got->dtype),
                 qt_dtype_name(want->dtype));
        return 1;
    }
    const int64_t n = qt_shape_numel(&want->shape);
    for (int64_t i = 0; i < n; i++) {
        const double a = qt_tensor_get_f(got, i), w = qt_tensor_get_f(want, i);
        if (isnan(w) && isnan(a)) continue;
        if (isinf(w) && a == w) continue;
        if (!(fabs(a - w) <= 1e-5 + 1e-3 * fabs(w))) {
            snprintf(why, nwhy, "element %lld: got %.8g, expected %.8g", (long long)i, a, w);
            return 1;
        }
    }
    return 0;
}

static struct qt_tensor *tensor_2d(enum qt_dtype dt, int64_t r, int64_t c, float fill)
{
    struct qt_shape sh = {0};
    sh.ndim = 2;
    sh.d[0] = r;
    sh.d[1] = c;
    struct qt_tensor *t = qt_tensor_new(dt, &sh);
    if (t && dt == QT_F32)
        for (int64_t i = 0; i < r * c; i++) ((float *)t->data)[i] = fill;
    return t;
}

/* The comparison itself: a reshaped output ([6,20] for [2,60]), another dtype, a NaN where a
 * number is expected and a number where NaN is expected all fail; equal tensors pass. */
QT_TEST(onnx_node_compare_rejects_mismatches)
{
    char why[256];
    struct qt_tensor *want = tensor_2d(QT_F32, 2, 60, 1.5f), *same = tensor_2d(QT_F32, 2, 60, 1.5f),
                     *reshaped = tensor_2d(QT_F32, 6, 20, 1.5f), *ints = tensor_2d(QT_I32, 2, 60, 0),
                     *nan = tensor_2d(QT_F32, 2, 60, NAN), *nanwant = tensor_2d(QT_F32, 2, 60, NAN);
    QT_CHECK(want && same && reshaped && ints && nan && nanwant);
    ((float *)nan->data)[0] = 1.5f; /* one number among NaNs */
    int ok = compare_output(same, want, why, sizeof why) == 0 &&
             compare_output(reshaped, want, why, sizeof why) == 1 && strstr(why, "shape") &&
             compare_output(ints, want, why, sizeof why) == 1 && strstr(why, "dtype") &&
             compare_output(nan, want, why, sizeof why) == 1 &&
             compare_output(nanwant, nanwant, why, sizeof why) == 0 &&
             compare_output(nan, nanwant, why, sizeof why) == 1;
    struct qt_tensor *all[] = {want, same, reshaped, ints, nan, nanwant};
    for (int i = 0; i < 6; i++) qt_tensor_free(all[i]);
    QT_CHECK(ok);
    return 0;
}

static int run_case(const void *arg)
{
    const struct ocase *c = arg;
    const char *why = skip_reason(c->name);
    if (why) return qt_test_skip("%s", why);
    char path[2200];
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
        char sd[1800];
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
            char why[512];
            if (compare_output(got, want, why, sizeof why))
                rc = qt_test_fail("output %d (data set %d): %s", k, s, why);
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
    char path[2200];
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
    char root[1300], why[1400];
    if (qt_test_data_find(root, sizeof root, "onnx-testdata", sub, why, sizeof why)) return;
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
    char path[1300];
    return qt_test_require(path, sizeof path, "onnx-testdata", "node/test_abs/model.onnx");
}

__attribute__((constructor)) static void register_cases(void)
{
    scan("node");
    scan("pytorch-converted");
    qt_test_register("onnx_testdata_present", testdata_present);
}
