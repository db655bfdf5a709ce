/* Helpers shared by the qtune subcommands: model loading, option values,
 * the progress display and error printing. The only place allowed to print and exit. */
#ifndef QT_CLI_H
#define QT_CLI_H

#include <stddef.h>
#include <stdint.h>

#include "../graph/graph.h"

/* Prints "qtune: error: <msg>" to stderr; returns the exit status 1. */
int cli_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Loads and canonicalizes a model (for inference: BatchNorm folded into Conv); prints the
 * error and returns NULL on failure. */
struct qt_graph *cli_load_model(const char *path, int inference);

/* Per-channel normalization from --preset, or --mean/--std (one value or one per channel),
 * or else the model's stored qtune.mean/qtune.std. Returns 0, or prints the error (prefixed
 * with cmd) and returns the exit status. */
int cli_normalization(const char *cmd, const struct qt_graph *g, const char *model,
                      const char *preset, const char *mean_s, const char *std_s, int channels,
                      float *mean, float *std);
/* Parses "a,b,c" into up to max floats; returns the count or -1. */
int cli_parse_floats(const char *s, float *out, int max);
/* Parses a positive integer option; returns -1 when invalid. */
long cli_parse_long(const char *s);

/* Progress display on stderr: a bar with rate and ETA on a terminal, plain lines otherwise. */
struct cli_progress {
    const char *label;
    int tty;
    int quiet;
    double last_print;
    const char *unit;
};
void cli_progress_init(struct cli_progress *p, const char *label, const char *unit, int quiet);
void cli_progress_update(void *ctx, int64_t done, int64_t total, double seconds);
void cli_progress_end(struct cli_progress *p);

/* Evaluates the model at `path` (loaded for inference) on split `split` of DATA with the
 * normalization of --preset or --mean/--std (else the model's own), on `device`; prints
 * errors prefixed with cmd. Writes the result to r and the backend's name to device_name
 * (may be NULL). Returns the exit status. */
/* Warns when a limit (the first `limit` samples of split `split`, given by option opt) leaves
 * out some of the classes the split holds, as it does on image folders, which list their
 * images class by class. */
struct qt_dataset;
void cli_check_limit(const char *cmd, const char *opt, const struct qt_dataset *ds,
                     const char *split, long limit);

/* --resize R and --crop S (images of any size through torchvision's Resize + CenterCrop):
 * 1 when argv[*i] is one of them (its value taken, *i advanced), -1 on a bad value, else 0. */
int cli_image_size_option(const char *cmd, int argc, char **argv, int *i, long *resize,
                          long *crop);

struct qt_eval_result;
int cli_evaluate(const char *cmd, const char *path, const char *data, const char *split,
                 const char *preset, const char *mean_s, const char *std_s, long batch,
                 long limit, long resize, long crop, const char *device, long threads,
                 int quiet, struct qt_eval_result *r, char *device_name, size_t device_len);

/* The backend --device names ("auto", the default, also when device is NULL): prints the
 * reason when "auto" falls back to the CPU ("qtune: note: ..."), and the error (through
 * cli_fail, naming cmd) when none can be created. */
struct qt_backend *cli_backend_new(const char *cmd, const char *device, long threads);

/* Format qlinear's calibration: the training images (normalized by mean/std) on which the
 * ranges of the requantized convolution outputs are measured, how many of them, and the
 * backend that runs the model. */
struct cli_export_calib {
    const struct qt_dataset *train;
    const float *mean, *std;
    struct qt_backend *b;
    long images;
};
struct qt_export_report;
/* Lowers the quantized model at `path` to `format` (onnx, qdq, float, integer, qlinear) and writes it
 * to out (nothing written on error); top1 >= 0 is recorded in the metadata with the number of
 * images it was measured on; format qlinear needs cal (else NULL). rep receives the counts.
 * Returns the exit status. */
int cli_export(const char *path, const char *format, const char *out, double top1,
               int64_t images, const struct cli_export_calib *cal, struct qt_export_report *rep);

int cmd_inspect(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_init(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_finetune(int argc, char **argv);

#endif
