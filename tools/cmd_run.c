/* qtune run: one forward pass on an .npy input, output written as .npy; or the outputs for
 * every image of a dataset split, with the list of their names. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/data/dataset.h"
#include "../runtime/exec.h"
#include "../runtime/loops.h"
#include "../runtime/npy.h"
#include "cli.h"

/* Writes one line per sample to path: its file or archive entry name, or for formats without
 * names (IDX, CIFAR binary) "SPLIT #INDEX". */
static int write_names(const char *path, const struct qt_dataset *ds, const char *split,
                       int64_t n)
{
    FILE *f = fopen(path, "w");
    if (!f) return cli_fail("run: cannot write '%s'", path);
    for (int64_t i = 0; i < n; i++) {
        if (ds->sample_names) fprintf(f, "%s\n", ds->sample_names[i]);
        else fprintf(f, "%s #%lld\n", split, (long long)i);
    }
    if (fclose(f) != 0) return cli_fail("run: cannot write '%s'", path);
    return 0;
}

static int run_dataset(const char *path, const char *data, const char *split, const char *preset,
                       const char *mean_s, const char *std_s, long batch, long limit, long resize,
                       long crop, const char *device, long threads, int quiet, const char *outp)
{
    struct qt_graph *g = cli_load_model(path, 1);
    if (!g) return 1;
    struct qt_error e;
    struct qt_dataset ds;
    memset(&ds, 0, sizeof ds);
    struct qt_backend *b = NULL;
    struct qt_tensor *y = NULL;
    int rc = 0;
    if (!quiet) fprintf(stderr, "loading %s (%s split)...\n", data, split);
    if (qt_dataset_load_sized(&ds, data, split, (int)resize, (int)crop, &e)) {
        rc = cli_fail("%s", e.msg);
        goto out;
    }
    float mean[4], std[4];
    if ((rc = cli_normalization("run", g, path, preset, mean_s, std_s, ds.c, mean, std))) goto out;
    if (!(b = cli_backend_new("run", device, threads))) {
        rc = 1;
        goto out;
    }
    struct cli_progress prog;
    cli_progress_init(&prog, "run", "img", quiet);
    double seconds;
    if (qt_predict(g, b, &ds, mean, std, (int)batch, limit, cli_progress_update, &prog, &y,
                   &seconds, &e)) {
        rc = cli_fail("'%s': %s", path, e.msg);
        goto out;
    }
    cli_progress_end(&prog);
    /* the names beside the outputs: y.npy -> y.txt */
    char names[4096];
    const size_t len = strlen(outp);
    if (len >= 4 && strcmp(outp + len - 4, ".npy") == 0)
        snprintf(names, sizeof names, "%.*s.txt", (int)(len - 4), outp);
    else
        snprintf(names, sizeof names, "%s.txt", outp);
    if (qt_npy_write(outp, y, &e)) {
        rc = cli_fail("%s", e.msg);
        goto out;
    }
    if ((rc = write_names(names, &ds, split, y->shape.d[0]))) goto out;
    if (!quiet)
        fprintf(stderr, "wrote %s (%lld outputs, %.1f s) and %s\n", outp,
                (long long)y->shape.d[0], seconds, names);
out:
    qt_tensor_free(y);
    if (b) b->destroy(b);
    qt_dataset_free(&ds);
    qt_graph_free(g);
    return rc;
}

static void usage(void)
{
    printf("usage: qtune run MODEL.onnx --input x.npy --output y.npy [--device D]\n"
           "       qtune run MODEL.onnx --data DATA --output y.npy [options]\n"
           "  --input x.npy      one float32 input array, fed as it is\n"
           "  --data PATH        every image of a split instead (as eval reads it); y.npy gets\n"
           "                     one row per image and y.txt their names, in the same order\n"
           "  --split NAME       train or test (default test)\n"
           "  --mean a,b,c / --std a,b,c / --preset NAME   normalization (default: the model's)\n"
           "  --batch N          batch size (default 128)\n"
           "  --limit N          the first N images only\n"
           "  --crop S           images of any size: resized (--resize R, default S * 256 /\n"
           "                     224, the shorter side) and center-cropped to S x S\n"
           "  --threads N        CPU threads (default: all cores)\n"
           "  --device D         %s (default auto)\n"
           "  --quiet            no progress display\n",
           qt_backend_devices());
}

