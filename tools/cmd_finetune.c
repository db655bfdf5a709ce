/* qtune finetune: quantization-aware fine-tuning. Inserts APoT or uniform quantizers
 * (passes/quantize), calibrates them on a few training batches, reports the accuracy before
 * fine-tuning (post-training quantization when the alphas come from calibration), then trains
 * with the recipe of `qtune train` plus learning rates of the alphas' own. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../graph/schema.h"
#include "../onnx/onnx.h"
#include "../passes/passes.h"
#include "../runtime/finetune.h"
#include "../runtime/mixed.h"
#include "cli.h"
#include "recipe.h"

#define MAX_OVERRIDES 64
#define QT_MIXED_MAX_LAYERS 4096

static void usage(void)
{
    printf(
        "usage: qtune finetune MODEL.onnx --data DATA --wbits W --abits A -o OUT.onnx [options]\n"
        "  --wbits W, --abits A weight and activation bits (default 4 and 4); --bits B sets both;\n"
        "                       --abits 0 keeps activations float\n"
        "                       progressive: lists (--wbits 4,3,2 --abits 4,3,2; one value\n"
        "                       holds for every stage) fine-tune stage after stage, each from\n"
        "                       the last stage's model with its alphas re-calibrated; stage k\n"
        "                       writes OUT.wWaA.onnx, the last one OUT\n"
        "  --scheme S           apot (default) or uniform\n"
        "  --epochs E           fine-tuning epochs (default 1); 0: post-training quantization\n"
        "  --first-last M       first conv and last layer: 8 (8-bit weights, float inputs;\n"
        "                       default), same (like the other layers) or float\n"
        "  --int8-range R       8-bit weights scaled by absmax (max |W|, default) or max (max W)\n"
        "  --layer PAT=SPEC     per-layer setting for node names matching the glob PAT; SPEC is\n"
        "                       float or wNaN with an optional :apot/:uniform (w0/a0: float);\n"
        "                       repeatable, later ones win\n"
        "  --per-channel        uniform weights: one alpha per output channel\n"
        "  --no-standardize     quantize weights without standardization\n"
        "  --alpha-init I       paper (weights 3.0, activations 8.0; default) or calib\n"
        "                       (minimum quantization error on calibration data)\n"
        "  --alpha-w X, --alpha-a X   initial alphas for --alpha-init paper\n"
        "  --reset-alphas       re-quantizing a quantized model: re-initialize every alpha\n"
        "                       (default: alphas of unchanged quantizers are kept)\n"
        "  --folded H           Convs without BatchNorm (folded models): unfold (insert a\n"
        "                       BatchNorm, default) or direct (no standardization)\n"
        "  --calib-batches N    calibration batches (default 8 of --batch images)\n"
        "  --calib-images N     calibration images instead (rounded up to whole batches)\n"
        "  --ptq LIST           post-training quantization choices, comma-separated:\n"
        "                       calib=minmax|mse|percentile[:P]  activation alphas: the\n"
        "                       largest value, least quantization error, or the P-th\n"
        "                       percentile (99.99) of the calibration values (default:\n"
        "                       minmax with --epochs 0, else mse);\n"
        "                       weights=mse|minmax  weight alphas: least quantization\n"
        "                       error or the largest magnitude (default: minmax with\n"
        "                       --per-channel, else mse);\n"
        "                       bias=on|off  correct each quantized layer's mean output shift\n"
        "                       (through its BatchNorm or bias), kept when it wins on the\n"
        "                       held-out images (default: on with --epochs 0, else off);\n"
        "                       bn=auto|own|data  BatchNorm running statistics: chosen on\n"
        "                       the held-out images (default), the model's own (with bias\n"
        "                       correction when on, still checked), or re-estimated with the\n"
        "                       quantizers in place;\n"
        "                       adaround=on|off  learned rounding of the weights, layer by\n"
        "                       layer on the calibration images (default off; needs\n"
        "                       restore=on); adaround-iters=N  its steps per layer (200)\n"
        "                       restore=on|off  standardized weights mapped back to their\n"
        "                       own scale and offset for calibration and evaluation (default\n"
        "                       on; fine-tuning uses them standardized)\n"
        "  --holdout N          training images held out from calibration to decide whether\n"
        "                       re-estimated BatchNorm statistics are kept (default 2000;\n"
        "                       0: always re-estimate)\n"
        "  --size-budget SIZE   mixed precision: the weights (as exported) fit SIZE bytes\n"
        "                       (200000, 200kB, 0.2MB, 256KiB)\n"
        "  --avg-bits A         mixed precision: at most A bits per weight on average\n"
        "  --mixed M            how a budget is met: sensitivity (default: each layer's loss\n"
        "                       at each bit width measured on held-out training images, bits\n"
        "                       lowered greedily) or bsq (bit planes trained with a group-Lasso\n"
        "                       regularizer; precision falls out of training; see below)\n"
        "  --mixed-bits LIST    sensitivity: the bit widths to choose from (default 2..--wbits)\n"
        "  --mixed-images N     sensitivity: held-out images the losses are measured on (512)\n"
        "  --decay X            bsq: the regularizer's strength alpha (default 0.01)\n"
        "  --bsq-epochs E       bsq: epochs of bit-plane training (default 4), before --epochs\n"
        "                       of fine-tuning with the precision fixed\n"
        "  --bsq-interval K     bsq: re-quantize and drop empty bit planes every K epochs (2)\n"
        "  --bsq-threshold T    bsq: also drop planes with at most T%% of the weights set (0)\n"
        "  --bsq-lr X           bsq: learning rate of the bit-plane epochs (default 0.1); the\n"
        "                       fine-tuning after them has --lr, --alpha-lr-weight and\n"
        "                       --alpha-lr-act at a tenth of their defaults unless given\n"
        "  --export F           also write OUT with its quantizers lowered to standard ONNX\n"
        "                       (F: onnx, qdq, float, integer or qlinear; see qtune export) to\n"
        "                       OUT.export.onnx; qlinear measures its convolution outputs\n"
        "                       on 512 training images\n"
        "  --export-out PATH    where --export writes (default OUT.export.onnx)\n");
    recipe_usage(1);
}

struct ptq_opts {
    int method, wmethod;
    double percentile;
    int bias, restore, adaround;
    struct qt_adaround_config ar;
    int bn; /* QT_BN_AUTO, QT_BN_OWN or QT_BN_DATA */
};

