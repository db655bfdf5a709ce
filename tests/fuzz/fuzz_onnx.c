/* libFuzzer target: arbitrary bytes as an ONNX model (float or quantized with ai.qtune ops)
 * through import, canonicalization, BatchNorm fold or unfold, the quantize pass, shape
 * inference and verification, and a forward pass on the CPU backend when the model is small.
 * The last input byte picks the quantization settings and the BatchNorm pass. */
#include "../../graph/schema.h"
#include "../../onnx/onnx.h"
#include "../../passes/passes.h"
#include "../../runtime/exec.h"
#include "fuzz_common.h"

/* A forward pass runs only when every value has a known size (symbolic dimensions taken as
 * 1) and the values together hold at most this many bytes, and the multiply-accumulates of
 * Conv, Gemm and MatMul stay below the cap, so that a huge declared shape is skipped rather
 * than run out of memory or time. */
#define FWD_MAX_BYTES (4 << 20)
#define FWD_MAX_MACS (20 * 1000 * 1000)

static struct qt_backend *backend;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    struct qt_error err;
    backend = qt_backend_new("cpu", 1, &err);
    if (!backend) {
        fprintf(stderr, "fuzz: %s\n", err.msg);
        abort();
    }
    return 0;
}

static int64_t dim1(int64_t d)
{
    return d < 0 && d != QT_DIM_ANY ? 1 : d;
}

static int64_t numel1(const struct qt_shape *s)
{
    int64_t n = 1;
    for (int i = 0; i < s->ndim; i++) {
        int64_t d = dim1(s->d[i]);
        if (d < 0 || (d > 0 && n > INT64_MAX / 4 / d)) return -1;
        n *= d;
    }
    return n;
}

/* Whether the forward pass fits the caps above. */
static int small_enough(const struct qt_graph *g)
{
    int64_t bytes = 0, macs = 0;
    for (int v = 0; v < g->nvalues; v++) {
        const struct qt_value *val = &g->values[v];
        if (val->dead) continue;
        size_t es = qt_dtype_size(val->dtype);
        int64_t n = val->has_shape ? numel1(&val->shape) : -1;
        if (!es || n < 0 || n > FWD_MAX_BYTES) return 0;
        bytes += n * (int64_t)es;
        if (bytes > FWD_MAX_BYTES) return 0;
    }
    for (int i = 0; i < g->nnodes; i++) {
        const struct qt_node *n = &g->nodes[i];
        if (n->dead || n->nout < 1 || n->nin < 1) continue;
        int64_t out = numel1(&g->values[n->out[0]].shape), k = 1;
        if (n->op == QT_OP_CONV && n->nin >= 2 && n->in[1] >= 0) {
            const struct qt_shape *w = &g->values[n->in[1]].shape;
            int64_t wn = numel1(w);
            k = w->ndim > 0 && w->d[0] > 0 ? wn / w->d[0] : wn;
        } else if ((n->op == QT_OP_GEMM || n->op == QT_OP_MATMUL) && n->in[0] >= 0) {
            const struct qt_shape *a = &g->values[n->in[0]].shape;
            k = a->ndim > 0 ? numel1(a) : 1;
        } else if (n->op == QT_OP_MAXPOOL || n->op == QT_OP_AVGPOOL ||
                   n->op == QT_OP_GLOBALAVGPOOL || n->op == QT_OP_REDUCEMEAN ||
                   n->op == QT_OP_REDUCESUM) {
            k = n->in[0] >= 0 ? numel1(&g->values[n->in[0]].shape) : 1;
        }
        if (out < 0 || k < 0 || (k > 0 && out > FWD_MAX_MACS / k)) return 0;
        macs += out * k;
        if (macs > FWD_MAX_MACS) return 0;
    }
    return 1;
}

static void forward(struct qt_graph *g)
{
    if (g->ninputs < 1 || g->ninputs > 8 || !small_enough(g)) return;
    struct qt_tensor *in[8] = {0};
    const struct qt_tensor *cin[8];
    struct qt_error e;
    for (int k = 0; k < g->ninputs; k++) {
        const struct qt_value *v = &g->values[g->inputs[k]];
        struct qt_shape s = v->shape;
        for (int i = 0; i < s.ndim; i++)
            s.d[i] = dim1(s.d[i]);
        in[k] = qt_tensor_new(v->dtype, &s);
        cin[k] = in[k];
        if (v->dtype == QT_F32)
            for (int64_t i = 0; i < numel1(&s); i++)
                ((float *)in[k]->data)[i] = (float)(i % 7) - 3;
    }
    struct qt_exec *x = qt_exec_new(g, backend, &e);
    if (x) qt_exec_forward(x, cin, &e);
    qt_exec_free(x);
    for (int k = 0; k < g->ninputs; k++)
        qt_tensor_free(in[k]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct qt_error e;
    struct qt_graph *g = qt_onnx_load_buffer(data, size, NULL, "fuzz", &e);
    if (!g) return 0;
    const unsigned sel = size ? data[size - 1] : 0;
    int *bn = NULL, nbn = 0;
    if (qt_pass_canonicalize(g, &e)) goto out;
    if ((sel & 3) == 1 && qt_pass_fold_batchnorm(g, &e)) goto out;
    if ((sel & 3) == 2 && qt_pass_unfold_batchnorm(g, &bn, &nbn, &e)) goto out;
    if ((sel & 3) != 3) {
        struct qt_quant_config qc;
        memset(&qc, 0, sizeof qc);
        qc.wbits = 2 + (sel >> 2) % 7;
        qc.abits = 2 + (sel >> 4) % 4;
        qc.scheme = (sel & 0x40) ? QT_QS_UNIFORM : QT_QS_APOT;
        qc.first_last = (enum qt_first_last)((sel >> 2) % 3);
        qc.int8_absmax = 1;
        qc.per_channel = qc.scheme == QT_QS_UNIFORM && (sel & 0x80);
        qc.standardize = !(sel & 0x80);
        qc.alpha_w = 3.0f;
        qc.alpha_a = 8.0f;
        struct qt_quant_override ov = {"*conv*", {-1, 3, QT_QS_UNIFORM}, 0};
        if (sel & 0x20) {
            qc.overrides = &ov;
            qc.noverrides = 1;
        }
        struct qt_quant_summary qs;
        if (qt_pass_quantize(g, &qc, &qs, &e)) goto out;
    }
    if (qt_graph_verify(g, &e) || qt_graph_infer_shapes(g, &e)) goto out;
    forward(g);
out:
    free(bn);
    qt_graph_free(g);
    return 0;
}
