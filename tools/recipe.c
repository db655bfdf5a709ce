/* The training recipe shared by `qtune train` and `qtune finetune`: option parsing, data
 * loading with normalization, parameter groups, and the loop with its progress display,
 * per-epoch log, best model, checkpoints, Ctrl-C handling and final report. */
#include "recipe.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../util/fileio.h"
#include "../graph/schema.h"
#include "../onnx/onnx.h"
#include "../passes/passes.h"
#include "../runtime/bsq.h"
#include "../runtime/quantizer.h"
#include "cli.h"

/* Set by SIGINT/SIGTERM; the loop stops after the current batch and writes a checkpoint. */
static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

void recipe_defaults(struct recipe *r, const char *cmd, int quantized)
{
    memset(r, 0, sizeof *r);
    r->cmd = cmd;
    r->schedule = "cosine";
    r->epochs = -1;
    r->batch = 128;
    r->crop_pad = 4;
    r->flip = 1;
    r->momentum = 0.9;
    r->gamma = 0.1;
    /* APOT.md section 6: FP32 lr 0.1, wd 5e-4; quantized lr 0.04, wd 1e-4, alphas in groups
     * of their own (activations lr 0.1, weights lr 0.02, both wd 1e-4). */
    r->lr = quantized ? 0.04 : 0.1;
    r->wd = quantized ? 1e-4 : 5e-4;
    r->alpha_lr_a = 0.1;
    r->alpha_lr_w = 0.02;
    r->alpha_wd = 1e-4;
}

void recipe_usage(int quantized)
{
    printf("  --batch N            batch size (default 128)\n"
           "  --lr X               base learning rate (default %s)\n"
           "  --momentum X         SGD momentum (default 0.9)\n"
           "  --nesterov           Nesterov momentum\n"
           "  --wd X               weight decay (default %s)\n"
           "  --no-wd-bn           no weight decay on BatchNorm parameters and biases\n",
           quantized ? "0.04" : "0.1", quantized ? "1e-4" : "5e-4");
    if (quantized)
        printf("  --alpha-lr-act X     learning rate of activation alphas (default 0.1)\n"
               "  --alpha-lr-weight X  learning rate of weight alphas (default 0.02)\n"
               "  --alpha-wd X         weight decay of alphas (default 1e-4)\n"
               "                       (alpha learning rates follow the schedule of --lr)\n");
    printf("  --schedule S         const, step or cosine (default cosine)\n"
           "  --milestones a,b     epochs where step multiplies the lr by --gamma (default 0.1)\n"
           "  --warmup E           linear warm-up over E epochs (may be fractional)\n"
           "  --label-smoothing X  label smoothing of the cross-entropy (default 0)\n"
           "  --crop-pad P         random crop with P pixels of zero padding (default 4, 0: off)\n"
           "  --crop S             image folders of images of any size: each image resized\n"
           "                       (--resize R, default S * 256 / 224, the shorter side) and\n"
           "                       center-cropped to S x S as it is decoded, as torchvision's\n"
           "                       Resize(R) + CenterCrop(S) on PIL images\n"
           "  --resize R           see --crop\n"
           "  --no-flip            no random horizontal flips\n"
           "  --no-augment         neither crops nor flips (with --crop: the evaluation\n"
           "                       transform instead of RandomResizedCrop)\n"
           "  --no-prefetch        assemble each batch between steps (default: a thread of\n"
           "                       its own assembles the next batch during a step)\n"
           "  --seed S             seed of shuffling, augmentation and calibration (default 0)\n"
           "  --mean a,b,c --std a,b,c | --preset NAME   normalization (stored in OUT.onnx)\n"
           "  --train-limit N      train on the first N samples only\n"
           "  --test-limit N       evaluate on the first N test samples only\n"
           "  --checkpoint PATH    checkpoint written every epoch (default OUT.onnx.ckpt)\n"
           "  --resume PATH        continue from a checkpoint (same model, data and options)\n"
           "  --threads N          CPU threads\n"
           "  --device D           auto (a GPU when one is usable, else the CPU), cpu, cuda,\n"
           "                       or ref (the plain reference backend; slow)\n"
           "  --json               print a JSON summary as the last line\n"
           "  --quiet              no progress display\n"
           "Writes OUT.onnx (final weights), OUT.best.onnx (best test top-1) and OUT.log.jsonl.\n");
}

