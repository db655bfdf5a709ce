/* The export pass: replaces every ai.qtune quantizer by standard ONNX operators that compute
 * what qtune's quantized forward pass computes (see passes.h for the formats).
 *
 * Weights (format onnx) are stored as level codes. A signed APoT/uniform weight of b bits has
 * L = 2n - 1 levels, n = 2^(b-1); its code is the level's index (0 = most negative). Codes
 * are packed in groups, a group being one base-L number in one to three bytes
 * (qt_export_code_bytes picks the layout of the fewest bytes): five ternary codes in a byte
 * (3^5 = 243, 1.6 bits a code), two 4-bit codes in a byte, eight 3-bit codes in three bytes
 * (7^8 < 2^24: 3 bits a code), three 5-bit codes in two bytes, four 6-bit codes in three.
 * One-byte groups are decoded by a table with one row per byte value holding the levels of
 * its codes: bytes -> Cast(int32) -> Gather(table) -> Reshape -> Mul(alpha). Groups of several
 * bytes are decoded by integer arithmetic that every runtime has (no bitwise operators, which
 * TensorRT lacks): y = ReduceSum(bytes * 256^k) (< 2^24, exact in int32), the digits
 * q_s = y / L^s - L * (y / L^(s+1)) (integer division), then Gather of their levels. The
 * tables depend on the scheme and bits only, so layers share them. The decoded weight is
 * level * alpha, the product qtune's forward computes (float multiplication commutes
 * exactly); every code is checked against qtune's own projection (the CPU kernels) before
 * anything is written.
 * 8-bit first/last layer weights (scheme max/absmax) are their integer steps k as int8 (int16
 * when max W scaling puts a step beyond -128): Cast -> Div(127) -> Mul(m), as qtune rounds.
 *
 * Activations (every format): the level index of x = a / alpha (or |x| for signed quantizers)
 * is the number of thresholds below it. With M a power of two so large that no interval
 * [b/M, (b+1)/M) holds two thresholds (qt_act_buckets), u = Div(a, alpha / M) is x * M
 * exactly (qtune's true division, scaled by a power of two), its bucket b = Cast(Clip(u, 0,
 * M - 1)) (truncation is the floor there) is exact, a table gives the number of thresholds
 * below b / M, and one comparison with the threshold that may lie in the bucket (times M;
 * +inf where none does) adds one: index = T[b] + (u > thr'[b]). Values below 0 and beyond
 * the clipping range land in the first and last bucket and get index 0 and n - 1. Then Gather
 * of the values alpha * level (as qtune multiplies); signed quantizers multiply by Sign(x).
 * The thresholds are qtune's own (the largest float not above each midpoint), so a value on
 * a threshold goes to the lower level as in qtune. Every operation is elementwise on the
 * activation's own shape: 9 operators (12 signed), no comparison with all n - 1 thresholds. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../graph/schema.h"
#include "../kernels/common/apot.h"
#include "../kernels/cpu/quant.h"
#include "../runtime/quantizer.h"
#include "passes.h"

const char *qt_export_format_name(enum qt_export_format f)
{
    switch (f) {
    case QT_EXPORT_ONNX: return "onnx";
    case QT_EXPORT_QDQ: return "qdq";
    case QT_EXPORT_FLOAT: return "float";
    case QT_EXPORT_QLINEAR: return "qlinear";
    case QT_EXPORT_INTEGER: return "integer";
    }
    return "?";
}

int qt_export_format_parse(const char *s, enum qt_export_format *f)
{
    for (int k = 0; k <= QT_EXPORT_INTEGER; k++)
        if (strcmp(s, qt_export_format_name((enum qt_export_format)k)) == 0) {
            *f = (enum qt_export_format)k;
            return 0;
        }
    return -1;
}

/* Formats whose weights and activations are int8/uint8 codes read by DequantizeLinear. */
static int int8_grid(enum qt_export_format f)
{
    return f == QT_EXPORT_QDQ || f == QT_EXPORT_QLINEAR || f == QT_EXPORT_INTEGER;
}

/* ---- Small graph-building helpers ----
 * Nodes are named after their quantizer, qw<k> (weights) or qa<k> (activations), and a short
 * step name, kept short because a ResNet has hundreds of them: activations u (Div), a (Abs),
 * c (Clip), b (bucket), e (index below the bucket), t (threshold), g (Greater), k (its int32),
 * i (index), v (values), n (Sign), w (times the sign);
 * weights c (Cast), d (decode Gather), f and u (Reshape flat and Slice off the padding), r
 * (Reshape), k (steps), s (scale), and for groups of several bytes p (times the bytes' place
 * values), y (ReduceSum: the group's number), q (Div by the digits' place values), h (Div by
 * L), l (times L), o (Sub: the digits); q/dq (Quantize/
 * DequantizeLinear). The value a node writes has the node's name. */

struct lower {
    struct qt_graph *g;
    int nw, na; /* quantizers lowered so far: node names are qw<k>/... and qa<k>/... */
    enum qt_export_format fmt;
    struct qt_export_report *rep;
    struct qt_error *e;
};


int64_t qt_export_code_bytes(int nlv, int64_t cnt, struct qt_code_layout *lay)
{
    struct qt_code_layout best = {.group = 1, .group_bytes = 1};
    int64_t best_cost = INT64_MAX, best_bytes = cnt;
    for (int nb = 1; nb <= QT_CODE_GROUP_BYTES; nb++) {
        /* codes per group: the most whose base-nlv number fits nb bytes */
        int gmax = 0;
        for (int64_t pw = nlv; pw <= (INT64_C(1) << (8 * nb)); pw *= nlv) gmax++;
        if (gmax < 1) continue;
        /* a count gmax does not divide: pad the last group and Slice the padding off after
         * decoding, unless fewer codes a group that divide the count cost less than the two
         * extra nodes (about 100 bytes) */
        int gd = gmax;
        while (cnt % gd) gd--;
        const int64_t padded_bytes = (cnt + gmax - 1) / gmax * nb, exact_bytes = cnt / gd * nb;
        const int pad = cnt % gmax != 0 && padded_bytes + 100 < exact_bytes;
        const int64_t bytes = pad ? padded_bytes : exact_bytes;
        /* the arithmetic decoding of groups over several bytes takes about six nodes more */
        const int64_t cost = bytes + (pad ? 100 : 0) + (nb > 1 ? 100 : 0);
        if (cost < best_cost) {
            best_cost = cost;
            best_bytes = bytes;
            best = (struct qt_code_layout){.group = pad ? gmax : gd, .group_bytes = nb, .padded = pad};
        }
    }
    if (lay) *lay = best;
    return best_bytes;
}

static int add_const(struct qt_graph *g, const char *base, struct qt_tensor *t)
{
    int v = qt_graph_add_value_unique(g, base, t->dtype, &t->shape);
    g->values[v].init = t;
    return v;
}

static struct qt_tensor *tensor1(enum qt_dtype dt, int ndim, const int64_t *d)
{
    struct qt_shape s = {.ndim = ndim};
    for (int k = 0; k < ndim; k++) s.d[k] = d[k];
    return qt_tensor_new(dt, &s);
}

static int scalar_f(struct qt_graph *g, const char *base, float v)
{
    struct qt_tensor *t = tensor1(QT_F32, 0, NULL);
    *(float *)t->data = v;
    return add_const(g, base, t);
}

static void node_name(char *buf, size_t n, const char *base, const char *suffix)
{
    snprintf(buf, n, "%s/%s", base, suffix);
}

/* The constant named `key` (tables shared by layers): the one an earlier layer made, else t
 * (which is freed when not needed). */
static int shared_const(struct qt_graph *g, const char *key, struct qt_tensor *t)
{
    int v = qt_graph_find_value(g, key);
    if (v >= 0) {
        qt_tensor_free(t);
        return v;
    }
    v = qt_graph_add_value(g, key, t->dtype, &t->shape);
    g->values[v].init = t;
    return v;
}

static int shared_scalar(struct qt_graph *g, const char *key, float v)
{
    struct qt_tensor *t = tensor1(QT_F32, 0, NULL);
    *(float *)t->data = v;
    return shared_const(g, key, t);
}

/* ---- Level sets ---- */