int cmd_run(int argc, char **argv)
{
    const char *path = NULL, *inp = NULL, *outp = NULL, *device = "auto";
    const char *data = NULL, *split = "test", *preset = NULL, *mean_s = NULL, *std_s = NULL;
    long batch = 128, limit = 0, threads = 0, resize = 0, crop = 0;
    int quiet = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const int has = i + 1 < argc;
        const int sized = cli_image_size_option("run", argc, argv, &i, &resize, &crop);
        if (sized < 0) return 1;
        if (sized) continue;
        if (strcmp(a, "--input") == 0 && has) inp = argv[++i];
        else if (strcmp(a, "--device") == 0 && has) device = argv[++i];
        else if (strcmp(a, "--output") == 0 && has) outp = argv[++i];
        else if (strcmp(a, "--data") == 0 && has) data = argv[++i];
        else if (strcmp(a, "--split") == 0 && has) split = argv[++i];
        else if (strcmp(a, "--preset") == 0 && has) preset = argv[++i];
        else if (strcmp(a, "--mean") == 0 && has) mean_s = argv[++i];
        else if (strcmp(a, "--std") == 0 && has) std_s = argv[++i];
        else if (strcmp(a, "--quiet") == 0) quiet = 1;
        else if (strcmp(a, "--batch") == 0 && has) {
            if ((batch = cli_parse_long(argv[++i])) <= 0)
                return cli_fail("run: --batch needs a positive integer");
        } else if (strcmp(a, "--limit") == 0 && has) {
            if ((limit = cli_parse_long(argv[++i])) <= 0)
                return cli_fail("run: --limit needs a positive integer");
        } else if (strcmp(a, "--threads") == 0 && has) {
            if ((threads = cli_parse_long(argv[++i])) <= 0)
                return cli_fail("run: --threads needs a positive integer");
        } else if (strcmp(a, "--help") == 0) {
            usage();
            return 0;
        } else if (a[0] == '-') return cli_fail("run: unknown or incomplete option '%s'", a);
        else if (!path) path = a;
        else return cli_fail("run: more than one model given");
    }
    if (!path || !outp || !!inp == !!data)
        return cli_fail("run: usage: qtune run MODEL.onnx (--input x.npy | --data DATA) "
                        "--output y.npy");
    if (data) {
        if (strcmp(split, "train") && strcmp(split, "test"))
            return cli_fail("run: --split must be train or test, not '%s'", split);
        if ((mean_s != NULL) != (std_s != NULL))
            return cli_fail("run: --mean and --std go together");
        return run_dataset(path, data, split, preset, mean_s, std_s, batch, limit, resize, crop,
                           device, threads, quiet, outp);
    }
    struct qt_error e;
    struct qt_tensor *x = qt_npy_read(inp, &e);
    if (!x) return cli_fail("%s", e.msg);
    if (qt_npy_check_finite(x, inp, &e)) {
        qt_tensor_free(x);
        return cli_fail("run: %s", e.msg);
    }
    struct qt_graph *g = cli_load_model(path, 1);
    if (!g) {
        qt_tensor_free(x);
        return 1;
    }
    int rc = 0;
    struct qt_backend *b = cli_backend_new("run", device, 0);
    struct qt_exec *ex = NULL;
    struct qt_tensor *y = NULL;
    if (!b) {
        rc = 1;
        goto out;
    }
    if (g->ninputs != 1) {
        rc = cli_fail("run: the model has %d inputs; run feeds exactly one", g->ninputs);
        goto out;
    }
    ex = qt_exec_new(g, b, &e);
    const struct qt_tensor *ins[1] = {x};
    if (!ex || qt_exec_forward(ex, ins, &e)) {
        rc = cli_fail("'%s': %s", path, e.msg);
        goto out;
    }
    const struct qt_tensor *o = qt_exec_output(ex, 0);
    if (o->dtype != QT_F32) {
        rc = cli_fail("run: the model's output is %s; run writes float32 outputs",
                      qt_dtype_name(o->dtype));
        goto out;
    }
    if (!(y = qt_tensor_new(QT_F32, &o->shape)) ||
        qt_exec_read(ex, o->data, y->data, qt_shape_numel(&o->shape), &e)) {
        rc = cli_fail("run: %s", y ? e.msg : "out of memory");
        goto out;
    }
    if (qt_npy_write(outp, y, &e)) rc = cli_fail("%s", e.msg);
out:
    qt_tensor_free(y);
    qt_exec_free(ex);
    if (b) b->destroy(b);
    qt_graph_free(g);
    qt_tensor_free(x);
    return rc;
}