int recipe_option(struct recipe *r, int argc, char **argv, int *ip)
{
    int i = *ip;
    const char *a = argv[i];
    int has = i + 1 < argc;
    char *end = NULL;
    const char *v = has ? argv[i + 1] : NULL;
    struct {
        const char *name;
        double *var;
    } fl[] = {{"--lr", &r->lr},
              {"--momentum", &r->momentum},
              {"--wd", &r->wd},
              {"--gamma", &r->gamma},
              {"--warmup", &r->warmup},
              {"--label-smoothing", &r->smoothing},
              {"--alpha-lr-act", &r->alpha_lr_a},
              {"--alpha-lr-weight", &r->alpha_lr_w},
              {"--alpha-wd", &r->alpha_wd}};
    struct {
        const char *name;
        long *var;
    } lo[] = {{"--batch", &r->batch},
              {"--threads", &r->threads},
              {"--train-limit", &r->train_limit},
              {"--test-limit", &r->test_limit},
              {"--resize", &r->resize},
              {"--crop", &r->crop}};
    struct {
        const char *name;
        const char **var;
    } st[] = {{"--data", &r->data},
              {"-o", &r->out},
              {"--preset", &r->preset},
              {"--mean", &r->mean_s},
              {"--std", &r->std_s},
              {"--schedule", &r->schedule},
              {"--milestones", &r->milestones},
              {"--checkpoint", &r->ckpt},
              {"--resume", &r->resume},
              {"--device", &r->device}};
    struct {
        const char *name;
        int *var, val;
    } sw[] = {{"--json", &r->json, 1},
              {"--quiet", &r->quiet, 1},
              {"--nesterov", &r->nesterov, 1},
              {"--no-wd-bn", &r->no_wd_bn, 1},
              {"--no-flip", &r->flip, 0},
              {"--no-prefetch", &r->no_prefetch, 1}};
    for (size_t k = 0; k < sizeof sw / sizeof sw[0]; k++)
        if (strcmp(a, sw[k].name) == 0) {
            *sw[k].var = sw[k].val;
            return 1;
        }
    if (strcmp(a, "--no-augment") == 0) {
        r->flip = 0;
        r->crop_pad = 0;
        r->no_augment = 1;
        return 1;
    }
    if (!has) return 0;
    for (size_t k = 0; k < sizeof st / sizeof st[0]; k++)
        if (strcmp(a, st[k].name) == 0) {
            *st[k].var = v;
            *ip = i + 1;
            return 1;
        }
    for (size_t k = 0; k < sizeof fl / sizeof fl[0]; k++)
        if (strcmp(a, fl[k].name) == 0) {
            *fl[k].var = strtod(v, &end);
            if (*end || !*v || !isfinite(*fl[k].var) || *fl[k].var < 0) {
                cli_fail("%s: %s needs a non-negative number", r->cmd, a);
                return -1;
            }
            *ip = i + 1;
            return 1;
        }
    for (size_t k = 0; k < sizeof lo / sizeof lo[0]; k++)
        if (strcmp(a, lo[k].name) == 0) {
            if ((*lo[k].var = cli_parse_long(v)) < 0) {
                cli_fail("%s: %s needs a positive integer", r->cmd, a);
                return -1;
            }
            *ip = i + 1;
            return 1;
        }
    if (strcmp(a, "--epochs") == 0) {
        r->epochs = strtol(v, &end, 10);
        if (*end || !*v || r->epochs < 0) {
            cli_fail("%s: --epochs needs a non-negative integer", r->cmd);
            return -1;
        }
    } else if (strcmp(a, "--crop-pad") == 0) {
        r->crop_pad = strtol(v, &end, 10);
        if (*end || !*v || r->crop_pad < 0 || r->crop_pad > 127) {
            cli_fail("%s: --crop-pad needs 0 to 127", r->cmd);
            return -1;
        }
    } else if (strcmp(a, "--seed") == 0) {
        r->seed = strtoull(v, &end, 10);
        if (*end || !*v || *v == '-') {
            cli_fail("%s: --seed needs a non-negative integer", r->cmd);
            return -1;
        }
    } else {
        return 0;
    }
    *ip = i + 1;
    return 1;
}