/* The 2n - 1 signed levels of qz in ascending order (index n - 1 is 0). */
/* The 8-bit integer grid of a level set (format qdq): the smallest D <= dmax such that every
 * level is exactly the float nearest j / D for an integer j (written to j[k]), or -1. Uniform
 * levels k / (2^B - 1) have D = 2^B - 1; APoT levels are sums of powers of two divided by
 * their largest sum, so D is that sum in units of the smallest term: 4, 10, 48 and 100 for
 * B = 2..5 (every APoT set qtune has fits signed and unsigned 8-bit codes). */
static int level_grid(const struct qt_apot_quantizer *qz, int dmax, int *j)
{
    for (int D = 1; D <= dmax; D++) {
        int ok = 1;
        for (int k = 0; k < qz->n && ok; k++) {
            const long v = lrint((double)qz->levels[k] * D);
            j[k] = (int)v;
            ok = (float)v / (float)D == qz->levels[k];
        }
        if (ok) return D;
    }
    return -1;
}

/* Q -> DQ pair (or DQ alone when q_in < 0) with a scalar or per-channel scale (along axis 0)
 * and zero point z (of type zt): the value written is `out` (or a new value when out < 0),
 * which is returned. */
static int dequant(struct qt_graph *g, const char *qn, int q_in, int codes, const float *scale,
                   int64_t ns, enum qt_dtype zt, int32_t z, int out)
{
    char name[512];
    struct qt_shape ss = {.ndim = ns > 1 ? 1 : 0, .d = {ns}};
    struct qt_tensor *st = qt_tensor_new(QT_F32, &ss), *zp = qt_tensor_new(zt, &ss);
    memcpy(st->data, scale, sizeof(float) * ns);
    for (int64_t k = 0; k < ns; k++) {
        if (zt == QT_I8) ((int8_t *)zp->data)[k] = (int8_t)z;
        else if (zt == QT_U8) ((uint8_t *)zp->data)[k] = (uint8_t)z;
        else ((int32_t *)zp->data)[k] = z;
    }
    snprintf(name, sizeof name, "%s.scale", qn);
    const int vs = add_const(g, name, st);
    snprintf(name, sizeof name, "%s.zero_point", qn);
    const int vz = add_const(g, name, zp);
    int in3[3] = {q_in, vs, vz};
    if (q_in >= 0) {
        node_name(name, sizeof name, qn, "q");
        codes = qt_graph_add_op(g, QT_OP_QUANTIZELINEAR, name, in3, 3, -1);
    }
    in3[0] = codes;
    node_name(name, sizeof name, qn, "dq");
    const int r = qt_graph_add_op(g, QT_OP_DEQUANTIZELINEAR, name, in3, 3, out);
    if (ns > 1) qt_node_set_int(&g->nodes[g->nnodes - 1], "axis", 0);
    return r;
}

/* ---- Weights ---- */

static int layer_of(const struct qt_graph *g, const struct qt_node *q)
{
    return qt_graph_first_consumer(g, q->out[0]);
}

static const char *layer_name(const struct qt_graph *g, const struct qt_node *q)
{
    int r = layer_of(g, q);
    return r >= 0 ? g->nodes[r].name : q->name;
}

/* The float32 weight initializer WeightQuant qi reads (its name copied to wname), or NULL
 * with e set naming the layer. */
static const struct qt_tensor *weight_of(struct lower *L, int qi, char *wname, size_t n)
{
    const struct qt_node *q = &L->g->nodes[qi];
    const struct qt_tensor *w = L->g->values[q->in[0]].init;
    snprintf(wname, n, "%s", L->g->values[q->in[0]].name);
    if (!w || w->dtype != QT_F32) {
        qt_err(L->e, "layer '%s': WeightQuant node '%s' does not read a float32 weight "
                     "initializer", layer_name(L->g, q), q->name);
        return NULL;
    }
    return w;
}

/* Format float (and 8-bit weights that stay as they are): the quantized weight wq (cnt values
 * of shape `shape`, copied) replaces the reads of WeightQuant qi's output. */
static void store_float(struct lower *L, int qi, const char *wname, const struct qt_shape *shape,
                        const float *wq, int64_t cnt)
{
    char name[300];
    struct qt_tensor *t = qt_tensor_new(QT_F32, shape);
    memcpy(t->data, wq, sizeof(float) * cnt);
    snprintf(name, sizeof name, "%s.quantized", wname);
    qt_graph_replace_uses(L->g, L->g->nodes[qi].out[0], add_const(L->g, name, t));
    L->rep->weight_bytes += (int64_t)sizeof(float) * cnt;
}

static int64_t fold_bn(struct lower *L, int qi, float **chan);

/* The factor the decoded weight of WeightQuant qi is multiplied by: base (nbase values, 1 or
 * one per output channel) times mul times the per-channel scale of a BatchNorm folded into the
 * layer (fold_bn), shaped [C, 1, ...] to broadcast over a weight of rank `rank`, or a scalar.
 * When off is not NULL, *off receives the offset added after it: add times the same
 * per-channel scale, in the same shape. */
static struct qt_tensor *weight_scale(struct lower *L, int qi, int rank, const float *base,
                                      int64_t nbase, float mul, float add, struct qt_tensor **off)
{
    float *chan;
    const int64_t nch = fold_bn(L, qi, &chan);
    const int64_t ns = nch > 0 ? nch : nbase, no = nch > 0 ? nch : 1;
    struct qt_shape as = {.ndim = ns > 1 ? rank : 0}, os = {.ndim = no > 1 ? rank : 0};
    for (int k = 0; k < rank; k++) as.d[k] = os.d[k] = 1;
    as.d[0] = ns;
    os.d[0] = no;
    struct qt_tensor *t = qt_tensor_new(QT_F32, &as);
    for (int64_t c = 0; c < ns; c++)
        ((float *)t->data)[c] = base[nbase > 1 ? c : 0] * mul * (chan ? chan[c] : 1.0f);
    if (off) {
        *off = qt_tensor_new(QT_F32, &os);
        for (int64_t c = 0; c < no; c++)
            ((float *)(*off)->data)[c] = add * (chan ? chan[c] : 1.0f);
    }
    free(chan);
    return t;
}

/* The map back of standardized weights (QT_STD_RESTORE): y = x + mu, x the scaled weight. */
static int add_offset(struct lower *L, const char *qn, int x, struct qt_tensor *off)
{
    char name[512];
    snprintf(name, sizeof name, "%s.mu", qn);
    const int in2[2] = {x, add_const(L->g, name, off)};
    node_name(name, sizeof name, qn, "m");
    return qt_graph_add_op(L->g, QT_OP_ADD, name, in2, 2, -1);
}

/* The BatchNormalization that can be folded into the layer reading WeightQuant qi (its
 * node index), or -1: the layer is a Conv whose weight only qi writes, whose output only an
 * inference BatchNormalization reads, with float32 parameters of one value per output
 * channel (and a float32 bias of as many, if any). */
static int foldable_bn(const struct qt_graph *g, int qi)
{
    const int ci = layer_of(g, &g->nodes[qi]);
    if (ci < 0 || g->nodes[ci].op != QT_OP_CONV || g->nodes[ci].nout != 1 ||
        g->nodes[ci].in[1] != g->nodes[qi].out[0] || qt_graph_use_count(g, g->nodes[qi].out[0]) != 1)
        return -1;
    const int y = g->nodes[ci].out[0];
    if ((g->values[y].flags & QT_V_OUTPUT) || qt_graph_use_count(g, y) != 1) return -1;
    const int bi = qt_graph_first_consumer(g, y);
    if (bi < 0 || g->nodes[bi].op != QT_OP_BATCHNORM || g->nodes[bi].nout != 1 ||
        g->nodes[bi].in[0] != y)
        return -1;
    const struct qt_node *bn = &g->nodes[bi];
    const struct qt_tensor *p[4];
    for (int k = 0; k < 4; k++) {
        p[k] = g->values[bn->in[1 + k]].init;
        if (!p[k] || p[k]->dtype != QT_F32) return -1;
    }
    const int64_t C = qt_shape_numel(&p[0]->shape);
    const struct qt_tensor *w = g->values[g->nodes[qi].in[0]].init;
    if (!w || w->shape.ndim < 1 || w->shape.d[0] != C) return -1;
    for (int k = 1; k < 4; k++)
        if (qt_shape_numel(&p[k]->shape) != C) return -1;
    const struct qt_node *conv = &g->nodes[ci];
    const struct qt_tensor *cb = conv->nin > 2 && conv->in[2] >= 0 ? g->values[conv->in[2]].init : NULL;
    if (conv->nin > 2 && conv->in[2] >= 0 && (!cb || cb->dtype != QT_F32 || qt_shape_numel(&cb->shape) != C))
        return -1;
    return bi;
}

