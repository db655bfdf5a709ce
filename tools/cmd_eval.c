/* qtune eval: top-1/top-5 accuracy, loss and throughput of a classifier on a dataset. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/data/dataset.h"
#include "../runtime/loops.h"
#include "cli.h"

static void usage(void)
{
    printf("usage: qtune eval MODEL.onnx --data DATA [options]\n"
           "  --data PATH        IDX folder, CIFAR binary folder or tar.gz, image-folder tree or tar(.gz)\n"
           "  --split NAME       train or test (default test)\n"
           "  --mean a,b,c       per-channel mean of pixels scaled to [0,1]\n"
           "  --std a,b,c        per-channel standard deviation\n"
           "  --preset NAME      cifar10, fashion-mnist, mnist or imagenet normalization\n"
           "  --batch N          batch size (default 128)\n"
           "  --limit N          evaluate the first N samples only\n"
           "  --crop S           images of any size: resized (--resize R, default S * 256 /\n"
           "                     224, the shorter side) and center-cropped to S x S\n"
           "  --threads N        CPU threads (default: all cores)\n"
           "  --device D         auto (a GPU when usable, else the CPU; default), cpu, cuda, ref\n"
           "  --json             print a JSON summary as the last line\n"
           "  --quiet            no progress display\n"
           "Without --mean/--std/--preset the normalization stored in the model is used.\n");
}

int cli_evaluate(const char *cmd, const char *path, const char *data, const char *split,
                 const char *preset, const char *mean_s, const char *std_s, long batch,
                 long limit, long resize, long crop, const char *device, long threads, int quiet,
                 struct qt_eval_result *r, char *device_name, size_t device_len)
{
    struct qt_graph *g = cli_load_model(path, 1);
    if (!g) return 1;
    struct qt_error e;
    struct qt_dataset ds;
    memset(&ds, 0, sizeof ds);
    int rc = 0;
    struct qt_backend *b = NULL;
    if (!quiet) fprintf(stderr, "loading %s (%s split)...\n", data, split);
    if (qt_dataset_load_sized(&ds, data, split, (int)resize, (int)crop, &e)) {
        rc = cli_fail("%s", e.msg);
        goto out;
    }
    float mean[4], std[4];
    if ((rc = cli_normalization(cmd, g, path, preset, mean_s, std_s, ds.c, mean, std))) goto out;
    cli_check_limit(cmd, "--limit", &ds, split, limit);
    if (!(b = cli_backend_new(cmd, device, threads))) {
        rc = 1;
        goto out;
    }
    if (device_name) snprintf(device_name, device_len, "%s", b->name);
    struct cli_progress prog;
    cli_progress_init(&prog, "eval", "img", quiet);
    if (qt_evaluate(g, b, &ds, mean, std, (int)batch, limit, cli_progress_update, &prog, r, &e))
        rc = cli_fail("'%s': %s", path, e.msg);
out:
    if (b) b->destroy(b);
    qt_dataset_free(&ds);
    qt_graph_free(g);
    return rc;
}

int cmd_eval(int argc, char **argv)
{
    const char *path = NULL, *data = NULL, *split = "test", *preset = NULL, *device = "auto";
    const char *mean_s = NULL, *std_s = NULL;
    long batch = 128, limit = 0, threads = 0, resize = 0, crop = 0;
    int json = 0, quiet = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has = i + 1 < argc;
        const int sized = cli_image_size_option("eval", argc, argv, &i, &resize, &crop);
        if (sized < 0) return 1;
        if (sized) continue;
        if (strcmp(a, "--help") == 0) {
            usage();
            return 0;
        } else if (strcmp(a, "--json") == 0) json = 1;
        else if (strcmp(a, "--quiet") == 0) quiet = 1;
        else if (strcmp(a, "--data") == 0 && has) data = argv[++i];
        else if (strcmp(a, "--split") == 0 && has) split = argv[++i];
        else if (strcmp(a, "--mean") == 0 && has) mean_s = argv[++i];
        else if (strcmp(a, "--std") == 0 && has) std_s = argv[++i];
        else if (strcmp(a, "--preset") == 0 && has) preset = argv[++i];
        else if (strcmp(a, "--device") == 0 && has) device = argv[++i];
        else if (strcmp(a, "--batch") == 0 && has) {
            if ((batch = cli_parse_long(argv[++i])) < 0) return cli_fail("eval: --batch needs a positive integer");
        } else if (strcmp(a, "--limit") == 0 && has) {
            if ((limit = cli_parse_long(argv[++i])) < 0) return cli_fail("eval: --limit needs a positive integer");
        } else if (strcmp(a, "--threads") == 0 && has) {
            if ((threads = cli_parse_long(argv[++i])) < 0) return cli_fail("eval: --threads needs a positive integer");
        } else if (a[0] == '-') return cli_fail("eval: unknown or incomplete option '%s'", a);
        else if (!path) path = a;
        else return cli_fail("eval: more than one model given");
    }
    if (!path || !data) return cli_fail("eval: usage: qtune eval MODEL.onnx --data DATA [options]");
    if (strcmp(split, "train") && strcmp(split, "test"))
        return cli_fail("eval: --split must be train or test, not '%s'", split);
    if ((mean_s != NULL) != (std_s != NULL)) return cli_fail("eval: --mean and --std go together");

    struct qt_eval_result r;
    char dev[32];
    int rc = cli_evaluate("eval", path, data, split, preset, mean_s, std_s, batch, limit, resize,
                          crop, device, threads, quiet, &r, dev, sizeof dev);
    if (rc) return rc;
    printf("%s on %s (%s, %lld images): top-1 %.2f%%  top-5 %.2f%%  loss %.4f  %.0f images/s  %.1f s\n",
           path, data, split, (long long)r.images, r.top1, r.top5, r.loss, r.images_per_s, r.seconds);
    if (json)
        printf("{\"top1\": %.4f, \"top5\": %.4f, \"loss\": %.6f, \"images\": %lld, "
               "\"images_per_s\": %.2f, \"seconds\": %.3f, \"batch\": %ld, \"device\": \"%s\"}\n",
               r.top1, r.top5, r.loss, (long long)r.images, r.images_per_s, r.seconds, batch, dev);
    return 0;
}
