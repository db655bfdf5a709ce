/* The training recipe shared by `qtune train` and `qtune finetune`: its options, the datasets,
 * the loop with progress, log, checkpoints and the final report. */
#ifndef QT_RECIPE_H
#define QT_RECIPE_H

#include "../runtime/data/dataset.h"
#include "../runtime/train.h"

struct recipe {
    const char *cmd; /* "train" or "finetune", for messages */
    const char *data, *out, *preset, *mean_s, *std_s, *schedule, *milestones, *ckpt, *resume;
    const char *device; /* qt_backend_new's device name */
    long epochs, batch, threads, train_limit, test_limit, crop_pad;
    long resize, crop; /* images of any size: torchvision's Resize + CenterCrop (0: off) */
    int no_augment, no_prefetch;
    double lr, momentum, wd, gamma, warmup, smoothing;
    double alpha_lr_w, alpha_lr_a, alpha_wd; /* quantizer alphas (finetune) */
    unsigned long long seed;
    int nesterov, no_wd_bn, flip, json, quiet;
    const int *psgd_bits; /* PSGD: grid bits per graph value (NULL: off); qt_train_config */
    float psgd_lambda;
};

/* FP32 training defaults (train), or APOT.md's quantized recipe (finetune). */
void recipe_defaults(struct recipe *r, const char *cmd, int quantized);
/* Consumes the recipe option at argv[*i] (and its value). Returns 1 when consumed, 0 when it
 * is not a recipe option, -1 after printing an error. */
int recipe_option(struct recipe *r, int argc, char **argv, int *i);
void recipe_usage(int quantized);
/* Checks the options after parsing; returns 0 or the exit status. */
int recipe_check(const struct recipe *r);

/* Loaded data and the resolved normalization. */
struct recipe_data {
    struct qt_dataset train, test;
    float mean[4], std[4];
};
/* Loads both splits and resolves the normalization (stored into g's metadata). */
int recipe_load_data(const struct recipe *r, struct qt_graph *g, const char *model,
                     struct recipe_data *d);
void recipe_data_free(struct recipe_data *d);

/* Extra lines of the final JSON object (without braces), e.g. "\"ptq_top1\": 80.1". */
struct recipe_extra {
    char json[16384];
    char text[1024];
};

/* Records a test top-1 in g's metadata (qtune.top1, qtune.top1_images) when r has images. */
void recipe_record_top1(struct qt_graph *g, const struct qt_eval_result *r);

/* Trains g with the recipe (alpha groups for quantizers) and writes OUT, OUT.best.onnx and
 * OUT.log.jsonl; prints the report (and --json line with extra fields). Returns the exit
 * status. */
int recipe_run(const struct recipe *r, struct qt_graph *g, const char *model, struct recipe_data *d,
               struct qt_backend *b, const struct recipe_extra *extra);

/* qtune finetune --mixed bsq: the bit-plane phase (runtime/bsq.h) on g, a model prepared
 * with float weights (its Conv/Gemm/MatMul weights become 8 bit planes) or a bit-plane model
 * saved by an earlier run (continued from its recorded epoch). Writes OUT.bsq.onnx (after
 * every epoch; give it as the model to continue an interrupted run) and OUT.bsq.log.jsonl,
 * then turns the planes into uniform quantizers and evaluates: *after gets the test result,
 * json (cap bytes) a "bsq" summary object. budget_bytes / avg_bits stop the regularizer once
 * met and must hold at the end. Returns the exit status (130: interrupted). */
struct bsq_options {
    int epochs, interval;
    double decay, threshold, lr;
    int64_t budget_bytes;
    double avg_bits;
};
int recipe_bsq(const struct recipe *r, struct qt_graph *g, struct recipe_data *d,
               struct qt_backend *b, const struct bsq_options *o, struct qt_eval_result *after,
               char *json, size_t cap);

#endif