/* Formats onnx, qlinear and integer: folds the BatchNorm foldable_bn finds into the Conv reading
 * WeightQuant qi: per output channel s = scale / sqrt(var + eps) goes into `chan` (cout
 * values, multiplied into the decoded weight's scale) and (b - mean) * s + bias becomes the
 * Conv's bias. Returns the channel count folded (0: nothing folded). As onnxruntime and
 * TensorRT fold BatchNorm into constant convolution weights themselves, this changes results
 * by rounding only, and saves the four BatchNorm parameters per channel in the file. */
static int64_t fold_bn(struct lower *L, int qi, float **chan)
{
    struct qt_graph *g = L->g;
    *chan = NULL;
    if (L->fmt != QT_EXPORT_ONNX && L->fmt != QT_EXPORT_QLINEAR && L->fmt != QT_EXPORT_INTEGER)
        return 0;
    const int bi = foldable_bn(g, qi);
    if (bi < 0) return 0;
    const int ci = layer_of(g, &g->nodes[qi]), y = g->nodes[ci].out[0];
    const struct qt_node *bn = &g->nodes[bi];
    const struct qt_tensor *p[4];
    for (int k = 0; k < 4; k++) p[k] = g->values[bn->in[1 + k]].init;
    const int64_t C = qt_shape_numel(&p[0]->shape);
    const struct qt_node *conv = &g->nodes[ci];
    const struct qt_tensor *cb = conv->nin > 2 && conv->in[2] >= 0 ? g->values[conv->in[2]].init : NULL;
    const float eps = qt_node_float(bn, "epsilon", 1e-5f);
    float *s = malloc(sizeof(float) * C);
    struct qt_shape bs = {.ndim = 1, .d = {C}};
    struct qt_tensor *b = qt_tensor_new(QT_F32, &bs);
    for (int64_t c = 0; c < C; c++)
        s[c] = (float)qt_bn_fold_channel(p, eps, cb ? cb->data : NULL, c, (float *)b->data + c);
    char name[512];
    snprintf(name, sizeof name, "%s.bias", g->values[bn->in[2]].name);
    const int vb = add_const(g, name, b);
    struct qt_node *cv = &g->nodes[ci];
    if (cv->nin < 3) {
        cv->in = realloc(cv->in, sizeof(int) * 3);
        cv->nin = 3;
    }
    cv->in[2] = vb;
    const int z = g->nodes[bi].out[0];
    g->nodes[bi].dead = 1;
    qt_graph_replace_uses(g, z, y);
    *chan = s;
    return C;
}

/* int8 codes and their scales along axis 0 (one, or one per slice): a slice whose scale is
 * negative (a BatchNorm folded with a negative gamma) has its codes and scale negated, one
 * whose scale is 0 gets codes 0 and scale 1, so that every scale is positive as integer
 * kernels need, with the same products. Codes lie in -127..127, so negation stays in int8. */
static void positive_scales(struct qt_tensor *codes, struct qt_tensor *scale)
{
    const int64_t ns = qt_shape_numel(&scale->shape), cnt = qt_shape_numel(&codes->shape);
    const int64_t per = ns > 0 ? cnt / ns : 0;
    float *s = scale->data;
    int8_t *k = codes->data;
    for (int64_t c = 0; c < ns; c++) {
        if (s[c] > 0) continue;
        for (int64_t i = c * per; i < (c + 1) * per; i++) k[i] = s[c] < 0 ? (int8_t)-k[i] : 0;
        s[c] = s[c] < 0 ? -s[c] : 1.0f;
    }
}