int recipe_check(const struct recipe *r)
{
    if (r->smoothing >= 1) return cli_fail("%s: --label-smoothing must be below 1", r->cmd);
    if (r->momentum >= 1) return cli_fail("%s: --momentum must be below 1", r->cmd);
    if ((r->mean_s != NULL) != (r->std_s != NULL))
        return cli_fail("%s: --mean and --std go together", r->cmd);
    if (strcmp(r->schedule, "cosine") && strcmp(r->schedule, "step") &&
        strcmp(r->schedule, "const"))
        return cli_fail("%s: --schedule must be const, step or cosine", r->cmd);
    float ms[QT_SCHED_MAX_MILESTONES];
    if (r->milestones && cli_parse_floats(r->milestones, ms, QT_SCHED_MAX_MILESTONES) < 0)
        return cli_fail("%s: --milestones needs up to %d comma-separated epochs", r->cmd,
                        QT_SCHED_MAX_MILESTONES);
    return 0;
}

int recipe_load_data(const struct recipe *r, struct qt_graph *g, const char *model,
                     struct recipe_data *d)
{
    struct qt_error e;
    char mbuf[128], sbuf[128];
    memset(d, 0, sizeof *d);
    if (!r->quiet) fprintf(stderr, "loading %s...\n", r->data);
    if (qt_dataset_load_sized(&d->train, r->data, "train", (int)r->resize, (int)r->crop, &e) ||
        qt_dataset_load_sized(&d->test, r->data, "test", (int)r->resize, (int)r->crop, &e))
        return cli_fail("%s", e.msg);
    int rc = cli_normalization(r->cmd, g, model, r->preset, r->mean_s, r->std_s, d->train.c,
                               d->mean, d->std);
    if (rc) return rc;
    if (qt_check_image_model(g, &d->train, &e) ||
        qt_check_normalization(d->mean, d->std, d->train.c, &e))
        return cli_fail("%s", e.msg);
    cli_check_limit(r->cmd, "--train-limit", &d->train, "train", (long)r->train_limit);
    cli_check_limit(r->cmd, "--test-limit", &d->test, "test", (long)r->test_limit);
    /* The normalization travels with the model. */
    int k = 0;
    for (int c = 0; c < d->train.c; c++)
        k += snprintf(mbuf + k, sizeof mbuf - k, "%s%g", c ? "," : "", d->mean[c]);
    k = 0;
    for (int c = 0; c < d->train.c; c++)
        k += snprintf(sbuf + k, sizeof sbuf - k, "%s%g", c ? "," : "", d->std[c]);
    qt_graph_set_meta(g, "qtune.mean", mbuf);
    qt_graph_set_meta(g, "qtune.std", sbuf);
    return 0;
}

void recipe_data_free(struct recipe_data *d)
{
    qt_dataset_free(&d->train);
    qt_dataset_free(&d->test);
}

struct train_ui {
    struct cli_progress prog;
    FILE *log;
    const char *log_path;
    struct qt_graph *g;
    const char *best_path;
    int quiet;
    char label[64];
};

static void on_batch(void *ctx, int epoch, int64_t done, int64_t total, double loss, double top1,
                     double seconds)
{
    struct train_ui *ui = ctx;
    snprintf(ui->label, sizeof ui->label, "epoch %d loss %.4f acc %.1f%%", epoch, loss, top1);
    ui->prog.label = ui->label;
    cli_progress_update(&ui->prog, done, total, seconds);
}

