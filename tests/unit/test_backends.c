/* One op harness: every op kind of kernels/common/desc.h, over a list of descriptions per kind,
 * on every backend the factory offers other than ref, compared with the ref backend (forward,
 * training forward with its aux floats and running statistics, backward assigning and
 * accumulating), plus the loss, the SGD step and the ref backend's memory rules. Buffers move
 * through upload and download only. `make test-backends` runs these (prefix backends_). */
#include <float.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "runtime/backend.h"

#define MAXIO 8
#define MAXBK 8

/* ---- random numbers (fixed seed per test) ---- */

struct rng {
    uint64_t s;
};

static uint32_t rng_u32(struct rng *r)
{
    r->s = r->s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(r->s >> 33);
}

/* Uniform in [lo, hi). */
static float rng_range(struct rng *r, float lo, float hi)
{
    return lo + (hi - lo) * (float)((rng_u32(r) & 0xffffff) / 16777216.0);
}

/* ---- backends under test ---- */

struct backends {
    struct qt_backend *ref;
    struct qt_backend *b[MAXBK];
    int n;
    char names[128];
};

/* ref, and every other device qt_backend_devices() lists (auto aside) that can be created. */
static int backends_open(struct backends *s)
{
    struct qt_error e;
    memset(s, 0, sizeof *s);
    s->ref = qt_backend_new("ref", 0, &e);
    if (!s->ref) return qt_test_fail("cannot create the ref backend: %s", e.msg);
    char list[256];
    snprintf(list, sizeof list, "%s", qt_backend_devices());
    for (char *save = NULL, *dev = strtok_r(list, "|", &save); dev;
         dev = strtok_r(NULL, "|", &save)) {
        if (!strcmp(dev, "auto") || !strcmp(dev, "ref") || s->n == MAXBK) continue;
        struct qt_backend *b = qt_backend_new(dev, 0, &e);
        if (!b) {
            printf("    backend %s not compared: %s\n", dev, e.msg);
            continue;
        }
        s->b[s->n++] = b;
        size_t len = strlen(s->names);
        snprintf(s->names + len, sizeof s->names - len, "%s%s", len ? "," : "", dev);
    }
    return 0;
}

static void backends_close(struct backends *s)
{
    if (s->ref) s->ref->destroy(s->ref);
    for (int i = 0; i < s->n; i++)
        s->b[i]->destroy(s->b[i]);
}

/* ---- cases ---- */

/* How an input is filled. */
enum gen {
    G_UNIFORM, /* [-1, 1) */
    G_WIDE,    /* [-2, 2) */
    G_POS,     /* [0.5, 1.5): variances */
    G_NONZERO, /* +-[0.5, 1.5): divisors */
    G_ALPHA,   /* [0.4, 1.0): quantizer alphas */
    G_CLIPLO,  /* the description's lower clip bound (a constant input) */
    G_CLIPHI,
    G_COARSE, /* multiples of 0.25 in [-1, 1]: ties, exact zeros, values on clip bounds */
    G_PLANE,  /* [0, 2): BSQ's continuous bit planes */
};

struct tcase {
    char name[112];
    struct qt_op_desc d;
    int64_t in_n[MAXIO];  /* elements of each input (0: absent) */
    int64_t out_n[MAXIO]; /* elements of each output */
    enum gen gen[MAXIO];
    int grad[MAXIO];  /* inputs whose gradient backward computes */
    int train;        /* run forward_train and backward */
    int bwd_optional; /* a backend may decline backward (an error) for this kind */
    double tol_fwd, tol_bwd;
};

struct cases {
    struct tcase v[96];
    int n;
};

