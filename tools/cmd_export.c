/* qtune export: writes a model in standard ONNX that stock runtimes run unchanged; quantized
 * models have their ai.qtune quantizers lowered (passes/lower_export.c). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../onnx/onnx.h"
#include "../passes/passes.h"
#include "../runtime/calib.h"
#include "../runtime/data/dataset.h"
#include "../runtime/loops.h"
#include "../util/version.h"
#include "cli.h"

static void usage(void)
{
    printf("usage: qtune export MODEL.onnx [--format onnx|qdq|float|integer|qlinear] -o OUT.onnx [options]\n"
           "  --format onnx   standard operators, weights stored as packed level codes (default)\n"
           "  --format qdq    QuantizeLinear/DequantizeLinear on an 8-bit grid (integer runtimes)\n"
           "  --format float  weights stored as float values on the quantization grid\n"
           "  --format integer  qdq with BatchNorm folded and the convolutions between\n"
           "                  quantized inputs and weights as ConvInteger on the integer codes\n"
           "                  (exact sums; integer kernels in onnxruntime)\n"
           "  --format qlinear  qdq with BatchNorm folded and 8-bit convolution outputs, whose\n"
           "                  ranges are measured on DATA's training images: onnxruntime runs\n"
           "                  the convolutions as QLinearConv (needs --data; not exact)\n"
           "  --data DATA     evaluate the model on DATA's test split first and record its top-1\n"
           "  --calib-images N  training images measured for --format qlinear (default 512)\n"
           "  --mean a,b,c --std a,b,c | --preset NAME   normalization for --data\n"
           "  --limit N       evaluate the first N test images only\n"
           "  --crop S        with --data: images of any size resized (--resize R) and\n"
           "                  center-cropped to S x S (see qtune eval)\n"
           "  --json          print a JSON summary as the last line\n"
           "A model without quantizers is written as its canonicalized float graph in every format.\n");
}

/* Format qlinear: the output range of every convolution it requantizes, measured on cal's
 * training images (*n of them; names point into g). Returns the exit status. */
static int measure_ranges(struct qt_graph *g, const char *path, const struct cli_export_calib *cal,
                          struct qt_export_range **ranges, int *n)
{
    *ranges = NULL;
    *n = 0;
    if (!cal)
        return cli_fail("export: --format qlinear needs --data: the ranges of its 8-bit "
                        "convolution outputs are measured on training images");
    int *v = malloc(sizeof(int) * (g->nnodes ? g->nnodes : 1));
    struct qt_export_range *r = calloc(g->nnodes ? g->nnodes : 1, sizeof *r);
    float *lo = malloc(sizeof(float) * (g->nnodes ? g->nnodes : 1));
    float *hi = malloc(sizeof(float) * (g->nnodes ? g->nnodes : 1));
    float *cap = malloc(sizeof(float) * (g->nnodes ? g->nnodes : 1));
    int rc = 0, k = 0, mapped = 0;
    if (!v || !r || !lo || !hi || !cap) {
        rc = cli_fail("export: out of memory");
        goto out;
    }
    for (int i = 0; i < g->nnodes; i++) {
        const int x = qt_export_requant_value(g, i, &cap[k]);
        mapped += x == -2;
        if (x < 0) continue;
        v[k] = x;
        r[k++].conv = g->nodes[i].name;
    }
    if (mapped)
        fprintf(stderr, "qtune: warning: export: %d convolutions keep float kernels in format "
                        "qlinear: their weights are mapped back to their mean (post-training "
                        "quantization of standardized weights); fine-tuned models, --no-standardize "
                        "or --format integer have integer kernels throughout\n", mapped);
    if (k > 0) {
        const long images = cal->images > 0 ? cal->images : 512;
        struct qt_calib_config c = {.batch = images < 128 ? (int)images : 128, .seed = 0,
                                    .mean = cal->mean, .std = cal->std};
        c.batches = (int)((images + c.batch - 1) / c.batch);
        struct qt_error e;
        if (qt_calib_value_ranges(g, cal->b, cal->train, &c, v, k, lo, hi, &e)) {
            rc = cli_fail("export: '%s': measuring convolution outputs: %s", path, e.msg);
            goto out;
        }
        for (int j = 0; j < k; j++) {
            /* below a Relu and above the alphas of the quantizers after it nothing matters */
            r[j].relu = isfinite(cap[j]);
            r[j].lo = r[j].relu ? 0.0f : lo[j];
            r[j].hi = r[j].relu && cap[j] < hi[j] ? cap[j] : hi[j];
        }
    }
    *ranges = r;
    *n = k;
    r = NULL;
out:
    free(v);
    free(r);
    free(lo);
    free(hi);
    free(cap);
    return rc;
}

