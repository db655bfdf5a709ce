/* qtune init: creates a freshly initialized FP32 ResNet (CIFAR ResNet-20/32/56 or
 * ResNet-18) for a given input size and class count and writes it as ONNX. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../graph/builder.h"
#include "../onnx/onnx.h"
#include "cli.h"

static void init_help(void)
{
    printf("usage: qtune init ARCH --input CxHxW --classes K [--seed S] -o MODEL.onnx\n"
           "\n"
           "Writes a freshly initialized FP32 model with input \"input\" [N,C,H,W] (symbolic\n"
           "batch N) and output \"logits\" [N,K]. Height and width must be at least 8.\n"
           "\n"
           "architectures:\n"
           "  resnet20, resnet32, resnet56  CIFAR ResNets: 3x3 conv 16 + BN + ReLU, three\n"
           "                                stages of 3/5/9 BasicBlocks (16/32/64 channels,\n"
           "                                stride 2 at stages 2 and 3, 1x1 conv + BN shortcut\n"
           "                                where the shape changes), global average pooling,\n"
           "                                fc\n"
           "  resnet18                      torchvision's ResNet-18: 7x7/2 conv 64 + BN + ReLU,\n"
           "                                3x3/2 max pooling, four stages of 2 BasicBlocks\n"
           "                                (64/128/256/512), global average pooling, fc. When H\n"
           "                                or W is below 64 (CIFAR, MNIST sizes) the stem is a\n"
           "                                3x3 stride-1 conv and the max pooling is left out.\n"
           "\n"
           "initialization (a seeded generator; the same seed gives the same file):\n"
           "  conv weights  normal(0, sqrt(2/fan)): fan = in_channels*k*k for resnet20/32/56\n"
           "                (Kaiming fan_in), out_channels*k*k for resnet18 (Kaiming fan_out,\n"
           "                as torchvision)\n"
           "  BatchNorm     scale 1, bias 0, running mean 0, running variance 1\n"
           "  fc            weight and bias uniform(-1/sqrt(in), 1/sqrt(in)) (PyTorch's Linear)\n"
           "No normalization is stored; training records it in the model's metadata.\n"
           "\n"
           "options:\n"
           "  --input CxHxW   input channels, height and width, e.g. 3x32x32 or 1x28x28\n"
           "  --classes K     number of classes (at least 2)\n"
           "  --seed S        random seed (default 0)\n"
           "  -o MODEL.onnx   output file\n");
}

static int arch_known(const char *arch)
{
    const char *list = QT_BUILD_RESNET_ARCHS;
    size_t n = strlen(arch);
    for (const char *p = list; *p;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, arch, n) == 0) return 1;
        if (!bar) break;
        p = bar + 1;
    }
    return 0;
}

/* Parses "CxHxW" (three positive integers); returns 0 or -1. */
static int parse_chw(const char *s, int dims[3])
{
    const char *p = s;
    for (int i = 0; i < 3; i++) {
        if (*p < '0' || *p > '9') return -1;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (errno || v <= 0 || v > 1000000) return -1;
        dims[i] = (int)v;
        p = end;
        if (i < 2) {
            if (*p != 'x' && *p != 'X') return -1;
            p++;
        }
    }
    return *p ? -1 : 0;
}

static int parse_seed(const char *s, uint64_t *out)
{
    if (*s < '0' || *s > '9') return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) return -1;
    *out = (uint64_t)v;
    return 0;
}

/* Trainable parameters (values flagged QT_V_PARAM) and multiply-accumulates per sample of
 * Conv and Gemm nodes. */
static void count(const struct qt_graph *g, int64_t *params, int64_t *macs)
{
    *params = *macs = 0;
    for (int i = 0; i < g->nvalues; i++)
        if ((g->values[i].flags & QT_V_PARAM) && g->values[i].init)
            *params += qt_shape_numel(&g->values[i].init->shape);
    for (int i = 0; i < g->nnodes; i++) {
        const struct qt_node *n = &g->nodes[i];
        if (n->op != QT_OP_CONV && n->op != QT_OP_GEMM) continue;
        const struct qt_shape *y = &g->values[n->out[0]].shape;
        const struct qt_shape *w = &g->values[n->in[1]].shape;
        int64_t per = 1, k = 1;
        for (int d = 1; d < y->ndim; d++) per *= y->d[d];
        for (int d = 1; d < w->ndim; d++) k *= w->d[d];
        *macs += per * k;
    }
}

/* "272474" -> "272,474". */
static const char *thousands(int64_t v, char *buf, size_t n)
{
    char tmp[32];
    snprintf(tmp, sizeof tmp, "%" PRId64, v);
    size_t len = strlen(tmp), k = 0;
    for (size_t i = 0; i < len && k + 2 < n; i++) {
        if (i && (len - i) % 3 == 0) buf[k++] = ',';
        buf[k++] = tmp[i];
    }
    buf[k] = 0;
    return buf;
}

int cmd_init(int argc, char **argv)
{
    const char *arch = NULL, *input = NULL, *classes_s = NULL, *seed_s = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            init_help();
            return 0;
        }
        int has_val = i + 1 < argc;
        if (strcmp(a, "--input") == 0 && has_val) input = argv[++i];
        else if (strcmp(a, "--classes") == 0 && has_val) classes_s = argv[++i];
        else if (strcmp(a, "--seed") == 0 && has_val) seed_s = argv[++i];
        else if (strcmp(a, "-o") == 0 && has_val) out = argv[++i];
        else if (a[0] == '-')
            return cli_fail("init: unknown or incomplete option '%s' (see qtune init --help)", a);
        else if (!arch) arch = a;
        else return cli_fail("init: more than one architecture given ('%s' and '%s')", arch, a);
    }
    if (!arch)
        return cli_fail("init: no architecture given (usage: qtune init %s --input CxHxW "
                        "--classes K -o MODEL.onnx)", QT_BUILD_RESNET_ARCHS);
    if (!arch_known(arch))
        return cli_fail("init: unknown architecture '%s' (available: %s)", arch,
                        QT_BUILD_RESNET_ARCHS);
    int chw[3];
    if (!input) return cli_fail("init: --input CxHxW is required (e.g. --input 3x32x32)");
    if (parse_chw(input, chw))
        return cli_fail("init: malformed --input '%s': expected CxHxW, three positive integers "
                        "such as 3x32x32", input);
    if (!classes_s) return cli_fail("init: --classes K is required");
    long classes = cli_parse_long(classes_s);
    if (classes < 2 || classes > 1000000)
        return cli_fail("init: --classes '%s' must be an integer from 2 to 1000000", classes_s);
    uint64_t seed = 0;
    if (seed_s && parse_seed(seed_s, &seed))
        return cli_fail("init: --seed '%s' must be a non-negative integer below 2^64", seed_s);
    if (!out) return cli_fail("init: no output file given (-o MODEL.onnx)");

    struct qt_error e;
    struct qt_graph *g = NULL;
    if (qt_build_resnet(&g, arch, chw[0], chw[1], chw[2], (int)classes, seed, &e))
        return cli_fail("init: %s", e.msg);
    if (qt_onnx_save(g, out, &e)) {
        qt_graph_free(g);
        return cli_fail("init: %s", e.msg);
    }
    int64_t params, macs;
    count(g, &params, &macs);
    char pb[40];
    printf("%s: input %dx%dx%d, %ld classes, %s parameters, %.2f M MACs per sample, seed %" PRIu64
           " -> %s\n", arch, chw[0], chw[1], chw[2], classes, thousands(params, pb, sizeof pb),
           macs / 1e6, seed, out);
    qt_graph_free(g);
    return 0;
}