static struct tcase *add_case(struct cases *cs, enum qt_opk kind, double tol_fwd, double tol_bwd,
                              const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static struct tcase *add_case(struct cases *cs, enum qt_opk kind, double tol_fwd, double tol_bwd,
                              const char *fmt, ...)
{
    if (cs->n == (int)(sizeof cs->v / sizeof cs->v[0])) abort(); /* the lists below are fixed */
    struct tcase *t = &cs->v[cs->n++];
    memset(t, 0, sizeof *t);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->d.kind = kind;
    t->d.nout = 1;
    t->train = 1;
    t->tol_fwd = tol_fwd;
    t->tol_bwd = tol_bwd;
    return t;
}

/* ---- tolerances: max |backend - ref| / max |ref| per op (NaN or Inf anywhere fails) ----
 * ref sums in double. Exact ops (ReLU, Clip, copy, max pool, binary forward, quantizers with
 * the same apot.h formulas) may differ by an ulp at most (a fused multiply-add, a reciprocal):
 * 1e-6. Means and normalizations (pools, BatchNorm, softmax, reductions) sum a few hundred
 * floats in float on the other side: 1e-5. Products (Conv, Gemm, MatMul) and their backward
 * sum up to ~300 float products in float (BLAS and oneDNN blocking orders): 2e-5. A quantizer's
 * dalpha sums its whole tensor: 1e-5; a broadcast binary operand's gradient: see binary_case.
 * Observed errors on the CPU backend stay below a tenth of these; a wrong index or a missed
 * term gives errors of order 1e-2 to 1. */
#define TOL_EXACT 1e-6
#define TOL_MEAN 1e-5
#define TOL_PROD 2e-5

/* Floor-mode output size of a window along one axis. */
static int out_floor(int n, int k, int s, int dil, int p0, int p1)
{
    const int ek = (k - 1) * dil + 1;
    return (n + p0 + p1 - ek) / s + 1;
}

/* Ceil-mode size (PyTorch's rule: the last window starts inside the input or its begin
 * padding). */
static int out_ceil(int n, int k, int s, int dil, int p0, int p1)
{
    const int ek = (k - 1) * dil + 1;
    int o = (n + p0 + p1 - ek + s - 1) / s + 1;
    if ((o - 1) * s >= n + p0) o--;
    return o;
}

struct win {
    int n, c, h, w, k, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, group, ceil;
};

static struct qt_conv2d_desc window(const struct win *a)
{
    struct qt_conv2d_desc d = {0};
    d.n = a->n;
    d.c = a->c;
    d.h = a->h;
    d.w = a->w;
    d.k = a->k;
    d.kh = a->kh;
    d.kw = a->kw;
    d.sh = a->sh ? a->sh : 1;
    d.sw = a->sw ? a->sw : 1;
    d.dh = a->dh ? a->dh : 1;
    d.dw = a->dw ? a->dw : 1;
    d.pt = a->pt;
    d.pl = a->pl;
    d.pb = a->pb;
    d.pr = a->pr;
    d.group = a->group ? a->group : 1;
    int (*f)(int, int, int, int, int, int) = a->ceil ? out_ceil : out_floor;
    d.oh = f(d.h, d.kh, d.sh, d.dh, d.pt, d.pb);
    d.ow = f(d.w, d.kw, d.sw, d.dw, d.pl, d.pr);
    return d;
}

static void conv_case(struct cases *cs, const char *what, struct win a, int bias)
{
    struct tcase *t = add_case(cs, QT_K_CONV, TOL_PROD, TOL_PROD, "conv %s", what);
    struct qt_conv2d_desc *d = &t->d.u.conv;
    *d = window(&a);
    t->d.nin = bias ? 3 : 2;
    t->d.has_bias = bias;
    t->d.numel = (int64_t)d->n * d->k * d->oh * d->ow;
    t->in_n[0] = (int64_t)d->n * d->c * d->h * d->w;
    t->in_n[1] = (int64_t)d->k * (d->c / d->group) * d->kh * d->kw;
    t->in_n[2] = bias ? d->k : 0;
    t->out_n[0] = t->d.numel;
    t->grad[0] = t->grad[1] = 1;
    t->grad[2] = bias;
}

static void pool_case(struct cases *cs, enum qt_opk kind, int cip, const char *what, struct win a)
{
    const double tol = kind == QT_K_MAXPOOL ? TOL_EXACT : TOL_MEAN;
    struct tcase *t =
        add_case(cs, kind, tol, tol, "%s %s%s", qt_opk_name(kind), what,
                 kind == QT_K_AVGPOOL ? (cip ? " count_include_pad" : " pad-excl") : "");
    a.k = a.c;
    struct qt_conv2d_desc *d = &t->d.u.conv;
    *d = window(&a);
    t->d.nin = 1;
    t->d.count_include_pad = cip;
    t->d.numel = (int64_t)d->n * d->c * d->oh * d->ow;
    t->in_n[0] = (int64_t)d->n * d->c * d->h * d->w;
    t->out_n[0] = t->d.numel;
    t->grad[0] = 1;
}

/* An elementwise op of one input over n elements. */
static struct tcase *unary_case(struct cases *cs, enum qt_opk kind, int64_t n, double tol,
                                const char *what)
{
    struct tcase *t =
        add_case(cs, kind, tol, tol, "%s %s (%lld)", qt_opk_name(kind), what, (long long)n);
    t->d.nin = 1;
    t->d.numel = n;
    t->in_n[0] = t->out_n[0] = n;
    t->grad[0] = 1;
    return t;
}

/* Binary op: output dims out[nd]; a and b given by their own dims (right-aligned, numpy). */
static void binary_case(struct cases *cs, enum qt_binop op, int nd, const int64_t *out, int na,
                        const int64_t *ad, int nb, const int64_t *bd, const char *what)
{
    static const char *const opn[] = {"add", "sub", "mul", "div"};
    struct tcase *t = add_case(cs, QT_K_BINARY, TOL_EXACT, TOL_MEAN, "binary %s %s", opn[op], what);
    struct qt_binary_desc *b = &t->d.u.bin;
    b->op = op;
    b->ndim = nd;
    int64_t total = 1;
    for (int i = 0; i < nd; i++) {
        b->shape[i] = out[i];
        total *= out[i];
    }
    /* Strides of an operand of dims od[no] over the output's dims: 0 where it broadcasts. */
    for (int side = 0; side < 2; side++) {
        const int no = side ? nb : na;
        const int64_t *od = side ? bd : ad;
        int64_t *st = side ? b->sb : b->sa;
        int64_t stride = 1, cnt = 1;
        for (int i = nd - 1; i >= 0; i--) {
            const int j = i - (nd - no);
            const int64_t dim = j >= 0 ? od[j] : 1;
            st[i] = dim == 1 ? 0 : stride;
            stride *= dim;
            cnt *= dim;
        }
        if (side)
            b->nb = cnt;
        else
            b->na = cnt;
    }
    b->same_shape = b->na == total && b->nb == total && na == nd && nb == nd;
    t->d.nin = 2;
    t->d.numel = total;
    t->in_n[0] = b->na;
    t->in_n[1] = b->nb;
    t->out_n[0] = total;
    t->gen[1] = op == QT_BIN_DIV ? G_NONZERO : G_UNIFORM;
    t->grad[0] = t->grad[1] = 1;
    /* A broadcast operand's gradient sums total / n terms per element; another backend may
     * add them one by one in float, which loses up to about (terms) * eps of the partial sums
     * (larger than the result itself where the terms cancel): the tolerance grows with it. */
    const int64_t least = b->na < b->nb ? b->na : b->nb;
    t->tol_bwd = fmax(TOL_MEAN, 4.0 * FLT_EPSILON * (double)(total / (least > 0 ? least : 1)));
}

/* Gemm; crow/ccol: C's dims (0 rows: C is 1-D [ccol]; ccol 0: no C). */
static void gemm_case(struct cases *cs, int64_t m, int64_t n, int64_t k, int ta, int tb,
                      float alpha, float beta, int c_nd, int64_t crow, int64_t ccol)
{
    struct tcase *t = add_case(cs, QT_K_GEMM, TOL_PROD, TOL_PROD,
                               "gemm %lldx%lldx%lld ta%d tb%d alpha %g beta %g C %s", (long long)m,
                               (long long)n, (long long)k, ta, tb, alpha, beta,
                               c_nd == 0   ? "none"
                               : c_nd == 1 ? (ccol == 1 ? "scalar" : "row")
                               : crow == 1 ? "[1,n]"
                               : ccol == 1 ? "[m,1]"
                                           : "matrix");
    struct qt_gemm_desc *g = &t->d.u.gemm;
    g->m = m;
    g->n = n;
    g->k = k;
    g->ta = ta;
    g->tb = tb;
    g->alpha = alpha;
    g->beta = beta;
    g->has_c = c_nd > 0;
    /* As runtime/lower.c: C as [c_rows, c_cols], strides 0 where a dim is 1. */
    g->c_rows = c_nd == 2 ? crow : 1;
    g->c_cols = c_nd >= 1 ? ccol : 1;
    g->c_rs = g->c_rows == 1 ? 0 : g->c_cols;
    g->c_cs = g->c_cols == 1 ? 0 : 1;
    t->d.nin = g->has_c ? 3 : 2;
    t->d.numel = m * n;
    t->in_n[0] = m * k;
    t->in_n[1] = k * n;
    t->in_n[2] = g->has_c ? g->c_rows * g->c_cols : 0;
    t->out_n[0] = m * n;
    t->grad[0] = t->grad[1] = 1;
    t->grad[2] = g->has_c;
}

/* MatMul with numpy semantics: a dims ad[na], b dims bd[nb] (1-D promoted). */
static void matmul_case(struct cases *cs, int na, const int64_t *ad, int nb, const int64_t *bd,
                        const char *what)
{
    struct tcase *t = add_case(cs, QT_K_MATMUL, TOL_PROD, TOL_PROD, "matmul %s", what);
    struct qt_matmul_desc *mm = &t->d.u.mm;
    int64_t as[QT_DESC_MAX_DIMS], bs[QT_DESC_MAX_DIMS];
    int an = na, bn = nb;
    mm->na = mm->nb = 1;
    for (int i = 0; i < na; i++)
        mm->na *= ad[i];
    for (int i = 0; i < nb; i++)
        mm->nb *= bd[i];
    memcpy(as, ad, sizeof(int64_t) * na);
    memcpy(bs, bd, sizeof(int64_t) * nb);
    if (an == 1) { /* [k] -> [1, k] */
        as[1] = as[0];
        as[0] = 1;
        an = 2;
    }
    if (bn == 1) { /* [k] -> [k, 1] */
        bs[1] = 1;
        bn = 2;
    }
    mm->m = as[an - 2];
    mm->k = as[an - 1];
    mm->n = bs[bn - 1];
    /* Batch dims: broadcast of as[0..an-2) and bs[0..bn-2), right-aligned. */
    const int ab = an - 2, bb = bn - 2, nd = ab > bb ? ab : bb;
    mm->bdims = nd;
    mm->batches = 1;
    int64_t sa = 1, sb = 1;
    for (int i = nd - 1; i >= 0; i--) {
        const int ia = i - (nd - ab), ib = i - (nd - bb);
        const int64_t da = ia >= 0 ? as[ia] : 1, db = ib >= 0 ? bs[ib] : 1;
        mm->bshape[i] = da > db ? da : db;
        mm->sa[i] = da == 1 ? 0 : sa;
        mm->sb[i] = db == 1 ? 0 : sb;
        sa *= da;
        sb *= db;
        mm->batches *= mm->bshape[i];
    }
    t->d.nin = 2;
    t->d.numel = mm->batches * mm->m * mm->n;
    t->in_n[0] = mm->na;
    t->in_n[1] = mm->nb;
    t->out_n[0] = t->d.numel;
    t->grad[0] = t->grad[1] = 1;
}

static void bn_case(struct cases *cs, int64_t n, int64_t c, int64_t hw, float eps, float momentum,
                    int copy_stats)
{
    struct tcase *t =
        add_case(cs, QT_K_BATCHNORM, TOL_MEAN, TOL_MEAN, "batchnorm n%lld c%lld hw%lld%s",
                 (long long)n, (long long)c, (long long)hw, copy_stats ? " stats outputs" : "");
    struct qt_bn_desc *bn = &t->d.u.bn;
    bn->n = n;
    bn->c = c;
    bn->hw = hw;
    bn->eps = eps;
    bn->momentum = momentum;
    bn->copy_stats = copy_stats;
    t->d.nin = 5;
    t->d.nout = copy_stats ? 3 : 1;
    t->d.numel = n * c * hw;
    t->in_n[0] = t->out_n[0] = n * c * hw;
    t->in_n[1] = t->in_n[2] = t->in_n[3] = t->in_n[4] = c;
    t->gen[4] = G_POS;
    if (copy_stats) t->out_n[1] = t->out_n[2] = c;
    t->grad[0] = t->grad[1] = t->grad[2] = 1;
    t->train = !copy_stats; /* training refuses several outputs (checked separately) */
}

static void softmax_case(struct cases *cs, enum qt_opk kind, int64_t outer, int64_t mid,
                         int64_t inner)
{
    struct tcase *t = add_case(cs, kind, TOL_MEAN, TOL_MEAN, "%s [%lld,%lld,%lld]",
                               qt_opk_name(kind), (long long)outer, (long long)mid,
                               (long long)inner);
    t->d.u.ax.outer = outer;
    t->d.u.ax.mid = mid;
    t->d.u.ax.inner = inner;
    t->d.nin = 1;
    t->d.numel = outer * mid * inner;
    t->in_n[0] = t->out_n[0] = t->d.numel;
    t->gen[0] = G_WIDE;
    t->grad[0] = 1;
}

static void reduce_case(struct cases *cs, int nd, const int64_t *shape, const char *red)
{
    struct tcase *t =
        add_case(cs, QT_K_REDUCE_MEAN, TOL_MEAN, TOL_MEAN, "reduce-mean %dd axes %s", nd, red);
    struct qt_reduce_desc *r = &t->d.u.red;
    r->ndim = nd;
    int64_t total = 1, out = 1;
    for (int i = 0; i < nd; i++) {
        r->shape[i] = shape[i];
        r->red[i] = red[i] == '1';
        total *= shape[i];
        out *= r->red[i] ? 1 : shape[i];
    }
    t->d.nin = 1;
    t->d.numel = out;
    t->in_n[0] = total;
    t->out_n[0] = out;
    t->grad[0] = 1;
}

/* A quantizer: weight (WeightQuant) or activation; int8 mode 0, 1 (max) or 2 (max |w|). */
static int quant_case(struct cases *cs, int weight, int int8, int scheme, int bits, int is_signed,
                      int standardize, int64_t n, int64_t nalpha)
{
    static const char *const sch[] = {"apot", "uniform"};
    struct tcase *t;
    if (int8)
        t = add_case(cs, QT_K_WEIGHTQUANT, TOL_EXACT, TOL_EXACT, "weight-quant int8 %s n%lld",
                     int8 == 2 ? "absmax" : "max", (long long)n);
    else
        t = add_case(cs, weight ? QT_K_WEIGHTQUANT : QT_K_ACTQUANT, TOL_EXACT, TOL_MEAN,
                     "%s %s %d-bit %s%s n%lld alphas %lld", weight ? "weight-quant" : "act-quant",
                     sch[scheme], bits, is_signed ? "signed" : "unsigned",
                     weight ? (standardize ? " standardized" : " raw") : "", (long long)n,
                     (long long)nalpha);
    struct qt_quant_desc *q = &t->d.u.q;
    q->weight = weight;
    q->int8 = int8;
    q->standardize = standardize;
    q->n = n;
    q->nalpha = int8 ? 0 : nalpha;
    if (!int8 && qt_apot_quantizer_init(&q->qz, scheme, bits, is_signed))
        return qt_test_fail("quantizer %s %d bits signed %d refused", sch[scheme], bits, is_signed);
    t->d.nin = int8 ? 1 : 2;
    t->d.numel = n;
    t->in_n[0] = t->out_n[0] = n;
    t->in_n[1] = int8 ? 0 : nalpha;
    t->gen[0] = weight ? G_UNIFORM : G_WIDE;
    t->gen[1] = G_ALPHA;
    t->grad[0] = 1;
    t->grad[1] = !int8;
    return 0;
}

/* BSQ bit planes [N, n] and a scale to n weights. */
static void bitq_case(struct cases *cs, int N, int64_t n)
{
    struct tcase *t = add_case(cs, QT_K_BITQUANT, TOL_EXACT, TOL_MEAN, "bit-quant N%d n%lld", N,
                               (long long)n);
    t->d.u.bq.N = N;
    t->d.u.bq.n = n;
    t->d.nin = 3;
    t->d.numel = n;
    t->in_n[0] = t->in_n[1] = (int64_t)N * n;
    t->in_n[2] = 1;
    t->out_n[0] = n;
    t->gen[0] = t->gen[1] = G_PLANE;
    t->gen[2] = G_ALPHA;
    t->grad[0] = t->grad[1] = t->grad[2] = 1;
}

/* ---- inputs ---- */

static void fill(float *p, int64_t n, enum gen g, const struct qt_op_desc *d, struct rng *r)
{
    for (int64_t i = 0; i < n; i++) {
        switch (g) {
        case G_UNIFORM:
            p[i] = rng_range(r, -1.f, 1.f);
            break;
        case G_WIDE:
            p[i] = rng_range(r, -2.f, 2.f);
            break;
        case G_POS:
            p[i] = rng_range(r, 0.5f, 1.5f);
            break;
        case G_NONZERO:
            p[i] = rng_range(r, 0.5f, 1.5f) * (rng_u32(r) & 1 ? 1.f : -1.f);
            break;
        case G_ALPHA:
            p[i] = rng_range(r, 0.4f, 1.0f);
            break;
        case G_CLIPLO:
            p[i] = d->u.clip[0];
            break;
        case G_CLIPHI:
            p[i] = d->u.clip[1];
            break;
        case G_COARSE:
            p[i] = (float)((int)(rng_u32(r) % 9) - 4) * 0.25f;
            break;
        case G_PLANE:
            p[i] = rng_range(r, 0.f, 2.f);
            break;
        }
    }
}

/* Distance from x (in units of alpha) to the nearest point where the quantizer jumps or its
 * gradient switches: a level midpoint (threshold) or the clipping point. */
static double quant_margin(const struct qt_quant_desc *q, float x)
{
    const double v = q->qz.is_signed ? fabs((double)x) : (double)x;
    double m = fabs(v - 1.0);
    for (int k = 0; k + 1 < q->qz.n; k++)
        if (fabs(v - q->qz.thr[k]) < m) m = fabs(v - q->qz.thr[k]);
    return m;
}

/* Two correct quantizers may put a value within rounding of a threshold on different levels;
 * inputs are therefore redrawn until every x = ((w - mu) / sigma) / alpha (weights) or
 * a / alpha (activations) lies more than 1e-4 from a level midpoint and from the clipping
 * point. mu and sigma follow the weights, so weights are redrawn until none moves. */
static int quant_keep_off_edges(const struct tcase *t, float *const *in, struct rng *r)
{
    const struct qt_quant_desc *q = &t->d.u.q;
    if (q->int8) return 0;
    const int64_t cs = q->n / q->nalpha;
    for (int round = 0; round < 100; round++) {
        double mu = 0.0, sigma = 1.0;
        if (q->weight && q->standardize) {
            double s = 0.0, ss = 0.0;
            for (int64_t i = 0; i < q->n; i++)
                s += in[0][i];
            mu = s / q->n;
            for (int64_t i = 0; i < q->n; i++)
                ss += (in[0][i] - mu) * (in[0][i] - mu);
            sigma = q->n > 1 ? sqrt(ss / (q->n - 1)) : 1.0;
        }
        const float muf = (float)mu, sgf = (float)sigma;
        int moved = 0;
        for (int64_t i = 0; i < q->n; i++) {
            const float al = in[1][i / cs];
            const float x = q->weight ? ((in[0][i] - muf) / sgf) / al : in[0][i] / al;
            if (quant_margin(q, x) > 1e-4) continue;
            fill(&in[0][i], 1, t->gen[0], &t->d, r);
            moved++;
        }
        if (!moved) return 0;
    }
    return qt_test_fail("%s: inputs keep landing on quantizer thresholds", t->name);
}

/* ---- running a case on one backend ---- */

/* What a backend computed for a case (host copies). */
struct result {
    float *fwd[MAXIO];     /* forward outputs */
    float *trn[MAXIO];     /* forward_train outputs */
    float *aux;            /* aux floats after forward_train */
    float *run[2];         /* BatchNorm running mean and variance after forward_train */
    float *bwd0[MAXIO];    /* gradients, assigned over NaN-filled buffers */
    float *bwd1[MAXIO];    /* gradients accumulated into pre-filled buffers */
    float *bwd_one[MAXIO]; /* gradient k, computed alone (the others NULL) */
    int64_t naux;
    int declined;    /* backward refused (allowed for bwd_optional kinds) */
    int unsupported; /* supports() said no (allowed for backends other than cpu) */
    char msg[QT_ERR_MSG];
};

/* Host data of a case: inputs, output gradients, pre-filled input gradients. */
struct hostdata {
    float *in[MAXIO], *dout[MAXIO], *dpre[MAXIO];
};

static void result_free(struct result *r)
{
    for (int k = 0; k < MAXIO; k++) {
        free(r->fwd[k]);
        free(r->trn[k]);
        free(r->bwd0[k]);
        free(r->bwd1[k]);
        free(r->bwd_one[k]);
    }
    free(r->aux);
    free(r->run[0]);
    free(r->run[1]);
    memset(r, 0, sizeof *r);
}

static float *nan_array(int64_t n)
{
    float *p = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    for (int64_t i = 0; i < n; i++)
        p[i] = NAN;
    return p;
}

/* Backend buffers of n floats, filled from host memory (NULL: NaN). */
static float *dev_buf(struct qt_backend *b, int64_t n, const float *host)
{
    float *p = b->alloc(b, sizeof(float) * (size_t)(n > 0 ? n : 1));
    if (!p) return NULL;
    float *tmp = host ? NULL : nan_array(n);
    const int rc = b->upload(b, p, host ? host : tmp, sizeof(float) * (size_t)n);
    free(tmp);
    if (rc) {
        b->release(b, p);
        return NULL;
    }
    return p;
}

static float *download(struct qt_backend *b, const float *p, int64_t n)
{
    float *h = nan_array(n);
    if (b->download(b, h, p, sizeof(float) * (size_t)n)) {
        free(h);
        return NULL;
    }
    return h;
}

struct devbufs {
    float *in[MAXIO], *out[MAXIO], *din[MAXIO], *dout[MAXIO], *aux, *ws;
};

static void devbufs_free(struct qt_backend *b, struct devbufs *v)
{
    for (int k = 0; k < MAXIO; k++) {
        if (v->in[k]) b->release(b, v->in[k]);
        if (v->out[k]) b->release(b, v->out[k]);
        if (v->din[k]) b->release(b, v->din[k]);
        if (v->dout[k]) b->release(b, v->dout[k]);
    }
    if (v->aux) b->release(b, v->aux);
    if (v->ws) b->release(b, v->ws);
    memset(v, 0, sizeof *v);
}

/* (Re)uploads the inputs and NaN-fills the outputs. */
static int upload_io(struct qt_backend *b, const struct tcase *t, const struct hostdata *h,
                     struct devbufs *v)
{
    for (int k = 0; k < t->d.nin; k++) {
        if (!t->in_n[k]) continue;
        if (!v->in[k] && !(v->in[k] = dev_buf(b, t->in_n[k], h->in[k]))) return -1;
        if (b->upload(b, v->in[k], h->in[k], sizeof(float) * (size_t)t->in_n[k])) return -1;
    }
    for (int k = 0; k < t->d.nout; k++) {
        if (!t->out_n[k]) continue;
        if (v->out[k]) b->release(b, v->out[k]);
        if (!(v->out[k] = dev_buf(b, t->out_n[k], NULL))) return -1;
    }
    return 0;
}

/* Backward with the gradients of the inputs in `want` (pre-filled from pre[], or NaN when
 * pre is NULL), assigning or accumulating; downloads them into got[]. Returns the backend's
 * status (-1 with its message in r->msg), or -2 on a harness failure. */
static int run_backward(struct qt_backend *b, const struct tcase *t, struct devbufs *v,
                        const int *want, float *const *pre, int acc, float **got, struct result *r)
{
    struct qt_error e = {{0}};
    float *din[MAXIO] = {0};
    int accs[MAXIO];
    for (int k = 0; k < MAXIO; k++)
        accs[k] = acc;
    for (int k = 0; k < t->d.nin; k++)
        if (want[k] && !(din[k] = dev_buf(b, t->in_n[k], pre ? pre[k] : NULL))) return -2;
    const int rc = b->backward(b, &t->d, (const float *const *)v->in, (const float *const *)v->out,
                               (const float *const *)v->dout, din, accs, v->aux, v->ws, &e);
    if (rc) snprintf(r->msg, sizeof r->msg, "%s", e.msg);
    for (int k = 0; k < t->d.nin; k++) {
        if (!din[k]) continue;
        if (!rc && !(got[k] = download(b, din[k], t->in_n[k]))) return -2;
        b->release(b, din[k]);
    }
    return rc;
}

/* Runs the case on backend b: forward, then (t->train) forward_train and backward three ways.
 * Returns 0, or 1 (with a message) on a failure. */
static int run_case(struct qt_backend *b, const struct tcase *t, const struct hostdata *h,
                    struct result *r)
{
    struct devbufs v = {0};
    struct qt_error e = {{0}};
    int fail = 0;
    memset(r, 0, sizeof *r);
    if (!b->supports(b, &t->d)) {
        /* The cpu backend covers every op; others (cuda) may not yet, and are listed. */
        if (!strcmp(b->name, "cpu"))
            fail = qt_test_fail("%s: backend %s does not support it", t->name, b->name);
        r->unsupported = 1;
        goto done;
    }
    const int64_t nws = b->workspace(b, &t->d);
    if (nws > 0 && !(v.ws = dev_buf(b, nws, NULL))) goto harness;
    if (upload_io(b, t, h, &v)) goto harness;
    if (b->forward(b, &t->d, (const float *const *)v.in, v.out, v.ws, &e)) {
        fail = qt_test_fail("%s: %s forward: %s", t->name, b->name, e.msg);
        goto done;
    }
    for (int k = 0; k < t->d.nout; k++)
        if (t->out_n[k] && !(r->fwd[k] = download(b, v.out[k], t->out_n[k]))) goto harness;
    if (!t->train) goto done;

    /* Training forward on fresh inputs (BatchNorm updates inputs 3 and 4 in place). */
    if (upload_io(b, t, h, &v)) goto harness;
    r->naux = b->aux_floats(b, &t->d);
    if (r->naux > 0 && !(v.aux = dev_buf(b, r->naux, NULL))) goto harness;
    if (b->forward_train(b, &t->d, (const float *const *)v.in, v.out, v.aux, v.ws, &e)) {
        fail = qt_test_fail("%s: %s forward_train: %s", t->name, b->name, e.msg);
        goto done;
    }
    for (int k = 0; k < t->d.nout; k++)
        if (t->out_n[k] && !(r->trn[k] = download(b, v.out[k], t->out_n[k]))) goto harness;
    if (r->naux > 0 && !(r->aux = download(b, v.aux, r->naux))) goto harness;
    if (t->d.kind == QT_K_BATCHNORM)
        for (int k = 0; k < 2; k++)
            if (!(r->run[k] = download(b, v.in[3 + k], t->in_n[3 + k]))) goto harness;

    /* Backward from the gradient of output 0: assigned over NaN, accumulated onto pre-filled
     * values, and each input's gradient alone. */
    if (!(v.dout[0] = dev_buf(b, t->out_n[0], h->dout[0]))) goto harness;
    int rc = run_backward(b, t, &v, t->grad, NULL, 0, r->bwd0, r);
    if (rc == -1 && t->bwd_optional) {
        r->declined = 1;
        goto done;
    }
    if (!rc) rc = run_backward(b, t, &v, t->grad, h->dpre, 1, r->bwd1, r);
    for (int k = 0; k < t->d.nin && !rc; k++) {
        if (!t->grad[k]) continue;
        int one[MAXIO] = {0};
        one[k] = 1;
        rc = run_backward(b, t, &v, one, NULL, 0, r->bwd_one, r);
    }
    if (rc == -1) fail = qt_test_fail("%s: %s backward: %s", t->name, b->name, r->msg);
    if (rc != -2) goto done;
harness:
    fail = qt_test_fail("%s: moving buffers to or from backend %s failed", t->name, b->name);
done:
    devbufs_free(b, &v);
    return fail;
}

/* ---- comparison ---- */

struct stats {
    double worst_fwd, worst_bwd; /* largest error / tolerance seen */
    int compared, declined, unsupported;
    unsigned declined_kinds; /* op kinds whose decline was printed */
    char unsupported_by[64];  /* backends that declined a case (supports() = 0) */
};

/* max |got - want| / max |want| (max |want| taken as 1 when it is 0); +inf when either holds
 * a NaN or an infinity, or when got is missing. */
static double rel_err(const float *got, const float *want, int64_t n)
{
    if (!got || !want) return INFINITY;
    double scale = 0.0, err = 0.0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(got[i]) || !isfinite(want[i])) return INFINITY;
        const double a = fabs((double)want[i]), dv = fabs((double)got[i] - want[i]);
        if (a > scale) scale = a;
        if (dv > err) err = dv;
    }
    return err / (scale > 0 ? scale : 1.0);
}

