/* qtune: the command-line entry point; dispatches to one file per subcommand. */
#include <malloc.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: qtune COMMAND [options]\n"
            "\n"
            "commands:\n"
            "  inspect MODEL.onnx [--json]                 layers, shapes, parameters, MACs\n"
            "  run MODEL.onnx --input x.npy --output y.npy  run a model on one input\n"
            "  eval MODEL.onnx --data DATA [options]        top-1/top-5 accuracy on a dataset\n"
            "  export MODEL.onnx --format F -o OUT.onnx     standard ONNX for other runtimes\n"
            "                                              (F: onnx, qdq or float)\n"
            "  init ARCH --input CxHxW --classes K -o OUT   a new ResNet: resnet20|32|56|18\n"
            "  train MODEL.onnx --data DATA --epochs E -o OUT.onnx   FP32 training\n"
            "  finetune MODEL.onnx --data DATA --wbits W --abits A -o OUT.onnx\n"
            "                                              quantization-aware fine-tuning\n"
            "\n"
            "Run 'qtune COMMAND --help' for a command's options.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    /* Kernels allocate large temporaries every step: keep freed memory in the heap instead
     * of returning it to the system, so reuse costs no page faults. */
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    const char *cmd = argv[1];
    if (strcmp(cmd, "inspect") == 0) return cmd_inspect(argc - 1, argv + 1);
    if (strcmp(cmd, "run") == 0) return cmd_run(argc - 1, argv + 1);
    if (strcmp(cmd, "eval") == 0) return cmd_eval(argc - 1, argv + 1);
    if (strcmp(cmd, "export") == 0) return cmd_export(argc - 1, argv + 1);
    if (strcmp(cmd, "init") == 0) return cmd_init(argc - 1, argv + 1);
    if (strcmp(cmd, "train") == 0) return cmd_train(argc - 1, argv + 1);
    if (strcmp(cmd, "finetune") == 0) return cmd_finetune(argc - 1, argv + 1);
    fprintf(stderr, "qtune: error: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