static int on_epoch(void *ctx, const struct qt_epoch_stats *s)
{
    struct train_ui *ui = ctx;
    if (!ui->quiet)
        fprintf(stderr,
                "epoch %d/%d: train loss %.4f top-1 %.2f%% | test loss %.4f top-1 %.2f%% "
                "top-5 %.2f%% | lr %.5g | %.0f img/s, %.0f%% of it waiting for batches%s\n",
                s->epoch, s->epochs, s->train_loss, s->train_top1, s->test.loss, s->test.top1,
                s->test.top5, s->lr, s->images_per_s,
                s->seconds > 0 ? 100.0 * s->data_seconds / s->seconds : 0.0,
                s->best ? " | best" : "");
    if (ui->log) {
        fprintf(ui->log,
                "{\"epoch\": %d, \"train_loss\": %.6f, \"train_top1\": %.4f, \"test_loss\": "
                "%.6f, \"top1\": %.4f, \"top5\": %.4f, \"lr\": %.6g, \"images_per_s\": %.1f, "
                "\"seconds\": %.2f, \"data_seconds\": %.4f, \"best\": %s, \"step_loss\": [",
                s->epoch, s->train_loss, s->train_top1, s->test.loss, s->test.top1, s->test.top5,
                s->lr, s->images_per_s, s->seconds, s->data_seconds,
                s->best ? "true" : "false");
        for (int i = 0; i < s->nsteps; i++)
            fprintf(ui->log, "%s%.9g", i ? ", " : "", s->step_loss[i]);
        fprintf(ui->log, "]}\n");
        if (fflush(ui->log) != 0 || ferror(ui->log)) {
            cli_fail("cannot write the log '%s': %s", ui->log_path, strerror(errno));
            return -1;
        }
    }
    if (s->best) {
        struct qt_error e;
        if (qt_onnx_save(ui->g, ui->best_path, &e)) {
            cli_fail("%s", e.msg);
            return -1;
        }
    }
    ui->prog.last_print = -1;
    return 0;
}

/* Drops the log lines of epochs after the checkpoint's (written by a run that stopped before
 * their checkpoint): this run writes them again. */
static int on_resumed(void *ctx, int epochs_done)
{
    struct train_ui *ui = ctx;
    FILE *f = fopen(ui->log_path, "rb");
    if (!f) return 0; /* no log yet */
    char *text = NULL, *keep = NULL;
    size_t len = 0, cap = 0, kept = 0;
    for (;;) {
        if (len + 4096 > cap) {
            char *nt = realloc(text, cap = 2 * cap + 4096);
            if (!nt) break;
            text = nt;
        }
        size_t got = fread(text + len, 1, cap - len - 1, f);
        len += got;
        if (got == 0) break;
    }
    if (text) text[len] = 0;
    int bad = ferror(f) || !text;
    fclose(f);
    if (!bad) keep = malloc(len + 1);
    if (bad || !keep) {
        free(text);
        cli_fail("cannot read the log '%s'", ui->log_path);
        return -1;
    }
    for (size_t i = 0; i < len;) {
        size_t j = i;
        while (j < len && text[j] != '\n')
            j++;
        if (j < len) j++;
        int epoch;
        if (!(sscanf(text + i, "{\"epoch\": %d", &epoch) == 1 && epoch > epochs_done)) {
            memcpy(keep + kept, text + i, j - i);
            kept += j - i;
        }
        i = j;
    }
    int rc = 0;
    if (kept != len) {
        struct qt_error e;
        FILE *nl = NULL;
        if (qt_write_file_atomic(ui->log_path, keep, kept, &e))
            rc = cli_fail("%s", e.msg);
        else if (!(nl = fopen(ui->log_path, "a")))
            rc = cli_fail("cannot write the log '%s': %s", ui->log_path, strerror(errno));
        else {
            fclose(ui->log);
            ui->log = nl;
        }
    }
    free(text);
    free(keep);
    return rc ? -1 : 0;
}

void recipe_record_top1(struct qt_graph *g, const struct qt_eval_result *r)
{
    char buf[64];
    if (r->images <= 0) return;
    snprintf(buf, sizeof buf, "%.4f", r->top1);
    qt_graph_set_meta(g, "qtune.top1", buf);
    snprintf(buf, sizeof buf, "%lld", (long long)r->images);
    qt_graph_set_meta(g, "qtune.top1_images", buf);
}