static int check(const char *bk, const struct tcase *t, const char *what, const float *got,
                 const float *want, int64_t n, double tol, double *worst)
{
    const double err = rel_err(got, want, n);
    if (err / tol > *worst || isnan(err)) *worst = err / tol;
    if (!(err <= tol))
        return qt_test_fail("%s: %s %s differs from ref: error %.3g > tolerance %.3g", t->name, bk,
                            what, err, tol);
    return 0;
}

/* Aux floats a backend's backward depends on: a quantizer's 8-bit scale is one float. */
static int64_t aux_used(const struct tcase *t, int64_t naux)
{
    return t->d.kind == QT_K_WEIGHTQUANT && t->d.u.q.int8 ? 1 : naux;
}

static int compare(const char *bk, const struct tcase *t, const struct result *g,
                   const struct result *w, struct stats *st)
{
    int fail = 0;
    char what[64];
    for (int k = 0; k < t->d.nout; k++) {
        if (!t->out_n[k]) continue;
        snprintf(what, sizeof what, "forward output %d", k);
        fail |= check(bk, t, what, g->fwd[k], w->fwd[k], t->out_n[k], t->tol_fwd, &st->worst_fwd);
    }
    if (t->train) {
        for (int k = 0; k < t->d.nout; k++) {
            snprintf(what, sizeof what, "forward_train output %d", k);
            fail |=
                check(bk, t, what, g->trn[k], w->trn[k], t->out_n[k], t->tol_fwd, &st->worst_fwd);
        }
        if (g->naux != w->naux)
            fail |= qt_test_fail("%s: %s keeps %lld aux floats, ref %lld", t->name, bk,
                                 (long long)g->naux, (long long)w->naux);
        else if (w->naux > 0)
            fail |= check(bk, t, "aux floats", g->aux, w->aux, aux_used(t, w->naux), t->tol_fwd,
                          &st->worst_fwd);
        for (int k = 0; k < 2 && t->d.kind == QT_K_BATCHNORM; k++)
            fail |= check(bk, t, k ? "running variance" : "running mean", g->run[k], w->run[k],
                          t->in_n[3 + k], t->tol_fwd, &st->worst_fwd);
        if (g->declined) {
            st->declined++;
            if (!(st->declined_kinds & (1u << t->d.kind)))
                printf("    %s declines the backward of %s (not compared): %s\n", bk,
                       qt_opk_name(t->d.kind), g->msg);
            st->declined_kinds |= 1u << t->d.kind;
        } else if (w->declined) {
            fail |= qt_test_fail("%s: ref declines backward: %s", t->name, w->msg);
        } else {
            for (int k = 0; k < t->d.nin; k++) {
                if (!t->grad[k]) continue;
                snprintf(what, sizeof what, "gradient of input %d (assigned)", k);
                fail |= check(bk, t, what, g->bwd0[k], w->bwd0[k], t->in_n[k], t->tol_bwd,
                              &st->worst_bwd);
                snprintf(what, sizeof what, "gradient of input %d (accumulated)", k);
                fail |= check(bk, t, what, g->bwd1[k], w->bwd1[k], t->in_n[k], t->tol_bwd,
                              &st->worst_bwd);
                snprintf(what, sizeof what, "gradient of input %d (alone)", k);
                fail |= check(bk, t, what, g->bwd_one[k], w->bwd_one[k], t->in_n[k], t->tol_bwd,
                              &st->worst_bwd);
            }
        }
    }
    st->compared++;
    return fail;
}

/* Runs every case on every backend against ref; prints one summary line. */
static int run_cases(const char *label, struct cases *cs, uint64_t seed)
{
    struct backends s;
    if (backends_open(&s)) return 1;
    if (!s.n) {
        backends_close(&s);
        return qt_test_skip("no backend other than ref could be created");
    }
    struct rng r = {seed};
    struct stats st = {0};
    int fail = 0;
    for (int c = 0; c < cs->n; c++) {
        const struct tcase *t = &cs->v[c];
        struct hostdata h;
        memset(&h, 0, sizeof h);
        for (int k = 0; k < t->d.nin; k++) {
            if (!t->in_n[k]) continue;
            h.in[k] = malloc(sizeof(float) * (size_t)t->in_n[k]);
            fill(h.in[k], t->in_n[k], t->gen[k], &t->d, &r);
            h.dpre[k] = malloc(sizeof(float) * (size_t)t->in_n[k]);
            fill(h.dpre[k], t->in_n[k], G_UNIFORM, &t->d, &r);
        }
        h.dout[0] = malloc(sizeof(float) * (size_t)(t->out_n[0] > 0 ? t->out_n[0] : 1));
        fill(h.dout[0], t->out_n[0], G_UNIFORM, &t->d, &r);
        if ((t->d.kind == QT_K_WEIGHTQUANT || t->d.kind == QT_K_ACTQUANT) &&
            quant_keep_off_edges(t, h.in, &r))
            fail = 1;
        struct result want, got;
        if (!fail && !run_case(s.ref, t, &h, &want)) {
            for (int i = 0; i < s.n; i++) {
                if (run_case(s.b[i], t, &h, &got)) {
                    fail = 1;
                } else if (got.unsupported) {
                    if (!st.unsupported++)
                        snprintf(st.unsupported_by, sizeof st.unsupported_by, "%s", s.b[i]->name);
                    printf("    %s: not supported by backend %s\n", t->name, s.b[i]->name);
                } else {
                    fail |= compare(s.b[i]->name, t, &got, &want, &st);
                }
                result_free(&got);
            }
        } else {
            fail = 1;
        }
        result_free(&want);
        for (int k = 0; k < MAXIO; k++) {
            free(h.in[k]);
            free(h.dout[k]);
            free(h.dpre[k]);
        }
    }
    printf("    %s: %d cases x %d backend(s) (%s) against ref; worst error/tolerance: forward "
           "%.3g, backward %.3g%s",
           label, cs->n, s.n, s.names, st.worst_fwd, st.worst_bwd,
           st.declined ? " (backward declined where listed above)" : "");
    if (st.unsupported)
        printf("; %d case(s) not supported (%s, listed above)", st.unsupported, st.unsupported_by);
    printf("\n");
    backends_close(&s);
    return fail;
}