/* Writes the decoded weight of an APoT/uniform WeightQuant (node index qi) into value `out`. */
static int lower_weight_levels(struct lower *L, int qi, const struct qt_quant_attrs *a,
                               const struct qt_apot_quantizer *qz)
{
    struct qt_graph *g = L->g;
    struct qt_error *e = L->e;
    const struct qt_node *q = &g->nodes[qi];
    const char *lname = layer_name(g, q);
    char wname[256];
    const struct qt_tensor *w = weight_of(L, qi, wname, sizeof wname);
    if (!w) return -1;
    const struct qt_tensor *al = q->nin > 1 && q->in[1] >= 0 ? g->values[q->in[1]].init : NULL;
    if (2 * qz->n - 1 > 256)
        return qt_err(e, "layer '%s': %d-bit weights have %d levels; codes of more than 8 bits "
                         "cannot be packed (at most 8-bit weights)", lname, a->bits, 2 * qz->n - 1);
    if (!al || al->dtype != QT_F32)
        return qt_err(e, "layer '%s': WeightQuant node '%s' has no float32 alpha initializer",
                      lname, q->name);
    const int64_t cnt = qt_shape_numel(&w->shape), nal = qt_shape_numel(&al->shape);
    if (cnt <= 0 || nal <= 0 || cnt % nal || (nal > 1 && (w->shape.ndim < 1 || w->shape.d[0] != nal)))
        return qt_err(e, "layer '%s': WeightQuant node '%s' has %lld alphas for a weight of "
                         "%lld values (expected 1 or one per output channel)",
                      lname, q->name, (long long)nal, (long long)cnt);
    const float *alpha = al->data;
    for (int64_t c = 0; c < nal; c++)
        if (!(alpha[c] > 0) || !isfinite(alpha[c]))
            return qt_err(e, "layer '%s': WeightQuant node '%s' has alpha %g (must be positive "
                             "and finite)", lname, q->name, alpha[c]);
    float *wq = malloc(sizeof(float) * cnt);
    uint8_t *code = malloc((size_t)cnt);
    if (!wq || !code) {
        free(wq);
        free(code);
        return qt_err(e, "layer '%s': out of memory", lname);
    }
    float mu = 0.0f, sigma = 1.0f, slv[2 * QT_APOT_MAX_LEVELS];
    quant_weight_forward_cpu(wq, &mu, &sigma, w->data, alpha, nal, a->standardize, qz, cnt);
    const int restore = a->standardize == QT_STD_RESTORE;
    qt_apot_signed_levels(slv, qz);
    const int n = qz->n, per = (int)(cnt / nal);
    const float *wd = w->data;
    for (int64_t i = 0; i < cnt; i++) {
        const float al_c = alpha[i / per];
        const float x = qt_apot_weight_x(wd[i], mu, sigma, al_c);
        float m = fabsf(x);
        m = m > 1.0f ? 1.0f : m;
        const int k = qt_apot_nearest_index(m, qz->thr, n);
        const int c = x < 0 ? n - 1 - k : n - 1 + k;
        code[i] = (uint8_t)c;
        const float dec = qt_apot_weight_out(slv[c] * al_c, mu, sigma, a->standardize);
        if (!(dec == wq[i])) {
            qt_err(e, "layer '%s': weight %lld decodes to %.9g but qtune's forward gives %.9g "
                      "(WeightQuant node '%s')", lname, (long long)i, (double)dec,
                   (double)wq[i], q->name);
            free(wq);
            free(code);
            return -1;
        }
    }
    char name[512], key[128];
    const int out = q->out[0];
    if (L->fmt == QT_EXPORT_FLOAT) {
        store_float(L, qi, wname, &w->shape, wq, cnt);
        free(wq);
        free(code);
        return 0;
    }
    if (int8_grid(L->fmt)) {
        int jk[QT_APOT_MAX_LEVELS];
        const int D = level_grid(qz, 127, jk);
        free(wq);
        if (D < 0) {
            free(code);
            return qt_err(e, "layer '%s': %s %d-bit weights do not lie on an 8-bit integer grid, "
                             "which --format %s needs (use --format onnx)",
                          lname, qt_quant_scheme_name(a->scheme), a->bits,
                          qt_export_format_name(L->fmt));
        }
        struct qt_tensor *ct = qt_tensor_new(QT_I8, &w->shape);
        for (int64_t i = 0; i < cnt; i++) {
            const int c = code[i] - (n - 1);
            ((int8_t *)ct->data)[i] = (int8_t)(c < 0 ? -jk[-c] : jk[c]);
        }
        free(code);
        L->rep->weight_bytes += cnt;
        snprintf(name, sizeof name, "%s.codes", wname);
        const int vc = add_const(g, name, ct);
        float *sc = malloc(sizeof(float) * nal);
        if (!sc) return qt_err(e, "layer '%s': out of memory", lname);
        for (int64_t c = 0; c < nal; c++) sc[c] = (restore ? alpha[c] * sigma : alpha[c]) / (float)D;
        char qn[32];
        snprintf(qn, sizeof qn, "qw%d", L->nw);
        struct qt_tensor *off = NULL;
        struct qt_tensor *st = weight_scale(L, qi, w->shape.ndim, sc, nal, 1.0f, mu, restore ? &off : NULL);
        free(sc);
        positive_scales(ct, st);
        int vw = dequant(g, qn, -1, vc, st->data, qt_shape_numel(&st->shape), QT_I8, 0, -1);
        qt_tensor_free(st);
        if (off) vw = add_offset(L, qn, vw, off);
        qt_graph_replace_uses(g, out, vw);
        return 0;
    }
    /* a group's number: sum of code_s * L^s over its G codes, stored little-endian in its B
     * bytes */
    const int nlv = 2 * n - 1;
    struct qt_code_layout lay;
    const int64_t nbytes = qt_export_code_bytes(nlv, cnt, &lay);
    const int G = lay.group, B = lay.group_bytes, pad = lay.padded;
    const int64_t ngroups = nbytes / B, bdims[2] = {ngroups, B};
    struct qt_tensor *bytes = tensor1(QT_U8, B > 1 ? 2 : 1, B > 1 ? bdims : &nbytes);
    uint8_t *bd = bytes->data;
    for (int64_t j = 0; j < ngroups; j++) {
        uint32_t v = 0;
        for (int s = G - 1; s >= 0; s--)
            v = v * (uint32_t)nlv + (j * G + s < cnt ? code[j * G + s] : (uint32_t)(n - 1));
        for (int k = 0; k < B; k++) bd[j * B + k] = (uint8_t)(v >> (8 * k));
    }
    free(wq);
    free(code);
    L->rep->weight_bytes += nbytes;
    snprintf(name, sizeof name, "%s.codes", wname);
    const int vbytes = add_const(g, name, bytes);
    /* shape of the weight and of its alphas (one per output channel broadcast over the rest) */
    const int64_t rd = w->shape.ndim;
    struct qt_tensor *shp = tensor1(QT_I64, 1, &rd);
    int kl = snprintf(key, sizeof key, "qtune.shape");
    for (int k = 0; k < w->shape.ndim; k++) {
        ((int64_t *)shp->data)[k] = w->shape.d[k];
        kl += snprintf(key + kl, sizeof key - kl, "%s%lld", k ? "x" : ".", (long long)w->shape.d[k]);
    }
    int vshape = shared_const(g, key, shp);
    snprintf(name, sizeof name, "qw%d.alpha", L->nw);
    struct qt_tensor *off = NULL;
    int valpha = add_const(g, name, weight_scale(L, qi, w->shape.ndim, alpha, nal,
                                                 restore ? sigma : 1.0f, mu, restore ? &off : NULL));
    char qn[32];
    snprintf(qn, sizeof qn, "qw%d", L->nw);
    node_name(name, sizeof name, qn, "c");
    int vi = qt_graph_add_cast(g, name, vbytes, QT_I32, -1);
    int in2[2], vl;
    if (B == 1) {
        /* decoding table: row b holds the levels of the G codes of byte value b */
        int rows = 1;
        for (int k = 0; k < G; k++) rows *= nlv;
        const int64_t td[2] = {rows, G};
        struct qt_tensor *tab = tensor1(QT_F32, 2, td);
        float *tb = tab->data;
        for (int b = 0; b < rows; b++)
            for (int s = 0, r = b; s < G; s++, r /= nlv) tb[b * G + s] = slv[r % nlv];
        snprintf(key, sizeof key, "qtune.levels.%s%d.x%d", qt_quant_scheme_name(a->scheme), a->bits, G);
        in2[0] = shared_const(g, key, tab);
        in2[1] = vi;
        node_name(name, sizeof name, qn, "d");
        vl = qt_graph_add_op(g, QT_OP_GATHER, name, in2, 2, -1);
    } else {
        /* the group's number y = sum of byte_k * 256^k (< 2^24), its digits
         * (y / L^s) - L * (y / L^(s+1)) in integer division, then Gather of their levels */
        struct qt_tensor *place = tensor1(QT_I32, 1, &(int64_t){B});
        for (int k = 0; k < B; k++) ((int32_t *)place->data)[k] = 1 << (8 * k);
        snprintf(key, sizeof key, "qtune.byte_places.%d", B);
        in2[0] = vi;
        in2[1] = shared_const(g, key, place);
        node_name(name, sizeof name, qn, "p");
        const int vp = qt_graph_add_op(g, QT_OP_MUL, name, in2, 2, -1);
        node_name(name, sizeof name, qn, "y");
        int vy;
        if (g->opset >= 13) {
            struct qt_tensor *ax = tensor1(QT_I64, 1, &(int64_t){1});
            ((int64_t *)ax->data)[0] = 1;
            in2[0] = vp;
            in2[1] = shared_const(g, "qtune.axis1", ax);
            vy = qt_graph_add_op(g, QT_OP_REDUCESUM, name, in2, 2, -1);
        } else {
            vy = qt_graph_add_op(g, QT_OP_REDUCESUM, name, &vp, 1, -1);
            qt_node_set_ints(&g->nodes[g->nnodes - 1], "axes", (const int64_t[]){1}, 1);
        }
        qt_node_set_int(&g->nodes[g->nnodes - 1], "keepdims", 1);
        struct qt_tensor *dig = tensor1(QT_I32, 1, &(int64_t){G});
        for (int s = 0, p = 1; s < G; s++, p *= nlv) ((int32_t *)dig->data)[s] = p;
        snprintf(key, sizeof key, "qtune.digit_places.%dx%d", nlv, G);
        in2[0] = vy;
        in2[1] = shared_const(g, key, dig);
        node_name(name, sizeof name, qn, "q");
        const int vq = qt_graph_add_op(g, QT_OP_DIV, name, in2, 2, -1);
        struct qt_tensor *base = tensor1(QT_I32, 0, NULL);
        *(int32_t *)base->data = nlv;
        snprintf(key, sizeof key, "qtune.base.%d", nlv);
        const int vbase = shared_const(g, key, base);
        in2[0] = vq;
        in2[1] = vbase;
        node_name(name, sizeof name, qn, "h");
        in2[0] = qt_graph_add_op(g, QT_OP_DIV, name, in2, 2, -1);
        node_name(name, sizeof name, qn, "l");
        const int vhl = qt_graph_add_op(g, QT_OP_MUL, name, in2, 2, -1);
        in2[0] = vq;
        in2[1] = vhl;
        node_name(name, sizeof name, qn, "o");
        const int vcode = qt_graph_add_op(g, QT_OP_SUB, name, in2, 2, -1);
        struct qt_tensor *lv = tensor1(QT_F32, 1, &(int64_t){nlv});
        memcpy(lv->data, slv, sizeof(float) * nlv);
        snprintf(key, sizeof key, "qtune.levels.%s%d", qt_quant_scheme_name(a->scheme), a->bits);
        in2[0] = shared_const(g, key, lv);
        in2[1] = vcode;
        node_name(name, sizeof name, qn, "d");
        vl = qt_graph_add_op(g, QT_OP_GATHER, name, in2, 2, -1);
    }
    if (pad) {
        /* [groups, G] -> [groups * G] -> the first cnt codes */
        const int64_t one = 1;
        struct qt_tensor *flat = tensor1(QT_I64, 1, &one), *st = tensor1(QT_I64, 1, &one),
                         *en = tensor1(QT_I64, 1, &one);
        ((int64_t *)flat->data)[0] = -1;
        ((int64_t *)en->data)[0] = cnt;
        in2[0] = vl;
        in2[1] = shared_const(g, "qtune.shape.flat", flat);
        node_name(name, sizeof name, qn, "f");
        const int vflat = qt_graph_add_op(g, QT_OP_RESHAPE, name, in2, 2, -1);
        snprintf(key, sizeof key, "qtune.count.%lld", (long long)cnt);
        const int in3[3] = {vflat, shared_const(g, "qtune.axis0", st), shared_const(g, key, en)};
        node_name(name, sizeof name, qn, "u");
        vl = qt_graph_add_op(g, QT_OP_SLICE, name, in3, 3, -1);
    }
    node_name(name, sizeof name, qn, "r");
    in2[0] = vl;
    in2[1] = vshape;
    int vr = qt_graph_add_op(g, QT_OP_RESHAPE, name, in2, 2, -1);
    node_name(name, sizeof name, qn, "s");
    in2[0] = vr;
    in2[1] = valpha;
    int vw = qt_graph_add_op(g, QT_OP_MUL, name, in2, 2, -1);
    if (off) vw = add_offset(L, qn, vw, off);
    qt_graph_replace_uses(g, out, vw);
    return 0;
}

