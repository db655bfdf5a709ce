/* qtune export: writes a model in a standard ONNX form (float: the canonicalized graph). */
#include <stdio.h>
#include <string.h>

#include "../onnx/onnx.h"
#include "cli.h"

int cmd_export(int argc, char **argv)
{
    const char *path = NULL, *out = NULL, *format = "float";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--format") == 0 && i + 1 < argc) format = argv[++i];
        else if (strcmp(argv[i], "-o") == 0 && i + 1 < argc) out = argv[++i];
        else if (strcmp(argv[i], "--help") == 0) {
            printf("usage: qtune export MODEL.onnx --format float -o OUT.onnx\n"
                   "  float: the canonicalized float32 graph (constants folded, Identity,\n"
                   "         Dropout and mergeable Pad nodes removed)\n");
            return 0;
        } else if (argv[i][0] == '-') return cli_fail("export: unknown or incomplete option '%s'", argv[i]);
        else if (!path) path = argv[i];
        else return cli_fail("export: more than one model given");
    }
    if (!path || !out) return cli_fail("export: usage: qtune export MODEL.onnx --format float -o OUT.onnx");
    if (strcmp(format, "float") != 0)
        return cli_fail("export: unknown format '%s' (available: float)", format);
    struct qt_graph *g = cli_load_model(path, 0);
    if (!g) return 1;
    struct qt_error e;
    for (int i = 0; i < g->nnodes; i++)
        if (g->nodes[i].op == QT_OP_WEIGHTQUANT || g->nodes[i].op == QT_OP_ACTQUANT) {
            int rc = cli_fail("export: '%s' holds %s quantizers (node '%s'); --format float "
                              "writes float models only", path, QT_DOMAIN, g->nodes[i].name);
            qt_graph_free(g);
            return rc;
        }
    int rc = qt_onnx_save(g, out, &e) ? cli_fail("%s", e.msg) : 0;
    qt_graph_free(g);
    return rc;
}
