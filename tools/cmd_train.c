/* qtune train: FP32 training or fine-tuning of a model on a dataset, with a per-epoch log,
 * checkpoints, resume, Ctrl-C handling and the best model kept beside the final one. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../onnx/onnx.h"
#include "../runtime/data/dataset.h"
#include "../runtime/train.h"
#include "cli.h"

/* Set by SIGINT/SIGTERM; the loop stops after the current batch and writes a checkpoint. */
static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static void usage(void)
{
    printf("usage: qtune train MODEL.onnx --data DATA --epochs E -o OUT.onnx [options]\n"
           "  --batch N            batch size (default 128)\n"
           "  --lr X               base learning rate (default 0.1)\n"
           "  --momentum X         SGD momentum (default 0.9)\n"
           "  --nesterov           Nesterov momentum\n"
           "  --wd X               weight decay (default 5e-4)\n"
           "  --no-wd-bn           no weight decay on BatchNorm parameters and biases\n"
           "  --schedule S         const, step or cosine (default cosine)\n"
           "  --milestones a,b     epochs where step multiplies the lr by --gamma (default 0.1)\n"
           "  --warmup E           linear warm-up over E epochs (may be fractional)\n"
           "  --label-smoothing X  label smoothing of the cross-entropy (default 0)\n"
           "  --crop-pad P         random crop with P pixels of zero padding (default 4, 0: off)\n"
           "  --no-flip            no random horizontal flips\n"
           "  --no-augment         neither crops nor flips\n"
           "  --seed S             seed of shuffling and augmentation (default 0)\n"
           "  --mean a,b,c --std a,b,c | --preset NAME   normalization (stored in OUT.onnx)\n"
           "  --train-limit N      train on the first N samples only\n"
           "  --test-limit N       evaluate on the first N test samples only\n"
           "  --checkpoint PATH    checkpoint written every epoch (default OUT.onnx.ckpt)\n"
           "  --resume PATH        continue from a checkpoint (same model, data and options)\n"
           "  --threads N          CPU threads\n"
           "  --json               print a JSON summary as the last line\n"
           "  --quiet              no progress display\n"
           "Writes OUT.onnx (final weights), OUT.best.onnx (best test top-1) and OUT.log.jsonl.\n");
}