/* The training configuration of the recipe r over `epochs` epochs at base learning rate lr. */
static void train_config(const struct recipe *r, const struct recipe_data *d, double lr,
                         long epochs, struct qt_train_config *cfg)
{
    enum qt_sched_kind kind = strcmp(r->schedule, "cosine") == 0 ? QT_SCHED_COSINE
                              : strcmp(r->schedule, "step") == 0 ? QT_SCHED_MULTISTEP
                                                                 : QT_SCHED_CONST;
    float ms[QT_SCHED_MAX_MILESTONES];
    int nms = r->milestones ? cli_parse_floats(r->milestones, ms, QT_SCHED_MAX_MILESTONES) : 0;
    int64_t n = r->train_limit > 0 && r->train_limit < d->train.n ? r->train_limit : d->train.n;
    int64_t per_epoch = (n + r->batch - 1) / r->batch;
    memset(cfg, 0, sizeof *cfg);
    cfg->epochs = (int)epochs;
    cfg->batch = (int)r->batch;
    cfg->sgd.momentum = (float)r->momentum;
    cfg->sgd.nesterov = r->nesterov;
    for (int k = 0; k < QT_ROLE_COUNT; k++) {
        cfg->sgd.group[k].lr_scale = 1.0f;
        cfg->sgd.group[k].wd = (r->no_wd_bn && k != QT_ROLE_WEIGHT) ? 0.0f : (float)r->wd;
    }
    /* Alphas have learning rates of their own that follow the same schedule. */
    float base = lr > 0 ? (float)lr : 1.0f;
    cfg->sgd.group[QT_ROLE_ALPHA_W].lr_scale = lr > 0 ? (float)r->alpha_lr_w / base : 0.0f;
    cfg->sgd.group[QT_ROLE_ALPHA_A].lr_scale = lr > 0 ? (float)r->alpha_lr_a / base : 0.0f;
    cfg->sgd.group[QT_ROLE_ALPHA_W].wd = cfg->sgd.group[QT_ROLE_ALPHA_A].wd = (float)r->alpha_wd;
    cfg->sched.kind = kind;
    cfg->sched.base_lr = (float)lr;
    cfg->sched.total_steps = per_epoch * epochs;
    cfg->sched.warmup_steps = (int64_t)llround(r->warmup * per_epoch);
    cfg->sched.gamma = (float)r->gamma;
    cfg->sched.nmilestones = nms;
    for (int i = 0; i < nms; i++)
        cfg->sched.milestones[i] = (int64_t)llround(ms[i] * per_epoch);
    cfg->label_smoothing = (float)r->smoothing;
    cfg->crop_pad = (int)r->crop_pad;
    cfg->no_resized_crop = r->no_augment;
    cfg->no_prefetch = r->no_prefetch;
    cfg->flip = r->flip;
    cfg->seed = r->seed;
    cfg->mean = d->mean;
    cfg->std = d->std;
    cfg->train_limit = r->train_limit;
    cfg->test_limit = r->test_limit;
}