/* 8-bit first/last layer weights: integer steps k with Wq = k / 127 * m. */
static int lower_weight_int8(struct lower *L, int qi, const struct qt_quant_attrs *a)
{
    struct qt_graph *g = L->g;
    const struct qt_node *q = &g->nodes[qi];
    const char *lname = layer_name(g, q);
    char wname[256];
    const struct qt_tensor *w = weight_of(L, qi, wname, sizeof wname);
    if (!w) return -1;
    const int64_t cnt = qt_shape_numel(&w->shape);
    float *wq = malloc(sizeof(float) * (cnt ? cnt : 1)), m = 0.0f;
    if (!wq) return qt_err(L->e, "layer '%s': out of memory", lname);
    quant_int8_weight_forward_cpu(wq, &m, w->data, a->scheme == QT_QS_ABSMAX, cnt);
    char name[512];
    const int out = q->out[0];
    if (!isfinite(m)) {
        free(wq);
        return qt_err(L->e, "layer '%s': 8-bit weight scale is %g", lname, (double)m);
    }
    if (m <= 0.0f || L->fmt == QT_EXPORT_FLOAT) {
        /* m <= 0 (an all-zero weight, or with max scaling no positive weight) leaves W as it is */
        store_float(L, qi, wname, &w->shape, wq, cnt);
        free(wq);
        return 0;
    }
    const float *wd = w->data;
    int wide = 0;
    long *k = malloc(sizeof(long) * (cnt ? cnt : 1));
    for (int64_t i = 0; i < cnt && k; i++) {
        k[i] = lrintf(wd[i] / m * 127.0f);
        wide |= k[i] < -128 || k[i] > 127;
        if (!((float)k[i] / 127.0f * m == wq[i]) || k[i] < -32768 || k[i] > 32767) {
            free(k);
            free(wq);
            return qt_err(L->e, "layer '%s': 8-bit weight %lld cannot be stored as an integer "
                                "step (WeightQuant node '%s')", lname, (long long)i, q->name);
        }
    }
    free(wq);
    if (!k) return qt_err(L->e, "layer '%s': out of memory", lname);
    if (int8_grid(L->fmt) && wide) {
        free(k);
        return qt_err(L->e, "layer '%s': 8-bit weights scaled by max W reach steps beyond -127, "
                            "which int8 cannot hold (--format %s needs --int8-range absmax)",
                      lname, qt_export_format_name(L->fmt));
    }
    struct qt_tensor *codes = qt_tensor_new(wide ? QT_I16 : QT_I8, &w->shape);
    for (int64_t i = 0; i < cnt; i++) {
        if (wide) ((int16_t *)codes->data)[i] = (int16_t)k[i];
        else ((int8_t *)codes->data)[i] = (int8_t)k[i];
    }
    free(k);
    L->rep->weight_bytes += (int64_t)codes->nbytes;
    snprintf(name, sizeof name, "%s.codes", wname);
    int vc = add_const(g, name, codes);
    char qn[32];
    snprintf(qn, sizeof qn, "qw%d", L->nw);
    if (int8_grid(L->fmt)) {
        const float sc = m / 127.0f;
        struct qt_tensor *st = weight_scale(L, qi, w->shape.ndim, &sc, 1, 1.0f, 0.0f, NULL);
        positive_scales(codes, st);
        qt_graph_replace_uses(g, out, dequant(g, qn, -1, vc, st->data, qt_shape_numel(&st->shape),
                                              QT_I8, 0, -1));
        qt_tensor_free(st);
        return 0;
    }
    node_name(name, sizeof name, qn, "c");
    int vf = qt_graph_add_cast(g, name, vc, QT_F32, -1);
    int in2[2] = {vf, shared_scalar(g, "qtune.int8.steps", 127.0f)};
    node_name(name, sizeof name, qn, "k");
    int vd = qt_graph_add_op(g, QT_OP_DIV, name, in2, 2, -1);
    snprintf(name, sizeof name, "%s.scale", wname);
    in2[0] = vd;
    in2[1] = add_const(g, name, weight_scale(L, qi, w->shape.ndim, &m, 1, 1.0f, 0.0f, NULL));
    node_name(name, sizeof name, qn, "s");
    qt_graph_replace_uses(g, out, qt_graph_add_op(g, QT_OP_MUL, name, in2, 2, -1));
    return 0;
}

/* ---- Activations ---- */

int qt_act_buckets(const struct qt_apot_quantizer *qz, int32_t *table, float *thr_m)
{
    for (int M = 2; M <= QT_ACT_MAX_BUCKETS; M *= 2) {
        int ok = 1, k = 0;
        for (int b = 0; b < M && ok; b++) {
            /* thresholds below b / M (exact: M is a power of two) */
            const float lo = (float)b / (float)M, hi = (float)(b + 1) / (float)M;
            while (k < qz->n - 1 && qz->thr[k] < lo) k++;
            table[b] = k;
            ok = !(k + 1 < qz->n - 1 && qz->thr[k + 1] < hi); /* two thresholds in a bucket */
        }
        if (!ok) continue;
        for (int b = 0; b < M; b++)
            thr_m[b] = table[b] < qz->n - 1 ? qz->thr[table[b]] * (float)M : INFINITY;
        return M;
    }
    return -1;
}

/* The activation quantizer (see the top of this file): the values written are `out`, or for
 * format qdq they pass a QuantizeLinear/DequantizeLinear pair on their grid first. */
