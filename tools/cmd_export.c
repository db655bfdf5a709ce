/* qtune export: writes a model in standard ONNX that stock runtimes run unchanged; quantized
 * models have their ai.qtune quantizers lowered (passes/lower_export.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../onnx/onnx.h"
#include "../passes/passes.h"
#include "../runtime/loops.h"
#include "../util/version.h"
#include "cli.h"

static void usage(void)
{
    printf("usage: qtune export MODEL.onnx [--format onnx|qdq|float] -o OUT.onnx [options]\n"
           "  --format onnx   standard operators, weights stored as packed level codes (default)\n"
           "  --format qdq    QuantizeLinear/DequantizeLinear on an 8-bit grid (integer runtimes)\n"
           "  --format float  weights stored as float values on the quantization grid\n"
           "  --data DATA     evaluate the model on DATA's test split first and record its top-1\n"
           "  --mean a,b,c --std a,b,c | --preset NAME   normalization for --data\n"
           "  --limit N       evaluate the first N test images only\n"
           "  --crop S        with --data: images of any size resized (--resize R) and\n"
           "                  center-cropped to S x S (see qtune eval)\n"
           "  --json          print a JSON summary as the last line\n"
           "A model without quantizers is written as its canonicalized float graph in every format.\n");
}

int cli_export(const char *path, const char *format, const char *out, double top1,
               int64_t images, struct qt_export_report *rep)
{
    enum qt_export_format fmt;
    if (qt_export_format_parse(format, &fmt))
        return cli_fail("export: unknown format '%s' (available: onnx, qdq, float)", format);
    struct qt_graph *g = cli_load_model(path, 0);
    if (!g) return 1;
    struct qt_error e;
    char buf[256];
    int rc = 0;
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
    if (qt_pass_lower_export(g, fmt, rep, &e)) rc = cli_fail("export: '%s': %s", path, e.msg);
    else if (qt_onnx_save(g, out, &e)) rc = cli_fail("%s", e.msg);
    qt_graph_free(g);
    return rc;
}

int cmd_export(int argc, char **argv)
{
    const char *path = NULL, *out = NULL, *format = "onnx", *data = NULL, *preset = NULL;
    const char *mean_s = NULL, *std_s = NULL;
    long limit = 0, resize = 0, crop = 0;
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
        } else if (strcmp(a, "--help") == 0) {
            usage();
            return 0;
        } else if (a[0] == '-') return cli_fail("export: unknown or incomplete option '%s'", a);
        else if (!path) path = a;
        else return cli_fail("export: more than one model given");
    }
    if (!path || !out)
        return cli_fail("export: usage: qtune export MODEL.onnx --format onnx|qdq|float -o OUT.onnx");
    if ((mean_s != NULL) != (std_s != NULL)) return cli_fail("export: --mean and --std go together");
    enum qt_export_format fmt;
    if (qt_export_format_parse(format, &fmt))
        return cli_fail("export: unknown format '%s' (available: onnx, qdq, float)", format);
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
    int rc = cli_export(path, format, out, r.top1, r.images, &rep);
    if (rc) return rc;
    printf("exported %s as %s: %d weight and %d activation quantizers lowered, quantized weights "
           "%lld bytes%s",
           path, format, rep.weights, rep.acts, (long long)rep.weight_bytes,
           data ? "" : "\n");
    if (data) printf("; top-1 %.2f%% on %lld test images\n", r.top1, (long long)r.images);
    printf("wrote %s\n", out);
    if (json)
        printf("{\"format\": \"%s\", \"weights\": %d, \"acts\": %d, \"weight_bytes\": %lld, "
               "\"top1\": %.4f, \"images\": %lld}\n",
               format, rep.weights, rep.acts, (long long)rep.weight_bytes, r.top1,
               (long long)r.images);
    return 0;
}