int recipe_run(const struct recipe *r, struct qt_graph *g, const char *model, struct recipe_data *d,
               struct qt_backend *b, const struct recipe_extra *extra)
{
    struct qt_error e;
    char ckpt_buf[4200], best_buf[4200], log_buf[4200];
    FILE *log = NULL;
    int rc = 0;
    struct qt_train_config cfg;
    train_config(r, d, r->lr, r->epochs, &cfg);
    snprintf(ckpt_buf, sizeof ckpt_buf, "%s.ckpt", r->out);
    snprintf(best_buf, sizeof best_buf, "%s", r->out);
    char *dot = strrchr(best_buf, '.');
    if (dot && strcmp(dot, ".onnx") == 0) *dot = 0;
    snprintf(log_buf, sizeof log_buf, "%.4000s.log.jsonl", best_buf);
    strncat(best_buf, ".best.onnx", sizeof best_buf - strlen(best_buf) - 1);
    cfg.checkpoint = r->ckpt ? r->ckpt : ckpt_buf;
    cfg.resume = r->resume;
    cfg.stop = &stop_requested;
    cfg.psgd_bits = r->psgd_bits;
    cfg.psgd_lambda = r->psgd_lambda;
    /* From here on an interruption is a request to stop cleanly. */
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    if (!(log = fopen(log_buf, r->resume ? "a" : "w")))
        return cli_fail("%s: cannot write the log '%s': %s", r->cmd, log_buf, strerror(errno));
    struct train_ui ui;
    memset(&ui, 0, sizeof ui);
    cli_progress_init(&ui.prog, r->cmd, "img", r->quiet);
    ui.log = log;
    ui.log_path = log_buf;
    ui.g = g;
    ui.best_path = best_buf;
    ui.quiet = r->quiet;
    struct qt_train_callbacks cb = {&ui, on_batch, on_epoch, on_resumed};
    struct qt_train_result res;
    if (qt_train(g, b, &d->train, &d->test, &cfg, &cb, &res, &e)) {
        rc = cli_fail("%s", e.msg);
        goto out;
    }
    if (res.interrupted) {
        fprintf(stderr,
                "qtune: interrupted; checkpoint written to '%s' (continue with --resume %s)\n",
                cfg.checkpoint, cfg.checkpoint);
        rc = 130;
        goto out;
    }
    recipe_record_top1(g, &res.last);
    if (qt_onnx_save(g, r->out, &e)) {
        rc = cli_fail("%s", e.msg);
        goto out;
    }
    printf("%s %s for %d epochs (%lld steps) in %.1f s: test top-1 %.2f%% top-5 %.2f%% loss %.4f; "
           "best top-1 %.2f%% at epoch %d\n%swrote %s, %s, %s\n",
           strcmp(r->cmd, "train") == 0 ? "trained" : "fine-tuned", model, res.epochs_done,
           (long long)res.steps, res.seconds, res.last.top1, res.last.top5, res.last.loss,
           res.best_top1, res.best_epoch, extra ? extra->text : "", r->out, best_buf, log_buf);
    if (r->json)
        printf("{\"top1\": %.4f, \"top5\": %.4f, \"loss\": %.6f, \"best_top1\": %.4f, "
               "\"best_epoch\": %d, "
               "\"epochs\": %d, \"steps\": %lld, \"seconds\": %.2f, \"images_per_s\": %.1f%s%s}\n",
               res.last.top1, res.last.top5, res.last.loss, res.best_top1, res.best_epoch,
               res.epochs_done, (long long)res.steps, res.seconds,
               res.seconds > 0 ? (double)res.steps * r->batch / res.seconds : 0.0,
               extra && extra->json[0] ? ", " : "", extra ? extra->json : "");
out:
    fclose(ui.log);
    return rc;
}

/* ---- --mixed bsq ---- */

struct bsq_ui {
    struct cli_progress prog;
    FILE *log;
    const char *log_path, *bsq_path;
    struct qt_graph *g;
    int quiet;
    double decay;
    int stopped_at; /* epoch from which the regularizer was off (the budget held), or -1 */
    char label[64];
};

static void bsq_on_batch(void *ctx, int epoch, int64_t done, int64_t total, double loss,
                         double top1, double seconds)
{
    struct bsq_ui *ui = ctx;
    snprintf(ui->label, sizeof ui->label, "bsq epoch %d loss %.4f acc %.1f%%", epoch, loss, top1);
    ui->prog.label = ui->label;
    cli_progress_update(&ui->prog, done, total, seconds);
}

/* Saves the bit-plane model after every epoch, with the epochs it has done. */
static int bsq_save(struct bsq_ui *ui, int epoch)
{
    char buf[32];
    struct qt_error e;
    snprintf(buf, sizeof buf, "%d", epoch);
    qt_graph_set_meta(ui->g, "qtune.bsq.epoch", buf);
    if (qt_onnx_save(ui->g, ui->bsq_path, &e)) return cli_fail("%s", e.msg);
    return 0;
}