static int lower_act(struct lower *L, int qi, const struct qt_quant_attrs *a,
                     const struct qt_apot_quantizer *qz)
{
    struct qt_graph *g = L->g;
    const struct qt_node *q = &g->nodes[qi];
    const char *lname = layer_name(g, q);
    const struct qt_tensor *al = q->nin > 1 && q->in[1] >= 0 ? g->values[q->in[1]].init : NULL;
    if (!al || al->dtype != QT_F32 || qt_shape_numel(&al->shape) != 1)
        return qt_err(L->e, "layer '%s': ActQuant node '%s' has no float32 alpha initializer "
                            "of one value", lname, q->name);
    const float alpha = *(const float *)al->data;
    if (!(alpha > 0) || !isfinite(alpha))
        return qt_err(L->e, "layer '%s': ActQuant node '%s' has alpha %g (must be positive and "
                            "finite)", lname, q->name, (double)alpha);
    const int n = qz->n, sg = a->is_signed;
    const int x_in = q->in[0], out = q->out[0];
    int jk[QT_APOT_MAX_LEVELS], D = 0;
    const int qdq = int8_grid(L->fmt);
    if (qdq && (D = level_grid(qz, sg ? 127 : 255, jk)) < 0)
        return qt_err(L->e, "layer '%s': %s %d-bit %s activations do not lie on an 8-bit integer "
                            "grid, which --format %s needs (use --format onnx)",
                      lname, qt_quant_scheme_name(a->scheme), a->bits, sg ? "signed" : "unsigned",
                      qt_export_format_name(L->fmt));
    int32_t tab[QT_ACT_MAX_BUCKETS];
    float tthr[QT_ACT_MAX_BUCKETS];
    const int M = qt_act_buckets(qz, tab, tthr);
    if (M < 0)
        return qt_err(L->e, "layer '%s': the thresholds of %s %d-bit activations lie closer than "
                            "1/%d apart", lname, qt_quant_scheme_name(a->scheme), a->bits,
                      QT_ACT_MAX_BUCKETS);
    /* format qdq: the quantized values go through QuantizeLinear/DequantizeLinear on the grid
     * alpha / D, where they lie (the division rounds to the integer codes exactly) */
    const int fin = qdq ? -1 : out;
    /* u = a / (alpha / M) equals (a / alpha) * M exactly when alpha / M is a normal float */
    const float alpha_m = alpha / (float)M;
    if (!(alpha_m * (float)M == alpha) || alpha_m < 1.17549435e-38f)
        return qt_err(L->e, "layer '%s': ActQuant node '%s' has alpha %g, too small to export",
                      lname, q->name, (double)alpha);
    char name[512], key[128], qn[32];
    snprintf(qn, sizeof qn, "qa%d", L->na);
    snprintf(name, sizeof name, "%s.alpha", qn);
    const int valpha = scalar_f(g, name, alpha_m);
    const char *kind = qt_quant_scheme_name(a->scheme);
    const char *sgn = sg ? "s" : "u";
    /* shared constants: per bucket, the level index below it and the threshold (times M, +inf
     * where the bucket holds none) that may raise the index by one */
    const int64_t nm = M;
    snprintf(key, sizeof key, "qtune.buckets.%s%d.%s", kind, a->bits, sgn);
    struct qt_tensor *tt = tensor1(QT_I32, 1, &nm);
    memcpy(tt->data, tab, sizeof(int32_t) * M);
    const int vtab = shared_const(g, key, tt);
    snprintf(key, sizeof key, "qtune.thresholds.%s%d.%s", kind, a->bits, sgn);
    struct qt_tensor *th = tensor1(QT_F32, 1, &nm);
    memcpy(th->data, tthr, sizeof(float) * M);
    const int vthr = shared_const(g, key, th);
    /* the quantized values alpha * level, as qtune computes them */
    const int64_t nl = n;
    struct qt_tensor *lv = tensor1(QT_F32, 1, &nl);
    for (int k = 0; k < n; k++) ((float *)lv->data)[k] = alpha * qz->levels[k];
    snprintf(name, sizeof name, "%s.values", qn);
    const int vlv = add_const(g, name, lv);

    int in2[2] = {x_in, valpha};
    node_name(name, sizeof name, qn, "u");
    const int vu = qt_graph_add_op(g, QT_OP_DIV, name, in2, 2, -1);
    int vm = vu;
    if (sg) {
        node_name(name, sizeof name, qn, "a");
        vm = qt_graph_add_op(g, QT_OP_ABS, name, &vu, 1, -1);
    }
    node_name(name, sizeof name, qn, "c");
    int vc;
    if (g->opset >= 11) {
        snprintf(key, sizeof key, "qtune.bucket_last.%d", M);
        const int in3[3] = {vm, shared_scalar(g, "qtune.zero", 0.0f),
                            shared_scalar(g, key, (float)(M - 1))};
        vc = qt_graph_add_op(g, QT_OP_CLIP, name, in3, 3, -1);
    } else {
        vc = qt_graph_add_op(g, QT_OP_CLIP, name, &vm, 1, -1);
        qt_node_set_float(&g->nodes[g->nnodes - 1], "min", 0.0f);
        qt_node_set_float(&g->nodes[g->nnodes - 1], "max", (float)(M - 1));
    }
    node_name(name, sizeof name, qn, "b");
    const int vb = qt_graph_add_cast(g, name, vc, QT_I32, -1); /* truncation: the floor of a value >= 0 */
    in2[0] = vtab;
    in2[1] = vb;
    node_name(name, sizeof name, qn, "e");
    const int ve = qt_graph_add_op(g, QT_OP_GATHER, name, in2, 2, -1);
    in2[0] = vthr;
    node_name(name, sizeof name, qn, "t");
    const int vt = qt_graph_add_op(g, QT_OP_GATHER, name, in2, 2, -1);
    in2[0] = vm;
    in2[1] = vt;
    node_name(name, sizeof name, qn, "g");
    const int vgt = qt_graph_add_op(g, QT_OP_GREATER, name, in2, 2, -1);
    node_name(name, sizeof name, qn, "k");
    const int vst = qt_graph_add_cast(g, name, vgt, QT_I32, -1);
    in2[0] = ve;
    in2[1] = vst;
    node_name(name, sizeof name, qn, "i");
    const int vidx = qt_graph_add_op(g, QT_OP_ADD, name, in2, 2, -1);
    in2[0] = vlv;
    in2[1] = vidx;
    node_name(name, sizeof name, qn, "v");
    int v = qt_graph_add_op(g, QT_OP_GATHER, name, in2, 2, sg ? -1 : fin);
    if (sg) {
        /* the sign of x: alpha * level * -1 is alpha * -level exactly; at x = 0 the level is 0 */
        node_name(name, sizeof name, qn, "n");
        in2[0] = v;
        in2[1] = qt_graph_add_op(g, QT_OP_SIGN, name, &vu, 1, -1);
        node_name(name, sizeof name, qn, "w");
        v = qt_graph_add_op(g, QT_OP_MUL, name, in2, 2, fin);
    }
    if (fin < 0) {
        const float sc = alpha / (float)D;
        dequant(g, qn, v, -1, &sc, 1, sg ? QT_I8 : QT_U8, 0, out);
    }
    return 0;
}

/* ---- Metadata ---- */

/* Appends part to the layer's qtune.quant.<layer> metadata entry ("; " between parts). */
static void describe_layer(struct qt_graph *g, const char *layer, const char *part)
{
    char key[512], val[512];
    snprintf(key, sizeof key, "qtune.quant.%s", layer);
    const char *old = qt_graph_meta(g, key);
    if (old) snprintf(val, sizeof val, "%s; %s", old, part);
    else snprintf(val, sizeof val, "%s", part);
    qt_graph_set_meta(g, key, val);
}

/* Describes a quantizer in its layer's metadata: "weight apot4 signed standardized" or
 * "input apot4 unsigned". */
static void describe(struct qt_graph *g, int qi, const struct qt_quant_attrs *a)
{
    const struct qt_node *q = &g->nodes[qi];
    char part[160];
    if (a->scheme >= QT_QS_MAX)
        snprintf(part, sizeof part, "weight int8 signed %s", qt_quant_scheme_name(a->scheme));
    else
        snprintf(part, sizeof part, "%s %s%d %s%s", q->op == QT_OP_WEIGHTQUANT ? "weight" : "input",
                 qt_quant_scheme_name(a->scheme), a->bits, a->is_signed ? "signed" : "unsigned",
                 q->op != QT_OP_WEIGHTQUANT || !a->standardize ? ""
                 : a->standardize == QT_STD_RESTORE        ? " standardized mapped-back"
                                                           : " standardized");
    describe_layer(g, layer_name(g, q), part);
}

/* ---- Format qlinear: requantized convolution outputs ---- */

/* The largest alpha of the ActQuant nodes that alone read value r (+inf when another node
 * reads it, or an alpha is not a float32 initializer). */
static float act_cap(const struct qt_graph *g, int r)
{
    float cap = -INFINITY;
    int uses = 0;
    for (int i = 0; i < g->nnodes; i++) {
        const struct qt_node *n = &g->nodes[i];
        if (n->dead) continue;
        for (int k = 0; k < n->nin; k++) {
            if (n->in[k] != r) continue;
            uses++;
            const struct qt_tensor *a = n->nin > 1 && n->in[1] >= 0 ? g->values[n->in[1]].init : NULL;
            if (n->op != QT_OP_ACTQUANT || k != 0 || !a || a->dtype != QT_F32 ||
                qt_shape_numel(&a->shape) != 1 || !(*(const float *)a->data > 0))
                return INFINITY;
            cap = *(const float *)a->data > cap ? *(const float *)a->data : cap;
        }
    }
    return uses > 0 && !(g->values[r].flags & QT_V_OUTPUT) ? cap : INFINITY;
}

int qt_export_requant_value(const struct qt_graph *g, int ci, float *cap)
{
    *cap = INFINITY;
    const struct qt_node *c = &g->nodes[ci];
    if (c->dead || c->op != QT_OP_CONV || c->nin < 2 || c->nout != 1) return -1;
    const int pa = g->values[c->in[0]].producer, pw = g->values[c->in[1]].producer;
    if (pa < 0 || pw < 0 || g->nodes[pa].dead || g->nodes[pw].dead ||
        g->nodes[pa].op != QT_OP_ACTQUANT || g->nodes[pw].op != QT_OP_WEIGHTQUANT)
        return -1;
    /* weights mapped back to their mean are decoded with an Add of it: no integer weight */
    if (qt_node_int(&g->nodes[pw], "standardize", 0) == QT_STD_RESTORE) return -2;
    const int bi = foldable_bn(g, pw);
    const int v = bi >= 0 ? g->nodes[bi].out[0] : c->out[0];
    /* a Relu alone reading v, whose output only quantizers read: nothing above their alpha
     * or below 0 matters */
    const int ri = qt_graph_first_consumer(g, v);
    if (ri >= 0 && qt_graph_use_count(g, v) == 1 && !(g->values[v].flags & QT_V_OUTPUT) &&
        g->nodes[ri].op == QT_OP_RELU && g->nodes[ri].nout == 1)
        *cap = act_cap(g, g->nodes[ri].out[0]);
    return v;
}

