/* Times ResNet-20 (CIFAR-10) convolution forward: qtune's kernel (conv2d_forward_cpu, oneDNN
 * through a struct qt_cpu_ctx: per call a convolution descriptor, the cached primitive and
 * reorders of src, weights and dst between NCHW/OIHW and oneDNN's layouts) against a oneDNN
 * primitive created once and kept (what the per-call descriptor and cache lookup cost is
 * measured against). The im2col + OpenBLAS kernel it was first compared with is in git
 * history (commit c1b6b69) with its numbers in bench/results/conv_cpu_backend.txt. Build and
 * run from the repository root:
 *
 *   gcc -std=c11 -D_DEFAULT_SOURCE -O2 -fopenmp -I. -o build/conv_cpu_bench \
 *       bench/conv_cpu_bench.c kernels/cpu/conv.c kernels/cpu/onednn.c kernels/cpu/threads.c \
 *       -ldnnl -lm
 *   build/conv_cpu_bench [--batch N] [--reps R] [--threads T] [--isa avx2|native]
 *
 * --threads calls omp_set_num_threads(T) as the CPU backend does (default: OpenMP's own,
 * OMP_NUM_THREADS). --isa avx2 caps oneDNN at AVX2. Each layer: the first qtune call is timed
 * on its own (primitive creation and JIT), then warm-up, then R timed repetitions in which
 * the variants take turns; the median of each is printed. The network total weights each layer by how
 * many times ResNet-20 uses it; the tiny layers at the end (uses 0) show the fixed per-call
 * cost. bench/conv_ort_bench.py times onnxruntime on the same layers. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <oneapi/dnnl/dnnl.h>

#include "kernels/cpu/cpu.h"

#define CHECK(call)                                                                                \
    do {                                                                                           \
        dnnl_status_t s_ = (call);                                                                 \
        if (s_ != dnnl_success) {                                                                  \
            fprintf(stderr, "%s:%d: %s failed (%d)\n", __FILE__, __LINE__, #call, (int)s_);        \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

struct layer {
    const char *name;
    int count; /* uses in ResNet-20 */
    int c, k, hw, ks, stride, pad;
};

static const struct layer layers[] = {
    {"conv1 3->16 3x3 32x32", 1, 3, 16, 32, 3, 1, 1},
    {"s1 16->16 3x3 32x32", 6, 16, 16, 32, 3, 1, 1},
    {"s2 16->32 3x3 s2 32x32", 1, 16, 32, 32, 3, 2, 1},
    {"s2 32->32 3x3 16x16", 5, 32, 32, 16, 3, 1, 1},
    {"s3 32->64 3x3 s2 16x16", 1, 32, 64, 16, 3, 2, 1},
    {"s3 64->64 3x3 8x8", 5, 64, 64, 8, 3, 1, 1},
    {"sc 16->32 1x1 s2 32x32", 1, 16, 32, 32, 1, 2, 0},
    {"sc 32->64 1x1 s2 16x16", 1, 32, 64, 16, 1, 2, 0},
    {"tiny 16->16 3x3 4x4", 0, 16, 16, 4, 3, 1, 1},
    {"tiny 4->4 1x1 2x2", 0, 4, 4, 2, 1, 1, 0},
};
#define NLAYERS ((int)(sizeof layers / sizeof layers[0]))

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