static int bsq_on_epoch(void *ctx, const struct qt_epoch_stats *s)
{
    struct bsq_ui *ui = ctx;
    struct qt_bsq_model m;
    struct qt_bsq_state st;
    struct qt_error e;
    if (qt_bsq_state_of(ui->g, &m, &st, ui->decay, &e)) {
        cli_fail("%s", e.msg);
        return -1;
    }
    if (!ui->quiet)
        fprintf(stderr,
                "bsq epoch %d/%d: train loss %.4f top-1 %.2f%% | test top-1 %.2f%% | %.3f bits "
                "(%.2fx), %lld bytes, regularizer %.4f | lr %.5g\n",
                s->epoch, s->epochs, s->train_loss, s->train_top1, s->test.top1, st.avg_bits,
                st.compression, (long long)st.bytes, st.regularizer, s->lr);
    int rc = 0;
    if (ui->log) {
        fprintf(ui->log,
                "{\"epoch\": %d, \"train_loss\": %.6f, \"train_top1\": %.4f, \"test_loss\": %.6f, "
                "\"top1\": %.4f, \"lr\": %.6g, \"avg_bits\": %.4f, \"compression\": %.4f, "
                "\"bytes\": %lld, \"regularizer\": %.6f, \"planes\": [",
                s->epoch, s->train_loss, s->train_top1, s->test.loss, s->test.top1, s->lr,
                st.avg_bits, st.compression, (long long)st.bytes, st.regularizer);
        for (int i = 0; i < st.n; i++)
            fprintf(ui->log, "%s%d", i ? ", " : "", st.l[i].N);
        fprintf(ui->log, "]}\n");
        if (fflush(ui->log) != 0 || ferror(ui->log))
            rc = cli_fail("cannot write the log '%s': %s", ui->log_path, strerror(errno));
    }
    qt_bsq_model_free(&m);
    if (!rc) rc = bsq_save(ui, s->epoch);
    ui->prog.last_print = -1;
    return rc ? -1 : 0;
}

static int bsq_on_requant(void *ctx, const struct qt_bsq_state *st)
{
    struct bsq_ui *ui = ctx;
    if (!st->regularized && ui->stopped_at < 0) ui->stopped_at = st->epoch;
    if (ui->quiet) return 0;
    fprintf(stderr, "bsq: re-quantized at epoch %d: planes per layer", st->epoch);
    for (int i = 0; i < st->n; i++)
        fprintf(stderr, " %d", st->l[i].N);
    fprintf(stderr, "; %.3f bits on average (%.2fx), %lld bytes; regularizer %s\n", st->avg_bits,
            st->compression, (long long)st->bytes,
            st->regularized ? "on" : "off (the budget holds)");
    return 0;
}