struct train_ui {
    struct cli_progress prog;
    FILE *log;
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
        fprintf(stderr, "epoch %d/%d: train loss %.4f top-1 %.2f%% | test loss %.4f top-1 %.2f%% "
                        "top-5 %.2f%% | lr %.5g | %.0f img/s%s\n",
                s->epoch, s->epochs, s->train_loss, s->train_top1, s->test.loss, s->test.top1,
                s->test.top5, s->lr, s->images_per_s, s->best ? " | best" : "");
    if (ui->log) {
        fprintf(ui->log, "{\"epoch\": %d, \"train_loss\": %.6f, \"train_top1\": %.4f, \"test_loss\": "
                         "%.6f, \"top1\": %.4f, \"top5\": %.4f, \"lr\": %.6g, \"images_per_s\": %.1f, "
                         "\"seconds\": %.2f, \"best\": %s}\n",
                s->epoch, s->train_loss, s->train_top1, s->test.loss, s->test.top1, s->test.top5,
                s->lr, s->images_per_s, s->seconds, s->best ? "true" : "false");
        fflush(ui->log);
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

int cmd_train(int argc, char **argv)
{
    const char *path = NULL, *data = NULL, *out = NULL, *preset = NULL, *mean_s = NULL, *std_s = NULL;
    const char *schedule = "cosine", *milestones = NULL, *ckpt = NULL, *resume = NULL;
    long epochs = -1, batch = 128, threads = 0, train_limit = 0, test_limit = 0, crop_pad = 4;
    double lr = 0.1, momentum = 0.9, wd = 5e-4, gamma = 0.1, warmup = 0, smoothing = 0;
    unsigned long long seed = 0;
    int nesterov = 0, no_wd_bn = 0, flip = 1, json = 0, quiet = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has = i + 1 < argc;
        char *end = NULL;
#define FLOAT_OPT(name, var)                                                                       \
    else if (strcmp(a, name) == 0 && has) {                                                        \
        var = strtod(argv[++i], &end);                                                             \
        if (*end || !isfinite(var) || var < 0) return cli_fail("train: %s needs a non-negative number", name); \
    }
#define LONG_OPT(name, var)                                                                        \
    else if (strcmp(a, name) == 0 && has) {                                                        \
        if ((var = cli_parse_long(argv[++i])) < 0) return cli_fail("train: %s needs a positive integer", name); \
    }
        if (strcmp(a, "--help") == 0) {
            usage();
            return 0;
        } else if (strcmp(a, "--json") == 0) json = 1;
        else if (strcmp(a, "--quiet") == 0) quiet = 1;
        else if (strcmp(a, "--nesterov") == 0) nesterov = 1;
        else if (strcmp(a, "--no-wd-bn") == 0) no_wd_bn = 1;
        else if (strcmp(a, "--no-flip") == 0) flip = 0;
        else if (strcmp(a, "--no-augment") == 0) flip = 0, crop_pad = 0;
        else if (strcmp(a, "--data") == 0 && has) data = argv[++i];
        else if (strcmp(a, "-o") == 0 && has) out = argv[++i];
        else if (strcmp(a, "--preset") == 0 && has) preset = argv[++i];
        else if (strcmp(a, "--mean") == 0 && has) mean_s = argv[++i];
        else if (strcmp(a, "--std") == 0 && has) std_s = argv[++i];
        else if (strcmp(a, "--schedule") == 0 && has) schedule = argv[++i];
        else if (strcmp(a, "--milestones") == 0 && has) milestones = argv[++i];
        else if (strcmp(a, "--checkpoint") == 0 && has) ckpt = argv[++i];
        else if (strcmp(a, "--resume") == 0 && has) resume = argv[++i];
        else if (strcmp(a, "--epochs") == 0 && has) {
            epochs = strtol(argv[++i], &end, 10);
            if (*end || epochs < 0) return cli_fail("train: --epochs needs a non-negative integer");
        } else if (strcmp(a, "--crop-pad") == 0 && has) {
            crop_pad = strtol(argv[++i], &end, 10);
            if (*end || crop_pad < 0 || crop_pad > 127) return cli_fail("train: --crop-pad needs 0 to 127");
        } else if (strcmp(a, "--seed") == 0 && has) {
            seed = strtoull(argv[++i], &end, 10);
            if (*end) return cli_fail("train: --seed needs a non-negative integer");
        }
        LONG_OPT("--batch", batch)
        LONG_OPT("--threads", threads)
        LONG_OPT("--train-limit", train_limit)
        LONG_OPT("--test-limit", test_limit)
        FLOAT_OPT("--lr", lr)
        FLOAT_OPT("--momentum", momentum)
        FLOAT_OPT("--wd", wd)
        FLOAT_OPT("--gamma", gamma)
        FLOAT_OPT("--warmup", warmup)
        FLOAT_OPT("--label-smoothing", smoothing)
        else if (a[0] == '-') return cli_fail("train: unknown or incomplete option '%s'", a);
        else if (!path) path = a;
        else return cli_fail("train: more than one model given");
#undef FLOAT_OPT
#undef LONG_OPT
    }
    if (!path || !data || !out || epochs < 0)
        return cli_fail("train: usage: qtune train MODEL.onnx --data DATA --epochs E -o OUT.onnx");
    if (smoothing >= 1) return cli_fail("train: --label-smoothing must be below 1");
    if (momentum >= 1) return cli_fail("train: --momentum must be below 1");
    if ((mean_s != NULL) != (std_s != NULL)) return cli_fail("train: --mean and --std go together");
    enum qt_sched_kind kind;
    if (strcmp(schedule, "cosine") == 0) kind = QT_SCHED_COSINE;
    else if (strcmp(schedule, "step") == 0) kind = QT_SCHED_MULTISTEP;
    else if (strcmp(schedule, "const") == 0) kind = QT_SCHED_CONST;
    else return cli_fail("train: --schedule must be const, step or cosine");
    float ms[QT_SCHED_MAX_MILESTONES];
    int nms = 0;
    if (milestones && (nms = cli_parse_floats(milestones, ms, QT_SCHED_MAX_MILESTONES)) < 0)
        return cli_fail("train: --milestones needs up to %d comma-separated epochs", QT_SCHED_MAX_MILESTONES);

    /* From here on an interruption is a request to stop cleanly. */
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    struct qt_graph *g = cli_load_model(path, 0);
    if (!g) return 1;
    struct qt_error e;
    struct qt_dataset tr, te;
    memset(&tr, 0, sizeof tr);
    memset(&te, 0, sizeof te);
    struct qt_backend *b = NULL;
    FILE *log = NULL;
    int rc = 0;
    char ckpt_buf[4200], best_buf[4200], log_buf[4200], mbuf[128], sbuf[128];
    if (!quiet) fprintf(stderr, "loading %s...\n", data);
    if (qt_dataset_load(&tr, data, "train", &e) || qt_dataset_load(&te, data, "test", &e)) {
        rc = cli_fail("%s", e.msg);
        goto out;
    }
    float mean[4], std[4];
    if ((rc = cli_normalization("train", g, path, preset, mean_s, std_s, tr.c, mean, std))) goto out;
    /* The normalization travels with the model. */
    int k = 0;
    for (int c = 0; c < tr.c; c++) k += snprintf(mbuf + k, sizeof mbuf - k, "%s%g", c ? "," : "", mean[c]);
    k = 0;
    for (int c = 0; c < tr.c; c++) k += snprintf(sbuf + k, sizeof sbuf - k, "%s%g", c ? "," : "", std[c]);
    qt_graph_set_meta(g, "qtune.mean", mbuf);
    qt_graph_set_meta(g, "qtune.std", sbuf);

    if (!(b = qt_backend_cpu_new((int)threads))) {
        rc = cli_fail("train: cannot create the CPU backend");
        goto out;
    }
    int64_t n = train_limit > 0 && train_limit < tr.n ? train_limit : tr.n;
    int64_t per_epoch = (n + batch - 1) / batch;
    struct qt_train_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.epochs = (int)epochs;
    cfg.batch = (int)batch;
    cfg.sgd.momentum = (float)momentum;
    cfg.sgd.nesterov = nesterov;
    for (int r = 0; r < QT_ROLE_COUNT; r++) {
        cfg.sgd.group[r].lr_scale = 1.0f;
        cfg.sgd.group[r].wd = (no_wd_bn && r != QT_ROLE_WEIGHT) ? 0.0f : (float)wd;
    }
    cfg.sched.kind = kind;
    cfg.sched.base_lr = (float)lr;
    cfg.sched.total_steps = per_epoch * epochs;
    cfg.sched.warmup_steps = (int64_t)llround(warmup * per_epoch);
    cfg.sched.gamma = (float)gamma;
    cfg.sched.nmilestones = nms;
    for (int i = 0; i < nms; i++) cfg.sched.milestones[i] = (int64_t)llround(ms[i] * per_epoch);
    cfg.label_smoothing = (float)smoothing;
    cfg.crop_pad = (int)crop_pad;
    cfg.flip = flip;
    cfg.seed = seed;
    cfg.mean = mean;
    cfg.std = std;
    cfg.train_limit = train_limit;
    cfg.test_limit = test_limit;
    snprintf(ckpt_buf, sizeof ckpt_buf, "%s.ckpt", out);
    snprintf(best_buf, sizeof best_buf, "%s", out);
    char *dot = strrchr(best_buf, '.');
    if (dot && strcmp(dot, ".onnx") == 0) *dot = 0;
    snprintf(log_buf, sizeof log_buf, "%.4000s.log.jsonl", best_buf);
    strncat(best_buf, ".best.onnx", sizeof best_buf - strlen(best_buf) - 1);
    cfg.checkpoint = ckpt ? ckpt : ckpt_buf;
    cfg.resume = resume;
    cfg.stop = &stop_requested;
    if (!(log = fopen(log_buf, resume ? "a" : "w"))) {
        rc = cli_fail("train: cannot write the log '%s'", log_buf);
        goto out;
    }
    struct train_ui ui;
    memset(&ui, 0, sizeof ui);
    cli_progress_init(&ui.prog, "train", "img", quiet);
    ui.log = log;
    ui.g = g;
    ui.best_path = best_buf;
    ui.quiet = quiet;
    struct qt_train_callbacks cb = {&ui, on_batch, on_epoch};
    struct qt_train_result r;
    if (qt_train(g, b, &tr, &te, &cfg, &cb, &r, &e)) {
        rc = cli_fail("%s", e.msg);
        goto out;
    }
    if (r.interrupted) {
        fprintf(stderr, "qtune: interrupted; checkpoint written to '%s' (continue with --resume %s)\n",
                cfg.checkpoint, cfg.checkpoint);
        rc = 130;
        goto out;
    }
    if (qt_onnx_save(g, out, &e)) {
        rc = cli_fail("%s", e.msg);
        goto out;
    }
    printf("trained %s for %d epochs (%lld steps) in %.1f s: test top-1 %.2f%% top-5 %.2f%% loss %.4f; "
           "best top-1 %.2f%% at epoch %d\nwrote %s, %s, %s\n",
           path, r.epochs_done, (long long)r.steps, r.seconds, r.last.top1, r.last.top5, r.last.loss,
           r.best_top1, r.best_epoch, out, best_buf, log_buf);
    if (json)
        printf("{\"top1\": %.4f, \"top5\": %.4f, \"loss\": %.6f, \"best_top1\": %.4f, \"best_epoch\": %d, "
               "\"epochs\": %d, \"steps\": %lld, \"seconds\": %.2f, \"images_per_s\": %.1f}\n",
               r.last.top1, r.last.top5, r.last.loss, r.best_top1, r.best_epoch, r.epochs_done,
               (long long)r.steps, r.seconds,
               r.seconds > 0 ? (double)r.steps * batch / r.seconds : 0.0);
out:
    if (log) fclose(log);
    if (b) b->destroy(b);
    qt_dataset_free(&tr);
    qt_dataset_free(&te);
    qt_graph_free(g);
    return rc;
}