/* Parses --ptq's comma-separated key=value list into o. */
static int ptq_parse(const char *spec, struct ptq_opts *o)
{
    char buf[256];
    if (strlen(spec) >= sizeof buf) return cli_fail("finetune: --ptq list too long");
    strcpy(buf, spec);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        char *v = strchr(t, '=');
        if (!v) return cli_fail("finetune: --ptq item '%s' is not key=value", t);
        *v++ = 0;
        int onoff = strcmp(v, "on") == 0 ? 1 : strcmp(v, "off") == 0 ? 0 : -1;
        if (strcmp(t, "calib") == 0) {
            if (strcmp(v, "mse") == 0)
                o->method = QT_CALIB_MSE;
            else if (strcmp(v, "minmax") == 0)
                o->method = QT_CALIB_MINMAX;
            else if (strncmp(v, "percentile", 10) == 0 && (v[10] == 0 || v[10] == ':')) {
                o->method = QT_CALIB_PERCENTILE;
                if (v[10] == ':') {
                    char *end;
                    o->percentile = strtod(v + 11, &end);
                    if (*end || end == v + 11 || !(o->percentile > 0 && o->percentile <= 100))
                        return cli_fail("finetune: --ptq calib=percentile:P needs 0 < P <= 100");
                }
            } else
                return cli_fail("finetune: --ptq calib must be mse, minmax or percentile[:P], "
                                "not '%s'", v);
        } else if (!strcmp(t, "weights")) {
            if (strcmp(v, "mse") && strcmp(v, "minmax"))
                return cli_fail("finetune: --ptq weights must be mse or minmax, not '%s'", v);
            o->wmethod = strcmp(v, "mse") ? QT_CALIB_MINMAX : QT_CALIB_MSE;
        } else if ((!strcmp(t, "bias") || !strcmp(t, "restore") || !strcmp(t, "adaround")) &&
                   onoff >= 0) {
            if (t[0] == 'b')
                o->bias = onoff;
            else if (t[0] == 'r')
                o->restore = onoff;
            else
                o->adaround = onoff;
        } else if (!strcmp(t, "bias") || !strcmp(t, "restore") || !strcmp(t, "adaround")) {
            return cli_fail("finetune: --ptq %s must be on or off, not '%s'", t, v);
        } else if (!strcmp(t, "bn")) {
            if (!strcmp(v, "auto"))
                o->bn = QT_BN_AUTO;
            else if (!strcmp(v, "own"))
                o->bn = QT_BN_OWN;
            else if (!strcmp(v, "data"))
                o->bn = QT_BN_DATA;
            else
                return cli_fail("finetune: --ptq bn must be auto, own or data, not '%s'", v);
        } else if (!strcmp(t, "adaround-iters")) {
            long k = cli_parse_long(v);
            if (k <= 0 || k > 1000000)
                return cli_fail("finetune: --ptq adaround-iters needs a positive integer");
            o->ar.iters = (int)k;
        } else {
            return cli_fail("finetune: unknown --ptq item '%s' (calib, weights, bias, bn, "
                            "restore, adaround, adaround-iters)", t);
        }
    }
    return 0;
}

static const char *scheme_of(const char *s, int *out)
{
    if (strcmp(s, "apot") == 0)
        *out = QT_QS_APOT;
    else if (strcmp(s, "uniform") == 0)
        *out = QT_QS_UNIFORM;
    else
        return NULL;
    return s;
}

/* "250000", "250kB", "0.25MB", "256KiB", "1MiB", "100B" -> bytes (SI k and M are powers of
 * ten); -1 when malformed. */
static int64_t parse_size(const char *s)
{
    char *end;
    const double v = strtod(s, &end);
    static const struct {
        const char *unit;
        double scale;
    } units[] = {{"", 1}, {"B", 1}, {"kB", 1e3}, {"KB", 1e3}, {"MB", 1e6}, {"KiB", 1024},
                 {"MiB", 1048576}};
    if (end == s || !(v > 0) || v > 1e15) return -1;
    for (size_t k = 0; k < sizeof units / sizeof units[0]; k++)
        if (strcmp(end, units[k].unit) == 0) return (int64_t)floor(v * units[k].scale);
    return -1;
}

/* A pattern matching exactly the name (glob characters escaped); -1 when too long. */
static int exact_pattern(char *out, size_t cap, const char *name)
{
    size_t j = 0;
    for (const char *p = name; *p; p++) {
        if (strchr("*?[]\\", *p)) {
            if (j + 1 >= cap) return -1;
            out[j++] = '\\';
        }
        if (j + 1 >= cap) return -1;
        out[j++] = *p;
    }
    out[j] = 0;
    return 0;
}

/* The sensitivity allocation under the budget: prints it and appends one --layer override per
 * allocated layer to ov (room for cap); its JSON object goes to json. */
