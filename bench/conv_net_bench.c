/* Times the forward pass of a whole model through qtune's executor on the CPU backend, on one
 * fixed random batch, as `qtune eval` prepares the model (canonicalize, BatchNorm folded) but
 * without data loading: the counterpart of onnxruntime's session.run in
 * `bench/conv_ort_bench.py --model`. The backend's forward functions are wrapped to add up
 * the time per kind of step (an op, or an op with the ops fused into it, as qt_exec_forward
 * runs them; --plain: every node on its own in plain NCHW, QT_EXEC_PLAIN). Build (after
 * `make`) and run from the repository root:
 *
 *   gcc -std=c11 -D_DEFAULT_SOURCE -O2 -fopenmp -I. -Ibuild/gen -o build/conv_net_bench \
 *       bench/conv_net_bench.c build/libqtune.a \
 *       -L/usr/lib/x86_64-linux-gnu/openblas-openmp \
 *       -Wl,-rpath,/usr/lib/x86_64-linux-gnu/openblas-openmp -lopenblas -ldnnl \
 *       -lprotobuf-c -ljpeg -lpng -lz -lm
 *   build/conv_net_bench MODEL.onnx [--batch N] [--reps R] [--threads T] [--plain]
 *
 * Warm-up runs first (primitive creation and JIT), then R timed runs; prints the median time
 * per batch, images/s and each kind's share of the mean batch time. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "graph/schema.h"
#include "kernels/cpu/cpu.h"
#include "onnx/onnx.h"
#include "passes/passes.h"
#include "runtime/backend.h"
#include "runtime/exec.h"

#define USAGE "MODEL.onnx [--batch N] [--reps R] [--threads T] [--plain]"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Time per kind of step (an op, or an op with the ops fused into it, "Conv+Add+Relu"),
 * collected by the wrapped forward functions of the backend; conversions to plain order are
 * one more kind. */
#define MAX_KINDS 32
struct kind {
    char name[64];
    double ms;
    long calls;
};
static struct kind kinds[MAX_KINDS];
static int nkinds;
static struct qt_backend inner; /* the backend's own functions */

static struct kind *kind_of(const char *name)
{
    for (int i = 0; i < nkinds; i++)
        if (!strcmp(kinds[i].name, name)) return &kinds[i];
    if (nkinds == MAX_KINDS) return &kinds[MAX_KINDS - 1];
    snprintf(kinds[nkinds].name, sizeof kinds[nkinds].name, "%s", name);
    return &kinds[nkinds++];
}

static void account(const char *name, double ms)
{
    struct kind *k = kind_of(name);
    k->ms += ms;
    k->calls++;
}

static int timed_forward(struct qt_backend *b, const struct qt_op_desc *d, const float *const *in,
                         float *const *out, float *ws, struct qt_error *e)
{
    const double t0 = now_ms();
    const int rc = inner.forward(b, d, in, out, ws, e);
    account(qt_opk_name(d->kind), now_ms() - t0);
    return rc;
}

static int timed_forward_infer(struct qt_backend *b, const struct qt_step *s, struct qt_error *e)
{
    char name[64];
    int len = snprintf(name, sizeof name, "%s", qt_opk_name(s->d->kind));
    for (int i = 0; i < s->npost && len < (int)sizeof name; i++)
        len += snprintf(name + len, sizeof name - len, "+%s", qt_opk_name(s->post[i].d->kind));
    const double t0 = now_ms();
    const int rc = inner.forward_infer(b, s, e);
    account(name, now_ms() - t0);
    return rc;
}

static int timed_to_plain(struct qt_backend *b, float *dst, const float *src,
                          const int64_t dims[4], int layout, struct qt_error *e)
{
    const double t0 = now_ms();
    const int rc = inner.to_plain(b, dst, src, dims, layout, e);
    account("(to plain order)", now_ms() - t0);
    return rc;
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    int batch = 128, reps = 30, threads = 0, plain = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--batch") && i + 1 < argc)
            batch = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--plain"))
            plain = 1;
        else if (argv[i][0] != '-' && !path)
            path = argv[i];
        else {
            fprintf(stderr, "usage: %s %s\n", argv[0], USAGE);
            return 2;
        }
    }
    if (!path || batch < 1 || reps < 1) {
        fprintf(stderr, "usage: %s %s\n", argv[0], USAGE);
        return 2;
    }
    struct qt_error e;
    struct qt_graph *g = qt_onnx_load(path, &e);
    if (!g || qt_pass_canonicalize(g, &e) || qt_pass_fold_batchnorm(g, &e)) {
        fprintf(stderr, "%s: %s\n", path, e.msg);
        return 1;
    }
    struct qt_backend *b = qt_backend_cpu_new(threads);
    if (!b) {
        fprintf(stderr, "cannot create the CPU backend\n");
        return 1;
    }
    inner = *b;
    b->forward = timed_forward;
    if (b->forward_infer) b->forward_infer = timed_forward_infer;
    if (b->to_plain) b->to_plain = timed_to_plain;
    const struct qt_value *in = &g->values[g->inputs[0]];
    struct qt_shape xs = in->shape;
    xs.d[0] = batch;
    struct qt_tensor *x = qt_tensor_new(QT_F32, &xs);
    float *xd = x->data;
    uint64_t s = 12345;
    for (size_t i = 0; i < x->nbytes / sizeof(float); i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        xd[i] = (float)((s >> 40) & 0xffffff) / 16777216.0f * 2.0f - 1.0f;
    }
    struct qt_exec *ex = qt_exec_new(g, b, &e);
    if (ex && plain) qt_exec_set_mode(ex, QT_EXEC_PLAIN);
    const struct qt_tensor *ins[1] = {x};
    double *t = malloc(sizeof(double) * reps);
    for (int r = 0; r < 3; r++)
        if (!ex || qt_exec_forward(ex, ins, &e)) {
            fprintf(stderr, "%s: %s\n", path, e.msg);
            return 1;
        }
    memset(kinds, 0, sizeof kinds);
    nkinds = 0;
    for (int r = 0; r < reps; r++) {
        const double t0 = now_ms();
        if (qt_exec_forward(ex, ins, &e)) {
            fprintf(stderr, "%s: %s\n", path, e.msg);
            return 1;
        }
        t[r] = now_ms() - t0;
    }
    double sum = 0, nodes = 0;
    for (int r = 0; r < reps; r++)
        sum += t[r];
    qsort(t, reps, sizeof *t, cmp_double);
    const double med = reps % 2 ? t[reps / 2] : 0.5 * (t[reps / 2 - 1] + t[reps / 2]);
    printf("qtune executor, %s, batch %d, threads %d, reps %d: median %.3f ms per batch (min "
           "%.3f), %.0f images/s\n",
           path, batch, qt_cpu_threads(), reps, med, t[0], batch / med * 1e3);
    for (int k = 0; k < nkinds; k++)
        nodes += kinds[k].ms;
    printf("per step kind (mean ms per batch, share of the mean batch time %.3f ms):\n",
           sum / reps);
    for (int k = 0; k < nkinds; k++)
        printf("  %-24s %3ld calls %9.3f ms %6.1f%%\n", kinds[k].name, kinds[k].calls / reps,
               kinds[k].ms / reps, 100.0 * kinds[k].ms / sum);
    printf("  %-24s           %9.3f ms %6.1f%%\n", "(executor, rest)", (sum - nodes) / reps,
           100.0 * (sum - nodes) / sum);
    free(t);
    qt_exec_free(ex);
    b->destroy(b);
    qt_tensor_free(x);
    qt_graph_free(g);
    return 0;
}