/* ---- the cases, per op kind ---- */

QT_TEST(backends_conv)
{
    struct cases *cs = calloc(1, sizeof *cs);
    conv_case(cs, "3x3 pad 1", (struct win){2, 3, 7, 9, 5, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0}, 1);
    conv_case(cs, "3x3 stride 2, no bias",
              (struct win){2, 4, 9, 8, 6, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1, 0}, 0);
    conv_case(cs, "1x1", (struct win){3, 5, 4, 6, 7, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 0}, 1);
    conv_case(cs, "1x1 stride 2 (projection)",
              (struct win){2, 4, 7, 7, 8, 1, 1, 2, 2, 1, 1, 0, 0, 0, 0, 1, 0}, 1);
    conv_case(cs, "dilation 2", (struct win){1, 3, 11, 10, 4, 3, 3, 1, 1, 2, 2, 2, 2, 2, 2, 1, 0},
              1);
    conv_case(cs, "dilation 2x3 stride 2x1",
              (struct win){2, 2, 12, 13, 3, 3, 2, 2, 1, 2, 3, 1, 0, 2, 1, 1, 0}, 1);
    conv_case(cs, "groups 2", (struct win){2, 6, 8, 7, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 2, 0}, 1);
    conv_case(cs, "groups 3, 5x5 stride 2",
              (struct win){1, 6, 11, 9, 9, 5, 5, 2, 2, 1, 1, 2, 2, 2, 2, 3, 0}, 0);
    conv_case(cs, "depthwise 3x3", (struct win){2, 8, 9, 9, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 8, 0},
              1);
    conv_case(cs, "depthwise x2 multiplier stride 2",
              (struct win){1, 4, 10, 11, 8, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 4, 0}, 1);
    conv_case(cs, "asymmetric pads 0,1,2,0",
              (struct win){2, 3, 8, 9, 4, 3, 3, 1, 1, 1, 1, 0, 1, 2, 0, 1, 0}, 1);
    conv_case(cs, "7x7 stride 2 pad 3 (stem)",
              (struct win){1, 3, 17, 15, 4, 7, 7, 2, 2, 1, 1, 3, 3, 3, 3, 1, 0}, 1);
    conv_case(cs, "1-D (h 1) kernel 5 stride 2",
              (struct win){2, 3, 1, 23, 5, 1, 5, 1, 2, 1, 1, 0, 2, 0, 2, 1, 0}, 1);
    conv_case(cs, "kernel larger than input with pads",
              (struct win){1, 2, 3, 2, 3, 5, 4, 1, 1, 1, 1, 2, 2, 2, 2, 1, 0}, 1);
    conv_case(cs, "batch 1, 1 channel",
              (struct win){1, 1, 5, 5, 1, 3, 3, 1, 1, 1, 1, 0, 0, 0, 0, 1, 0}, 1);
    const int fail = run_cases("conv", cs, 101);
    free(cs);
    return fail;
}

static int run_pools(enum qt_opk kind, int cip, const char *label, uint64_t seed)
{
    struct cases *cs = calloc(1, sizeof *cs);
    pool_case(cs, kind, cip, "2x2 stride 2",
              (struct win){2, 3, 8, 8, 0, 2, 2, 2, 2, 1, 1, 0, 0, 0, 0, 1, 0});
    pool_case(cs, kind, cip, "3x3 stride 2 pad 1 odd",
              (struct win){2, 3, 9, 7, 0, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1, 0});
    pool_case(cs, kind, cip, "3x3 stride 1 pad 1",
              (struct win){1, 4, 6, 5, 0, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0});
    pool_case(cs, kind, cip, "ceil mode 3x3 stride 2 (window past the end)",
              (struct win){2, 2, 8, 10, 0, 3, 3, 2, 2, 1, 1, 0, 0, 0, 0, 0, 1});
    pool_case(cs, kind, cip, "ceil mode with pads 1 stride 2",
              (struct win){1, 3, 7, 8, 0, 2, 3, 2, 2, 1, 1, 1, 1, 1, 1, 0, 1});
    pool_case(cs, kind, cip, "asymmetric pads 1,0,2,1 stride 3",
              (struct win){2, 2, 10, 9, 0, 3, 3, 3, 3, 1, 1, 1, 0, 2, 1, 1, 0});
    pool_case(cs, kind, cip, "dilation 2 pad 2",
              (struct win){1, 2, 9, 9, 0, 3, 3, 1, 1, 2, 2, 2, 2, 2, 2, 1, 0});
    pool_case(cs, kind, cip, "1-D kernel 4 stride 3",
              (struct win){3, 2, 1, 17, 0, 1, 4, 1, 3, 1, 1, 0, 1, 0, 1, 1, 0});
    pool_case(cs, kind, cip, "overlapping 3x2 stride 1x2",
              (struct win){1, 3, 7, 8, 0, 3, 2, 1, 2, 1, 1, 0, 0, 0, 0, 1, 0});
    pool_case(cs, kind, cip, "batch 1 window = input",
              (struct win){1, 5, 4, 6, 0, 4, 6, 1, 1, 1, 1, 0, 0, 0, 0, 1, 0});
    /* Ties: max pool's gradient goes to the first maximum in row-major tap order. */
    pool_case(cs, kind, cip, "ties 3x3 stride 2 pad 1",
              (struct win){2, 3, 9, 8, 0, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1, 0});
    cs->v[cs->n - 1].gen[0] = G_COARSE;
    pool_case(cs, kind, cip, "ties overlapping 2x2 stride 1",
              (struct win){1, 2, 6, 7, 0, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0, 1, 0});
    cs->v[cs->n - 1].gen[0] = G_COARSE;
    const int fail = run_cases(label, cs, seed);
    free(cs);
    return fail;
}

QT_TEST(backends_maxpool)
{
    return run_pools(QT_K_MAXPOOL, 0, "maxpool", 102);
}

QT_TEST(backends_avgpool)
{
    return run_pools(QT_K_AVGPOOL, 1, "avgpool count_include_pad", 103) |
           run_pools(QT_K_AVGPOOL, 0, "avgpool padding excluded", 104);
}

QT_TEST(backends_global_avgpool)
{
    struct cases *cs = calloc(1, sizeof *cs);
    const int64_t shapes[][2] = {{6, 49}, {1, 1}, {10, 64}, {3, 7}, {32, 9}};
    for (int i = 0; i < 5; i++) {
        struct tcase *t = add_case(cs, QT_K_GAP, TOL_MEAN, TOL_MEAN, "global-avgpool nc%lld hw%lld",
                                   (long long)shapes[i][0], (long long)shapes[i][1]);
        t->d.u.ax.outer = shapes[i][0];
        t->d.u.ax.mid = shapes[i][1];
        t->d.u.ax.inner = 1;
        t->d.nin = 1;
        t->d.numel = shapes[i][0];
        t->in_n[0] = shapes[i][0] * shapes[i][1];
        t->out_n[0] = shapes[i][0];
        t->grad[0] = 1;
    }
    const int fail = run_cases("global-avgpool", cs, 105);
    free(cs);
    return fail;
}

QT_TEST(backends_batchnorm)
{
    struct cases *cs = calloc(1, sizeof *cs);
    bn_case(cs, 4, 3, 25, 1e-5f, 0.1f, 0);
    bn_case(cs, 1, 5, 17, 1e-5f, 0.1f, 0); /* batch 1 */
    bn_case(cs, 8, 6, 1, 1e-3f, 0.3f, 0);  /* [n, c] input */
    bn_case(cs, 2, 16, 49, 1e-5f, 0.1f, 0);
    bn_case(cs, 3, 4, 9, 1e-2f, 1.0f, 0);  /* momentum 1: running stats = batch stats */
    bn_case(cs, 2, 3, 10, 1e-5f, 0.1f, 1); /* inference with the statistics outputs */
    const int fail = run_cases("batchnorm", cs, 106);
    free(cs);
    return fail;
}

/* forward_train refuses a BatchNorm with several outputs on every backend. */
QT_TEST(backends_batchnorm_train_outputs_refused)
{
    struct backends s;
    if (backends_open(&s)) return 1;
    struct qt_backend *all[MAXBK + 1] = {s.ref};
    for (int i = 0; i < s.n; i++)
        all[i + 1] = s.b[i];
    struct qt_op_desc d = {0};
    d.kind = QT_K_BATCHNORM;
    d.nin = 5;
    d.nout = 3;
    d.numel = 4;
    d.u.bn = (struct qt_bn_desc){1, 2, 2, 1e-5f, 0.1f, 1};
    int fail = 0;
    for (int i = 0; i <= s.n; i++) {
        struct qt_backend *b = all[i];
        float *in[5], *out[3], *aux = dev_buf(b, 4, NULL);
        const float ones[4] = {1, 1, 1, 1};
        for (int k = 0; k < 5; k++)
            in[k] = dev_buf(b, k ? 2 : 4, ones);
        out[0] = dev_buf(b, 4, NULL);
        out[1] = dev_buf(b, 2, NULL);
        out[2] = dev_buf(b, 2, NULL);
        struct qt_error e = {{0}};
        if (!b->forward_train(b, &d, (const float *const *)in, out, aux, NULL, &e) ||
            !strstr(e.msg, "several BatchNorm outputs"))
            fail = qt_test_fail("backend %s: forward_train with 3 outputs: '%s'", b->name, e.msg);
        for (int k = 0; k < 5; k++)
            b->release(b, in[k]);
        for (int k = 0; k < 3; k++)
            b->release(b, out[k]);
        b->release(b, aux);
    }
    backends_close(&s);
    return fail;
}

QT_TEST(backends_relu_clip_copy)
{
    struct cases *cs = calloc(1, sizeof *cs);
    unary_case(cs, QT_K_RELU, 1, TOL_EXACT, "one element");
    unary_case(cs, QT_K_RELU, 1237, TOL_EXACT, "odd size");
    unary_case(cs, QT_K_RELU, 40000, TOL_EXACT, "large");
    /* Exact zeros: the gradient at the kink is 0 (y > 0 passes it). */
    unary_case(cs, QT_K_RELU, 301, TOL_EXACT, "coarse values with zeros")->gen[0] = G_COARSE;
    struct tcase *t = unary_case(cs, QT_K_CLIP, 999, TOL_EXACT, "[-0.5, 0.7]");
    t->d.u.clip[0] = -0.5f;
    t->d.u.clip[1] = 0.7f;
    t = unary_case(cs, QT_K_CLIP, 1000, TOL_EXACT, "relu6-like [0, 6] wide inputs");
    t->d.u.clip[0] = 0.f;
    t->d.u.clip[1] = 1.5f;
    t->gen[0] = G_WIDE;
    /* Inputs on the bounds: the gradient passes there (lo <= x <= hi). */
    t = unary_case(cs, QT_K_CLIP, 401, TOL_EXACT, "coarse values on the bounds [-0.5, 0.5]");
    t->d.u.clip[0] = -0.5f;
    t->d.u.clip[1] = 0.5f;
    t->gen[0] = G_COARSE;
    t = unary_case(cs, QT_K_CLIP, 517, TOL_EXACT, "[-inf, 0.25]");
    t->d.u.clip[0] = -INFINITY;
    t->d.u.clip[1] = 0.25f;
    /* Opset 11+: the bounds are inputs 1 and 2 (constants, resolved into the description). */
    t = unary_case(cs, QT_K_CLIP, 333, TOL_EXACT, "bounds as inputs");
    t->d.u.clip[0] = -0.3f;
    t->d.u.clip[1] = 0.4f;
    t->d.nin = 3;
    t->in_n[1] = t->in_n[2] = 1;
    t->gen[1] = G_CLIPLO;
    t->gen[2] = G_CLIPHI;
    unary_case(cs, QT_K_COPY, 1, TOL_EXACT, "one element");
    unary_case(cs, QT_K_COPY, 2311, TOL_EXACT, "reshape");
    int fail = run_cases("relu, clip, copy", cs, 107);
    free(cs);
    return fail;
}