int cli_export(const char *path, const char *format, const char *out, double top1,
               int64_t images, const struct cli_export_calib *cal, struct qt_export_report *rep)
{
    enum qt_export_format fmt;
    if (qt_export_format_parse(format, &fmt))
        return cli_fail("export: unknown format '%s' (available: onnx, qdq, float, integer, "
                        "qlinear)", format);
    struct qt_graph *g = cli_load_model(path, 0);
    if (!g) return 1;
    struct qt_error e;
    char buf[256];
    int rc = 0;
    struct qt_export_range *ranges = NULL;
    int nranges = 0;
    if (fmt == QT_EXPORT_QLINEAR && (rc = measure_ranges(g, path, cal, &ranges, &nranges))) {
        qt_graph_free(g);
        return rc;
    }
    qt_graph_set_meta(g, "qtune.version", QT_VERSION);
    if (g->ninputs == 1) {
        const struct qt_value *in = &g->values[g->inputs[0]];
        qt_graph_set_meta(g, "qtune.input_layout",
                          in->shape.ndim != 4                       ? "as the input"
                          : qt_image_layout(g) == QT_IMAGE_NHWC ? "NHWC"
                                                                  : "NCHW");
        qt_graph_set_meta(g, "qtune.input_shape", qt_shape_str(g, &in->shape, buf, sizeof buf));
    }
    if (top1 >= 0) {
        snprintf(buf, sizeof buf, "%.4f", top1);
        qt_graph_set_meta(g, "qtune.top1", buf);
        snprintf(buf, sizeof buf, "%lld", (long long)images);
        qt_graph_set_meta(g, "qtune.top1_images", buf);
    }
    if (qt_pass_lower_export(g, fmt, ranges, nranges, rep, &e))
        rc = cli_fail("export: '%s': %s", path, e.msg);
    else if (qt_onnx_save(g, out, &e)) rc = cli_fail("%s", e.msg);
    else if ((fmt == QT_EXPORT_INTEGER || fmt == QT_EXPORT_QLINEAR) && rep->integer_convs == 0)
        fprintf(stderr, "qtune: warning: export: no convolution reads a quantized activation "
                        "with quantized weights: '%s' has no integer kernels\n", out);
    free(ranges);
    qt_graph_free(g);
    return rc;
}