/* The float32 initializer v, or NULL. */
static const struct qt_tensor *f32_init(const struct qt_graph *g, int v)
{
    const struct qt_tensor *t = v >= 0 ? g->values[v].init : NULL;
    return t && t->dtype == QT_F32 ? t : NULL;
}

/* The DequantizeLinear node writing v with an initializer scale (and zero point of the
 * input's type, all 0 when zero0), or -1. */
static int dq_producer(const struct qt_graph *g, int v, int zero0)
{
    const int p = v >= 0 ? g->values[v].producer : -1;
    if (p < 0 || g->nodes[p].dead || g->nodes[p].op != QT_OP_DEQUANTIZELINEAR ||
        g->nodes[p].nin < 3 || !f32_init(g, g->nodes[p].in[1]))
        return -1;
    const struct qt_tensor *z = g->values[g->nodes[p].in[2]].init;
    if (!z || (z->dtype != QT_U8 && z->dtype != QT_I8)) return -1;
    for (int64_t k = 0; zero0 && k < qt_shape_numel(&z->shape); k++)
        if (qt_tensor_get_i(z, k) != 0) return -1;
    return p;
}

/* The DequantizeLinear nodes a convolution's integer form reads (formats qlinear, integer):
 * *da writes its input x (codes of one scalar scale), *dw its weight w (an int8 initializer of
 * rank >= 3, zero points 0). 0, or -1 when x and w are not such outputs. */
static int int8_operands(const struct qt_graph *g, int x, int w, int *da, int *dw)
{
    *da = dq_producer(g, x, 0);
    *dw = dq_producer(g, w, 1);
    if (*da < 0 || *dw < 0) return -1;
    const struct qt_tensor *sa = g->values[g->nodes[*da].in[1]].init;
    const struct qt_tensor *wc = g->values[g->nodes[*dw].in[0]].init;
    return qt_shape_numel(&sa->shape) == 1 && wc && wc->dtype == QT_I8 && wc->shape.ndim >= 3
               ? 0
               : -1;
}

/* Format qlinear: the Conv named r->conv, whose input and weight now come from
 * DequantizeLinear (a scalar activation scale sx, int8 weights with zero points 0 and scales
 * sw), gets its bias as int32 steps of sx * sw (DequantizeLinear) and its output through a
 * QuantizeLinear/DequantizeLinear pair of the input's type, whose scale and zero point map
 * r's range (widened to hold 0) onto the 256 codes: the node group onnxruntime turns into
 * QLinearConv. */
static int requant_conv(struct lower *L, const struct qt_export_range *r, int k)
{
    struct qt_graph *g = L->g;
    const int ci = qt_graph_find_node(g, r->conv);
    if (ci < 0 || g->nodes[ci].dead || g->nodes[ci].op != QT_OP_CONV)
        return qt_err(L->e, "layer '%s': no convolution of that name to requantize", r->conv);
    int da, dw;
    if (int8_operands(g, g->nodes[ci].in[0], g->nodes[ci].in[1], &da, &dw))
        return qt_err(L->e, "layer '%s': its input and weight are not both 8-bit "
                            "DequantizeLinear outputs, which --format qlinear needs", r->conv);
    const struct qt_tensor *sa = g->values[g->nodes[da].in[1]].init;
    const struct qt_tensor *sw = g->values[g->nodes[dw].in[1]].init;
    if (!(isfinite(r->lo) && isfinite(r->hi) && r->lo <= r->hi))
        return qt_err(L->e, "layer '%s': the calibrated output range [%g, %g] is not finite",
                      r->conv, (double)r->lo, (double)r->hi);
    const enum qt_dtype zt = g->values[g->nodes[da].in[2]].init->dtype;
    const int64_t ns = qt_shape_numel(&sw->shape);
    const float sx = *(const float *)sa->data;
    char name[512], qn[32];
    snprintf(qn, sizeof qn, "qc%d", k);
    struct qt_node *conv = &g->nodes[ci];
    if (conv->nin > 2 && conv->in[2] >= 0) {
        const struct qt_tensor *b = f32_init(g, conv->in[2]);
        const int64_t nb = b ? qt_shape_numel(&b->shape) : 0;
        if (!b || (ns > 1 && nb != ns))
            return qt_err(L->e, "layer '%s': the bias is not a float32 initializer of one value "
                                "per output channel", r->conv);
        struct qt_tensor *bq = qt_tensor_new(QT_I32, &b->shape);
        float *bs = malloc(sizeof(float) * nb);
        if (!bs) {
            qt_tensor_free(bq);
            return qt_err(L->e, "layer '%s': out of memory", r->conv);
        }
        for (int64_t c = 0; c < nb; c++) {
            bs[c] = sx * ((const float *)sw->data)[ns > 1 ? c : 0];
            const double q = rint((double)((const float *)b->data)[c] / (double)bs[c]);
            if (!(bs[c] > 0) || !(fabs(q) < 2147483647.0)) {
                qt_err(L->e, "layer '%s': bias %g is beyond int32 steps of %g", r->conv,
                       (double)((const float *)b->data)[c], (double)bs[c]);
                qt_tensor_free(bq);
                free(bs);
                return -1;
            }
            ((int32_t *)bq->data)[c] = (int32_t)q;
        }
        snprintf(name, sizeof name, "%s.bias_steps", qn);
        const int vq = add_const(g, name, bq);
        snprintf(name, sizeof name, "%s/bias", qn);
        const int vb = dequant(g, name, -1, vq, bs, nb, QT_I32, 0, -1);
        free(bs);
        g->nodes[ci].in[2] = vb;
    }
    /* the output range: codes 0..255 (uint8) or -128..127 (int8) */
    const float lo = r->lo < 0 ? r->lo : 0.0f, hi = r->hi > 0 ? r->hi : 0.0f;
    const float scale = hi > lo ? (hi - lo) / 255.0f : 1.0f;
    const int zmin = zt == QT_I8 ? -128 : 0;
    long z = lrint(zmin - (double)lo / scale);
    z = z < zmin ? zmin : z > zmin + 255 ? zmin + 255 : z;
    /* the pair goes after the Relu when the range is its output's: Conv -> Relu -> Q, a
     * Relu onnxruntime finds redundant (the zero point is the lowest code) */
    int pi = ci;
    if (r->relu) {
        const int y0 = g->nodes[ci].out[0], ri = qt_graph_first_consumer(g, y0);
        if (ri < 0 || qt_graph_use_count(g, y0) != 1 || g->nodes[ri].op != QT_OP_RELU)
            return qt_err(L->e, "layer '%s': its output is not read by a Relu alone", r->conv);
        pi = ri;
    }
    const int y = g->nodes[pi].out[0];
    snprintf(name, sizeof name, "%s/raw", qn);
    const int raw = qt_graph_add_value_unique(g, name, QT_UNDEF, NULL);
    g->nodes[pi].out[0] = raw;
    g->values[raw].producer = pi;
    dequant(g, qn, raw, -1, &scale, 1, zt, (int32_t)z, y);
    char part[160];
    snprintf(part, sizeof part, "output%s %s8 scale %.9g zero point %ld (range %.6g to %.6g)",
             r->relu ? " after relu" : "", zt == QT_I8 ? "int" : "uint", (double)scale, z,
             (double)r->lo, (double)r->hi);
    describe_layer(g, r->conv, part);
    return 0;
}

/* Format integer: Conv node ci, when its input and weight come from DequantizeLinear (codes
 * x of scalar scale sx, int8 weight codes w with zero points 0 and scales sw), becomes
 * Cast(ConvInteger(x, w, zero point of x), float) * (sx * sw) + bias, the scale and bias
 * shaped [C, 1, ...]: the products and their sums are exact integers, one rounding follows.
 * Returns 1 when rewritten, 0 when ci does not qualify. */