QT_TEST(backends_binary)
{
    struct cases *cs = calloc(1, sizeof *cs);
    for (int op = QT_BIN_ADD; op <= QT_BIN_DIV; op++) {
        const int64_t s4[] = {2, 3, 4, 5}, c4[] = {1, 3, 1, 1}, row[] = {5}, one[] = {1};
        const int64_t s3[] = {3, 1, 5}, t3[] = {4, 1}, o3[] = {3, 4, 5};
        const int64_t a2[] = {7, 1}, b2[] = {1, 6}, o2[] = {7, 6};
        const int64_t big[] = {2, 17, 33};
        binary_case(cs, op, 4, s4, 4, s4, 4, s4, "same shape [2,3,4,5]");
        binary_case(cs, op, 4, s4, 4, s4, 4, c4, "b per channel [1,3,1,1]");
        binary_case(cs, op, 4, s4, 4, c4, 4, s4, "a per channel [1,3,1,1]");
        binary_case(cs, op, 4, s4, 4, s4, 1, row, "b row [5]");
        binary_case(cs, op, 4, s4, 4, s4, 1, one, "b scalar");
        binary_case(cs, op, 4, s4, 1, one, 4, s4, "a scalar");
        binary_case(cs, op, 3, o3, 3, s3, 2, t3, "both broadcast [3,1,5] x [4,1]");
        binary_case(cs, op, 2, o2, 2, a2, 2, b2, "outer [7,1] x [1,6]");
        binary_case(cs, op, 3, big, 3, big, 3, big, "same shape odd [2,17,33]");
        binary_case(cs, op, 1, one, 1, one, 1, one, "scalars");
    }
    const int fail = run_cases("binary", cs, 108);
    free(cs);
    return fail;
}

QT_TEST(backends_gemm)
{
    struct cases *cs = calloc(1, sizeof *cs);
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            gemm_case(cs, 5, 7, 9, ta, tb, 1.f, 1.f, 1, 0, 7);   /* C row [n] (bias) */
            gemm_case(cs, 6, 3, 11, ta, tb, 0.5f, 2.f, 2, 6, 3); /* C matrix */
        }
    gemm_case(cs, 4, 10, 64, 0, 1, 1.f, 1.f, 1, 0, 10);  /* Linear layer: x W^T + b */
    gemm_case(cs, 3, 5, 7, 0, 0, 1.f, 1.f, 0, 0, 0);     /* no C */
    gemm_case(cs, 3, 5, 7, 0, 1, 1.f, 0.75f, 1, 0, 1);   /* C scalar */
    gemm_case(cs, 4, 6, 5, 1, 0, -1.5f, 0.5f, 2, 4, 1);  /* C [m,1] */
    gemm_case(cs, 4, 6, 5, 0, 0, 1.f, 1.f, 2, 1, 6);     /* C [1,n] */
    gemm_case(cs, 1, 1, 1, 0, 0, 2.f, 3.f, 2, 1, 1);     /* 1x1x1 */
    gemm_case(cs, 1, 10, 300, 0, 1, 1.f, 1.f, 1, 0, 10); /* batch 1, long k */
    gemm_case(cs, 5, 4, 3, 0, 0, 1.f, 0.f, 2, 5, 4);     /* beta 0 */
    const int fail = run_cases("gemm", cs, 109);
    free(cs);
    return fail;
}

QT_TEST(backends_matmul)
{
    struct cases *cs = calloc(1, sizeof *cs);
    const int64_t a2[] = {5, 7}, b2[] = {7, 3};
    const int64_t a3[] = {4, 5, 7}, b3[] = {4, 7, 3}, b3one[] = {1, 7, 3};
    const int64_t a4[] = {2, 1, 3, 6}, b4[] = {3, 6, 2}, v7[] = {7}, v6[] = {6};
    const int64_t a4b[] = {2, 3, 4, 5}, b4b[] = {1, 3, 5, 6};
    matmul_case(cs, 2, a2, 2, b2, "[5,7] x [7,3]");
    matmul_case(cs, 3, a3, 3, b3, "batched [4,5,7] x [4,7,3]");
    matmul_case(cs, 3, a3, 2, b2, "[4,5,7] x [7,3] (b broadcast)");
    matmul_case(cs, 2, a2, 3, b3one, "[5,7] x [1,7,3] (a broadcast)");
    matmul_case(cs, 4, a4, 3, b4, "[2,1,3,6] x [3,6,2] (both broadcast)");
    matmul_case(cs, 4, a4b, 4, b4b, "[2,3,4,5] x [1,3,5,6]");
    matmul_case(cs, 1, v7, 2, b2, "1-D a [7] x [7,3]");
    matmul_case(cs, 2, a2, 1, v7, "[5,7] x 1-D b [7]");
    matmul_case(cs, 1, v7, 1, v7, "1-D x 1-D (dot)");
    matmul_case(cs, 1, v6, 3, b4, "1-D [6] x [3,6,2]");
    const int fail = run_cases("matmul", cs, 110);
    free(cs);
    return fail;
}

/* L(x) = sum dy * y(x) on the ref backend, in double from the downloaded output. */
static double ref_loss(struct qt_backend *b, const struct tcase *t, const float *x, const float *dy)
{
    struct qt_error e;
    float *xd = dev_buf(b, t->in_n[0], x), *yd = dev_buf(b, t->out_n[0], NULL);
    const float *in[1] = {xd};
    float *out[1] = {yd}, *y = NULL;
    double l = NAN;
    if (xd && yd && !b->forward(b, &t->d, in, out, NULL, &e) &&
        (y = download(b, yd, t->out_n[0]))) {
        l = 0.0;
        for (int64_t i = 0; i < t->out_n[0]; i++)
            l += (double)dy[i] * y[i];
    }
    free(y);
    b->release(b, xd);
    b->release(b, yd);
    return l;
}

/* Backward kernels no other backend computes yet (softmax, reduce-mean) are checked on their
 * own: the ref gradient of L = sum dy * y against central differences of the ref forward, at
 * up to 40 elements per case. Steps of 1e-2 on a float forward leave ~1e-5 of max |dx|
 * (truncation and rounding); tolerance 5e-4. */
static int ref_backward_fd(const struct cases *cs, uint64_t seed)
{
    struct qt_error e;
    struct qt_backend *b = qt_backend_new("ref", 0, &e);
    if (!b) return qt_test_fail("ref backend: %s", e.msg);
    struct rng r = {seed};
    int fail = 0, checked = 0;
    double worst = 0.0;
    for (int c = 0; c < cs->n; c++) {
        const struct tcase *t = &cs->v[c];
        if (t->in_n[0] > 2000) continue;
        float *x = malloc(sizeof(float) * t->in_n[0]), *dy = malloc(sizeof(float) * t->out_n[0]);
        fill(x, t->in_n[0], t->gen[0], &t->d, &r);
        fill(dy, t->out_n[0], G_UNIFORM, &t->d, &r);
        float *xd = dev_buf(b, t->in_n[0], x), *yd = dev_buf(b, t->out_n[0], NULL);
        float *dyd = dev_buf(b, t->out_n[0], dy), *dxd = dev_buf(b, t->in_n[0], NULL);
        const float *in[1] = {xd}, *out[1] = {yd}, *dout[1] = {dyd};
        float *outw[1] = {yd}, *din[1] = {dxd}, *dx = NULL;
        const int acc[1] = {0};
        if (b->forward(b, &t->d, in, outw, NULL, &e) ||
            b->backward(b, &t->d, in, out, dout, din, acc, NULL, NULL, &e) ||
            !(dx = download(b, dxd, t->in_n[0]))) {
            fail = qt_test_fail("%s: ref: %s", t->name, e.msg);
        } else {
            double scale = 0.0, err = 0.0;
            for (int64_t i = 0; i < t->in_n[0]; i++)
                scale = fmax(scale, fabs(dx[i]));
            const int64_t step = t->in_n[0] > 40 ? t->in_n[0] / 40 : 1;
            for (int64_t i = 0; i < t->in_n[0]; i += step) {
                const float h = 1e-2f, keep = x[i];
                x[i] = keep + h;
                const double lp = ref_loss(b, t, x, dy);
                x[i] = keep - h;
                const double lm = ref_loss(b, t, x, dy);
                x[i] = keep;
                const double fd = (lp - lm) / (2.0 * h);
                const double d = fabs(fd - dx[i]);
                err = isfinite(d) ? fmax(err, d) : INFINITY;
            }
            err /= scale > 0 ? scale : 1.0;
            worst = fmax(worst, err);
            if (!(err <= 5e-4))
                fail = qt_test_fail("%s: ref backward differs from finite differences: %.3g",
                                    t->name, err);
            checked++;
        }
        free(dx);
        free(x);
        free(dy);
        b->release(b, xd);
        b->release(b, yd);
        b->release(b, dyd);
        b->release(b, dxd);
    }
    printf("    ref backward of %d cases against finite differences: worst error %.3g (tolerance "
           "5e-4)\n",
           checked, worst);
    b->destroy(b);
    return fail;
}

QT_TEST(backends_softmax_reduce_sigmoid)
{
    struct cases *cs = calloc(1, sizeof *cs);
    for (int k = 0; k < 2; k++) {
        const enum qt_opk kind = k ? QT_K_LOGSOFTMAX : QT_K_SOFTMAX;
        softmax_case(cs, kind, 8, 10, 1);   /* logits: last axis */
        /* one long row (log-softmax: 300, as its outputs near -log 1000 carry float rounding
         * that finite differences over 1000 of them cannot resolve to 5e-4) */
        softmax_case(cs, kind, 1, k ? 300 : 1000, 1);
        softmax_case(cs, kind, 3, 7, 5);    /* middle axis */
        softmax_case(cs, kind, 1, 6, 300);  /* outer axis (axis 0) over wide rows */
        softmax_case(cs, kind, 2, 1, 9);    /* axis of size 1 */
    }
    const int64_t s4[] = {2, 3, 4, 5}, s3[] = {7, 1, 9}, s1[] = {31};
    reduce_case(cs, 4, s4, "0011"); /* spatial mean */
    reduce_case(cs, 4, s4, "0100");
    reduce_case(cs, 4, s4, "1010");
    reduce_case(cs, 4, s4, "1111");
    reduce_case(cs, 4, s4, "0000"); /* no axis: y = x */
    reduce_case(cs, 3, s3, "101");
    reduce_case(cs, 3, s3, "010");
    reduce_case(cs, 1, s1, "1");
    unary_case(cs, QT_K_SIGMOID, 1, TOL_MEAN, "one element");
    unary_case(cs, QT_K_SIGMOID, 4000, TOL_MEAN, "wide")->gen[0] = G_WIDE;
    unary_case(cs, QT_K_SIGMOID, 301, TOL_MEAN, "coarse values with zeros")->gen[0] = G_COARSE;
    int fail = run_cases("softmax, log-softmax, reduce-mean, sigmoid", cs, 111);
    fail |= ref_backward_fd(cs, 115);
    free(cs);
    return fail;
}

static void transpose_case(struct cases *cs, int nd, const int64_t *shape, const int *perm)
{
    char sh[64] = "", pm[32] = "";
    for (int i = 0, ls = 0, lp = 0; i < nd; i++) {
        ls += snprintf(sh + ls, sizeof sh - ls, "%s%lld", i ? "," : "", (long long)shape[i]);
        lp += snprintf(pm + lp, sizeof pm - lp, "%d", perm[i]);
    }
    struct tcase *t = add_case(cs, QT_K_TRANSPOSE, TOL_EXACT, TOL_EXACT, "transpose [%s] perm %s",
                               sh, pm);
    struct qt_transpose_desc *d = &t->d.u.tr;
    d->ndim = nd;
    int64_t total = 1;
    for (int i = 0; i < nd; i++) {
        d->shape[i] = shape[i];
        d->perm[i] = perm[i];
        total *= shape[i];
    }
    t->d.nin = 1;
    t->d.numel = total;
    t->in_n[0] = t->out_n[0] = total;
    t->gen[0] = G_WIDE;
    t->grad[0] = 1;
}

QT_TEST(backends_transpose)
{
    struct cases *cs = calloc(1, sizeof *cs);
    const int64_t s4[] = {2, 3, 4, 5}, s2[] = {7, 13}, s3[] = {3, 1, 5}, s1[] = {17};
    const int64_t s5[] = {2, 3, 1, 4, 2}, big[] = {2, 64, 17, 17}, one[] = {1, 1, 1};
    const int to_nhwc[] = {0, 2, 3, 1}, to_nchw[] = {0, 3, 1, 2}, rev2[] = {1, 0};
    const int p3[] = {2, 0, 1}, id1[] = {0}, p5[] = {4, 2, 0, 3, 1}, id4[] = {0, 1, 2, 3};
    const int rev4[] = {3, 2, 1, 0}, id3[] = {0, 1, 2}, swap_inner[] = {0, 1, 3, 2};
    transpose_case(cs, 4, s4, to_nhwc);
    transpose_case(cs, 4, s4, to_nchw);
    transpose_case(cs, 4, s4, rev4);
    transpose_case(cs, 4, s4, id4);        /* merges into one contiguous walk */
    transpose_case(cs, 4, s4, swap_inner); /* keeps the outer dims together */
    transpose_case(cs, 2, s2, rev2);
    transpose_case(cs, 3, s3, p3); /* a dim of size 1 */
    transpose_case(cs, 1, s1, id1);
    transpose_case(cs, 5, s5, p5);
    transpose_case(cs, 4, big, to_nhwc); /* above the size the CPU kernel spreads over threads */
    transpose_case(cs, 3, one, id3);     /* batch 1, one element */
    int fail = run_cases("transpose", cs, 117);
    fail |= ref_backward_fd(cs, 119);
    free(cs);
    return fail;
}