static int mixed_allocate(struct qt_graph *g, struct qt_backend *b, const struct recipe_data *d,
                          struct qt_mixed_config *mc, struct qt_quant_override *ov, int *nov,
                          int cap, int quiet, char *json, size_t json_cap)
{
    for (int i = 0; i < g->nnodes; i++)
        if (!g->nodes[i].dead &&
            (g->nodes[i].op == QT_OP_WEIGHTQUANT || g->nodes[i].op == QT_OP_ACTQUANT))
            return cli_fail("finetune: --size-budget and --avg-bits start from a float model; "
                            "'%s' has quantizers", g->nodes[i].name);
    struct qt_mixed_report mr;
    struct qt_error e;
    if (!quiet)
        fprintf(stderr, "mixed precision: measuring each layer's loss at %d-%d bits on %d "
                        "held-out training images\n",
                mc->choices[0], mc->choices[mc->nchoices - 1], mc->images);
    int rc = qt_mixed_sensitivity(g, b, &d->train, mc, &mr, &e);
    if (rc) {
        qt_mixed_report_free(&mr);
        return cli_fail("finetune: mixed precision: %s", e.msg);
    }
    size_t jl = (size_t)snprintf(json, json_cap,
                                 "\"mixed\": {\"method\": \"sensitivity\", \"budget_bytes\": %lld, "
                                 "\"budget_avg_bits\": %.4f, \"bytes\": %lld, \"avg_bits\": %.4f, "
                                 "\"float_loss\": %.6f, \"seconds\": %.2f, \"layers\": [",
                                 (long long)mc->budget_bytes, mc->avg_bits, (long long)mr.bytes,
                                 (double)mr.bit_count / (double)mr.count, mr.float_loss, mr.seconds);
    if (!quiet)
        fprintf(stderr, "%-28s %9s %5s  loss at each choice (float: %.4f)\n", "layer", "weights",
                "bits", mr.float_loss);
    for (int i = 0; i < mr.n && !rc; i++) {
        const struct qt_mixed_layer *l = &mr.layer[i];
        const char *name = g->nodes[l->node].name;
        const int bits = l->fixed_bits > 0 ? l->fixed_bits : mc->choices[l->choice];
        if (jl < json_cap)
            jl += (size_t)snprintf(json + jl, json_cap - jl,
                                   "%s{\"layer\": \"%s\", \"bits\": %d, \"allocated\": %s}",
                                   i ? ", " : "", name, bits, l->fixed_bits > 0 ? "false" : "true");
        if (!quiet) {
            fprintf(stderr, "%-28.28s %9lld %5d ", name, (long long)l->count, bits);
            for (int k = 0; l->fixed_bits <= 0 && k < mc->nchoices; k++)
                fprintf(stderr, " %d:%.4f", mc->choices[k], l->loss[k]);
            fprintf(stderr, "%s\n", l->fixed_bits > 0 ? "  (kept)" : "");
        }
        if (l->fixed_bits > 0) continue;
        if (*nov == cap) {
            rc = cli_fail("finetune: too many layers for mixed precision (%d)", cap);
            break;
        }
        struct qt_quant_override *o = &ov[(*nov)++];
        memset(o, 0, sizeof *o);
        if (exact_pattern(o->pattern, sizeof o->pattern, name)) {
            rc = cli_fail("finetune: layer name '%s' too long for mixed precision", name);
            break;
        }
        o->spec = (struct qt_quant_spec){bits, -1, -1};
    }
    if (jl < json_cap) snprintf(json + jl, json_cap - jl, "]}");
    if (jl >= json_cap) json[0] = 0; /* too long for the summary line: left out */
    if (!rc && !quiet)
        fprintf(stderr, "mixed precision (%.1f s): weights %lld bytes, %.3f bits on average "
                        "(budget: %s%lld bytes%s)\n",
                mr.seconds, (long long)mr.bytes, (double)mr.bit_count / (double)mr.count,
                mc->budget_bytes ? "" : "no limit on ", (long long)mc->budget_bytes,
                mc->avg_bits > 0 ? ", average bits limited" : "");
    qt_mixed_report_free(&mr);
    return rc;
}


/* ---- progressive fine-tuning: --wbits 4,3,2 --abits 4,3,2 ---- */

#define MAX_STAGES 8

struct stages {
    int n;
    long w[MAX_STAGES], a[MAX_STAGES];
};

/* Parses a bit-width list into v (1 to MAX_STAGES values in [lo, 8]); returns the count or -1. */
static int bits_list(const char *s, long lo, long *v)
{
    int n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        const long x = strtol(p, &end, 10);
        if (end == p || x < lo || x > 8 || n == MAX_STAGES || (*end && *end != ',')) return -1;
        v[n++] = x;
        p = *end ? end + 1 : end;
        if (*end && !*p) return -1;
    }
    return n;
}

