/* qtune run: one forward pass on an .npy input, output written as .npy. */
#include <stdio.h>
#include <string.h>

#include "../runtime/exec.h"
#include "../runtime/npy.h"
#include "cli.h"

int cmd_run(int argc, char **argv)
{
    const char *path = NULL, *inp = NULL, *outp = NULL, *device = "auto";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--input") == 0 && i + 1 < argc) inp = argv[++i];
        else if (strcmp(argv[i], "--device") == 0 && i + 1 < argc) device = argv[++i];
        else if (strcmp(argv[i], "--output") == 0 && i + 1 < argc) outp = argv[++i];
        else if (strcmp(argv[i], "--help") == 0) {
            printf("usage: qtune run MODEL.onnx --input x.npy --output y.npy [--device %s]\n",
                   qt_backend_devices());
            return 0;
        } else if (argv[i][0] == '-') return cli_fail("run: unknown or incomplete option '%s'", argv[i]);
        else if (!path) path = argv[i];
        else return cli_fail("run: more than one model given");
    }
    if (!path || !inp || !outp)
        return cli_fail("run: usage: qtune run MODEL.onnx --input x.npy --output y.npy");
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
    struct qt_backend *b = qt_backend_new(device, 0, &e);
    struct qt_exec *ex = NULL;
    struct qt_tensor *y = NULL;
    if (!b) {
        rc = cli_fail("run: %s", e.msg);
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