static void pad_case(struct cases *cs, int nd, const int64_t *shape, const int64_t *begin,
                     const int64_t *end, float value)
{
    char sh[64] = "", pb[64] = "";
    for (int i = 0, ls = 0, lp = 0; i < nd; i++) {
        ls += snprintf(sh + ls, sizeof sh - ls, "%s%lld", i ? "," : "", (long long)shape[i]);
        lp += snprintf(pb + lp, sizeof pb - lp, "%s%lld/%lld", i ? "," : "", (long long)begin[i],
                       (long long)end[i]);
    }
    struct tcase *t = add_case(cs, QT_K_PAD, TOL_EXACT, TOL_EXACT, "pad [%s] by %s, value %g", sh,
                               pb, (double)value);
    struct qt_pad_desc *d = &t->d.u.pad;
    d->ndim = nd;
    d->value = value;
    int64_t nx = 1, ny = 1;
    for (int i = 0; i < nd; i++) {
        d->shape[i] = shape[i];
        d->begin[i] = begin[i];
        d->end[i] = end[i];
        nx *= shape[i];
        ny *= shape[i] + begin[i] + end[i];
    }
    t->d.nin = 1;
    t->d.numel = ny;
    t->in_n[0] = nx;
    t->out_n[0] = ny;
    t->gen[0] = G_WIDE;
    t->grad[0] = 1;
}

/* Constant Pad: spatial pads as Keras' ZeroPadding2D writes them, asymmetric and channel pads,
 * negative pads (cropping), a value other than 0, rank 1 and 5, and one large enough for the
 * CPU kernel's threads. */
QT_TEST(backends_pad)
{
    struct cases *cs = calloc(1, sizeof *cs);
    const int64_t s4[] = {2, 3, 5, 6}, big[] = {2, 64, 33, 33}, s1[] = {9}, s5[] = {1, 2, 3, 2, 4};
    const int64_t z4[] = {0, 0, 0, 0}, sp[] = {0, 0, 1, 1}, asym_b[] = {0, 0, 0, 1};
    const int64_t asym_e[] = {0, 0, 2, 0}, ch_b[] = {0, 1, 0, 0}, ch_e[] = {1, 2, 0, 0};
    const int64_t crop_b[] = {0, 0, -1, 2}, crop_e[] = {0, 0, 1, -3}, b1[] = {3}, e1[] = {-2};
    const int64_t b5[] = {0, 1, 0, 1, 2}, e5[] = {1, 0, 2, 0, 1};
    pad_case(cs, 4, s4, sp, sp, 0.0f);
    pad_case(cs, 4, s4, asym_b, asym_e, 0.0f);
    pad_case(cs, 4, s4, ch_b, ch_e, -1.5f);
    pad_case(cs, 4, s4, crop_b, crop_e, 0.25f);
    pad_case(cs, 4, s4, z4, z4, 0.0f);
    pad_case(cs, 1, s1, b1, e1, 2.0f);
    pad_case(cs, 5, s5, b5, e5, 0.0f);
    pad_case(cs, 4, big, sp, sp, 0.0f);
    int fail = run_cases("pad", cs, 121);
    fail |= ref_backward_fd(cs, 123);
    free(cs);
    return fail;
}

QT_TEST(backends_quantizers)
{
    struct cases *cs = calloc(1, sizeof *cs);
    int fail = 0;
    for (int scheme = QT_SCHEME_APOT; scheme <= QT_SCHEME_UNIFORM; scheme++)
        for (int bits = 2; bits <= 5; bits++) {
            fail |= quant_case(cs, 1, 0, scheme, bits, 1, 1, 3 * 4 * 3 * 3, 1);
            fail |= quant_case(cs, 1, 0, scheme, bits, 1, 0, 777, 1);
            fail |= quant_case(cs, 1, 0, scheme, bits, 1, 1, 8 * 3 * 3 * 3, 8); /* per channel */
            fail |= quant_case(cs, 0, 0, scheme, bits, 0, 0, 1001, 1);
            fail |= quant_case(cs, 0, 0, scheme, bits, 1, 0, 999, 1);
        }
    fail |= quant_case(cs, 0, 0, QT_SCHEME_APOT, 1, 0, 0, 64, 1); /* 1-bit unsigned */
    fail |= quant_case(cs, 0, 0, QT_SCHEME_UNIFORM, 8, 0, 0, 5000, 1);
    fail |= quant_case(cs, 1, 0, QT_SCHEME_APOT, 4, 1, 1, 20000, 1); /* several CPU blocks */
    fail |= quant_case(cs, 1, 0, QT_SCHEME_UNIFORM, 4, 1, 1, 5 * 3 * 7 * 7, 5);
    fail |= quant_case(cs, 1, 0, QT_SCHEME_APOT, 3, 1, 0, 1, 1); /* one weight */
    fail |= quant_case(cs, 1, 1, 0, 0, 0, 0, 3 * 3 * 7 * 7, 0);  /* int8, max */
    fail |= quant_case(cs, 1, 2, 0, 0, 0, 0, 10 * 64, 0);        /* int8, max |w| */
    fail |= quant_case(cs, 1, 1, 0, 0, 0, 0, 1, 0);
    bitq_case(cs, 8, 3 * 16 * 3 * 3); /* BSQ's 8-bit start */
    bitq_case(cs, 3, 37);
    bitq_case(cs, 1, 1);
    bitq_case(cs, 5, 70001); /* several CPU threads */
    if (fail) {
        free(cs);
        return 1;
    }
    fail = run_cases("quantizers", cs, 112);
    free(cs);
    return fail;
}

/* Every backend refuses a non-positive or non-finite alpha with the same message. */
QT_TEST(backends_quant_alpha_check)
{
    struct backends s;
    if (backends_open(&s)) return 1;
    struct qt_backend *all[MAXBK + 1] = {s.ref};
    for (int i = 0; i < s.n; i++)
        all[i + 1] = s.b[i];
    const float bad[] = {0.f, -0.5f, NAN, INFINITY};
    char first[QT_ERR_MSG] = "";
    int fail = 0;
    for (int weight = 0; weight < 2; weight++)
        for (int j = 0; j < 4; j++)
            for (int i = 0; i <= s.n; i++) {
                struct qt_backend *b = all[i];
                struct qt_op_desc d = {0};
                d.kind = weight ? QT_K_WEIGHTQUANT : QT_K_ACTQUANT;
                d.nin = 2;
                d.nout = 1;
                d.numel = 4;
                d.u.q.weight = weight;
                d.u.q.n = 4;
                d.u.q.nalpha = weight ? 2 : 1;
                qt_apot_quantizer_init(&d.u.q.qz, QT_SCHEME_APOT, 4, 1);
                const float x[4] = {0.1f, -0.2f, 0.3f, 0.4f}, al[2] = {0.5f, bad[j]};
                const float alpha1[1] = {bad[j]};
                float *in[2] = {dev_buf(b, 4, x), dev_buf(b, weight ? 2 : 1, weight ? al : alpha1)};
                float *out[1] = {dev_buf(b, 4, NULL)}, *aux = dev_buf(b, 2, NULL);
                float *din[2] = {dev_buf(b, 4, NULL), dev_buf(b, 2, NULL)};
                const float *dout[1] = {in[0]};
                const int acc[2] = {0, 0};
                struct qt_error e1 = {{0}}, e2 = {{0}}, e3 = {{0}};
                /* An op's error comes from the op or, for errors its kernels detect on a
                 * device, from the next sync. */
                const int r1 = b->forward(b, &d, (const float *const *)in, out, NULL, &e1) ||
                               b->sync(b, &e1);
                const int r2 =
                    b->forward_train(b, &d, (const float *const *)in, out, aux, NULL, &e2) ||
                    b->sync(b, &e2);
                const int r3 =
                    b->backward(b, &d, (const float *const *)in, (const float *const *)out, dout,
                                din, acc, aux, NULL, &e3) ||
                    b->sync(b, &e3);
                if (!r1 || !r2 || !r3 || strcmp(e1.msg, e2.msg) || strcmp(e1.msg, e3.msg) ||
                    !strstr(e1.msg, "must be positive and finite"))
                    fail = qt_test_fail("backend %s, alpha %g: '%s' / '%s' / '%s'", b->name, bad[j],
                                        e1.msg, e2.msg, e3.msg);
                if (i == 0)
                    snprintf(first, sizeof first, "%s", e1.msg);
                else if (strcmp(first, e1.msg))
                    fail = qt_test_fail("backend %s says '%s', ref '%s'", b->name, e1.msg, first);
                for (int k = 0; k < 2; k++) {
                    b->release(b, in[k]);
                    b->release(b, din[k]);
                }
                b->release(b, out[0]);
                b->release(b, aux);
            }
    backends_close(&s);
    return fail;
}

/* ---- loss and optimizer ---- */

QT_TEST(backends_xent)
{
    struct backends s;
    if (backends_open(&s)) return 1;
    if (!s.n) {
        backends_close(&s);
        return qt_test_skip("no backend other than ref could be created");
    }
    struct rng r = {113};
    int fail = 0;
    const int64_t shapes[][2] = {{16, 10}, {1, 1000}, {7, 3}, {5, 100}};
    const float smooth[] = {0.f, 0.1f, 0.f, 0.2f};
    for (int c = 0; c < 4; c++) {
        const int64_t n = shapes[c][0], k = shapes[c][1];
        float *z = malloc(sizeof(float) * n * k);
        int32_t *lab = malloc(sizeof(int32_t) * n);
        fill(z, n * k, G_WIDE, NULL, &r);
        for (int64_t i = 0; i < n; i++)
            lab[i] = (int32_t)(rng_u32(&r) % k);
        /* Ties (logits on a coarse grid) exercise the top-k rule; case 0 gets an infinite logit
         * in row 2 (counted apart, its gradient row NaN). */
        if (c == 2)
            for (int64_t i = 0; i < n * k; i++)
                z[i] = roundf(z[i] * 2.f) / 2.f;
        if (c == 0) z[2 * k + 1] = INFINITY;
        double want_st[QT_XENT_STATS] = {0};
        float *want_dz = NULL;
        for (int bi = -1; bi < s.n; bi++) {
            struct qt_backend *b = bi < 0 ? s.ref : s.b[bi];
            float *dz = dev_buf(b, n * k, z), *dd = dev_buf(b, n * k, NULL);
            void *lb = b->alloc(b, sizeof(int32_t) * n), *st = b->alloc(b, sizeof(double) * 4);
            struct qt_error e = {{0}};
            double got_st[QT_XENT_STATS];
            if (b->upload(b, lb, lab, sizeof(int32_t) * n) ||
                b->xent(b, dd, st, dz, lb, n, k, smooth[c], 1.f / n, &e) ||
                b->download(b, got_st, st, sizeof got_st)) {
                fail = qt_test_fail("xent case %d on %s: %s", c, b->name, e.msg);
            } else {
                float *got_dz = download(b, dd, n * k);
                if (bi < 0) {
                    memcpy(want_st, got_st, sizeof want_st);
                    want_dz = got_dz;
                } else if (!want_dz || !got_dz) {
                    fail = qt_test_fail("xent case %d: no gradient to compare", c);
                    free(got_dz);
                } else {
                    const double le = fabs(got_st[0] - want_st[0]) / fmax(fabs(want_st[0]), 1.0);
                    if (!(le <= TOL_EXACT))
                        fail = qt_test_fail("xent case %d: %s loss %.9g, ref %.9g", c, b->name,
                                            got_st[0], want_st[0]);
                    for (int q = 1; q < QT_XENT_STATS; q++)
                        if (got_st[q] != want_st[q])
                            fail = qt_test_fail("xent case %d: %s count %d = %g, ref %g", c,
                                                b->name, q, got_st[q], want_st[q]);
                    /* Rows with a non-finite logit: NaN in both; the rest compared. */
                    for (int64_t i = 0; i < n; i++) {
                        const int nonfinite_row = c == 0 && i == 2;
                        for (int64_t j = 0; j < k; j++)
                            if (nonfinite_row &&
                                !(isnan(got_dz[i * k + j]) && isnan(want_dz[i * k + j])))
                                fail =
                                    qt_test_fail("xent case %d: row %lld not NaN", c, (long long)i);
                        if (!nonfinite_row &&
                            !(rel_err(got_dz + i * k, want_dz + i * k, k) <= TOL_EXACT))
                            fail = qt_test_fail("xent case %d: %s dlogits row %lld differs", c,
                                                b->name, (long long)i);
                    }
                    free(got_dz);
                }
            }
            b->release(b, dz);
            b->release(b, dd);
            b->release(b, lb);
            b->release(b, st);
        }
        free(want_dz);
        free(z);
        free(lab);
    }
    printf("    xent: 4 cases x %d backend(s) (%s) against ref\n", s.n, s.names);
    backends_close(&s);
    return fail;
}