/* s inside a JSON string: quotes, backslashes and control characters escaped. */
static void json_string(FILE *f, const char *s)
{
    for (; *s; s++) {
        const unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
}

/* Length of path without a final ".onnx". */
static int onnx_stem(const char *path)
{
    const char *dot = strrchr(path, '.');
    return dot && strcmp(dot, ".onnx") == 0 ? (int)(dot - path) : (int)strlen(path);
}

/* "OUT.w4a4.onnx" for stage OUT.onnx. */
static void stage_out(char *buf, size_t cap, const char *out, long w, long a)
{
    snprintf(buf, cap, "%.*s.w%lda%ld.onnx", onnx_stem(out), out, w, a);
}

/* The last epoch of a stage's log (OUT.log.jsonl): top-1, top-5 and loss, and the best top-1;
 * 0, or -1 when the log cannot be read. */
static int stage_result(const char *out, double *top1, double *top5, double *loss, double *best)
{
    char path[4200];
    snprintf(path, sizeof path, "%.*s.log.jsonl", onnx_stem(out), out);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[65536];
    int got = 0;
    *best = -1;
    while (fgets(line, sizeof line, f)) {
        const char *t1 = strstr(line, "\"top1\": "), *t5 = strstr(line, "\"top5\": ");
        const char *tl = strstr(line, "\"test_loss\": ");
        if (!strstr(line, "\"epoch\": ") || !t1 || !t5 || !tl) continue;
        *top1 = strtod(t1 + 8, NULL);
        *top5 = strtod(t5 + 8, NULL);
        *loss = strtod(tl + 13, NULL);
        if (*top1 > *best) *best = *top1;
        got = 1;
    }
    fclose(f);
    return got ? 0 : -1;
}

/* Runs `finetune` once per stage with argv rewritten: the model (argv[model_at]) becomes the
 * last stage's output, -o (argv[out_at]) the stage's output, the bit options the stage's bits;
 * stages after the first re-initialize their alphas from data (--reset-alphas --alpha-init
 * calib, unless --alpha-init is given). --json: one summary of every stage as the last line. */
static int progressive(int argc, char **argv, int model_at, int out_at, const struct stages *st,
                       int json, int alpha_init_given)
{
    char outs[MAX_STAGES][4200], wv[MAX_STAGES][8], av[MAX_STAGES][8];
    char **sv = malloc(sizeof(char *) * (size_t)(argc + 8));
    if (!sv) return cli_fail("finetune: out of memory");
    int rc = 0;
    for (int k = 0; k < st->n && !rc; k++) {
        if (k + 1 < st->n)
            stage_out(outs[k], sizeof outs[k], argv[out_at], st->w[k], st->a[k]);
        else
            snprintf(outs[k], sizeof outs[k], "%s", argv[out_at]);
        snprintf(wv[k], sizeof wv[k], "%ld", st->w[k]);
        snprintf(av[k], sizeof av[k], "%ld", st->a[k]);
        int n = 0;
        for (int i = 0; i < argc; i++) {
            const char *a = argv[i];
            if (json && strcmp(a, "--json") == 0) continue;
            if ((strcmp(a, "--wbits") == 0 || strcmp(a, "--abits") == 0 || strcmp(a, "--bits") == 0) &&
                i + 1 < argc) {
                i++; /* replaced below */
                continue;
            }
            sv[n++] = i == model_at ? (k ? outs[k - 1] : argv[i]) : i == out_at ? outs[k] : argv[i];
        }
        sv[n++] = "--wbits";
        sv[n++] = wv[k];
        sv[n++] = "--abits";
        sv[n++] = av[k];
        if (k) {
            sv[n++] = "--reset-alphas";
            if (!alpha_init_given) {
                sv[n++] = "--alpha-init";
                sv[n++] = "calib";
            }
        }
        sv[n] = NULL;
        fprintf(stderr, "progressive fine-tuning, stage %d of %d: W%ldA%ld from %s\n", k + 1,
                st->n, st->w[k], st->a[k], k ? outs[k - 1] : argv[model_at]);
        rc = cmd_finetune(n, sv);
        if (rc)
            fprintf(stderr, "qtune: progressive fine-tuning stopped in stage %d of %d (W%ldA%ld)%s\n",
                    k + 1, st->n, st->w[k], st->a[k],
                    k ? "; the earlier stages' models are written" : "");
    }
    free(sv);
    if (rc) return rc;
    double t1[MAX_STAGES], t5[MAX_STAGES], ls[MAX_STAGES], bt[MAX_STAGES];
    for (int k = 0; k < st->n; k++)
        if (stage_result(outs[k], &t1[k], &t5[k], &ls[k], &bt[k]))
            return cli_fail("finetune: cannot read the log of stage %d (%s)", k + 1, outs[k]);
    printf("progressive fine-tuning:");
    for (int k = 0; k < st->n; k++)
        printf("%s W%ldA%ld %.2f%%", k ? " ->" : "", st->w[k], st->a[k], t1[k]);
    printf(" (test top-1 after each stage)\n");
    if (json) {
        printf("{\"top1\": %.4f, \"top5\": %.4f, \"loss\": %.6f, \"best_top1\": %.4f, \"stages\": [",
               t1[st->n - 1], t5[st->n - 1], ls[st->n - 1], bt[st->n - 1]);
        for (int k = 0; k < st->n; k++) {
            printf("%s{\"wbits\": %ld, \"abits\": %ld, \"top1\": %.4f, \"top5\": %.4f, \"loss\": "
                   "%.6f, \"best_top1\": %.4f, \"model\": \"",
                   k ? ", " : "", st->w[k], st->a[k], t1[k], t5[k], ls[k], bt[k]);
            json_string(stdout, outs[k]);
            printf("\"}");
        }
        printf("]}\n");
    }
    return 0;
}

int cmd_finetune(int argc, char **argv)
{
    struct recipe r;
    recipe_defaults(&r, "finetune", 1);
    r.epochs = 1;
    const char *path = NULL, *first_last = "8", *alpha_init = "paper", *folded = "unfold";
    const char *int8_range = "absmax", *export_fmt = NULL, *export_out = NULL;
    long wbits = 4, abits = 4, calib_batches = 8, calib_images = 0, holdout = 2000;
    long wl[MAX_STAGES], al[MAX_STAGES]; /* progressive: the lists given */
    int nw = 1, na = 1, model_at = -1;
    struct ptq_opts po = {-1, -1, 99.99, -1, 1, 0, {200, 32, 1e-2, 0.01}, QT_BN_AUTO};
    int scheme = QT_QS_APOT, per_channel = 0, no_std = 0, reset = 0;
    double alpha_w = 3.0, alpha_a = 8.0;
    static struct qt_quant_override ov[MAX_OVERRIDES + QT_MIXED_MAX_LAYERS];
    int nov = 0;
    int64_t budget = 0;
    double avg_bits = 0;
    const char *mixed_bits = NULL;
    long mixed_images = 512;
    const char *mixed = NULL;
    struct bsq_options bo = {4, 2, 0.01, 0.0, 0.1, 0, 0};
    int mixed_lo = 0;
    struct qt_error e;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has = i + 1 < argc;
        if (strcmp(a, "--help") == 0) {
            usage();
            return 0;
        }
        int got = recipe_option(&r, argc, argv, &i);
        if (got < 0) return 1;
        if (got) continue;
        char *end;
        if (strcmp(a, "--per-channel") == 0)
            per_channel = 1;
        else if (strcmp(a, "--no-standardize") == 0)
            no_std = 1;
        else if (strcmp(a, "--reset-alphas") == 0)
            reset = 1;
        else if (strcmp(a, "--first-last") == 0 && has)
            first_last = argv[++i];
        else if (strcmp(a, "--int8-range") == 0 && has)
            int8_range = argv[++i];
        else if (strcmp(a, "--alpha-init") == 0 && has)
            alpha_init = argv[++i];
        else if (strcmp(a, "--export") == 0 && has)
            export_fmt = argv[++i];
        else if (strcmp(a, "--export-out") == 0 && has)
            export_out = argv[++i];
        else if (strcmp(a, "--folded") == 0 && has)
            folded = argv[++i];
        else if (strcmp(a, "--scheme") == 0 && has) {
            if (!scheme_of(argv[++i], &scheme))
                return cli_fail("finetune: --scheme must be apot or uniform, not '%s'", argv[i]);
        } else if ((strcmp(a, "--wbits") == 0 || strcmp(a, "--abits") == 0 ||
                    strcmp(a, "--bits") == 0) &&
                   has) {
            const long lo = a[2] == 'a' ? 0 : 1; /* --abits 0: activations stay float */
            long v[MAX_STAGES];
            const int n = bits_list(argv[++i], lo, v);
            if (n < 1)
                return cli_fail("finetune: %s needs a bit width from %ld to 8, or a list of up to "
                                "%d (4,3,2)", a, lo, MAX_STAGES);
            if (a[2] != 'a') {
                wbits = v[0];
                nw = n;
                memcpy(wl, v, sizeof(long) * (size_t)n);
            }
            if (a[2] != 'w') {
                abits = v[0];
                na = n;
                memcpy(al, v, sizeof(long) * (size_t)n);
            }
        } else if (strcmp(a, "--holdout") == 0 && has) {
            char *hend;
            holdout = strtol(argv[++i], &hend, 10);
            if (*hend || !*argv[i] || holdout < 0 || holdout > 1000000)
                return cli_fail("finetune: --holdout needs a number of images (0: no check)");
        } else if (strcmp(a, "--calib-batches") == 0 && has) {
            if ((calib_batches = cli_parse_long(argv[++i])) <= 0)
                return cli_fail("finetune: --calib-batches needs a positive integer");
        } else if (strcmp(a, "--calib-images") == 0 && has) {
            if ((calib_images = cli_parse_long(argv[++i])) <= 0)
                return cli_fail("finetune: --calib-images needs a positive integer");
        } else if (strcmp(a, "--size-budget") == 0 && has) {
            if ((budget = parse_size(argv[++i])) <= 0)
                return cli_fail("finetune: --size-budget needs a size such as 200000, 200kB, "
                                "0.2MB or 256KiB, not '%s'", argv[i]);
        } else if (strcmp(a, "--avg-bits") == 0 && has) {
            avg_bits = strtod(argv[++i], &end);
            if (*end || !*argv[i] || !(avg_bits >= 1) || avg_bits > 32)
                return cli_fail("finetune: --avg-bits needs a number from 1 to 32");
        } else if (strcmp(a, "--mixed") == 0 && has) {
            mixed = argv[++i];
            if (strcmp(mixed, "sensitivity") && strcmp(mixed, "bsq"))
                return cli_fail("finetune: --mixed must be sensitivity or bsq, not '%s'", mixed);
        } else if ((strcmp(a, "--decay") == 0 || strcmp(a, "--bsq-threshold") == 0 ||
                    strcmp(a, "--bsq-lr") == 0) && has) {
            const double v = strtod(argv[++i], &end);
            if (*end || !*argv[i] || !(v >= 0) || v > 1e6)
                return cli_fail("finetune: %s needs a number >= 0", a);
            if (a[2] == 'd')
                bo.decay = v;
            else if (a[6] == 't')
                bo.threshold = v;
            else
                bo.lr = v;
        } else if ((strcmp(a, "--bsq-epochs") == 0 || strcmp(a, "--bsq-interval") == 0) && has) {
            const long v = cli_parse_long(argv[++i]);
            if (v <= 0 || v > 100000) return cli_fail("finetune: %s needs a positive integer", a);
            if (a[6] == 'e')
                bo.epochs = (int)v;
            else
                bo.interval = (int)v;
        } else if (strcmp(a, "--mixed-bits") == 0 && has) {
            mixed_bits = argv[++i];
        } else if (strcmp(a, "--mixed-images") == 0 && has) {
            if ((mixed_images = cli_parse_long(argv[++i])) <= 0 || mixed_images > 1000000)
                return cli_fail("finetune: --mixed-images needs a positive number of images");
        } else if (strcmp(a, "--ptq") == 0 && has) {
            if (ptq_parse(argv[++i], &po)) return 1;
        } else if ((strcmp(a, "--alpha-w") == 0 || strcmp(a, "--alpha-a") == 0) && has) {
            double v = strtod(argv[++i], &end);
            if (*end || !*argv[i] || !(v > 0) || v > 1e6)
                return cli_fail("finetune: %s needs a positive number", a);
            if (a[8] == 'w')
                alpha_w = v;
            else
                alpha_a = v;
        } else if (strcmp(a, "--layer") == 0 && has) {
            if (nov == MAX_OVERRIDES)
                return cli_fail("finetune: at most %d --layer options", MAX_OVERRIDES);
            if (qt_quant_spec_parse(&ov[nov++], argv[++i], &e))
                return cli_fail("finetune: %s", e.msg);
        } else if (a[0] == '-')
            return cli_fail("finetune: unknown or incomplete option '%s'", a);
        else if (path)
            return cli_fail("finetune: more than one model given");
        else {
            path = a;
            model_at = i;
        }
    }
    if (!path || !r.data || !r.out)
        return cli_fail("finetune: usage: qtune finetune MODEL.onnx --data DATA --wbits W "
                        "--abits A -o OUT.onnx");
    if (nw > 1 || na > 1) {
        struct stages st = {nw > na ? nw : na, {0}, {0}};
        if (nw > 1 && na > 1 && nw != na)
            return cli_fail("finetune: --wbits and --abits list %d and %d stages", nw, na);
        for (int k = 0; k < st.n; k++) {
            st.w[k] = nw > 1 ? wl[k] : wbits;
            st.a[k] = na > 1 ? al[k] : abits;
        }
        const char *clash = r.resume ? "--resume (resume the interrupted stage alone, then run "
                                       "the remaining stages from its output)"
                            : r.ckpt ? "--checkpoint (each stage checkpoints next to its output)"
                            : mixed || budget || avg_bits > 0 ? "mixed precision"
                            : r.epochs == 0 ? "--epochs 0" : NULL;
        if (clash) return cli_fail("finetune: progressive stages do not combine with %s", clash);
        int out_at = -1;
        for (int i = 1; i < argc; i++)
            if (argv[i] == r.out) out_at = i;
        int alpha_init_given = 0;
        for (int i = 1; i < argc; i++)
            alpha_init_given |= strcmp(argv[i], "--alpha-init") == 0;
        if (out_at < 0) return cli_fail("finetune: cannot find the value of -o");
        return progressive(argc, argv, model_at, out_at, &st, r.json, alpha_init_given);
    }
    int rc = recipe_check(&r);
    if (rc) return rc;
    if (mixed && !strcmp(mixed, "sensitivity") && !budget && !(avg_bits > 0))
        return cli_fail("finetune: --mixed sensitivity needs --size-budget or --avg-bits");
    enum qt_export_format efmt;
    if (export_out && !export_fmt) return cli_fail("finetune: --export-out needs --export FORMAT");
    if (export_fmt && qt_export_format_parse(export_fmt, &efmt))
        return cli_fail("finetune: --export must be onnx, qdq, float, integer or qlinear, not '%s'",
                        export_fmt);
    char export_buf[4096];
    if (export_fmt && !export_out) {
        snprintf(export_buf, sizeof export_buf, "%.*s.export.onnx", onnx_stem(r.out), r.out);
        export_out = export_buf;
    }
    struct qt_quant_config qc;
    memset(&qc, 0, sizeof qc);
    qc.wbits = (int)wbits;
    qc.abits = (int)abits;
    qc.scheme = scheme;
    if (strcmp(first_last, "8") == 0)
        qc.first_last = QT_FL_8BIT;
    else if (strcmp(first_last, "same") == 0)
        qc.first_last = QT_FL_SAME;
    else if (strcmp(first_last, "float") == 0)
        qc.first_last = QT_FL_FLOAT;
    else
        return cli_fail("finetune: --first-last must be 8, same or float, not '%s'", first_last);
    if (strcmp(int8_range, "absmax") && strcmp(int8_range, "max"))
        return cli_fail("finetune: --int8-range must be absmax or max, not '%s'", int8_range);
    qc.int8_absmax = strcmp(int8_range, "absmax") == 0;
    if (strcmp(alpha_init, "paper") && strcmp(alpha_init, "calib"))
        return cli_fail("finetune: --alpha-init must be paper or calib, not '%s'", alpha_init);
    if (strcmp(folded, "unfold") && strcmp(folded, "direct"))
        return cli_fail("finetune: --folded must be unfold or direct, not '%s'", folded);
    if (per_channel && scheme != QT_QS_UNIFORM)
        return cli_fail("finetune: --per-channel applies to --scheme uniform (APoT shares one "
                        "level grid per tensor)");
    qc.per_channel = per_channel;
    qc.standardize = !no_std;
    qc.alpha_w = (float)alpha_w;
    qc.alpha_a = (float)alpha_a;
    qc.reset_alphas = reset;
    qc.overrides = ov;
    qc.noverrides = nov;
    /* Post-training quantization takes its alphas from data. */
    int calib_alphas = strcmp(alpha_init, "calib") == 0 || r.epochs == 0;

    if (calib_images) calib_batches = (calib_images + r.batch - 1) / r.batch;
    /* measured (bench/results/ptq_vs_ort.txt): one alpha per channel fits its channel's
     * range best unclipped; one per tensor gains from the least-error clipping */
    if (po.wmethod < 0) po.wmethod = per_channel ? QT_CALIB_MINMAX : QT_CALIB_MSE;
    /* activations: the largest value for post-training quantization; fine-tuning started
     * better from the least-error alphas (bench/results/ptq_finetune.txt) */
    if (po.method < 0) po.method = r.epochs == 0 ? QT_CALIB_MINMAX : QT_CALIB_MSE;
    /* bias correction: a held-out candidate that never lost in those measurements; the
     * fine-tuning runs there started without it */
    if (po.bias < 0) po.bias = r.epochs == 0;
    struct qt_graph *g = cli_load_model(path, 0);
    if (!g) return 1;
    struct recipe_data d;
    struct qt_backend *b = NULL;
    if ((rc = recipe_load_data(&r, g, path, &d))) goto out;
    if (!(b = cli_backend_new("finetune", r.device, r.threads))) {
        rc = 1;
        goto out;
    }
    char mixed_json[sizeof(((struct recipe_extra *)0)->json) - 200] = "";
    const int bsq = mixed && !strcmp(mixed, "bsq");
    if (bsq) {
        /* weights become bit planes: no weight quantizers now, every layer's weight trained
         * (the first and last layers' inputs stay float); activations calibrated */
        qc.wbits = 0;
        qc.first_last = QT_FL_FLOAT;
        calib_alphas = 1;
        bo.budget_bytes = budget;
        bo.avg_bits = avg_bits;
    } else if (budget || avg_bits > 0) {
        struct qt_mixed_config mc;
        memset(&mc, 0, sizeof mc);
        mc.quant = &qc;
        mc.budget_bytes = budget;
        mc.avg_bits = avg_bits;
        mc.images = (int)mixed_images;
        mc.calib = (struct qt_calib_config){(int)calib_batches, (int)r.batch, r.seed, d.mean, d.std,
                                            65536, 2, 0, 0, 0};
        if (mixed_bits) {
            float f[QT_MIXED_MAX_CHOICES + 1];
            int n = cli_parse_floats(mixed_bits, f, QT_MIXED_MAX_CHOICES + 1);
            if (n < 1 || n > QT_MIXED_MAX_CHOICES) {
                rc = cli_fail("finetune: --mixed-bits needs 1 to %d bit widths, ascending",
                              QT_MIXED_MAX_CHOICES);
                goto out;
            }
            for (int k = 0; k < n; k++) {
                mc.choices[k] = (int)f[k];
                if (f[k] != (float)mc.choices[k] || (k && mc.choices[k] <= mc.choices[k - 1])) {
                    rc = cli_fail("finetune: --mixed-bits needs whole bit widths, ascending");
                    goto out;
                }
            }
            mc.nchoices = n;
        } else {
            for (int k = 2; k <= wbits && mc.nchoices < QT_MIXED_MAX_CHOICES; k++)
                mc.choices[mc.nchoices++] = k;
        }
        if (mc.nchoices < 1) {
            rc = cli_fail("finetune: mixed precision needs --wbits of at least 2");
            goto out;
        }
        /* the layers at --wbits are the ones allocated: the largest choice */
        qc.wbits = mc.choices[mc.nchoices - 1];
        mixed_lo = mc.choices[0];
        rc = mixed_allocate(g, b, &d, &mc, ov, &nov, MAX_OVERRIDES + QT_MIXED_MAX_LAYERS, r.quiet,
                            mixed_json, sizeof mixed_json);
        if (rc) goto out;
        qc.noverrides = nov;
    }
    struct qt_prepare_config pc = {
        &qc,
        strcmp(folded, "unfold") == 0,
        calib_alphas,
        r.resume != NULL,
        {(int)calib_batches, (int)r.batch, r.seed, d.mean, d.std, 65536, 2, po.method,
         po.percentile, po.wmethod},
        (int)r.batch,
        r.test_limit,
        (int)holdout,
        po.restore,
        r.epochs > 0,
        po.bias,
        po.bn,
        po.adaround,
        po.ar};
    struct qt_prepare_report pr;
    memset(&pr, 0, sizeof pr);
    struct cli_progress prog;
    cli_progress_init(&prog, "eval", "img", r.quiet);
    /* a bit-plane model saved by --mixed bsq continues as it is */
    int bsq_resumed = 0;
    for (int i = 0; bsq && i < g->nnodes; i++)
        bsq_resumed |= !g->nodes[i].dead && g->nodes[i].op == QT_OP_BITQUANT;
    if (!bsq_resumed &&
        qt_finetune_prepare(g, b, &d.train, &d.test, &pc, cli_progress_update, &prog, &pr, &e)) {
        rc = cli_fail("'%s': %s", path, e.msg);
        goto out;
    }
    struct qt_quant_summary qs = pr.quant;
    char wa[48]; /* "W4A4", or "W4A32" when activations stay float */
    if (bsq)
        snprintf(wa, sizeof wa, "BSQ A%ld", abits ? abits : 32);
    else if (budget || avg_bits > 0)
        snprintf(wa, sizeof wa, "mixed W%d-%dA%ld", mixed_lo, qc.wbits, abits ? abits : 32);
    else
        snprintf(wa, sizeof wa, "W%ldA%ld", wbits, abits ? abits : 32);
    if (!r.quiet && !bsq_resumed) {
        if (pr.unfolded)
            fprintf(stderr,
                    "unfolding: %d BatchNorms (after each Conv without one, and in place of "
                    "per-channel Mul/Add pairs), statistics from %d batches\n",
                    pr.unfolded, pc.calib.batches);
        fprintf(stderr,
                "quantized %d layers: %d weight and %d activation quantizers (%d signed), "
                "%s %s%s%s\n",
                qs.layers, qs.weight, qs.act, qs.act_signed, qt_quant_scheme_name(scheme), wa,
                qs.kept ? ", alphas kept from the input model" : "",
                qs.reset ? ", alphas re-initialized" : "");
        if (pr.restored)
            fprintf(stderr,
                    "standardized weights of %d layers mapped back to their own scale and offset "
                    "(sigma * q + mu)%s\n",
                    pr.restored, r.epochs > 0 ? "; fine-tuning then uses them standardized" : "");
        if (pr.evaluated) {
            char bn[300], bc[80] = "";
            static const char *const choice[] = {"kept as they were", "re-estimated",
                                                 "kept as they were, with bias correction"};
            if (pr.bn_top1[2] >= 0)
                snprintf(bc, sizeof bc, ", %.2f%% bias-corrected", pr.bn_top1[2]);
            if (qs.weight + qs.act == 0)
                snprintf(bn, sizeof bn, "no quantizer: nothing calibrated");
            else if (pr.bn_top1[0] < 0 && pr.bn_top1[1] < 0 && pr.bn_reestimated >= 0)
                snprintf(bn, sizeof bn, "running statistics of %d BatchNorms %s (--ptq bn=%s)",
                         pr.calib.bn, choice[pr.bn_choice], po.bn == QT_BN_OWN ? "own" : "data");
            else if (pr.bn_top1[1] < 0 && pr.bn_reestimated >= 0)
                snprintf(bn, sizeof bn,
                         "running statistics of %d BatchNorms %s (--ptq bn=own; held-out "
                         "top-1 %.2f%% as they were%s)",
                         pr.calib.bn, choice[pr.bn_choice], pr.bn_top1[0], bc);
            else if (pr.bn_reestimated < 0)
                snprintf(bn, sizeof bn,
                         "running statistics of %d BatchNorms re-estimated (unchecked: %s)",
                         pr.calib.bn, holdout ? "the training split cannot spare the held-out "
                                                "images" : "--holdout 0");
            else
                snprintf(bn, sizeof bn,
                         "running statistics of %d BatchNorms %s (held-out top-1 %.2f%% "
                         "re-estimated, %.2f%% as they were%s)",
                         pr.calib.bn, choice[pr.bn_choice], pr.bn_top1[1], pr.bn_top1[0], bc);
            char how[96];
            if (po.method == QT_CALIB_PERCENTILE)
                snprintf(how, sizeof how, "alphas from data (activations: %g-th percentile)",
                         po.percentile);
            else
                snprintf(how, sizeof how, "alphas from data (activations: %s)",
                         po.method == QT_CALIB_MINMAX ? "largest value" : "least squared error");
            if (pr.ar.layers)
                fprintf(stderr, "AdaRound (%.1f s): %d layers, %lld of %lld weights rounded away "
                                "from their nearest level\n", pr.ar.seconds, pr.ar.layers,
                        (long long)pr.ar.flipped, (long long)pr.ar.weights);
            if (pr.bias_corrected)
                fprintf(stderr, "bias correction: the mean output of %d layers moved back to "
                                "the float model's\n", pr.bias_corrected);
            else if (po.bias && po.bn == QT_BN_DATA)
                fprintf(stderr, "bias correction: not applied (it corrects the own statistics, "
                                "and --ptq bn=data re-estimates them)\n");
            else if (po.bias && pr.bn_top1[2] < 0 && pr.bn_choice != 2)
                fprintf(stderr, "bias correction: not tried (it is decided on the held-out "
                                "images; see --holdout)\n");
            fprintf(stderr,
                    "calibration (%.1f s, %d images): %s; %s\n"
                    "%s: test top-1 %.2f%% top-5 %.2f%%\n",
                    pr.calib.seconds, pc.calib.batches * pc.calib.batch,
                    calib_alphas ? how : "paper alphas", bn,
                    bsq          ? "activations quantized, weights float"
                    : calib_alphas ? "post-training quantization"
                                   : "before fine-tuning",
                    pr.eval.top1, pr.eval.top5);
        }
    }
    if (bsq) {
        struct qt_eval_result after;
        if ((rc = recipe_bsq(&r, g, &d, b, &bo, &after, mixed_json, sizeof mixed_json))) goto out;
        /* The converted layers quantize their weights on the weights' own scale (no
         * standardization): the fine-tuning's learning rates default to a tenth of the
         * standardized layers' (bench/results/bsq_finetune_lr.txt: one epoch from the same
         * bit planes lost 20.7 points at 0.04, 0.02 and 0.1 and gained 6.4 at a tenth). */
        const struct { const char *opt; double *v; } lrs[] = {
            {"--lr", &r.lr}, {"--alpha-lr-weight", &r.alpha_lr_w}, {"--alpha-lr-act", &r.alpha_lr_a}};
        for (size_t k = 0; k < sizeof lrs / sizeof lrs[0]; k++) {
            int given = 0;
            for (int i = 1; i < argc; i++)
                given |= strcmp(argv[i], lrs[k].opt) == 0;
            if (!given) *lrs[k].v *= 0.1;
        }
        pr.evaluated = 1;
        pr.eval = after;
        qs.weight = qs.act = 0;
        for (int i = 0; i < g->nnodes; i++) {
            qs.weight += !g->nodes[i].dead && g->nodes[i].op == QT_OP_WEIGHTQUANT;
            qs.act += !g->nodes[i].dead && g->nodes[i].op == QT_OP_ACTQUANT;
        }
    }
    const double ptq_top1 = pr.evaluated ? pr.eval.top1 : -1;
    const double ptq_top5 = pr.evaluated ? pr.eval.top5 : -1, ptq_loss = pr.eval.loss;
    if (r.epochs == 0) {
        if (pr.evaluated) recipe_record_top1(g, &pr.eval);
        if (qt_onnx_save(g, r.out, &e)) {
            rc = cli_fail("%s", e.msg);
            goto out;
        }
        printf("post-training quantization of %s (%s %s): test top-1 %.2f%% top-5 %.2f%% "
               "loss %.4f\n"
               "wrote %s\n",
               path, qt_quant_scheme_name(scheme), wa, ptq_top1, ptq_top5, ptq_loss,
               r.out);
        if (r.json)
            printf("{\"top1\": %.4f, \"top5\": %.4f, \"loss\": %.6f, \"ptq_top1\": %.4f, "
                   "\"epochs\": 0, "
                   "\"seconds\": 0, \"images_per_s\": 0, \"quantizers\": %d, "
                   "\"calib_images\": %d, \"calib_seconds\": %.3f, \"batchnorm\": \"%s\", "
                   "\"holdout_top1\": [%.4f, %.4f, %.4f], \"restored\": %d%s%s}\n",
                   ptq_top1, ptq_top5, ptq_loss, ptq_top1, qs.weight + qs.act,
                   pc.calib.batches * pc.calib.batch, pr.calib.seconds,
                   qs.weight + qs.act == 0 ? "none"
                   : pr.bn_reestimated < 0 ? "reestimated-unchecked"
                   : pr.bn_choice == 1     ? "reestimated"
                   : pr.bn_choice == 2     ? "own+bias-correction"
                                           : "own",
                   pr.bn_top1[0], pr.bn_top1[1], pr.bn_top1[2], pr.restored,
                   mixed_json[0] ? ", " : "", mixed_json);
        goto out_export;
    }
    struct recipe_extra ex;
    ex.json[0] = ex.text[0] = 0;
    if (ptq_top1 >= 0) {
        snprintf(ex.json, sizeof ex.json, "\"%s\": %.4f, \"quantizers\": %d",
                 calib_alphas && !bsq ? "ptq_top1" : "start_top1", ptq_top1, qs.weight + qs.act);
        snprintf(ex.text, sizeof ex.text, "%s: test top-1 %.2f%%\n",
                 bsq            ? "after the bit-plane epochs"
                 : calib_alphas ? "post-training quantization"
                                : "before fine-tuning",
                 ptq_top1);
    } else {
        snprintf(ex.json, sizeof ex.json, "\"quantizers\": %d", qs.weight + qs.act);
    }
    if (mixed_json[0]) {
        const size_t jl = strlen(ex.json);
        snprintf(ex.json + jl, sizeof ex.json - jl, ", %s", mixed_json);
    }
    rc = recipe_run(&r, g, path, &d, b, &ex);
out_export:
    if (!rc && export_fmt) {
        struct qt_export_report rep;
        const struct cli_export_calib cal = {&d.train, d.mean, d.std, b, 512};
        rc = cli_export(r.out, export_fmt, export_out, -1, 0, &cal, &rep);
        if (!rc) fprintf(r.json ? stderr : stdout, "exported %s as %s: wrote %s\n", r.out, export_fmt, export_out);
    }
out:
    if (b) b->destroy(b);
    recipe_data_free(&d);
    qt_graph_free(g);
    return rc;
}