static double median(double *v, int n)
{
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static float *rand_buf(int64_t n, uint64_t *state, float scale)
{
    float *p = aligned_alloc(64, ((size_t)n * sizeof(float) + 63) / 64 * 64);
    for (int64_t i = 0; i < n; i++) {
        *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
        p[i] = scale * ((float)((*state >> 40) & 0xffffff) / 16777216.0f - 0.5f);
    }
    return p;
}

static float *alloc_f(int64_t n)
{
    return aligned_alloc(64, ((size_t)(n > 0 ? n : 1) * sizeof(float) + 63) / 64 * 64);
}

/* oneDNN convolution with NCHW user memories and reorders around a layout-any primitive. */
struct dnnl_conv {
    dnnl_primitive_t conv, rsrc, rdst, rwei;
    dnnl_memory_t usrc, udst, uwei, bias, src, dst, wei;
    const char *impl;
};

static dnnl_memory_t make_mem(const dnnl_memory_desc_t *md, dnnl_engine_t eng, void *handle)
{
    dnnl_memory_t m;
    CHECK(dnnl_memory_create(&m, md, eng, handle ? handle : DNNL_MEMORY_ALLOCATE));
    return m;
}

static dnnl_primitive_t make_reorder(const dnnl_memory_desc_t *from, const dnnl_memory_desc_t *to,
                                     dnnl_engine_t eng)
{
    dnnl_primitive_desc_t pd;
    dnnl_primitive_t p;
    CHECK(dnnl_reorder_primitive_desc_create(&pd, from, eng, to, eng, NULL));
    CHECK(dnnl_primitive_create(&p, pd));
    CHECK(dnnl_primitive_desc_destroy(pd));
    return p;
}

static void run2(dnnl_primitive_t p, dnnl_stream_t st, int a0, dnnl_memory_t m0, int a1,
                 dnnl_memory_t m1)
{
    dnnl_exec_arg_t args[2] = {{a0, m0}, {a1, m1}};
    CHECK(dnnl_primitive_execute(p, st, 2, args));
}

static void dnnl_conv_make(struct dnnl_conv *dc, dnnl_engine_t eng, const struct qt_conv2d_desc *d,
                           float *x, float *w, float *b, float *y)
{
    dnnl_dims_t sd = {d->n, d->c, d->h, d->w}, wd = {d->k, d->c, d->kh, d->kw}, bd = {d->k},
                dd = {d->n, d->k, d->oh, d->ow};
    dnnl_dims_t strides = {d->sh, d->sw}, pl = {d->pt, d->pl}, pr = {d->pb, d->pr};
    dnnl_memory_desc_t usrc, uwei, ubias, udst, asrc, awei, adst;
    CHECK(dnnl_memory_desc_init_by_tag(&usrc, 4, sd, dnnl_f32, dnnl_nchw));
    CHECK(dnnl_memory_desc_init_by_tag(&uwei, 4, wd, dnnl_f32, dnnl_oihw));
    CHECK(dnnl_memory_desc_init_by_tag(&ubias, 1, bd, dnnl_f32, dnnl_x));
    CHECK(dnnl_memory_desc_init_by_tag(&udst, 4, dd, dnnl_f32, dnnl_nchw));
    CHECK(dnnl_memory_desc_init_by_tag(&asrc, 4, sd, dnnl_f32, dnnl_format_tag_any));
    CHECK(dnnl_memory_desc_init_by_tag(&awei, 4, wd, dnnl_f32, dnnl_format_tag_any));
    CHECK(dnnl_memory_desc_init_by_tag(&adst, 4, dd, dnnl_f32, dnnl_format_tag_any));
    dnnl_convolution_desc_t cd;
    CHECK(dnnl_convolution_forward_desc_init(&cd, dnnl_forward_inference, dnnl_convolution_direct,
                                             &asrc, &awei, &ubias, &adst, strides, pl, pr));
    dnnl_primitive_desc_t pd;
    CHECK(dnnl_primitive_desc_create(&pd, &cd, NULL, eng, NULL));
    CHECK(dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &dc->impl));
    const dnnl_memory_desc_t *psrc = dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
    const dnnl_memory_desc_t *pwei = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    const dnnl_memory_desc_t *pdst = dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    dc->usrc = make_mem(&usrc, eng, x);
    dc->uwei = make_mem(&uwei, eng, w);
    dc->bias = make_mem(&ubias, eng, b);
    dc->udst = make_mem(&udst, eng, y);
    dc->rsrc = dc->rdst = dc->rwei = NULL;
    dc->src = dc->usrc;
    dc->wei = dc->uwei;
    dc->dst = dc->udst;
    if (!dnnl_memory_desc_equal(psrc, &usrc)) {
        dc->src = make_mem(psrc, eng, NULL);
        dc->rsrc = make_reorder(&usrc, psrc, eng);
    }
    if (!dnnl_memory_desc_equal(pwei, &uwei)) {
        dc->wei = make_mem(pwei, eng, NULL);
        dc->rwei = make_reorder(&uwei, pwei, eng);
    }
    if (!dnnl_memory_desc_equal(pdst, &udst)) {
        dc->dst = make_mem(pdst, eng, NULL);
        dc->rdst = make_reorder(pdst, &udst, eng);
    }
    CHECK(dnnl_primitive_create(&dc->conv, pd));
    CHECK(dnnl_primitive_desc_destroy(pd));
}