int cmd_export(int argc, char **argv)
{
    const char *path = NULL, *out = NULL, *format = "onnx", *data = NULL, *preset = NULL;
    const char *mean_s = NULL, *std_s = NULL;
    long limit = 0, resize = 0, crop = 0, calib_images = 512;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has = i + 1 < argc;
        const int sized = cli_image_size_option("export", argc, argv, &i, &resize, &crop);
        if (sized < 0) return 1;
        if (sized) continue;
        if (strcmp(a, "--format") == 0 && has) format = argv[++i];
        else if (strcmp(a, "-o") == 0 && has) out = argv[++i];
        else if (strcmp(a, "--data") == 0 && has) data = argv[++i];
        else if (strcmp(a, "--preset") == 0 && has) preset = argv[++i];
        else if (strcmp(a, "--mean") == 0 && has) mean_s = argv[++i];
        else if (strcmp(a, "--std") == 0 && has) std_s = argv[++i];
        else if (strcmp(a, "--json") == 0) json = 1;
        else if (strcmp(a, "--limit") == 0 && has) {
            if ((limit = cli_parse_long(argv[++i])) <= 0)
                return cli_fail("export: --limit needs a positive integer");
        } else if (strcmp(a, "--calib-images") == 0 && has) {
            if ((calib_images = cli_parse_long(argv[++i])) < 2)
                return cli_fail("export: --calib-images needs an integer of at least 2");
        } else if (strcmp(a, "--help") == 0) {
            usage();
            return 0;
        } else if (a[0] == '-') return cli_fail("export: unknown or incomplete option '%s'", a);
        else if (!path) path = a;
        else return cli_fail("export: more than one model given");
    }
    if (!path || !out)
        return cli_fail("export: usage: qtune export MODEL.onnx "
                        "--format onnx|qdq|float|integer|qlinear -o OUT.onnx");
    if ((mean_s != NULL) != (std_s != NULL)) return cli_fail("export: --mean and --std go together");
    enum qt_export_format fmt;
    if (qt_export_format_parse(format, &fmt))
        return cli_fail("export: unknown format '%s' (available: onnx, qdq, float, integer, "
                        "qlinear)", format);
    if (fmt == QT_EXPORT_QLINEAR && !data)
        return cli_fail("export: --format qlinear needs --data: the ranges of its 8-bit "
                        "convolution outputs are measured on training images");
    struct qt_eval_result r;
    memset(&r, 0, sizeof r);
    r.top1 = -1;
    if (data) {
        /* the quantized graph, before lowering */
        int rc = cli_evaluate("export", path, data, "test", preset, mean_s, std_s, 128, limit,
                              resize, crop, "auto", 0, 0, &r, NULL, 0);
        if (rc) return rc;
    }
    struct qt_export_report rep;
    int rc;
    if (fmt == QT_EXPORT_QLINEAR) {
        /* the training split for the output ranges, normalized as the evaluation was */
        struct qt_dataset train;
        struct qt_error e;
        float mean[4], std[4];
        memset(&train, 0, sizeof train);
        struct qt_graph *g = NULL;
        struct qt_backend *b = NULL;
        if (qt_dataset_load_sized(&train, data, "train", (int)resize, (int)crop, &e))
            rc = cli_fail("%s", e.msg);
        else if (!(g = cli_load_model(path, 0))) rc = 1;
        else if (!(rc = cli_normalization("export", g, path, preset, mean_s, std_s, train.c, mean,
                                          std))) {
            if (!(b = cli_backend_new("export", "auto", 0))) rc = 1;
            else {
                const struct cli_export_calib cal = {&train, mean, std, b, calib_images};
                rc = cli_export(path, format, out, r.top1, r.images, &cal, &rep);
            }
        }
        if (b) b->destroy(b);
        qt_graph_free(g);
        qt_dataset_free(&train);
    } else
        rc = cli_export(path, format, out, r.top1, r.images, NULL, &rep);
    if (rc) return rc;
    printf("exported %s as %s: %d weight and %d activation quantizers lowered, quantized weights "
           "%lld bytes",
           path, format, rep.weights, rep.acts, (long long)rep.weight_bytes);
    if (fmt == QT_EXPORT_QLINEAR)
        printf(", %d convolutions with 8-bit outputs (ranges from %ld training images)",
               rep.integer_convs, calib_images);
    if (fmt == QT_EXPORT_INTEGER) printf(", %d convolutions on integer codes", rep.integer_convs);
    if (!data) printf("\n");
    if (data) printf("; top-1 %.2f%% on %lld test images\n", r.top1, (long long)r.images);
    printf("wrote %s\n", out);
    if (json)
        printf("{\"format\": \"%s\", \"weights\": %d, \"acts\": %d, \"weight_bytes\": %lld, "
               "\"integer_convs\": %d, \"top1\": %.4f, \"images\": %lld}\n",
               format, rep.weights, rep.acts, (long long)rep.weight_bytes, rep.integer_convs,
               r.top1, (long long)r.images);
    return 0;
}