QT_TEST(backends_sgd)
{
    struct backends s;
    if (backends_open(&s)) return 1;
    if (!s.n) {
        backends_close(&s);
        return qt_test_skip("no backend other than ref could be created");
    }
    enum { NP = 4 };
    const int64_t sizes[NP] = {1, 37, 1000, 70000};
    const float lrs[NP] = {0.1f, 0.05f, 0.01f, 0.2f}, wds[NP] = {0.f, 5e-4f, 1e-4f, 0.f};
    struct rng r = {114};
    float *p0[NP], *g0[2][NP];
    for (int i = 0; i < NP; i++) {
        p0[i] = malloc(sizeof(float) * sizes[i]);
        fill(p0[i], sizes[i], G_UNIFORM, NULL, &r);
        for (int st = 0; st < 2; st++) {
            g0[st][i] = malloc(sizeof(float) * sizes[i]);
            fill(g0[st][i], sizes[i], G_UNIFORM, NULL, &r);
        }
    }
    int fail = 0;
    /* Rule 3 adds PSGD's scaling to parameters 1 (4 bits) and 3 (2 bits). */
    const struct qt_sgd_desc descs[] = {{0.f, 0}, {0.9f, 0}, {0.9f, 1}, {0.9f, 0}};
    const int psgd_levels[NP] = {0, 7, 0, 1};
    for (int di = 0; di < 4; di++) {
        float *want_p[NP] = {0}, *want_b[NP] = {0}, *want_r[NP] = {0};
        for (int bi = -1; bi < s.n; bi++) {
            struct qt_backend *b = bi < 0 ? s.ref : s.b[bi];
            struct qt_sgd_param prm[NP];
            float *gd[2][NP];
            for (int i = 0; i < NP; i++) {
                prm[i] = (struct qt_sgd_param){
                    .p = dev_buf(b, sizes[i], p0[i]),
                    .buf = descs[di].momentum != 0.f ? dev_buf(b, sizes[i], NULL) : NULL,
                    .n = sizes[i],
                    .lr = lrs[i],
                    .wd = wds[i],
                    .first = 1};
                if (di == 3 && psgd_levels[i]) {
                    prm[i].psgd_range = dev_buf(b, 2, NULL);
                    prm[i].psgd_levels = psgd_levels[i];
                    prm[i].psgd_lambda = 150.0f;
                }
                for (int st = 0; st < 2; st++)
                    gd[st][i] = dev_buf(b, sizes[i], g0[st][i]);
            }
            /* Two steps: the first starts the momentum buffers; parameter 2 has no gradient in
             * the second and must stay as it is. */
            struct qt_error e = {{0}};
            for (int st = 0; st < 2 && !fail; st++) {
                for (int i = 0; i < NP; i++) {
                    prm[i].grad = st == 1 && i == 2 ? NULL : gd[st][i];
                    prm[i].first = prm[i].psgd_first = st == 0;
                }
                if (b->sgd_step(b, &descs[di], prm, NP, &e))
                    fail = qt_test_fail("sgd on %s: %s", b->name, e.msg);
            }
            for (int i = 0; i < NP && !fail; i++) {
                float *gp = download(b, prm[i].p, sizes[i]);
                float *gb = prm[i].buf ? download(b, prm[i].buf, sizes[i]) : NULL;
                float *gr = prm[i].psgd_range ? download(b, prm[i].psgd_range, 2) : NULL;
                if (bi < 0) {
                    want_p[i] = gp;
                    want_b[i] = gb;
                    want_r[i] = gr;
                    continue;
                }
                if (!(rel_err(gp, want_p[i], sizes[i]) <= TOL_EXACT) ||
                    (gb && !(rel_err(gb, want_b[i], sizes[i]) <= TOL_EXACT)) ||
                    (gr && !(rel_err(gr, want_r[i], 2) <= TOL_EXACT)))
                    fail = qt_test_fail("sgd momentum %g nesterov %d psgd %d: %s parameter %d differs",
                                        descs[di].momentum, descs[di].nesterov, di == 3, b->name, i);
                free(gp);
                free(gb);
                free(gr);
            }
            for (int i = 0; i < NP; i++) {
                b->release(b, prm[i].p);
                if (prm[i].buf) b->release(b, prm[i].buf);
                if (prm[i].psgd_range) b->release(b, prm[i].psgd_range);
                for (int st = 0; st < 2; st++)
                    b->release(b, gd[st][i]);
            }
        }
        for (int i = 0; i < NP; i++) {
            free(want_p[i]);
            free(want_b[i]);
            free(want_r[i]);
        }
    }
    for (int i = 0; i < NP; i++) {
        free(p0[i]);
        free(g0[0][i]);
        free(g0[1][i]);
    }
    printf("    sgd: 3 rules and PSGD x %d parameters x 2 steps x %d backend(s) (%s) against ref\n", NP, s.n,
           s.names);
    backends_close(&s);
    return fail;
}

/* PSGD's cases worked by hand (BSQ_PSGD.md 3.7 and 3.8), on every backend: with gradient 1,
 * lr 1 and neither momentum nor weight decay, one step moves each weight by its factor. */
QT_TEST(backends_psgd_hand_cases)
{
    struct backends s;
    if (backends_open(&s)) return 1;
    const float w[4] = {0.7f, -0.33f, 0.13f, 0.02f}, ones[4] = {1, 1, 1, 1};
    /* b = 4: delta = 0.7 / 7 = 0.1, Q = [0.7, -0.3, 0.1, 0]; b = 2: delta = 0.7, Q = [0.7, 0, 0, 0]. */
    const float want4[4] = {0.0f, 4.5f, 4.5f, 3.0f}, want2[4] = {0.0f, 49.5f, 19.5f, 3.0f};
    int fail = 0;
    for (int bi = -1; bi < s.n && !fail; bi++) {
        struct qt_backend *b = bi < 0 ? s.ref : s.b[bi];
        struct qt_error e = {{0}};
        for (int bits = 2; bits <= 4 && !fail; bits += 2) {
            float *g = dev_buf(b, 4, ones);
            struct qt_sgd_param prm = {.p = dev_buf(b, 4, w), .grad = g, .n = 4,
                                       .lr = 1.0f, .first = 1, .psgd_range = dev_buf(b, 2, NULL),
                                       .psgd_first = 1, .psgd_levels = qt_psgd_levels(bits),
                                       .psgd_lambda = 150.0f};
            const struct qt_sgd_desc d = {0.0f, 0};
            if (b->sgd_step(b, &d, &prm, 1, &e)) fail = qt_test_fail("psgd on %s: %s", b->name, e.msg);
            float *got = fail ? NULL : download(b, prm.p, 4);
            for (int i = 0; i < 4 && got && !fail; i++) {
                const float factor = w[i] - got[i], want = bits == 4 ? want4[i] : want2[i];
                if (!(fabsf(factor - want) <= 2e-5f * (1.0f + want)))
                    fail = qt_test_fail("psgd %d bits on %s: weight %d moved by %.7g, factor %g "
                                        "expected", bits, b->name, i, factor, want);
            }
            free(got);
            b->release(b, prm.p);
            b->release(b, g);
            b->release(b, prm.psgd_range);
        }
        /* 3.8: largest weights 1 and then 2 give m = 0.1 * 2 + 0.9 * 1 = 1.1. */
        const float one = 1.0f, two = 2.0f, zero = 0.0f;
        float *g0 = dev_buf(b, 1, &zero);
        struct qt_sgd_param prm = {.p = dev_buf(b, 1, &one), .grad = g0, .n = 1,
                                   .lr = 1.0f, .psgd_range = dev_buf(b, 2, NULL), .psgd_first = 1,
                                   .psgd_levels = 7, .psgd_lambda = 150.0f};
        const struct qt_sgd_desc d = {0.0f, 0};
        if (!fail && b->sgd_step(b, &d, &prm, 1, &e)) fail = qt_test_fail("psgd: %s", e.msg);
        prm.psgd_first = 0;
        if (!fail && (b->upload(b, prm.p, &two, sizeof two) || b->sgd_step(b, &d, &prm, 1, &e)))
            fail = qt_test_fail("psgd second step on %s: %s", b->name, e.msg);
        float *r = fail ? NULL : download(b, prm.psgd_range, 2);
        if (!fail && !(r && r[0] == 0.0f && fabsf(r[1] - 1.1f) <= 1e-6f))
            fail = qt_test_fail("psgd range on %s: (%g, %g), expected (0, 1.1)", b->name,
                                r ? r[0] : NAN, r ? r[1] : NAN);
        free(r);
        b->release(b, prm.p);
        b->release(b, g0);
        b->release(b, prm.psgd_range);
        /* The clamp after the step (bit planes in [0, 2], alphas above their floor). */
        const float cp[3] = {0.5f, 1.9f, 1.0f}, cg[3] = {1.0f, -1.0f, 0.25f};
        float *pc = dev_buf(b, 3, cp), *gc = dev_buf(b, 3, cg);
        struct qt_sgd_param cl = {.p = pc, .grad = gc, .n = 3, .lr = 1.0f, .first = 1, .clamp = 1,
                                  .clamp_lo = 0.0f, .clamp_hi = 2.0f};
        if (!fail && b->sgd_step(b, &d, &cl, 1, &e)) fail = qt_test_fail("clamp: %s", e.msg);
        float *gotc = fail ? NULL : download(b, pc, 3);
        if (!fail && !(gotc && gotc[0] == 0.0f && gotc[1] == 2.0f && gotc[2] == 0.75f))
            fail = qt_test_fail("sgd clamp on %s: %g %g %g, expected 0 2 0.75", b->name,
                                gotc ? gotc[0] : NAN, gotc ? gotc[1] : NAN, gotc ? gotc[2] : NAN);
        free(gotc);
        b->release(b, pc);
        b->release(b, gc);
        /* Bad settings are refused, not computed. */
        float *p1 = dev_buf(b, 1, &one), *g1 = dev_buf(b, 1, &one), *r1 = dev_buf(b, 2, NULL);
        struct qt_sgd_param bad = {.p = p1, .grad = g1, .n = 1, .lr = 1.0f, .psgd_range = r1,
                                   .psgd_first = 1, .psgd_levels = 0, .psgd_lambda = 150.0f};
        if (!fail && b->sgd_step(b, &d, &bad, 1, &e) == 0)
            fail = qt_test_fail("psgd on %s accepted a grid of 0 steps", b->name);
        else if (!fail && !strstr(e.msg, "grid steps"))
            fail = qt_test_fail("psgd on %s: unclear message '%s'", b->name, e.msg);
        b->release(b, p1);
        b->release(b, g1);
        b->release(b, r1);
    }
    printf("    psgd: factors at 4 and 2 bits, range average, clamp, refusal x %d backend(s) (ref%s%s)\n",
           s.n + 1, s.n ? "," : "", s.names);
    backends_close(&s);
    return fail;
}

/* BSQ's regularizer gradient on every backend: a case worked by hand (BSQ_PSGD.md 3.5's
 * layer A: planes [1, 0] and [0, 1], each of norm 1: the gradient is coef * x) and random
 * planes against ref. */
QT_TEST(backends_bit_lasso)
{
    struct backends s;
    if (backends_open(&s)) return 1;
    int fail = 0;
    const float p[4] = {1, 0, 0, 1}, n[4] = {0, 0, 0, 0}, zero[4] = {0};
    enum { N = 3, CNT = 1001 };
    float *rp = malloc(sizeof(float) * N * CNT), *rn = malloc(sizeof(float) * N * CNT);
    struct rng r = {117};
    fill(rp, N * CNT, G_PLANE, NULL, &r);
    fill(rn, N * CNT, G_PLANE, NULL, &r);
    float *want[2] = {NULL, NULL};
    for (int bi = -1; bi < s.n && !fail; bi++) {
        struct qt_backend *b = bi < 0 ? s.ref : s.b[bi];
        struct qt_error e = {{0}};
        float *dp = dev_buf(b, 4, zero), *dn = dev_buf(b, 4, zero), *pp = dev_buf(b, 4, p),
              *nn = dev_buf(b, 4, n);
        if (b->bit_lasso(b, dp, dn, pp, nn, 2, 2, 0.5f, &e))
            fail = qt_test_fail("bit_lasso on %s: %s", b->name, e.msg);
        float *g = fail ? NULL : download(b, dp, 4);
        for (int i = 0; i < 4 && g && !fail; i++)
            if (!(fabsf(g[i] - 0.5f * p[i]) <= 1e-6f))
                fail = qt_test_fail("bit_lasso on %s: gradient %d is %g, expected %g", b->name, i,
                                    g[i], 0.5f * p[i]);
        free(g);
        b->release(b, dp);
        b->release(b, dn);
        b->release(b, pp);
        b->release(b, nn);
        /* random planes, accumulated onto gradients already there */
        float *gp = dev_buf(b, N * CNT, rn), *gn = dev_buf(b, N * CNT, rp),
              *vp = dev_buf(b, N * CNT, rp), *vn = dev_buf(b, N * CNT, rn);
        if (!fail && b->bit_lasso(b, gp, gn, vp, vn, N, CNT, 0.25f, &e))
            fail = qt_test_fail("bit_lasso on %s: %s", b->name, e.msg);
        float *got[2] = {fail ? NULL : download(b, gp, N * CNT), fail ? NULL : download(b, gn, N * CNT)};
        for (int k = 0; k < 2 && !fail; k++) {
            if (bi < 0) {
                want[k] = got[k];
                got[k] = NULL;
            } else if (!(rel_err(got[k], want[k], N * CNT) <= TOL_MEAN))
                fail = qt_test_fail("bit_lasso on %s differs from ref", b->name);
        }
        free(got[0]);
        free(got[1]);
        b->release(b, gp);
        b->release(b, gn);
        b->release(b, vp);
        b->release(b, vn);
    }
    free(want[0]);
    free(want[1]);
    free(rp);
    free(rn);
    printf("    bit_lasso: a hand-worked case and random planes x %d backend(s)\n", s.n + 1);
    backends_close(&s);
    return fail;
}