static void dnnl_conv_weights(struct dnnl_conv *dc, dnnl_stream_t st)
{
    if (dc->rwei) run2(dc->rwei, st, DNNL_ARG_FROM, dc->uwei, DNNL_ARG_TO, dc->wei);
    CHECK(dnnl_stream_wait(st));
}

/* which: 0 = src reorder + conv + dst reorder; 1 = conv alone; 2 = as 0 with the weight
 * reorder too (the work of one qtune call). */
static void dnnl_conv_run(struct dnnl_conv *dc, dnnl_stream_t st, int which)
{
    if (which == 2 && dc->rwei) run2(dc->rwei, st, DNNL_ARG_FROM, dc->uwei, DNNL_ARG_TO, dc->wei);
    if (which != 1 && dc->rsrc) run2(dc->rsrc, st, DNNL_ARG_FROM, dc->usrc, DNNL_ARG_TO, dc->src);
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, dc->src},
                               {DNNL_ARG_WEIGHTS, dc->wei},
                               {DNNL_ARG_BIAS, dc->bias},
                               {DNNL_ARG_DST, dc->dst}};
    CHECK(dnnl_primitive_execute(dc->conv, st, 4, args));
    if (which != 1 && dc->rdst) run2(dc->rdst, st, DNNL_ARG_FROM, dc->dst, DNNL_ARG_TO, dc->udst);
    CHECK(dnnl_stream_wait(st));
}

static void dnnl_conv_free(struct dnnl_conv *dc)
{
    dnnl_primitive_destroy(dc->conv);
    if (dc->rsrc) dnnl_primitive_destroy(dc->rsrc), dnnl_memory_destroy(dc->src);
    if (dc->rdst) dnnl_primitive_destroy(dc->rdst), dnnl_memory_destroy(dc->dst);
    if (dc->rwei) dnnl_primitive_destroy(dc->rwei), dnnl_memory_destroy(dc->wei);
    dnnl_memory_destroy(dc->usrc);
    dnnl_memory_destroy(dc->udst);
    dnnl_memory_destroy(dc->uwei);
    dnnl_memory_destroy(dc->bias);
}

static void fail_qtune(struct qt_cpu_ctx *ctx)
{
    fprintf(stderr, "conv2d_forward_cpu: %s\n", qt_cpu_ctx_error(ctx));
    exit(1);
}