int recipe_bsq(const struct recipe *r, struct qt_graph *g, struct recipe_data *d,
               struct qt_backend *b, const struct bsq_options *o, struct qt_eval_result *after,
               char *json, size_t cap)
{
    struct qt_error e;
    struct qt_bsq_config c;
    memset(&c, 0, sizeof c);
    train_config(r, d, o->lr, o->epochs, &c.train);
    c.train.stop = &stop_requested;
    c.interval = o->interval;
    c.decay = o->decay;
    c.threshold = o->threshold;
    c.budget_bytes = o->budget_bytes;
    c.avg_bits = o->avg_bits;
    int planes = 0;
    for (int i = 0; i < g->nnodes; i++)
        planes += !g->nodes[i].dead && g->nodes[i].op == QT_OP_BITQUANT;
    if (planes) {
        /* a saved bit-plane model: continue after the epochs it records */
        const char *ep = qt_graph_meta(g, "qtune.bsq.epoch");
        c.first_epoch = ep ? atoi(ep) : 0;
        if (c.first_epoch < 0 || c.first_epoch > o->epochs)
            return cli_fail("finetune: the bit-plane model records epoch %d of --bsq-epochs %d",
                            c.first_epoch, o->epochs);
    } else {
        int *sel = calloc(g->nvalues + 1, sizeof *sel);
        if (!sel) return cli_fail("finetune: out of memory");
        for (int i = 0; i < g->nnodes; i++) {
            const int v = qt_layer_weight(g, &g->nodes[i], 0);
            if (v >= 0) sel[v] = 1;
        }
        int rc = qt_bsq_convert(g, sel, QT_BSQ_PLANES, &planes, &e);
        free(sel);
        if (rc) return cli_fail("finetune: %s", e.msg);
        if (!planes) return cli_fail("finetune: --mixed bsq: the model has no Conv, Gemm or "
                                     "MatMul weight to train as bit planes");
    }
    char stem[4100], bsq_path[4200], log_path[4200];
    snprintf(stem, sizeof stem, "%s", r->out);
    char *dot = strrchr(stem, '.');
    if (dot && strcmp(dot, ".onnx") == 0) *dot = 0;
    snprintf(bsq_path, sizeof bsq_path, "%s.bsq.onnx", stem);
    snprintf(log_path, sizeof log_path, "%s.bsq.log.jsonl", stem);
    struct bsq_ui ui;
    memset(&ui, 0, sizeof ui);
    cli_progress_init(&ui.prog, "bsq", "img", r->quiet);
    ui.g = g;
    ui.quiet = r->quiet;
    ui.decay = o->decay;
    ui.stopped_at = -1;
    ui.bsq_path = bsq_path;
    ui.log_path = log_path;
    if (!(ui.log = fopen(log_path, c.first_epoch ? "a" : "w")))
        return cli_fail("finetune: cannot write the log '%s': %s", log_path, strerror(errno));
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    if (!r->quiet)
        fprintf(stderr, "bsq: %d layers as bit planes, %d epochs (re-quantized every %d), alpha "
                        "%g, from epoch %d\n",
                planes, o->epochs, o->interval, o->decay, c.first_epoch);
    struct qt_train_callbacks cb = {&ui, bsq_on_batch, bsq_on_epoch, NULL};
    int interrupted = 0, rc = 0;
    if (qt_bsq_train(g, b, &d->train, &d->test, &c, &cb, bsq_on_requant, &ui, &interrupted, &e))
        rc = cli_fail("finetune: %s", e.msg);
    fclose(ui.log);
    if (rc) return rc;
    if (interrupted) {
        const char *ep = qt_graph_meta(g, "qtune.bsq.epoch");
        if (!ep && bsq_save(&ui, c.first_epoch)) return 1;
        fprintf(stderr, "qtune: interrupted; the bit-plane model is '%s' (continue by giving it "
                        "as the model, with the same options)\n", bsq_path);
        return 130;
    }
    if (c.first_epoch >= o->epochs && !r->quiet)
        fprintf(stderr, "bsq: the bit-plane model has done its %d epochs\n", o->epochs);
    /* the planes to ordinary quantizers, then the accuracy and the weight memory (the
     * BatchNorm statistics stay those training gathered: re-estimating them on 8 batches for
     * the re-quantized weights did not help BSQ after one epoch at alpha 2 and 6 and lowered
     * alpha 0.5; bench/results/mixed_vs_uniform_bsq_bn_reestimated.txt is the run with it) */
    if (qt_bsq_to_quantizers(g, &e)) return cli_fail("finetune: %s", e.msg);
    struct qt_weight_memory wm;
    if (qt_weight_memory(g, &wm, &e)) return cli_fail("finetune: %s", e.msg);
    const double avg = wm.count ? (double)wm.bit_count / (double)wm.count : 0;
    size_t jl = (size_t)snprintf(json, cap,
                                 "\"bsq\": {\"epochs\": %d, \"interval\": %d, \"decay\": %g, "
                                 "\"threshold\": %g, \"first_epoch\": %d, "
                                 "\"regularizer_off_at\": %d, \"bytes\": %lld, "
                                 "\"avg_bits\": %.4f, \"bits\": [",
                                 o->epochs, o->interval, o->decay, o->threshold, c.first_epoch,
                                 ui.stopped_at, (long long)wm.bytes, avg);
    for (int i = 0; i < wm.n && jl < cap; i++)
        jl += (size_t)snprintf(json + jl, cap - jl, "%s%d", i ? ", " : "", wm.layer[i].bits);
    const int64_t bytes = wm.bytes;
    qt_weight_memory_free(&wm);
    if ((o->budget_bytes && bytes > o->budget_bytes) || (o->avg_bits > 0 && avg > o->avg_bits + 1e-9))
        return cli_fail("finetune: the bit planes ended at %lld bytes, %.3f bits on average, "
                        "over the budget; raise --decay or --bsq-epochs (the bit-plane model is "
                        "'%s')", (long long)bytes, avg, bsq_path);
    struct cli_progress prog;
    cli_progress_init(&prog, "eval", "img", r->quiet);
    if (qt_evaluate(g, b, &d->test, d->mean, d->std, (int)r->batch, r->test_limit,
                    cli_progress_update, &prog, after, &e))
        return cli_fail("finetune: %s", e.msg);
    if (jl < cap) snprintf(json + jl, cap - jl, "], \"top1\": %.4f}", after->top1);
    if (!r->quiet)
        fprintf(stderr, "bsq: %lld bytes of weights, %.3f bits on average; test top-1 %.2f%% "
                        "before fine-tuning\n", (long long)bytes, avg, after->top1);
    return 0;
}