static int integer_conv(struct lower *L, int ci, int k)
{
    struct qt_graph *g = L->g;
    const struct qt_node *c = &g->nodes[ci];
    if (c->dead || c->op != QT_OP_CONV || c->nin < 2 || c->nout != 1) return 0;
    /* weights mapped back to their mean: DequantizeLinear, then Add of the mean (one value,
     * or one per output channel) */
    const struct qt_tensor *mu = NULL;
    int wv = c->in[1];
    const int pm = g->values[wv].producer;
    if (pm >= 0 && g->nodes[pm].op == QT_OP_ADD && !g->nodes[pm].dead &&
        qt_graph_use_count(g, wv) == 1 && (mu = f32_init(g, g->nodes[pm].in[1]))) {
        if (qt_shape_numel(&mu->shape) != 1 && (mu->shape.ndim < 1 || mu->shape.d[0] != qt_shape_numel(&mu->shape)))
            return 0;
        wv = g->nodes[pm].in[0];
    }
    int da, dw;
    if (int8_operands(g, c->in[0], wv, &da, &dw)) return 0;
    const struct qt_tensor *sa = g->values[g->nodes[da].in[1]].init;
    const struct qt_tensor *sw = g->values[g->nodes[dw].in[1]].init;
    const struct qt_tensor *wc = g->values[g->nodes[dw].in[0]].init;
    const int64_t C = wc->shape.d[0], ns = qt_shape_numel(&sw->shape);
    const struct qt_tensor *b = c->nin > 2 && c->in[2] >= 0 ? f32_init(g, c->in[2]) : NULL;
    if ((c->nin > 2 && c->in[2] >= 0 && (!b || qt_shape_numel(&b->shape) != C)) ||
        (ns != 1 && ns != C) || (mu && qt_shape_numel(&mu->shape) != 1 && qt_shape_numel(&mu->shape) != C))
        return 0;
    char name[512], qn[32];
    snprintf(qn, sizeof qn, "qc%d", k);
    struct qt_shape cs = {.ndim = wc->shape.ndim - 1};
    for (int d = 0; d < cs.ndim; d++) cs.d[d] = d ? 1 : C;
    struct qt_tensor *st = qt_tensor_new(QT_F32, &cs), *bt = b ? qt_tensor_new(QT_F32, &cs) : NULL;
    const float sx = *(const float *)sa->data;
    for (int64_t ch = 0; ch < C; ch++) {
        ((float *)st->data)[ch] = sx * ((const float *)sw->data)[ns > 1 ? ch : 0];
        if (bt) ((float *)bt->data)[ch] = ((const float *)b->data)[ch];
    }
    const int xz = g->nodes[da].in[2], xcodes = g->nodes[da].in[0], wcodes = g->nodes[dw].in[0];
    const int y = c->out[0];
    if (mu) g->nodes[pm].dead = 1;
    snprintf(name, sizeof name, "%s/acc", qn);
    const int acc = qt_graph_add_value_unique(g, name, QT_UNDEF, NULL);
    struct qt_node *n = &g->nodes[ci];
    n->op = QT_OP_CONVINTEGER;
    n->in = realloc(n->in, sizeof(int) * 3);
    n->in[0] = xcodes;
    n->in[1] = wcodes;
    n->in[2] = xz;
    n->nin = 3;
    n->out[0] = acc;
    g->values[acc].producer = ci;
    node_name(name, sizeof name, qn, "f");
    const int vf = qt_graph_add_cast(g, name, acc, QT_F32, -1);
    snprintf(name, sizeof name, "%s.scale", qn);
    int in2[2] = {vf, add_const(g, name, st)};
    node_name(name, sizeof name, qn, "s");
    int vs = qt_graph_add_op(g, QT_OP_MUL, name, in2, 2, bt || mu ? -1 : y);
    if (mu) {
        /* + sx * mu * (the window sums of the input codes): a ConvInteger of one output
         * channel whose weights are all 1, with the layer's attributes */
        struct qt_shape os = wc->shape;
        os.d[0] = 1;
        struct qt_tensor *ones = qt_tensor_new(QT_I8, &os);
        memset(ones->data, 1, ones->nbytes);
        snprintf(name, sizeof name, "%s.ones", qn);
        const int vo = add_const(g, name, ones);
        node_name(name, sizeof name, qn, "m");
        const int in3[3] = {xcodes, vo, xz};
        const int vsum = qt_graph_add_op(g, QT_OP_CONVINTEGER, name, in3, 3, -1);
        qt_node_copy_attrs(&g->nodes[g->nnodes - 1], &g->nodes[ci]);
        node_name(name, sizeof name, qn, "mf");
        const int vmf = qt_graph_add_cast(g, name, vsum, QT_F32, -1);
        struct qt_tensor *mt = qt_tensor_new(QT_F32, &cs);
        for (int64_t ch = 0; ch < C; ch++)
            ((float *)mt->data)[ch] = sx * ((const float *)mu->data)[qt_shape_numel(&mu->shape) > 1 ? ch : 0];
        snprintf(name, sizeof name, "%s.mu", qn);
        in2[0] = vmf;
        in2[1] = add_const(g, name, mt);
        node_name(name, sizeof name, qn, "ms");
        const int vms = qt_graph_add_op(g, QT_OP_MUL, name, in2, 2, -1);
        in2[0] = vs;
        in2[1] = vms;
        node_name(name, sizeof name, qn, "ma");
        vs = qt_graph_add_op(g, QT_OP_ADD, name, in2, 2, bt ? -1 : y);
    }
    if (bt) {
        snprintf(name, sizeof name, "%s.bias", qn);
        in2[0] = vs;
        in2[1] = add_const(g, name, bt);
        node_name(name, sizeof name, qn, "b");
        qt_graph_add_op(g, QT_OP_ADD, name, in2, 2, y);
    }
    describe_layer(g, g->nodes[ci].name, "ConvInteger");
    return 1;
}

int qt_pass_lower_export(struct qt_graph *g, enum qt_export_format fmt,
                         const struct qt_export_range *ranges, int nranges,
                         struct qt_export_report *rep, struct qt_error *e)
{
    struct qt_export_report dummy;
    if (!rep) rep = &dummy;
    memset(rep, 0, sizeof *rep);
    if (g->opset < 9)
        return qt_err(e, "the model's opset %lld is below 9 (Where and Greater on floats need 9)",
                      (long long)g->opset);
    struct lower L = {g, 0, 0, fmt, rep, e};
    const int nn = g->nnodes;
    for (int i = 0; i < nn; i++) {
        if (g->nodes[i].dead) continue;
        enum qt_op op = g->nodes[i].op;
        if (op != QT_OP_WEIGHTQUANT && op != QT_OP_ACTQUANT) {
            if (strcmp(g->nodes[i].domain, "") != 0)
                return qt_err(e, "node '%s' is in domain '%s', which the export cannot lower",
                              g->nodes[i].name, g->nodes[i].domain);
            continue;
        }
        struct qt_quant_attrs a;
        struct qt_apot_quantizer qz;
        if (qt_quantizer_from_node(&a, &qz, &g->nodes[i], e)) {
            char msg[sizeof e->msg];
            snprintf(msg, sizeof msg, "%s", e->msg);
            return qt_err(e, "layer '%s': %s", layer_name(g, &g->nodes[i]), msg);
        }
        describe(g, i, &a);
        int rc;
        if (op == QT_OP_WEIGHTQUANT) {
            rc = a.scheme >= QT_QS_MAX ? lower_weight_int8(&L, i, &a) : lower_weight_levels(&L, i, &a, &qz);
            rep->weights = ++L.nw;
        } else {
            if (a.scheme >= QT_QS_MAX)
                return qt_err(e, "layer '%s': ActQuant node '%s' has weight-only scheme %s",
                              layer_name(g, &g->nodes[i]), g->nodes[i].name,
                              qt_quant_scheme_name(a.scheme));
            rc = lower_act(&L, i, &a, &qz);
            rep->acts = ++L.na;
        }
        if (rc) return -1;
        g->nodes[i].dead = 1;
    }
    if (fmt == QT_EXPORT_QLINEAR) {
        for (int k = 0; k < nranges; k++)
            if (requant_conv(&L, &ranges[k], k)) return -1;
        rep->integer_convs = nranges;
    } else if (nranges > 0)
        return qt_err(e, "output ranges are only used by format qlinear");
    if (fmt == QT_EXPORT_INTEGER)
        for (int i = 0, n = g->nnodes; i < n; i++)
            rep->integer_convs += integer_conv(&L, i, rep->integer_convs);
    if (fmt == QT_EXPORT_QLINEAR || fmt == QT_EXPORT_INTEGER) {
        char buf[32];
        snprintf(buf, sizeof buf, "%d", rep->integer_convs);
        qt_graph_set_meta(g, "qtune.export.integer_convs", buf);
    }
    qt_graph_set_meta(g, "qtune.export.format", qt_export_format_name(fmt));
    if (qt_graph_compact(g, e)) return -1;
    return qt_graph_infer_shapes(g, e);
}