/* ---- the ref backend's memory rules ---- */

/* Whether reading p in a child process crashes it (SIGSEGV/SIGBUS, or a sanitizer's exit). */
static int host_read_crashes(const void *p)
{
    fflush(stdout);
    const pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stderr)) _exit(3);
        volatile float v = *(const volatile float *)p;
        (void)v;
        _exit(0);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid) return -1;
    return !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

QT_TEST(backends_ref_memory_not_host_visible)
{
    struct qt_error e;
    struct qt_backend *b = qt_backend_new("ref", 0, &e);
    if (!b) return qt_test_fail("ref backend: %s", e.msg);
    int fail = 0;
    float host[64], back[64];
    for (int i = 0; i < 64; i++)
        host[i] = (float)i * 0.5f - 3.f;
    float *p = b->alloc(b, sizeof host);
    /* An x86-64 address is canonical when bits 47..63 are all equal; ref's are not. */
    const int64_t top = (int64_t)(intptr_t)p >> 47;
    if (!p || top == 0 || top == -1) fail = qt_test_fail("ref pointer %p is host-addressable", p);
    if (b->upload(b, p, host, sizeof host) || b->download(b, back, p, sizeof back) ||
        memcmp(host, back, sizeof host))
        fail = qt_test_fail("upload/download do not round-trip");
    if (host_read_crashes(p) != 1) fail = qt_test_fail("a host read of ref memory did not fault");
    /* Host memory handed to the backend as its own is refused. */
    if (!b->upload(b, back, host, sizeof host))
        fail = qt_test_fail("upload into host memory was accepted");
    struct qt_op_desc d = {0};
    d.kind = QT_K_RELU;
    d.nin = d.nout = 1;
    d.numel = 64;
    float *out[1] = {host};
    const float *in[1] = {p};
    if (!b->forward(b, &d, in, out, NULL, &e) || !strstr(e.msg, "not in the ref backend's memory"))
        fail = qt_test_fail("forward into host memory: '%s'", e.msg);
    /* Allocating nothing still gives a distinct buffer; NULL releases quietly. */
    void *z = b->alloc(b, 0);
    if (!z) fail = qt_test_fail("alloc(0) failed");
    b->release(b, z);
    b->release(b, NULL);
    b->release(b, p);
    b->destroy(b);
    return fail;
}

QT_TEST(backends_ref_download_count)
{
    struct qt_error e;
    struct qt_backend *b = qt_backend_new("ref", 0, &e), *c = qt_backend_new("cpu", 0, &e);
    if (!b) return qt_test_fail("ref backend: %s", e.msg);
    int fail = 0;
    float h[8] = {1, -2, 3, -4, 5, -6, 7, -8}, back[8];
    float *x = dev_buf(b, 8, h), *y = dev_buf(b, 8, NULL);
    if (qt_backend_ref_downloads(b) != 0) fail = qt_test_fail("downloads counted before any");
    struct qt_op_desc d = {0};
    d.kind = QT_K_RELU;
    d.nin = d.nout = 1;
    d.numel = 8;
    const float *in[1] = {x};
    float *out[1] = {y};
    if (b->forward(b, &d, in, out, NULL, &e)) fail = qt_test_fail("relu: %s", e.msg);
    if (qt_backend_ref_downloads(b) != 0) fail = qt_test_fail("forward counted as a download");
    for (int i = 0; i < 3; i++)
        b->download(b, back, y, sizeof back);
    if (qt_backend_ref_downloads(b) != 3)
        fail = qt_test_fail("3 downloads counted as %lld", (long long)qt_backend_ref_downloads(b));
    if (back[0] != 1 || back[1] != 0 || back[6] != 7) fail = qt_test_fail("relu result wrong");
    qt_backend_ref_reset_downloads(b);
    if (qt_backend_ref_downloads(b) != 0) fail = qt_test_fail("reset did not clear the count");
    if (c && qt_backend_ref_downloads(c) != -1)
        fail = qt_test_fail("a cpu backend reports ref downloads");
    b->release(b, x);
    b->release(b, y);
    b->destroy(b);
    if (c) c->destroy(c);
    return fail;
}

/* Calibration ops: the strided subsample, the alpha search (signed and unsigned grids, with
 * NaN and Inf samples that count as 0) and per-channel moments, against ref. The alpha is
 * the arg-min of sums that another backend adds in another order, so it may land on a
 * neighbouring candidate when two errors differ by rounding only: compared to 2%. */
QT_TEST(backends_calibration)
{
    struct backends s;
    if (backends_open(&s)) return 1;
    if (!s.n) {
        backends_close(&s);
        return qt_test_skip("no backend other than ref could be created");
    }
    struct rng r = {211};
    int fail = 0;
    const int64_t n = 3 * 5 * 37;
    float *x = malloc(sizeof(float) * n);
    fill(x, n, G_WIDE, NULL, &r);
    x[17] = NAN;
    x[40] = INFINITY;
    const struct {
        int scheme, bits, sg;
        int64_t m;
    } cases[] = {{QT_SCHEME_APOT, 4, 1, 100}, {QT_SCHEME_APOT, 3, 0, 555},
                 {QT_SCHEME_UNIFORM, 4, 0, 7}, {QT_SCHEME_UNIFORM, 2, 1, 10000}};
    for (int c = 0; c < 4 && !fail; c++) {
        struct qt_apot_quantizer qz;
        if (qt_apot_quantizer_init(&qz, cases[c].scheme, cases[c].bits, cases[c].sg)) {
            fail = qt_test_fail("calibration case %d: bad grid", c);
            break;
        }
        const int64_t m = cases[c].m, cnt = qt_subsample_count(m, n);
        float want_alpha = 0, *want_sub = NULL;
        double want_s[2][5];
        for (int bi = -1; bi < s.n && !fail; bi++) {
            struct qt_backend *b = bi < 0 ? s.ref : s.b[bi];
            float *dx = dev_buf(b, n, x), *ds = dev_buf(b, m, NULL), *da = dev_buf(b, 1, NULL);
            double zero[5] = {0}, got_s[2][5];
            double *d1 = b->alloc(b, sizeof zero), *d2 = b->alloc(b, sizeof zero);
            float got_alpha = 0;
            struct qt_error e = {{0}};
            /* moments of x as [3, 5, 37], channel sums twice (accumulated) */
            if (b->upload(b, d1, zero, sizeof zero) || b->upload(b, d2, zero, sizeof zero) ||
                b->subsample(b, ds, m, dx, n, &e) ||
                b->alpha_search(b, da, ds, cnt, &qz, &e) ||
                b->download(b, &got_alpha, da, sizeof got_alpha) ||
                b->channel_moments(b, d1, d2, dx + 60, 3, 5, 3, &e) ||
                b->channel_moments(b, d1, d2, dx + 60, 3, 5, 3, &e) ||
                b->download(b, got_s[0], d1, sizeof zero) ||
                b->download(b, got_s[1], d2, sizeof zero)) {
                fail = qt_test_fail("calibration case %d on %s: %s", c, b->name, e.msg);
            } else {
                float *got_sub = download(b, ds, cnt);
                if (bi < 0) {
                    want_alpha = got_alpha;
                    want_sub = got_sub;
                    memcpy(want_s, got_s, sizeof want_s);
                } else {
                    for (int64_t i = 0; i < cnt && !fail; i++)
                        if (memcmp(&got_sub[i], &want_sub[i], sizeof(float)))
                            fail = qt_test_fail("calibration case %d: %s subsample %lld differs",
                                                c, b->name, (long long)i);
                    if (!(fabs(got_alpha - want_alpha) <= 0.02 * want_alpha) ||
                        !(got_alpha > 0))
                        fail = qt_test_fail("calibration case %d: %s alpha %.7g, ref %.7g", c,
                                            b->name, got_alpha, want_alpha);
                    for (int q = 0; q < 2; q++)
                        for (int ch = 0; ch < 5; ch++)
                            if (!(fabs(got_s[q][ch] - want_s[q][ch]) <=
                                  1e-9 * (1 + fabs(want_s[q][ch]))))
                                fail = qt_test_fail("calibration case %d: %s moment %d of "
                                                    "channel %d: %.17g, ref %.17g",
                                                    c, b->name, q, ch, got_s[q][ch],
                                                    want_s[q][ch]);
                    free(got_sub);
                }
            }
            b->release(b, dx);
            b->release(b, ds);
            b->release(b, da);
            b->release(b, d1);
            b->release(b, d2);
        }
        free(want_sub);
    }
    free(x);
    printf("    calibration ops: 4 cases x %d backend(s) (%s) against ref\n", s.n, s.names);
    backends_close(&s);
    return fail;
}

/* Activation ranges for calibration on every backend, against values known by construction:
 * 1..1000, -1..-500, NaN, Inf and -Inf (counted as 0) in a scrambled order. Sorted as they
 * are (unsigned): -500..-1, three zeros, 1..1000; as magnitudes (signed): three zeros, the
 * pairs 1,1 .. 500,500, then 501..1000. Nearest rank k = ceil(p / 100 * 1503) - 1. */
QT_TEST(backends_calib_ranges)
{
    struct backends s;
    if (backends_open(&s)) return 1;
    enum { N = 1503 };
    static float x[N];
    for (int i = 0; i < 1000; i++) x[i] = (float)(i + 1);
    for (int i = 0; i < 500; i++) x[1000 + i] = -(float)(i + 1);
    x[1500] = NAN;
    x[1501] = INFINITY;
    x[1502] = -INFINITY;
    for (int i = N - 1; i > 0; i--) { /* a fixed scramble: j from an LCG */
        const int j = (int)(((unsigned)i * 2654435761u) % (unsigned)(i + 1));
        const float t = x[i];
        x[i] = x[j];
        x[j] = t;
    }
    const struct {
        double p;
        int sg;
        float want;
    } cases[] = {{50, 0, 249},   {99.9, 0, 999}, {100, 0, 1000}, {0.01, 0, 1.0f /* -500: none */},
                 {50, 1, 375},   {99.9, 1, 999}, {100, 1, 1000}, {0.01, 1, 1.0f /* 0: none */},
                 {33.3, 0, 1.0f /* k = 500: the first zero */}};
    int fail = 0;
    for (int bi = -1; bi < s.n && !fail; bi++) {
        struct qt_backend *b = bi < 0 ? s.ref : s.b[bi];
        struct qt_error e = {{0}};
        for (int sg = 0; sg < 2 && !fail; sg++) {
            /* the largest, accumulated over two calls from a start of 0 */
            float *dx = dev_buf(b, N, x), *dm = dev_buf(b, 1, &(float){0.0f}), m = -1;
            if (!dx || !dm || b->range_max(b, dm, dx, 700, sg, &e) ||
                b->range_max(b, dm, dx + 700, N - 700, sg, &e) || b->sync(b, &e) ||
                b->download(b, &m, dm, sizeof m))
                fail = qt_test_fail("range max on %s: %s", b->name, e.msg);
            else if (m != 1000.0f)
                fail = qt_test_fail("range max on %s (signed %d): %g, expected 1000", b->name, sg,
                                    m);
            if (dx) b->release(b, dx);
            if (dm) b->release(b, dm);
        }
        for (size_t c = 0; c < sizeof cases / sizeof cases[0] && !fail; c++) {
            float *dx = dev_buf(b, N, x), *da = dev_buf(b, 1, NULL), a = -1;
            if (!dx || !da || b->alpha_percentile(b, da, dx, N, cases[c].p, cases[c].sg, &e) ||
                b->sync(b, &e) || b->download(b, &a, da, sizeof a))
                fail = qt_test_fail("percentile on %s: %s", b->name, e.msg);
            else if (a != cases[c].want)
                fail = qt_test_fail("percentile %g (signed %d) on %s: %g, expected %g",
                                    cases[c].p, cases[c].sg, b->name, a, cases[c].want);
            if (dx) b->release(b, dx);
            if (da) b->release(b, da);
        }
    }
    backends_close(&s);
    return fail;
}