int main(int argc, char **argv)
{
    int batch = 128, reps = 20, threads = 0;
    const char *isa = "native";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--batch") && i + 1 < argc)
            batch = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--isa") && i + 1 < argc)
            isa = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--batch N] [--reps R] [--threads T] [--isa avx2|native]\n",
                    argv[0]);
            return 2;
        }
    }
    if (batch < 1 || reps < 1) {
        fprintf(stderr, "--batch and --reps must be positive\n");
        return 2;
    }
    if (!strcmp(isa, "avx2"))
        CHECK(dnnl_set_max_cpu_isa(dnnl_cpu_isa_avx2));
    else if (strcmp(isa, "native")) {
        fprintf(stderr, "unknown --isa %s\n", isa);
        return 2;
    }
    if (threads > 0) omp_set_num_threads(threads);

    char err[256];
    struct qt_cpu_ctx *ctx = qt_cpu_ctx_new(err, sizeof err);
    if (!ctx) {
        fprintf(stderr, "qt_cpu_ctx_new: %s\n", err);
        return 1;
    }
    dnnl_engine_t eng;
    dnnl_stream_t st;
    CHECK(dnnl_engine_create(&eng, dnnl_cpu, 0));
    CHECK(dnnl_stream_create(&st, eng, dnnl_stream_default_flags));

    const dnnl_version_t *ver = dnnl_version();
    printf("batch %d, threads %d, reps %d (median); oneDNN %d.%d.%d, isa cap: %s\n", batch,
           qt_cpu_threads(), reps, ver->major, ver->minor, ver->patch, isa);
    printf("%-24s %3s %9s %9s %9s %9s %9s %8s %9s  %s\n", "layer", "x", "first_ms", "qtune_ms",
           "kept_w_ms", "kept_ms", "conv_ms", "call_us", "maxdiff", "oneDNN impl");
    double tot_q = 0, tot_w = 0, tot_d = 0, tot_c = 0;
    uint64_t seed = 12345;
    double *tq = malloc(sizeof(double) * reps), *tw = malloc(sizeof(double) * reps),
           *td = malloc(sizeof(double) * reps), *tc = malloc(sizeof(double) * reps);
    for (int li = 0; li < NLAYERS; li++) {
        const struct layer *L = &layers[li];
        struct qt_conv2d_desc d = {0};
        d.n = batch, d.c = L->c, d.h = d.w = L->hw, d.k = L->k;
        d.kh = d.kw = L->ks, d.sh = d.sw = L->stride, d.dh = d.dw = 1;
        d.pt = d.pl = d.pb = d.pr = L->pad, d.group = 1;
        d.oh = (d.h + 2 * L->pad - L->ks) / L->stride + 1;
        d.ow = d.oh;
        const int64_t nx = (int64_t)d.n * d.c * d.h * d.w, nw = (int64_t)d.k * d.c * d.kh * d.kw,
                      ny = (int64_t)d.n * d.k * d.oh * d.ow;
        float *x = rand_buf(nx, &seed, 2.0f), *w = rand_buf(nw, &seed, 0.5f),
              *b = rand_buf(d.k, &seed, 0.2f);
        float *yq = alloc_f(ny), *yd = alloc_f(ny);

        double t0 = now_ms();
        if (conv2d_forward_cpu(ctx, yq, x, w, b, &d)) fail_qtune(ctx);
        const double first = now_ms() - t0;

        struct dnnl_conv dc;
        dnnl_conv_make(&dc, eng, &d, x, w, b, yd);
        dnnl_conv_weights(&dc, st);

        for (int r = 0; r < 3; r++) {
            if (conv2d_forward_cpu(ctx, yq, x, w, b, &d)) fail_qtune(ctx);
            dnnl_conv_run(&dc, st, 0);
        }
        /* The variants take turns within each repetition, so that drift in the machine's
         * speed (other jobs) reaches all of them alike. */
        for (int r = 0; r < reps; r++) {
            t0 = now_ms();
            if (conv2d_forward_cpu(ctx, yq, x, w, b, &d)) fail_qtune(ctx);
            tq[r] = now_ms() - t0;
            t0 = now_ms();
            dnnl_conv_run(&dc, st, 2);
            tw[r] = now_ms() - t0;
            t0 = now_ms();
            dnnl_conv_run(&dc, st, 0);
            td[r] = now_ms() - t0;
            t0 = now_ms();
            dnnl_conv_run(&dc, st, 1);
            tc[r] = now_ms() - t0;
        }
        dnnl_conv_run(&dc, st, 0);
        double md = 0, mref = 0;
        for (int64_t i = 0; i < ny; i++) {
            double e = fabs((double)yq[i] - yd[i]);
            if (!(e <= md)) md = e;
            if (fabs(yd[i]) > mref) mref = fabs(yd[i]);
        }
        double q = median(tq, reps), wq = median(tw, reps), dd = median(td, reps),
               c = median(tc, reps);
        printf("%-24s %3d %9.3f %9.3f %9.3f %9.3f %9.3f %8.1f %9.2e  %s\n", L->name, L->count,
               first, q, wq, dd, c, (q - wq) * 1e3, md / (mref > 0 ? mref : 1), dc.impl);
        fflush(stdout);
        tot_q += q * L->count;
        tot_w += wq * L->count;
        tot_d += dd * L->count;
        tot_c += c * L->count;
        dnnl_conv_free(&dc);
        free(x), free(w), free(b), free(yq), free(yd);
    }
    printf("%-24s %3s %9s %9.3f %9.3f %9.3f %9.3f %8.1f\n", "ResNet-20 convs total", "", "",
           tot_q, tot_w, tot_d, tot_c, (tot_q - tot_w) * 1e3);
    printf("first_ms: first qtune call (primitive creation, JIT); qtune_ms: conv2d_forward_cpu; "
           "kept_w_ms: kept primitive with src, weight and dst reorders (the same work); "
           "kept_ms: without the weight reorder; conv_ms: the convolution alone; call_us = "
           "qtune_ms - kept_w_ms, the per-call cost of descriptor, cache lookup and memory "
           "objects; maxdiff: |qtune - kept| relative to max |y|.\n");
    free(tq), free(tw), free(td), free(tc);
    qt_cpu_ctx_free(ctx);
    dnnl_stream_destroy(st);
    dnnl_engine_destroy(eng);
    return 0;
}
