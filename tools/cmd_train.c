/* qtune train: FP32 training or fine-tuning of a model on a dataset, with a per-epoch log,
 * checkpoints, resume, Ctrl-C handling and the best model kept beside the final one. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "recipe.h"

static void usage(void)
{
    printf("usage: qtune train MODEL.onnx --data DATA --epochs E -o OUT.onnx [options]\n");
    recipe_usage(0);
}

int cmd_train(int argc, char **argv)
{
    struct recipe r;
    recipe_defaults(&r, "train", 0);
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0) {
            usage();
            return 0;
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
    int rc = recipe_check(&r);
    if (rc) return rc;
    struct qt_graph *g = cli_load_model(path, 0);
    if (!g) return 1;
    struct recipe_data d;
    struct qt_backend *b = NULL;
    if (!(rc = recipe_load_data(&r, g, path, &d))) {
        struct qt_error e;
        if (!(b = qt_backend_new(r.device, (int)r.threads, &e))) rc = cli_fail("train: %s", e.msg);
        else rc = recipe_run(&r, g, path, &d, b, NULL);
    }
    if (b) b->destroy(b);
    recipe_data_free(&d);
    qt_graph_free(g);
    return rc;
}
